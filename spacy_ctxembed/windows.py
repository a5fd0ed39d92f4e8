"""Overlapping windows over a long wordpiece sequence.

Windows of `window` pieces start every `stride` pieces; the last one is
moved back to end on the last piece, so no window is short. Each piece is
*owned* by exactly one window: the one where it has the most context on both
sides. Between two overlapping windows that is the middle of the overlap, and
the cut is moved to the nearest token boundary so that all pieces of a token
come from the same window.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy


@dataclass(frozen=True)
class Window:
    """Pieces [start, end) go through the model; pieces [own_start, own_end) are kept."""

    start: int
    end: int
    own_start: int
    own_end: int


def plan_windows(
    n_pieces: int, window: int, stride: int, may_cut: Optional[numpy.ndarray] = None
) -> List[Window]:
    """Split `n_pieces` into overlapping windows and assign each piece an owner.

    may_cut: optional boolean mask; may_cut[p] says a cut just before piece p
        keeps tokens whole. Cuts are moved to such a piece when one lies inside
        the overlap.
    """
    _check(window, stride)
    if n_pieces == 0:
        return []
    if n_pieces <= window:
        return [Window(0, n_pieces, 0, n_pieces)]
    starts = list(range(0, n_pieces - window, stride)) + [n_pieces - window]
    cuts = [0]
    for left, right in zip(starts, starts[1:]):
        overlap_end = left + window  # the overlap is [right, overlap_end)
        # Piece p has min(p - s, s + window - 1 - p) context in the window at s:
        # the left window wins up to the middle of the overlap.
        cut = (left + window - 1 + right) // 2 + 1
        cut = _nearest_allowed_cut(cut, right, overlap_end, may_cut)
        # With a small stride, overlaps chain: never let a cut move backwards.
        cuts.append(max(cut, cuts[-1]))
    cuts.append(n_pieces)
    return [
        Window(start, start + window, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)
    ]


def plan_run_windows(
    piece_counts: numpy.ndarray, window: int, stride: int, may_cut: Callable[[int], numpy.ndarray]
) -> numpy.ndarray:
    """`plan_windows` for every doc of a run: rows (doc, start, end, own_start,
    own_end), int64, in doc order and each doc's windows in order.

    may_cut(d): doc d's mask for `plan_windows`, asked for docs longer than a
    window only (their windows are planned one doc at a time; a doc of one
    window has the window [0, n) and owns it all).
    """
    _check(window, stride)
    counts = numpy.asarray(piece_counts, dtype="int64")
    docs = numpy.flatnonzero((counts > 0) & (counts <= window))
    zeros = numpy.zeros_like(docs)
    parts = [numpy.stack([docs, zeros, counts[docs], zeros, counts[docs]], axis=1)]
    for d in numpy.flatnonzero(counts > window).tolist():
        planned = plan_windows(int(counts[d]), window, stride, may_cut(d))
        parts.append(numpy.array([(d, w.start, w.end, w.own_start, w.own_end) for w in planned], dtype="int64"))
    rows = numpy.concatenate(parts)
    return rows[numpy.lexsort((rows[:, 1], rows[:, 0]))]


def _check(window: int, stride: int) -> None:
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got window={window}, stride={stride}")


def _nearest_allowed_cut(cut: int, low: int, high: int, may_cut: Optional[numpy.ndarray]) -> int:
    """The allowed cut in [low, high] closest to `cut`, or `cut` if none is allowed."""
    if may_cut is None or may_cut[cut]:
        return cut
    candidates = numpy.flatnonzero(may_cut[low : high + 1]) + low
    if len(candidates) == 0:
        return cut  # a token longer than the overlap: cut inside it
    return int(candidates[numpy.argmin(numpy.abs(candidates - cut))])
