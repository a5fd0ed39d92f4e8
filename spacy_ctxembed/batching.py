"""Cutting sequences into forward batches by a budget of padded items."""
from typing import Callable, Iterator, List, Sequence, TypeVar

T = TypeVar("T")


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
