"""Predictions and loads of one component, kept apart across threads.

A component that is loading (`from_disk`, `from_bytes`, `initialize`) swaps
its encoder's weights and its combiner's one after the other. A prediction
in another thread meanwhile (a server that reloads a model while serving, or
the component's own run-ahead worker in `nlp.pipe`) would read the encoder of
one model and the combiner of the other, or see the component not loaded
and initialise it again on top of the weights just loaded. So predictions
share the gate (any number at once), and a load takes it alone: it waits
for the predictions under way to end, and predictions that start after it
asked wait for it (else threads that keep predicting would keep it out).
A training step and `use_params`, which rewrite the weights in place, take
it alone too.

Re-entrant: a thread that loads may predict or load again inside (`from_bytes`
of 0.1's bytes goes through `from_disk`), and a thread that predicts may
predict again inside. A thread that predicts and then loads would wait for
itself: the component loads before it predicts (`ensure_loaded`), never
inside a prediction.
"""
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, Optional


class LoadGate:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        #: Predictions under way, by thread: a thread already predicting
        #: enters again at once, even with a load waiting.
        self._readers: Dict[int, int] = {}
        self._writer: Optional[int] = None
        self._depth = 0
        self._waiting_writers = 0

    @contextmanager
    def predicting(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            if self._writer != me and me not in self._readers:
                while self._writer is not None or self._waiting_writers:
                    self._condition.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._condition:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                    if not self._readers:
                        self._condition.notify_all()

    @property
    def changing(self) -> bool:
        """Whether a thread holds the gate to change the weights now."""
        return self._writer is not None

    @property
    def changing_elsewhere(self) -> bool:
        """Whether another thread than this one holds the gate to change the weights now."""
        writer = self._writer
        return writer is not None and writer != threading.get_ident()

    @contextmanager
    def loading(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            if self._writer != me:
                self._waiting_writers += 1
                try:
                    while self._writer is not None or self._readers:
                        self._condition.wait()
                except BaseException:  # (interrupted while waiting: the predictions it held back may go)
                    self._waiting_writers -= 1
                    self._condition.notify_all()
                    raise
                self._waiting_writers -= 1
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._condition:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._condition.notify_all()
