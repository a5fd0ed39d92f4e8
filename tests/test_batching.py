import numpy
from hypothesis import given
from hypothesis import strategies as st

from spacy_ctxembed.batching import batches_by_budget, budget_bounds, on_caller_devices, prefetched


@given(lengths=st.lists(st.integers(1, 300), max_size=200), budget=st.integers(1, 2000))
def test_batches_respect_budget_and_keep_order(lengths, budget):
    items = sorted(lengths, reverse=True)
    batches = list(batches_by_budget(items, budget, lambda n: n))
    assert [n for batch in batches for n in batch] == items
    for batch in batches:
        assert batch
        # padded cost: every row as long as the first; only a lone item may exceed the budget
        assert len(batch) * batch[0] <= budget or len(batch) == 1


def _greedy_batches(lengths, budget, same_length):
    """The rule, item by item: a batch closes before an item that would take it
    past the budget (every row padded to its first), or, with `same_length`,
    that is of another length than its first."""
    batches, batch = [], []
    for n in lengths:
        if batch and ((len(batch) + 1) * batch[0] > budget or (same_length and n != batch[0])):
            batches.append(batch)
            batch = []
        batch.append(n)
    return batches + ([batch] if batch else [])


@given(lengths=st.lists(st.integers(0, 40), max_size=200), budget=st.integers(1, 300), same_length=st.booleans())
def test_budget_bounds_cut_as_the_greedy_rule(lengths, budget, same_length):
    items = sorted(lengths, reverse=True)
    bounds = budget_bounds(numpy.array(items, dtype="int64"), budget, same_length=same_length)
    assert [items[a:b] for a, b in bounds] == _greedy_batches(items, budget, same_length)
    assert list(batches_by_budget(items, budget, lambda n: n, same_length=same_length)) == \
        _greedy_batches(items, budget, same_length)


def test_a_cpu_pipeline_on_a_machine_with_a_gpu_makes_no_cuda_call_for_its_worker(monkeypatch):
    """thinc sees a GPU (`has_cupy_gpu`) whether or not the pipeline uses it, and the
    worker's wrapper asked CuPy for the current device and stream: in a process forked
    after CUDA started (`nlp.pipe(n_process=...)`), that call fails. Torch, on which the
    pipeline works, is on the host here: no device state to carry."""
    import sys
    import types

    import thinc.util
    import torch

    def no_cuda(*args, **kwargs):
        raise RuntimeError("cudaErrorInitializationError: initialization error")

    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=no_cuda, get_current_stream=no_cuda))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(thinc.util, "has_cupy_gpu", True)
    assert not torch.cuda.is_initialized()
    assert on_caller_devices(lambda item: item + 1)(41) == 42
    assert list(prefetched(lambda item: item * 2, [1, 2, 3])) == [2, 4, 6]
