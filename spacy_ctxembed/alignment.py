"""Alignment of wordpieces to spaCy tokens by character offsets.

A wordpiece belongs to every token whose character span it overlaps, so a
piece that straddles two tokens (``"U.S"`` against ``"U."`` ``"S"``) feeds both.
Special tokens and pieces with an empty span belong to none. Everything here
is index arithmetic over whole arrays: there is no per-token Python loop.
"""
from dataclasses import dataclass
from typing import Tuple

import numpy
from numpy.typing import ArrayLike
from spacy.tokens import Doc

#: A 1-d int64 index array on the host.
IndexArray = numpy.ndarray


@dataclass(frozen=True)
class PieceAlignment:
    """Which pieces feed which tokens, as (token, piece) pairs.

    The pairs are sorted by token, then by piece, so the pieces of one token
    form a contiguous run: pooling can find a token's first and last piece
    from run boundaries.
    """

    token_index: IndexArray
    piece_index: IndexArray
    n_tokens: int
    n_pieces: int

    @classmethod
    def from_lengths(cls, piece_index: ArrayLike, lengths: ArrayLike, n_pieces: int) -> "PieceAlignment":
        """Build from a ragged token -> pieces table (spacy-transformers' `align`)."""
        counts = numpy.asarray(lengths, dtype="int64")
        pieces = numpy.asarray(piece_index, dtype="int64")
        tokens = numpy.repeat(numpy.arange(len(counts), dtype="int64"), counts)
        order = numpy.lexsort((pieces, tokens))
        return cls(tokens[order], pieces[order], len(counts), n_pieces)

    def covered_tokens(self) -> numpy.ndarray:
        """Boolean mask over tokens: True where at least one piece feeds the token."""
        mask = numpy.zeros(self.n_tokens, dtype=bool)
        mask[self.token_index] = True
        return mask

    def assigned_pieces(self) -> numpy.ndarray:
        """Boolean mask over pieces: True where the piece feeds at least one token."""
        mask = numpy.zeros(self.n_pieces, dtype=bool)
        mask[self.piece_index] = True
        return mask

    def piece_may_start_segment(self) -> numpy.ndarray:
        """Boolean mask over pieces: True where no token spans pieces p-1 and p.

        Cutting the piece sequence just before such a piece keeps every token's
        pieces on one side of the cut.
        """
        first = numpy.full(self.n_pieces, numpy.iinfo("int64").max, dtype="int64")
        last = numpy.full(self.n_pieces, -1, dtype="int64")
        numpy.minimum.at(first, self.piece_index, self.token_index)
        numpy.maximum.at(last, self.piece_index, self.token_index)
        ok = numpy.ones(self.n_pieces, dtype=bool)
        # A cut before p is safe unless the last token of p-1 reaches into p.
        ok[1:] = last[:-1] < first[1:]
        return ok


def token_char_spans(doc: Doc) -> Tuple[IndexArray, IndexArray]:
    """(starts, ends) character offsets of the doc's tokens, as int64 arrays."""
    starts = numpy.fromiter((t.idx for t in doc), dtype="int64", count=len(doc))
    lengths = numpy.fromiter((len(t) for t in doc), dtype="int64", count=len(doc))
    return starts, starts + lengths


def align_pieces(
    piece_starts: ArrayLike,
    piece_ends: ArrayLike,
    token_starts: ArrayLike,
    token_ends: ArrayLike,
) -> PieceAlignment:
    """Align pieces to tokens by character overlap.

    piece_starts, piece_ends: character span of each piece, [start, end).
    token_starts, token_ends: character span of each token, [start, end);
        tokens are sorted and do not overlap, as in a spaCy Doc.
    """
    p_start = numpy.asarray(piece_starts, dtype="int64")
    p_end = numpy.asarray(piece_ends, dtype="int64")
    t_start = numpy.asarray(token_starts, dtype="int64")
    t_end = numpy.asarray(token_ends, dtype="int64")
    n_pieces = len(p_start)
    # Overlap of [ps, pe) and [ts, te) means ts < pe and ps < te. Because the
    # tokens are sorted, the overlapped tokens form the run [lo, hi).
    lo = numpy.searchsorted(t_end, p_start, side="right")
    hi = numpy.searchsorted(t_start, p_end, side="left")
    counts = numpy.where(p_end > p_start, numpy.maximum(hi - lo, 0), 0)
    total = int(counts.sum())
    piece_index = numpy.repeat(numpy.arange(n_pieces, dtype="int64"), counts)
    run_start = numpy.repeat(numpy.cumsum(counts) - counts, counts)
    token_index = numpy.repeat(lo, counts) + (numpy.arange(total, dtype="int64") - run_start)
    order = numpy.lexsort((piece_index, token_index))
    return PieceAlignment(token_index[order], piece_index[order], len(t_start), n_pieces)
