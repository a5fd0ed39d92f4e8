import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spacy_ctxembed.windows import plan_run_windows, plan_windows


@given(n=st.integers(0, 3000), window=st.integers(1, 300), data=st.data())
def test_every_piece_owned_once_inside_its_window(n, window, data):
    stride = data.draw(st.integers(1, window))
    may_cut = numpy.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    windows = plan_windows(n, window, stride, may_cut if n else None)
    owned = numpy.zeros(n, dtype=int)
    for w in windows:
        assert 0 <= w.start <= w.own_start <= w.own_end <= w.end <= n
        assert w.end - w.start == min(window, n)
        owned[w.own_start : w.own_end] += 1
    assert (owned == 1).all()


def test_owner_is_window_with_most_context():
    windows = plan_windows(1000, 200, 100)
    for p in range(1000):
        owner = next(w for w in windows if w.own_start <= p < w.own_end)
        best = max(min(p - w.start, w.end - 1 - p) for w in windows if w.start <= p < w.end)
        assert min(p - owner.start, owner.end - 1 - p) == best


def test_cuts_move_to_token_boundaries():
    may_cut = numpy.zeros(1000, dtype=bool)
    may_cut[::7] = True
    for w in plan_windows(1000, 200, 150, may_cut)[1:]:
        assert may_cut[w.own_start]


def test_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        plan_windows(10, 4, 5)


@given(counts=st.lists(st.integers(0, 60), max_size=12), window=st.integers(1, 20), data=st.data())
def test_run_windows_are_each_docs_windows_in_order(counts, window, data):
    stride = data.draw(st.integers(1, window))
    masks = {d: numpy.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
             for d, n in enumerate(counts)}
    asked = []

    def may_cut(d):
        asked.append(d)
        return masks[d]

    rows = plan_run_windows(numpy.array(counts, dtype="int64"), window, stride, may_cut)
    expected = [(d, w.start, w.end, w.own_start, w.own_end) for d, n in enumerate(counts)
                for w in plan_windows(n, window, stride, masks[d] if n > window else None)]
    assert rows.dtype == numpy.int64 and rows.shape == (len(expected), 5)
    assert [tuple(r) for r in rows.tolist()] == expected
    assert asked == [d for d, n in enumerate(counts) if n > window]  # (a mask costs an alignment cut)


def test_run_windows_check_their_settings():
    with pytest.raises(ValueError, match="stride"):
        plan_run_windows(numpy.array([3]), 4, 5, lambda d: None)
