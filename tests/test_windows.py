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


def test_a_cut_may_move_to_the_end_of_the_overlap():
    # The only token boundary in the first overlap, [5, 10), is the piece just
    # past it (a cut before piece 10 leaves the first window whole): taken,
    # rather than a cut inside a token.
    may_cut = numpy.zeros(20, dtype=bool)
    may_cut[[0, 10]] = True
    windows = plan_windows(20, 10, 5, may_cut)
    assert [(w.own_start, w.own_end) for w in windows] == [(0, 10), (10, 10), (10, 20)]


@given(n=st.integers(2, 400), window=st.integers(1, 60), data=st.data())
def test_cuts_keep_tokens_whole_wherever_an_overlap_allows_it(n, window, data):
    """Where every overlap (its pieces and the piece just past it) holds a token
    boundary, every cut is at one, the one nearest the overlap's middle."""
    stride = data.draw(st.integers(1, window))
    may_cut = numpy.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    windows = plan_windows(n, window, stride, may_cut)
    pairs = list(zip(windows, windows[1:]))
    if not all(may_cut[right.start:left.start + window + 1].any() for left, right in pairs):
        return
    for _, right in pairs:
        assert may_cut[right.own_start]
    for left, right in pairs:
        if right.own_start == left.own_start:
            continue  # (overlaps that chain: a cut never moves back past the one before)
        middle = (left.start + window - 1 + right.start) // 2 + 1
        allowed = numpy.flatnonzero(may_cut[right.start:left.start + window + 1]) + right.start
        assert abs(right.own_start - middle) == numpy.abs(allowed - middle).min()


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


def _least_context(left, right, window, cut):
    """The least context (pieces on the nearer side, in its window) of a piece in
    the overlap of windows at `left` and `right`, cut before `cut`."""
    return min(min(p - start, start + window - 1 - p)
               for p in range(right, left + window) for start in [left if p < cut else right])


def test_each_cut_gives_the_overlap_the_most_context_its_allowed_cuts_can():
    """Against the rule, brute force: of the allowed cuts in an overlap (its
    pieces and the piece just past it), the one taken leaves the overlap's
    least-served piece as much context as any other would. (Where two allowed
    cuts lie equally far from the middle, they are not equally good: the cut
    before the middle gives one piece more context.)"""
    rng = numpy.random.default_rng(0)
    checked = 0
    for _ in range(3000):
        window = int(rng.integers(2, 24))
        stride = int(rng.integers(1, window + 1))
        n = int(rng.integers(window + 1, 4 * window))
        may_cut = rng.random(n) < rng.uniform(0.05, 0.6)
        windows = plan_windows(n, window, stride, may_cut)
        for k, (left, right) in enumerate(zip(windows, windows[1:])):
            low, high = right.start, left.start + window  # the overlap [low, high), a cut in [low, high]
            allowed = [c for c in range(low, high + 1) if c < n and may_cut[c]]
            chained = (k > 0 and windows[k - 1].end > low) or (k + 2 < len(windows) and windows[k + 2].start < high)
            if low == high or not allowed or chained:
                continue  # (no overlap, no allowed cut, or overlaps that chain: a cut there depends on its neighbours)
            least = [_least_context(left.start, right.start, window, cut) for cut in [right.own_start, *allowed]]
            assert least[0] == max(least[1:]), (n, window, stride, k)
            checked += 1
    assert checked > 500


def test_a_cut_between_two_allowed_cuts_equally_far_from_the_middle():
    # Windows [0, 10) and [5, 15): the middle cut is before piece 8; cuts are
    # allowed before 6 and 10 only. Before 6, pieces 6 and 7 go to the second
    # window (context 1 and 2); before 10, pieces 8 and 9 stay in the first (1 and 0).
    may_cut = numpy.zeros(15, dtype=bool)
    may_cut[[0, 6, 10]] = True
    windows = plan_windows(15, 10, 5, may_cut)
    assert [(w.own_start, w.own_end) for w in windows] == [(0, 6), (6, 15)]


def test_a_token_longer_than_every_overlap_is_cut_where_the_context_is_most():
    """Where no cut in an overlap keeps a token whole (one token of 1000
    pieces: a long run of symbols), the cut stays at the middle of the overlap,
    each piece owned by the window where it has the most context, as without a
    mask. The tests with a mask skipped overlaps that allow no cut, so cutting
    at the overlap's start instead passed: pieces at the left edge of a window
    then had no context on their left."""
    may_cut = numpy.zeros(1000, dtype=bool)
    may_cut[0] = True
    windows = plan_windows(1000, 200, 100, may_cut)
    for p in range(1000):
        owner = next(w for w in windows if w.own_start <= p < w.own_end)
        best = max(min(p - w.start, w.end - 1 - p) for w in windows if w.start <= p < w.end)
        assert min(p - owner.start, owner.end - 1 - p) == best, p
