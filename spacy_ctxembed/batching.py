"""Cutting work into forward batches, and overlapping host preparation with device compute."""
import concurrent.futures
import contextlib
import contextvars
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

import numpy

T = TypeVar("T")
U = TypeVar("U")


def concat_ranges(starts: numpy.ndarray, lengths: numpy.ndarray) -> numpy.ndarray:
    """The ranges [starts[i], starts[i] + lengths[i]) laid end to end, as one int64 array."""
    starts = numpy.asarray(starts, dtype="int64")
    lengths = numpy.asarray(lengths, dtype="int64")
    ends = numpy.cumsum(lengths)
    # Position k of the result lies in range i: starts[i] + (k - where range i begins).
    return numpy.repeat(starts - (ends - lengths), lengths) + numpy.arange(int(ends[-1]) if len(ends) else 0)


def batches_by_budget(
    items: Sequence[T], budget: int, length: Callable[[T], int], *, same_length: bool = False
) -> Iterator[List[T]]:
    """Cut `items`, sorted longest first, into batches of at most `budget` padded
    items (see `budget_bounds`; `length(item)`: its padded length)."""
    lengths = numpy.fromiter(map(length, items), dtype="int64", count=len(items))
    for start, end in budget_bounds(lengths, budget, same_length=same_length):
        yield list(items[start:end])


def budget_bounds(lengths: numpy.ndarray, budget: int, *, same_length: bool = False) -> List[Tuple[int, int]]:
    """Where to cut items of these padded lengths, sorted longest first, into
    batches of at most `budget` padded items: [start, end) per batch.

    A batch pads every row to its first (longest) item's length, so a batch of
    n rows costs n * length(first). An item longer than the budget gets a batch
    of its own. With `same_length`, a batch also ends where the length
    changes, so that no row is padded. A Python step per batch, not per item.
    """
    lengths = numpy.asarray(lengths, dtype="int64")
    n = len(lengths)
    # Where each run of equal lengths ends, for `same_length`.
    run_ends = numpy.append(numpy.flatnonzero(lengths[1:] != lengths[:-1]) + 1, n)
    bounds = []
    start = 0
    while start < n:
        first = int(lengths[start])
        end = min(n, start + max(1, budget // first)) if first > 0 else n
        if same_length:
            end = min(end, int(run_ends[numpy.searchsorted(run_ends, start, side="right")]))
        bounds.append((start, end))
        start = end
    return bounds


def runs_by_size(items: Sequence[T], budget: int, size: Callable[[T], int]) -> Iterator[List[T]]:
    """Cut `items`, in order, into consecutive runs whose sizes add up to about `budget`.

    A run closes once it reaches the budget, so every run holds at least one
    item and an item larger than the budget is a run of its own.
    """
    run: List[T] = []
    total = 0
    for item in items:
        run.append(item)
        total += size(item)
        if total >= budget:
            yield run
            run, total = [], 0
    if run:
        yield run


def prefetched(produce: Callable[[T], U], items: Sequence[T]) -> Iterator[U]:
    """`produce(item)` for each item, in order.

    Item k+1's is computed in a worker thread while the caller works on item
    k's: host preparation (tokenization, planning, staging) runs while the
    device computes. The results are those of a serial loop; only the timing
    differs. The worker runs in a copy of the caller's context, as in
    `computed_ahead` (warnings then name the component: `errors.named_errors`).
    """
    if len(items) < 2:
        for item in items:
            yield produce(item)
        return
    produce = on_caller_devices(produce)  # (its staging, e.g. pinned memory, on the caller's GPU)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxembed-prefetch") as pool:
        pending = pool.submit(contextvars.copy_context().run, produce, items[0])
        for item in items[1:]:
            ready = pending.result()
            pending = pool.submit(contextvars.copy_context().run, produce, item)
            yield ready
        yield pending.result()


class InFlight:
    """The work that `computed_ahead` streams handed to their workers and that is
    not done yet, whether or not its stream is still read: `wait` waits for it.

    A stream closed early or interrupted drops the item in flight without
    waiting for it, and its worker goes on reading that item's docs. What
    frees their memory afterwards (the end of `nlp.memory_zone()`) waits here
    first (`ContextualEmbedder.memory_zone`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: Set[Future[Any]] = set()

    def add(self, future: "Future[Any]") -> None:
        with self._lock:
            self._futures.add(future)
        # (Called at once where it is done already; else in the worker, once it is.)
        future.add_done_callback(self._discard)

    def _discard(self, future: "Future[Any]") -> None:
        with self._lock:
            self._futures.discard(future)

    def wait(self) -> None:
        """Until the work in flight now is done (or was cancelled)."""
        with self._lock:
            futures = list(self._futures)
        concurrent.futures.wait(futures)


def computed_ahead(
    produce: Callable[[T], U], items: Iterable[T], *, in_flight: Optional[InFlight] = None
) -> Iterator[Tuple[T, Optional[U], Optional[Exception]]]:
    """(item, produce(item), None) for each item of a stream, in order, or
    (item, None, error) where `produce` raised.

    `produce(item k+1)` runs in a worker thread while the caller works on item
    k's result, and item k+1 is drawn from `items` (which may do work of its
    own, like spaCy's tokenizer behind `nlp.pipe`) while the worker computes
    item k. Errors of `produce` are handed back, not raised, so that the
    caller decides (spaCy's error handlers); an error of the stream itself is
    raised after the item before it has been handed over, as a serial loop
    would. An interrupt of the stream (KeyboardInterrupt, SystemExit) is raised
    at once, dropping the item in flight: held back, it would be lost where
    the caller stops after that item (a generator closed by the garbage
    collector can only print what it raises). The worker runs in a copy of the
    caller's context, so context variables (Thinc's current ops) carry over.
    Closing the generator early drops the item in flight without waiting for
    it: the worker finishes it and ends. `in_flight`, where given, holds each
    item's work until it is done, for those who must wait for it (`InFlight`).
    """
    iterator = iter(items)
    sentinel = object()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxembed-run-ahead")
    stopped = False

    def submit(item: T) -> "Future[U]":
        future = pool.submit(contextvars.copy_context().run, produce, item)
        if in_flight is not None:
            in_flight.add(future)
        return future

    try:
        current = next(iterator, sentinel)
        if current is sentinel:
            return
        pending = submit(current)  # type: ignore[arg-type]
        while True:
            stream_error: Optional[Exception] = None
            try:
                following = next(iterator, sentinel)
            except Exception as exc:  # raised once `current` is handed over
                following, stream_error = sentinel, exc
            try:
                result: Optional[U] = pending.result()
                error: Optional[Exception] = None
            except Exception as exc:  # handed to the caller with its item
                result, error = None, exc
            if following is not sentinel:
                pending = submit(following)  # type: ignore[arg-type]
            yield current, result, error  # type: ignore[misc]
            if stream_error is not None:
                raise stream_error
            if following is sentinel:
                return
            current = following
    except BaseException as exc:
        # Closed early (GeneratorExit) or interrupted: the item in flight is
        # not waited for. The close can come from the garbage collector, in
        # whatever thread it runs, and in the middle of a load there that the
        # worker's prediction waits for: waiting would then wait for ever.
        stopped = not isinstance(exc, Exception)
        raise
    finally:
        pool.shutdown(wait=not stopped, cancel_futures=stopped)


def on_caller_devices(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`function`, to run in another thread (`prefetched`, `computed_ahead`) on
    the caller's current CUDA devices and streams.

    torch's and CuPy's current devices and streams are per thread, and a new
    thread starts on device 0's default stream. So a pipeline on GPU 1 would
    otherwise allocate its outputs on GPU 0, and a caller working on a stream
    of its own (`torch.cuda.stream(s)`) would read outputs written on another
    stream, with nothing making it wait for them.
    """
    import torch
    from thinc.util import has_cupy_gpu

    torch_stream = torch.cuda.current_stream() if torch.cuda.is_initialized() else None
    cupy_current: Optional[Tuple[int, Any]] = None
    # CuPy's too only where torch works on a GPU, as the pipeline then does:
    # `has_cupy_gpu` holds for a CPU pipeline on a machine with a GPU as well,
    # and in a process forked from one that had CUDA running (thinc's import
    # starts it; `nlp.pipe(n_process=...)` forks) no CUDA call can succeed,
    # while torch reports itself uninitialized there.
    if has_cupy_gpu and torch_stream is not None:
        import cupy

        cupy_current = (cupy.cuda.Device().id, cupy.cuda.get_current_stream())

    def on_devices(item: Any) -> Any:
        with contextlib.ExitStack() as stack:
            if torch_stream is not None:
                stack.enter_context(torch.cuda.device(torch_stream.device))
                stack.enter_context(torch.cuda.stream(torch_stream))
            if cupy_current is not None:
                device_id, stream = cupy_current
                stack.enter_context(cupy.cuda.Device(device_id))
                stack.enter_context(stream)
            return function(item)

    return on_devices
