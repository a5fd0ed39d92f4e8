"""Alignment of wordpieces to spaCy tokens by character offsets.

A wordpiece belongs to every token whose character span it overlaps, so a
piece that straddles two tokens (``"U.S"`` against ``"U."`` ``"S"``) feeds both.
Special tokens and pieces with an empty span belong to none, and whitespace
tokens take no piece (`align_run`). Everything here is index arithmetic over
whole arrays: there is no per-token Python loop.
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy
from numpy.typing import ArrayLike
from spacy.attrs import IDX, IS_SPACE, LENGTH, ORTH, SPACY
from spacy.tokens import Doc

from .batching import concat_ranges

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

    def kept(self, pairs: numpy.ndarray) -> "PieceAlignment":
        """The (token, piece) pairs where the boolean mask `pairs` is True; the same counts."""
        return PieceAlignment(self.token_index[pairs], self.piece_index[pairs], self.n_tokens, self.n_pieces)

    def covered_tokens(self) -> numpy.ndarray:
        """Boolean mask over tokens: True where at least one piece feeds the token."""
        mask = numpy.zeros(self.n_tokens, dtype=bool)
        mask[self.token_index] = True
        return mask

    def token_range(self) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Each piece's first and last token, as int64 arrays over pieces; for a
        piece that feeds no token, the int64 maximum and -1."""
        first = numpy.full(self.n_pieces, numpy.iinfo("int64").max, dtype="int64")
        last = numpy.full(self.n_pieces, -1, dtype="int64")
        numpy.minimum.at(first, self.piece_index, self.token_index)
        numpy.maximum.at(last, self.piece_index, self.token_index)
        return first, last

    def piece_may_start_segment(self) -> numpy.ndarray:
        """Boolean mask over pieces: True where no token has pieces on both sides
        of a cut just before piece p.

        Cutting the piece sequence there keeps every token's pieces on one side
        of the cut. Pieces that feed no token (a byte-level BPE's lone "Ġ"
        between two spaces, with an empty character span) may sit inside a
        token's run of pieces: comparing p-1 with p only would allow a cut next
        to them, so the tokens on each side are compared as a whole.
        """
        first, last = self.token_range()
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


def text_length(doc: Doc) -> int:
    """The length of the doc's text, read off its last token (`doc.text` is O(n))."""
    return 0 if len(doc) == 0 else doc[-1].idx + len(doc[-1].text_with_ws)


# The code points str.isspace() accepts: all lie below U+3001 (U+3000 is the last).
_WHITESPACE = numpy.array([c for c in range(0x3001) if chr(c).isspace()], dtype=numpy.uint32)


def _solid(text: str) -> numpy.ndarray:
    """Per character of `text`, whether it is not whitespace (`str.isspace`)."""
    return ~numpy.isin(numpy.frombuffer(text.encode("utf-32-le"), dtype="<u4"), _WHITESPACE)


def partly_uncovered(text: str, span_starts: ArrayLike, span_ends: ArrayLike, token_starts: ArrayLike,
                     token_ends: ArrayLike) -> numpy.ndarray:
    """Boolean mask over tokens [token_starts, token_ends): True where a
    character of the token other than whitespace lies under none of the
    spans [span_starts, span_ends) (which may reach past the text). A
    token's overlap with the spans says nothing of the rest of it: "New
    York yesterday", merged across a doc embedded up to "New", overlaps
    "New" alone. (Whitespace lies between spans: it is in no token's span.)
    Tokens may reach past the text too: spaCy's `Doc.from_array` with SPACY
    changes the text but not `token.idx` (an edit not followed: see the README)."""
    n_chars = len(text)
    starts = numpy.clip(numpy.asarray(span_starts, dtype=numpy.int64), 0, n_chars)
    ends = numpy.clip(numpy.asarray(span_ends, dtype=numpy.int64), 0, n_chars)
    depth = numpy.zeros(n_chars + 1, dtype=numpy.int64)  # spans open at each character
    numpy.add.at(depth, starts, 1)
    numpy.add.at(depth, ends, -1)
    bare = (numpy.cumsum(depth[:n_chars]) == 0) & _solid(text)
    before = numpy.concatenate(([0], numpy.cumsum(bare)))  # bare characters before each offset
    token_starts = numpy.clip(numpy.asarray(token_starts, dtype=numpy.int64), 0, n_chars)
    return before[numpy.clip(numpy.asarray(token_ends, dtype=numpy.int64), 0, n_chars)] > before[token_starts]


def blank_tokens(text: str, token_starts: ArrayLike, token_ends: ArrayLike) -> numpy.ndarray:
    """Boolean mask over tokens [token_starts, token_ends): True where a token
    of one or more characters, within the text, holds whitespace only (" "
    split off "New York": whitespace between stored tokens, no text to embed)."""
    n_chars = len(text)
    solid = numpy.concatenate(([0], numpy.cumsum(_solid(text))))  # non-whitespace before each offset
    token_starts = numpy.asarray(token_starts, dtype=numpy.int64)
    token_ends = numpy.asarray(token_ends, dtype=numpy.int64)
    inside = (token_starts < token_ends) & (token_starts >= 0) & (token_ends <= n_chars)
    return inside & (solid[numpy.clip(token_ends, 0, n_chars)] == solid[numpy.clip(token_starts, 0, n_chars)])


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
    piece_index = numpy.repeat(numpy.arange(n_pieces, dtype="int64"), counts)
    token_index = concat_ranges(lo, counts)
    order = numpy.lexsort((piece_index, token_index))
    return PieceAlignment(token_index[order], piece_index[order], len(t_start), n_pieces)


@dataclass(frozen=True)
class TokenTable:
    """The tokens of a run of docs laid end to end: what planning needs of
    them, read with one `to_array` call per doc (each call costs about as much
    as reading one attribute more, so one call does for the wordpiece cache,
    the alignment and the whitespace tokens).

    Character offsets are within each token's own doc.
    """

    orths: numpy.ndarray  # uint64, spaCy's string hashes
    space_after: numpy.ndarray  # bool: a space follows the token (`SPACY`)
    starts: numpy.ndarray  # int64
    ends: numpy.ndarray  # int64
    is_space: numpy.ndarray  # bool: whitespace tokens
    counts: numpy.ndarray  # int64, tokens per doc
    text_lengths: numpy.ndarray  # int64, characters per doc

    @classmethod
    def of_docs(cls, docs: Sequence[Doc]) -> "TokenTable":
        arrays = [doc.to_array(_TABLE_ATTRS).reshape(-1, len(_TABLE_ATTRS)) for doc in docs]
        counts = numpy.fromiter(map(len, arrays), dtype="int64", count=len(arrays))
        table = numpy.concatenate([*arrays, numpy.zeros((0, len(_TABLE_ATTRS)), dtype="uint64")])
        space_after = table[:, 1].astype(bool)
        lengths = table[:, 2].astype("int64")
        # Where each token starts in its doc's text, from the lengths and spaces
        # before it: `doc.text` is the tokens' texts and spaces laid end to end.
        # (Not IDX: `Doc.from_array` with SPACY leaves it as it was, and a
        # chunk's characters must be the text's.)
        taken = lengths + space_after
        before = numpy.cumsum(taken) - taken  # characters before each token in the run
        first = numpy.cumsum(counts) - counts  # each doc's first token (an empty doc's is never read)
        base = before[numpy.minimum(first, len(before) - 1)] if len(before) else numpy.zeros_like(counts)
        starts = before - numpy.repeat(base, counts)
        ends = starts + lengths
        text_lengths = numpy.bincount(numpy.repeat(numpy.arange(len(counts)), counts), weights=taken,
                                      minlength=len(counts)).astype("int64")
        return cls(table[:, 0], space_after, starts, ends, table[:, 3].astype(bool), counts, text_lengths)

    @property
    def offsets(self) -> numpy.ndarray:
        """Where each doc's tokens start in the table, and (last) their total."""
        return numpy.concatenate(([0], numpy.cumsum(self.counts)))


_TABLE_ATTRS = [ORTH, SPACY, LENGTH, IS_SPACE]


def align_run(piece_spans: numpy.ndarray, piece_counts: numpy.ndarray, tokens: TokenTable) -> PieceAlignment:
    """`align_pieces` for a run of docs at once, whitespace tokens left out:
    tokens and pieces are numbered across the run, in doc order.

    piece_spans: (n_pieces, 2), each piece's [start, end) within its doc, the
        docs' pieces laid end to end; piece_counts: pieces per doc.
    tokens: the docs' tokens.

    Whitespace tokens take no piece. A SentencePiece or byte-level BPE
    tokenizer gives the piece after a run of spaces an offset that covers the
    last space ("hello  world": "▁w" covers " w"), so the whitespace token " "
    would get a copy of the next word's first piece; with WordPiece, and in
    ELMo, whitespace tokens never have one.

    The docs are laid end to end on one character axis (each shifted past the
    previous one's text), so no piece can overlap another doc's token, and one
    `align_pieces` call aligns them all. Equal to aligning each doc alone.
    """
    piece_counts = numpy.asarray(piece_counts, dtype="int64")
    spans = numpy.asarray(piece_spans, dtype="int64").reshape(-1, 2)
    past = spans[:, 1] > numpy.repeat(tokens.text_lengths, piece_counts)
    if past.any():  # (pieces come from the text: the tokenizer's offsets are wrong, and nothing could be aligned)
        p = int(numpy.argmax(past))
        d = int(numpy.searchsorted(numpy.cumsum(piece_counts), p, side="right"))
        raise ValueError(f"the wordpiece tokenizer gave doc {d} of the batch ({int(tokens.text_lengths[d])} "
                         f"characters) a piece at characters {spans[p, 0]}-{spans[p, 1]}, past its text")
    shift = numpy.cumsum(tokens.text_lengths + 1) - (tokens.text_lengths + 1)
    spans = spans + numpy.repeat(shift, piece_counts)[:, None]
    token_shift = numpy.repeat(shift, tokens.counts)
    whole = align_pieces(spans[:, 0], spans[:, 1], tokens.starts + token_shift, tokens.ends + token_shift)
    keep = ~tokens.is_space[whole.token_index]
    return whole.kept(keep)


def doc_alignment(run: PieceAlignment, token_offsets: numpy.ndarray, piece_offsets: numpy.ndarray,
                  doc: int) -> PieceAlignment:
    """One doc's part of a run's alignment (`align_run`), numbered within the doc."""
    # Pairs are sorted by token: each doc's pairs are one contiguous run.
    low, high = numpy.searchsorted(run.token_index, token_offsets[doc : doc + 2])
    return PieceAlignment(
        run.token_index[low:high] - token_offsets[doc],
        run.piece_index[low:high] - piece_offsets[doc],
        int(token_offsets[doc + 1] - token_offsets[doc]),
        int(piece_offsets[doc + 1] - piece_offsets[doc]),
    )
