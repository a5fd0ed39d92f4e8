"""Module-level state made anew in each process.

`nlp.pipe(n_process=...)` forks on Linux, and a forked child has only the
thread that forked: a lock that another thread of the parent held at that
moment stays held in the child for ever, and the child's first read of a
vector waited on it. Components make their own locks anew after a fork
(`ContextualEmbedder._after_fork`); module-level state is kept per process.
"""
import os
from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class ProcessLocal(Generic[T]):
    """A value that `make` makes once per process (by `os.getpid()`).

    What a parent made stays behind in a forked child, unused."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: Dict[int, T] = {}

    def get(self) -> T:
        pid = os.getpid()
        value = self._values.get(pid)
        if value is None:  # (setdefault: threads that race here all get the one value kept)
            value = self._values.setdefault(pid, self._make())
        return value
