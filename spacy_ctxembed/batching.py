"""Cutting work into forward batches, and overlapping host preparation with device compute."""
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Sequence, TypeVar

T = TypeVar("T")
U = TypeVar("U")


def batches_by_budget(items: Sequence[T], budget: int, length: Callable[[T], int]) -> Iterator[List[T]]:
    """Cut `items`, sorted longest first, into batches of at most `budget` padded items.

    A batch pads every row to its first (longest) item's length, so a batch of
    n rows costs n * length(first). An item longer than the budget gets a batch
    of its own.
    """
    batch: List[T] = []
    for item in items:
        padded = length(batch[0]) if batch else length(item)
        if batch and (len(batch) + 1) * padded > budget:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


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


def prefetched(produce: Callable[[T], U], items: Sequence[T], *, overlap: bool = True) -> Iterator[U]:
    """`produce(item)` for each item, in order.

    With `overlap`, item k+1's is computed in a worker thread while the caller
    works on item k's: host preparation (tokenization, planning, staging)
    runs while the device computes. The results are the same objects either
    way; only the timing differs.
    """
    if not overlap or len(items) < 2:
        for item in items:
            yield produce(item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxembed-prefetch") as pool:
        pending = pool.submit(produce, items[0])
        for item in items[1:]:
            ready = pending.result()
            pending = pool.submit(produce, item)
            yield ready
        yield pending.result()
