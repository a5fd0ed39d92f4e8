"""Alignment of wordpieces to spaCy tokens by character offsets.

A wordpiece belongs to every token whose character span it overlaps, so a
piece that straddles two tokens (``"U.S"`` against ``"U."`` ``"S"``) feeds both.
Special tokens and pieces with an empty span belong to none, and whitespace
tokens take no piece (`align_docs`). Everything here is index arithmetic over
whole arrays: there is no per-token Python loop.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy
from numpy.typing import ArrayLike
from spacy.attrs import IDX, IS_SPACE, LENGTH
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
        """Boolean mask over pieces: True where no token has pieces on both sides
        of a cut just before piece p.

        Cutting the piece sequence there keeps every token's pieces on one side
        of the cut. Pieces that feed no token (a byte-level BPE's lone "Ġ"
        between two spaces, with an empty character span) may sit inside a
        token's run of pieces: comparing p-1 with p only would allow a cut next
        to them, so the tokens on each side are compared as a whole.
        """
        first = numpy.full(self.n_pieces, numpy.iinfo("int64").max, dtype="int64")
        last = numpy.full(self.n_pieces, -1, dtype="int64")
        numpy.minimum.at(first, self.piece_index, self.token_index)
        numpy.maximum.at(last, self.piece_index, self.token_index)
        ok = numpy.ones(self.n_pieces, dtype=bool)
        if self.n_pieces > 1:
            # Tokens come in piece order: a cut before p is safe where every token
            # before it is below every token from p on.
            last_before = numpy.maximum.accumulate(last)[:-1]
            first_after = numpy.minimum.accumulate(first[::-1])[::-1][1:]
            ok[1:] = last_before < first_after
        return ok


def token_char_spans(doc: Doc) -> Tuple[IndexArray, IndexArray]:
    """(starts, ends) character offsets of the doc's tokens, as int64 arrays."""
    # One pass in Cython: iterating Token objects costs 10x as much.
    spans = doc.to_array([IDX, LENGTH]).astype("int64", copy=False).reshape(-1, 2)
    return spans[:, 0], spans[:, 0] + spans[:, 1]


def space_tokens(doc: Doc) -> numpy.ndarray:
    """Boolean mask over the doc's tokens: True for whitespace tokens."""
    return doc.to_array([IS_SPACE]).reshape(-1).astype(bool, copy=False)


def text_length(doc: Doc) -> int:
    """The length of the doc's text, read off its last token (`doc.text` is O(n))."""
    return 0 if len(doc) == 0 else doc[-1].idx + len(doc[-1].text_with_ws)


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


def align_docs(
    piece_spans: Sequence[numpy.ndarray],
    token_spans: Sequence[Tuple[IndexArray, IndexArray]],
    spaces: Optional[Sequence[numpy.ndarray]] = None,
) -> List[PieceAlignment]:
    """`align_pieces` for many docs with one pass over all of them.

    piece_spans: per doc, an (n_pieces, 2) array of [start, end) character spans.
    token_spans: per doc, the (starts, ends) of its tokens (`token_char_spans`).
    spaces: per doc, a mask of its whitespace tokens (`space_tokens`), which
        take no piece. A SentencePiece or byte-level BPE tokenizer gives the
        piece after a run of spaces an offset that covers the last space
        ("hello  world": "▁w" covers " w"), so the whitespace token " " would
        get a copy of the next word's first piece; with WordPiece, and in
        ELMo, whitespace tokens never have one.

    The docs are laid end to end on one character axis (each shifted past the
    previous one's last character), so no piece can overlap another doc's
    token, and one `align_pieces` call aligns them all; the result is cut back
    into docs at the token boundaries. Equal to aligning each doc alone.
    """
    n_docs = len(piece_spans)
    piece_counts = numpy.fromiter((len(s) for s in piece_spans), dtype="int64", count=n_docs)
    token_counts = numpy.fromiter((len(s[0]) for s in token_spans), dtype="int64", count=n_docs)
    # Each doc's extent: past its last token and its last piece.
    extents = numpy.fromiter(
        (max(int(t[1][-1]) if len(t[1]) else 0, int(p[:, 1].max()) if len(p) else 0)
         for p, t in zip(piece_spans, token_spans)),
        dtype="int64", count=n_docs,
    )
    shift = numpy.concatenate(([0], numpy.cumsum(extents + 1)[:-1]))
    pieces = numpy.concatenate([*piece_spans, numpy.zeros((0, 2), dtype="int64")]).astype("int64", copy=False)
    pieces = pieces + numpy.repeat(shift, piece_counts)[:, None]
    token_shift = numpy.repeat(shift, token_counts)
    starts = numpy.concatenate([*(s[0] for s in token_spans), numpy.zeros(0, dtype="int64")]) + token_shift
    ends = numpy.concatenate([*(s[1] for s in token_spans), numpy.zeros(0, dtype="int64")]) + token_shift
    whole = align_pieces(pieces[:, 0], pieces[:, 1], starts, ends)
    if spaces is not None:
        keep = ~numpy.concatenate([*spaces, numpy.zeros(0, dtype=bool)])[whole.token_index]
        whole = PieceAlignment(whole.token_index[keep], whole.piece_index[keep], whole.n_tokens, whole.n_pieces)
    token_offsets = numpy.concatenate(([0], numpy.cumsum(token_counts)))
    piece_offsets = numpy.concatenate(([0], numpy.cumsum(piece_counts)))
    # Pairs are sorted by token: each doc's pairs are one contiguous run.
    cuts = numpy.searchsorted(whole.token_index, token_offsets)
    return [
        PieceAlignment(
            whole.token_index[cuts[d] : cuts[d + 1]] - token_offsets[d],
            whole.piece_index[cuts[d] : cuts[d + 1]] - piece_offsets[d],
            int(token_counts[d]),
            int(piece_counts[d]),
        )
        for d in range(n_docs)
    ]
