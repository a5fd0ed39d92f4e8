from hypothesis import given
from hypothesis import strategies as st

from spacy_ctxembed.batching import batches_by_budget


@given(lengths=st.lists(st.integers(1, 300), max_size=200), budget=st.integers(1, 2000))
def test_batches_respect_budget_and_keep_order(lengths, budget):
    items = sorted(lengths, reverse=True)
    batches = list(batches_by_budget(items, budget, lambda n: n))
    assert [n for batch in batches for n in batch] == items
    for batch in batches:
        assert batch
        # padded cost: every row as long as the first; only a lone item may exceed the budget
        assert len(batch) * batch[0] <= budget or len(batch) == 1
