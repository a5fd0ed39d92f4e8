"""spacy-transformers' alignment (`doc._.trf_data.align`), read against the doc.

`ctxembed_from_trf` pools the upstream transformer's wordpiece states
through spacy-transformers' own alignment, which is per token index, as the
transformer saw the doc, and maps each token's characters, and the one
character after it (its trailing space), to the pieces whose offsets cover
them. Two things follow, both read here from the pieces' text
(`trf_data.wordpieces.strings`):

- a retokenization between the transformer and the pooler that keeps the
  number of tokens shifts the alignment onto other tokens
  (`check_not_retokenized`);
- a piece whose offsets take in the space before it (SentencePiece's "▁"
  pieces under a Metaspace pre-tokenizer, byte-level BPE without offset
  trimming) is aligned to the word before that space too
  (`space_only_pairs`).
"""
import unicodedata
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy
from spacy.attrs import ORTH, SPACY
from spacy.tokens import Doc

from .alignment import PieceAlignment

#: The marks a piece starts a word with: byte-level BPE's "Ġ", SentencePiece's "▁".
WORD_START = ("\u0120", "\u2581")
#: The marks that are not the text's own: the word starts, WordPiece's "##" (a
#: word goes on), and "</w>" at the end (a word ends, in CLIP's BPE).
_PIECE_PREFIXES = ("##", *WORD_START)
_PIECE_SUFFIX = "</w>"
_ASCII_NON_ALNUM = {code: None for code in range(128) if not chr(code).isalnum()}


class AlignedPieces(NamedTuple):
    """Each piece aligned to a token: its index in the flattened spans
    (`piece`, spans of `span_length` pieces), its first and last token, and
    its string (`strings`: None where they cannot be read, not being the
    layout spacy-transformers writes)."""

    piece: numpy.ndarray
    first: numpy.ndarray
    last: numpy.ndarray
    strings: Optional[List[str]]
    span_length: int

    @classmethod
    def of(cls, alignment: PieceAlignment, strings: Sequence[Sequence[str]], span_length: int) -> "AlignedPieces":
        first, last = alignment.token_range()
        piece = numpy.flatnonzero(last >= 0)  # (none where no token has a piece: whitespace, dropped characters)
        readable = all(len(span) >= span_length for span in strings)
        texts = ([strings[span][column] for span, column in (divmod(i, span_length) for i in piece.tolist())]
                 if readable else None)
        return cls(piece, first[piece], last[piece], texts, span_length)


def check_not_retokenized(component: str, doc: Doc, pieces: AlignedPieces,
                          piece_texts: Dict[str, Optional[str]]) -> None:
    """Refuse a doc whose tokens are no longer those the transformer aligned.

    A retokenization between the transformer and the pooler that changes the
    number of tokens is caught by the count; one that keeps it (a merge and a
    split together) would shift vectors between tokens. Caught here by the
    text: a piece lies on the characters of the tokens it is aligned to, so
    its text is in theirs (all normalized as `_comparable`), starting in the
    first of them (or right at its end: a piece that takes in the space
    before it) and ending in the last. Only pieces whose text can be read
    back are checked (`_piece_text`): a shift between tokens of the same
    letters and digits, or across punctuation only, cannot be seen.
    `piece_texts`: `_piece_text` of the strings seen so far (one batch's)."""
    if not pieces.strings:
        return
    words = doc.vocab.strings  # (doc.text, token.text: a Token object each)
    texts = [_comparable(words[orth]) for orth in doc.to_array(ORTH).tolist()]
    for string, first, last in zip(pieces.strings, pieces.first.tolist(), pieces.last.tolist()):
        piece = piece_texts[string] if string in piece_texts else piece_texts.setdefault(string, _piece_text(string))
        if piece is None or (piece in texts[first] if first == last else _placed(piece, texts[first:last + 1])):
            continue
        raise ValueError(
            f"[{component}] doc._.trf_data aligns the wordpiece {string!r} with token {first} "
            f"({doc[first].text!r}){f' to {last} ({doc[last].text!r})' if last != first else ''}, whose text does "
            "not hold it: the doc was retokenized after the transformer ran (a merge and a split that keep the "
            f"number of tokens), so its output belongs to other tokens; run {component} before any component "
            "that retokenizes. (With a slow tokenizer, use_fast = false, spacy-transformers aligns by the pieces' "
            "text, which can misplace a piece next to an unknown one: use a fast tokenizer.)"
        )


def space_only_pairs(doc: Doc, alignment: PieceAlignment, pieces: AlignedPieces) -> numpy.ndarray:
    """Boolean mask over the alignment's (token, piece) pairs: True where the
    token's share of the piece is only the space after it.

    A piece whose offsets take in the space before it ("▁York" over " York")
    is aligned to the word before the space as well, which would pool the
    next word's first piece into it (with mean, last or max pooling). Such a
    piece starts with a word-start mark and is aligned to a token followed
    by a space and to a later one, or is a lone mark ("▁" before a character
    it does not join); and it is not the token's first piece in its span: a
    piece with the mark holds none of the characters of a token followed by
    a space, its text starting after the space, except where SentencePiece
    put the mark at a span's start, with the first character's offsets ("▁"
    alone, or "▁New▁York" without its pre-tokenizer's split). A lone mark
    aligned to that token only is the space after it where it is the token's
    last piece in its span; before another of its pieces, it is a character
    of the token that the normalizer made a space (SentencePiece's Nmt maps
    zero-width joiners and non-joiners, direction marks and the BOM to
    spaces: "non\u200djoiner" is "▁non", "▁", "join", ...), and the token's own. A
    token of characters the tokenizer drops (a zero-width space, a BOM, a
    control character: `own_lengths` 0) followed by a space has no piece of
    its own there: its first piece in the span is the space after it (the
    next word's first piece, or a lone mark that a later token's piece
    follows), not its own; a lone mark of it at a span's end is."""
    n_pairs = len(alignment.token_index)
    if not pieces.strings:
        return numpy.zeros(n_pairs, dtype=bool)
    spaced = doc.to_array(SPACY).astype(bool)
    marked = numpy.fromiter((string.startswith(WORD_START) for string in pieces.strings), bool, len(pieces.strings))
    lone = numpy.fromiter((string in WORD_START for string in pieces.strings), bool, len(pieces.strings))
    candidates = marked & spaced[pieces.first] & ((pieces.last > pieces.first) | lone)
    if not candidates.any():
        return numpy.zeros(n_pairs, dtype=bool)
    n = alignment.n_pieces
    pairs = alignment.token_index * n + alignment.piece_index
    # Each token's first and last piece in each span it is in (pairs sorted by token, then piece).
    runs = alignment.token_index * (n // pieces.span_length + 1) + alignment.piece_index // pieces.span_length
    run_starts = numpy.concatenate(([True], runs[1:] != runs[:-1]))
    firsts = pairs[run_starts]
    lasts = pairs[numpy.concatenate((run_starts[1:], [True]))]
    dropped = pieces.first[candidates] * n + pieces.piece[candidates]
    # A lone mark of one token with more of its pieces after it: a character of its own made a space.
    inside = (lone & (pieces.last == pieces.first))[candidates] & ~numpy.isin(dropped, lasts)
    # A token of characters the tokenizer drops (`own_lengths` 0: a zero-width space, a BOM, a
    # control character) followed by a space has no piece of its own there: its first piece in its
    # span is the space after it, in the next word's first piece or alone before a character it
    # does not join (the piece after it a later token's). (A lone mark at a span's end is its own.)
    at_first = numpy.isin(dropped, firsts)
    if at_first.any():
        which = numpy.flatnonzero(at_first)
        token, piece = pieces.first[candidates][which], pieces.piece[candidates][which]
        after = numpy.minimum(piece + 1, n - 1)
        next_first, next_last = alignment.token_range()
        later = (piece + 1 < n) & ((piece + 1) % pieces.span_length > 0) & (next_last[after] >= 0)
        spaces = (pieces.last[candidates][which] > token) | (later & (next_first[after] > token))
        at_first[which[spaces & (own_lengths(doc, token) == 0)]] = False
    return numpy.isin(pairs, dropped[~at_first & ~inside])


def text_lengths(doc: Doc, alignment: PieceAlignment, pieces: AlignedPieces) -> Optional[numpy.ndarray]:
    """For each (token, piece) pair of `alignment`, how many of the token's
    characters the piece holds, as its text says (the marks left out: "##",
    "</w>", every "Ġ" and "▁"); None where the strings cannot be read.

    A token's pieces in one span hold fewer than in another where a cut at the
    model's length took its last ones (`trf_pooler._cut_at_length`). Counting
    the pieces instead would misread a span's first token: byte-level BPE
    splits a word without its space otherwise ("against" four pieces, "Ġagainst"
    three), and SentencePiece opens a span with a lone "▁" before a character
    it does not join. A piece the token shares with other tokens in
    `alignment` ("don" of "do" and "n't"; "cannot" of "can" and "not") counts
    without the text of theirs it starts or ends with: where the token opens a
    span, such a piece is its own ("n"). That text is matched as written and
    as NFKC writes it, one character for one, lowercased, accents dropped;
    where it cannot be matched (byte-level BPE pieces of other scripts,
    "[UNK]"), or matches further than the piece reaches into it (a letter
    repeated across the join), the count is off. (Counted in the text as the
    tokenizer writes it: an "[UNK]" is five, a byte-level BPE piece of "’"
    three, in every span alike.)"""
    if pieces.strings is None:
        return None
    texts = [_bare(string) for string in pieces.strings]
    at = numpy.searchsorted(pieces.piece, alignment.piece_index)  # (each pair's piece among `pieces`)
    lengths = numpy.asarray([len(text) for text in texts], dtype="int64")[at]
    tokens = alignment.token_index
    first, last = alignment.token_range()  # (as `alignment` has them: without pairs of a space only)
    shared = numpy.flatnonzero((first[alignment.piece_index] < tokens) | (last[alignment.piece_index] > tokens))
    if not len(shared):
        return lengths
    words, orths = doc.vocab.strings, doc.to_array(ORTH).tolist()

    def joined(start: int, end: int) -> Tuple[str, str]:
        """The tokens' text, spaces left out, as written and as NFKC writes it (a
        piece of "ﬁ" is "fi" where the tokenizer normalizes so: SentencePiece's)."""
        text = "".join("".join(words[orth].split()) for orth in orths[start:end])
        return _matchable(text), _matchable(unicodedata.normalize("NFKC", text))

    for pair in shared.tolist():  # (few: pieces across tokens)
        token, piece = int(tokens[pair]), int(alignment.piece_index[pair])
        text = _matchable(texts[at[pair]])
        before = max(_overlap(form, text) for form in joined(int(first[piece]), token))
        after = max(_overlap(text, form) for form in joined(token + 1, int(last[piece]) + 1))
        lengths[pair] -= before + after
    return numpy.maximum(lengths, 0)


def own_lengths(doc: Doc, tokens: numpy.ndarray) -> numpy.ndarray:
    """How many characters each of `tokens` has at least, as `text_lengths`
    counts those its pieces hold: spaces left out, composed (a decomposed
    accent, which an uncased tokenizer drops, is not a character more than
    the piece's), and without the characters a tokenizer may drop from a
    whole word: control and format characters (a soft hyphen, a zero-width
    non-joiner: BERT's tokenizers drop them) and combining marks (uncased
    ones strip them), counted as NFKC writes it where that is shorter."""
    words, orths = doc.vocab.strings, doc.to_array(ORTH)

    def kept(text: str) -> int:
        return sum(1 for char in text if not unicodedata.category(char).startswith(("C", "Mn")))

    def length(word: str) -> int:
        bare = "".join(word.split())
        return min(kept(unicodedata.normalize(form, bare)) for form in ("NFC", "NFKC"))

    return numpy.fromiter((length(words[orth]) for orth in orths[tokens].tolist()), dtype="int64",
                          count=len(tokens))


def _bare(piece: str) -> str:
    """A piece's text without the marks of where it sits in a word."""
    if piece.startswith("##"):
        piece = piece[2:]
    if piece.endswith(_PIECE_SUFFIX):
        piece = piece[: -len(_PIECE_SUFFIX)]
    return piece.replace(WORD_START[0], "").replace(WORD_START[1], "")


def _matchable(text: str) -> str:
    """Text with each character lowercased and without its accents, one for
    one (as uncased tokenizers write it; the length kept, as it counts)."""
    return "".join(unicodedata.normalize("NFD", char)[0].lower()[:1] or char for char in text)


def _overlap(left: str, right: str) -> int:
    """How many characters the end of `left` and the start of `right` share."""
    return next((k for k in range(min(len(left), len(right)), 0, -1) if left.endswith(right[:k])), 0)


def _placed(piece: str, token_texts: List[str]) -> bool:
    """Whether `piece` lies in the tokens' texts joined, starting in the first
    (or right at its end) and ending in the last. (Two tokens or more: one is
    `piece in text`, checked by the caller.)"""
    joined = "".join(token_texts)
    first_end, last_start = len(token_texts[0]), len(joined) - len(token_texts[-1])
    at = joined.find(piece)
    while 0 <= at <= first_end:
        if at + len(piece) > last_start:
            return True
        at = joined.find(piece, at + 1)
    return False


def _piece_text(piece: str) -> Optional[str]:
    """The piece's characters as the text had them, where they can be read
    back (ASCII letters and digits: not byte-level BPE's bytes of other
    scripts, "[UNK]", or punctuation, which some tokenizers rewrite),
    lowercased; else None."""
    for prefix in _PIECE_PREFIXES:
        if piece.startswith(prefix):
            piece = piece[len(prefix):]
            break
    if piece.endswith(_PIECE_SUFFIX):
        piece = piece[: -len(_PIECE_SUFFIX)]
    return piece.lower() if piece.isascii() and piece.isalnum() else None


def _comparable(text: str) -> str:
    """A token's text as tokenizers normalize it: compatibility forms
    decomposed (ligatures, full-width and superscript digits, "№", "™",
    mathematical letters), then lowercased (after: "𝐍" is "N" only once
    decomposed), accents and everything but letters and digits dropped.
    `str.lower`, not `casefold`, as the tokenizers' lowercasing ("ß" stays)."""
    if text.isascii():  # (most tokens)
        lowered = text.lower()
        return lowered if lowered.isalnum() else lowered.translate(_ASCII_NON_ALNUM)
    lowered = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).lower())
    return "".join(char for char in lowered if char.isalnum())
