"""Wordpieces of spaCy docs through a cache of their space-separated chunks.

With a WordPiece tokenizer behind BERT's normalizer and pre-tokenizer (BERT,
MiniLM, DistilBERT, ELECTRA, ...), a text's wordpieces are those of its
space-separated chunks laid end to end: the normalizer works character by
character, and the pre-tokenizer splits at every space, so nothing on one
side of a space changes the pieces on the other (`splits_at_spaces` says
which tokenizers are of this kind). spaCy marks where a space follows a token
(`SPACY`), so a doc's chunks are runs of tokens read off one array, and a
chunk is known by its tokens' `ORTH` hashes, spaCy's own identity of a string.

The pieces of a chunk seen before are gathered from the cache, with their
character spans moved to where the chunk starts; only new chunks go through
the Rust tokenizer. On UD EWT the tokenizer took 1.7 times the CPU time of
spaCy's tokenizer (`docs/benchmarks.md`), while most chunks of a corpus are
words seen before. A hit is checked token by token against the ORTH hashes
stored with the entry, so a clash of the 64-bit chunk keys tokenizes the
chunk afresh instead of taking another chunk's pieces.

A chunk's entry is found through a hash table of its key (open addressing,
linear probing, at most half full): a few vectorised gathers per lookup
instead of a binary search (1.5 ms for UD EWT dev's 21,000 chunks).

The cache is shared by the threads that use one runner: a lookup reads one
immutable snapshot of it, and a writer (under a lock) publishes a new one.
Entries are only ever added, into the unused tail of buffers that earlier
snapshots do not read; the hash table is copied for each addition (it is
written all over), never changed under a snapshot that reads it.
"""
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple

import numpy
from spacy.tokens import Doc

from ..alignment import TokenTable
from ..batching import concat_ranges
from ..forksafe import ProcessLocal

#: Chunks of more tokens than this are tokenized every time, not cached (a
#: URL or a run of symbols that spaCy cuts up without spaces): their keys are
#: folded one token position at a time.
MAX_CHUNK_TOKENS = 16
#: At most this many chunks are cached, and at most PIECES_PER_ENTRY pieces
#: and TOKENS_PER_ENTRY spaCy tokens an entry on average: 13.6 MB at most,
#: buffers included (16 bytes an entry and 12 a hash table slot, of which
#: there are at most twice as many while max_entries is a power of two, as
#: this is; 12 a piece, 8 a token). New chunks past
#: that are tokenized every time. The first chunks a corpus shows are kept:
#: they hold its frequent words.
MAX_ENTRIES = 1 << 17
PIECES_PER_ENTRY = 4
TOKENS_PER_ENTRY = 2

#: Normalizers and pre-tokenizers that act character by character or split
#: at every space (see `splits_at_spaces`).
_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFD", "NFKD", "StripAccents"}
_PRE_TOKENIZERS = {"BertPreTokenizer", "WhitespaceSplit", "Whitespace", "Punctuation", "Digits"}
_SPACE_SPLITTERS = {"BertPreTokenizer", "WhitespaceSplit", "Whitespace"}

#: Pieces laid end to end: ids (n,), character spans (n, 2), and the count per text or doc; int64.
Flat = Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]
#: The tokenizer: texts -> their pieces (`Wordpieces.flat`).
Encode = Callable[[List[str]], Flat]


def splits_at_spaces(backend: Any) -> bool:
    """Whether the Rust tokenizer `backend` gives a text the pieces of its
    space-separated chunks, each tokenized alone, with spans moved to the chunk.

    True for WordPiece behind BERT-style normalizers (character by character:
    control characters dropped, whitespace made a space, CJK characters set
    apart, lowercasing, accents stripped by decomposition) and pre-tokenizers
    of which one splits at every space (`Punctuation` or `Digits` alone
    would leave "a b" one word); and added tokens that neither strip the
    spaces next to them (`lstrip`, `rstrip`) nor contain one, as written or,
    where they are matched in the normalized text, normalized (NFKD makes
    "´" a space and a combining accent). Not for byte-level BPE or
    SentencePiece, whose first piece after a space differs from the piece
    that starts a text ("Ġword" against "word"), nor for composing normalizers
    (NFC, NFKC), nor for anything else, which is left to the whole-text path.
    """
    try:
        saved = json.loads(backend.to_str())
    except Exception:  # a tokenizer that cannot describe itself is not one to reason about
        return False
    model = saved.get("model") or {}
    normalizer = saved.get("normalizer")
    pre_tokenizer = saved.get("pre_tokenizer")
    return (
        model.get("type") == "WordPiece"
        and (normalizer is None or _all_of(normalizer, _NORMALIZERS, "normalizers"))
        and pre_tokenizer is not None and _all_of(pre_tokenizer, _PRE_TOKENIZERS, "pretokenizers")
        and _any_of(pre_tokenizer, _SPACE_SPLITTERS, "pretokenizers")
        and all(_added_token_stays_in_a_chunk(backend, t) for t in saved.get("added_tokens") or [])
    )


def _all_of(part: Dict[str, Any], allowed: Set[str], members: str) -> bool:
    if part.get("type") == "Sequence":
        return bool(part.get(members)) and all(_all_of(p, allowed, members) for p in part[members])
    return part.get("type") in allowed


def _any_of(part: Dict[str, Any], wanted: Set[str], members: str) -> bool:
    if part.get("type") == "Sequence":
        return any(_any_of(p, wanted, members) for p in part.get(members) or [])
    return part.get("type") in wanted


def _added_token_stays_in_a_chunk(backend: Any, token: Dict[str, Any]) -> bool:
    content = token.get("content", " ")
    if token.get("lstrip") or token.get("rstrip") or any(c.isspace() for c in content):
        return False
    if token.get("normalized") and backend.normalizer is not None:
        return not any(c.isspace() for c in backend.normalizer.normalize_str(content))
    return True


def _mix(keys: numpy.ndarray) -> numpy.ndarray:
    """splitmix64's finalizer over uint64 keys (wrapping arithmetic)."""
    keys = (keys ^ (keys >> numpy.uint64(30))) * numpy.uint64(0xBF58476D1CE4E5B9)
    keys = (keys ^ (keys >> numpy.uint64(27))) * numpy.uint64(0x94D049BB133111EB)
    return keys ^ (keys >> numpy.uint64(31))


def chunk_keys(orths: numpy.ndarray, starts: numpy.ndarray, lengths: numpy.ndarray) -> numpy.ndarray:
    """A 64-bit key per chunk of tokens [start, start + length): the token's ORTH
    for a one-token chunk, the ORTHs folded through `_mix` for a longer one.
    Chunks longer than MAX_CHUNK_TOKENS get a key too, but are never cached."""
    keys = orths[starts].copy()
    longer = numpy.flatnonzero(lengths > 1)
    folded = keys[longer]
    for j in range(1, min(int(lengths.max(initial=0)), MAX_CHUNK_TOKENS)):
        still = lengths[longer] > j
        folded[still] = _mix(folded[still]) ^ orths[starts[longer[still]] + j]
    keys[longer] = _mix(folded ^ lengths[longer].astype("uint64"))
    return keys


def _capacity(n: int) -> int:
    """The hash table's size for n keys: a power of two, at least 2n (and 16)."""
    return 1 << max(4, (2 * n - 1).bit_length())


def _table_find(table_keys: numpy.ndarray, table_slots: numpy.ndarray, keys: numpy.ndarray) -> numpy.ndarray:
    """The entry (int64) stored under each key in the hash table, -1 where none is.

    Linear probing, all keys at once: each round looks at one slot per key
    still unresolved, from the slot its low bits give (keys are 64-bit
    hashes), and stops a key at its own or at an empty slot (entry -1)."""
    found = numpy.full(len(keys), -1, dtype="int64")
    if not len(table_keys):
        return found
    mask = len(table_keys) - 1
    todo = numpy.arange(len(keys))
    at = (keys & numpy.uint64(mask)).astype(numpy.intp)
    while len(todo):
        slot = table_slots[at]
        taken = slot >= 0
        hit = taken & (table_keys[at] == keys[todo])
        found[todo[hit]] = slot[hit]
        more = taken & ~hit
        todo, at = todo[more], (at[more] + 1) & mask
    return found


def _table_insert(table_keys: numpy.ndarray, table_slots: numpy.ndarray, keys: numpy.ndarray,
                  slots: numpy.ndarray) -> None:
    """Put each key, with its entry, into the first empty slot from its own, in
    place. The keys are distinct and none is in the table yet; it has room."""
    if not len(keys):
        return
    mask = len(table_keys) - 1
    todo = numpy.arange(len(keys))
    at = (keys & numpy.uint64(mask)).astype(numpy.intp)
    while len(todo):
        empty = numpy.flatnonzero(table_slots[at] < 0)
        # Keys that reach one empty slot together: the first of them takes it.
        _, first = numpy.unique(at[empty], return_index=True)
        placed = empty[first]
        table_keys[at[placed]] = keys[todo[placed]]
        table_slots[at[placed]] = slots[todo[placed]]
        # The rest find their slot taken (before, or just now): on to the next.
        rest = numpy.ones(len(todo), dtype=bool)
        rest[placed] = False
        todo, at = todo[rest], (at[rest] + 1) & mask


@dataclass(frozen=True)
class _Snapshot:
    """The cache as one lookup sees it: the first `n` entries of the buffers."""

    table_keys: numpy.ndarray  # the hash table (`_table_find`): uint64 keys,
    table_slots: numpy.ndarray  # and the entry of each, -1 in empty slots
    n: int
    orth_start: numpy.ndarray  # per entry, its tokens' ORTHs in `orths`
    orth_len: numpy.ndarray
    piece_start: numpy.ndarray  # per entry, its pieces in `ids` and `spans`
    piece_len: numpy.ndarray
    orths: numpy.ndarray
    ids: numpy.ndarray
    spans: numpy.ndarray  # (n_pieces, 2), relative to the chunk's first character
    n_orths: int
    n_pieces: int

    @classmethod
    def empty(cls) -> "_Snapshot":
        # One zero-length array may stand for several buffers: `_grown` never
        # writes into a buffer too short for what it adds, it makes a new one.
        # int32 where values are small (entry and piece counts, ids, spans within a chunk): half the memory
        i4 = numpy.zeros(0, dtype="int32")
        return cls(numpy.zeros(0, dtype="uint64"), i4, 0, i4, i4, i4, i4, numpy.zeros(0, dtype="uint64"), i4,
                   numpy.zeros((0, 2), dtype="int32"), 0, 0)

    def find(self, keys: numpy.ndarray, orths: numpy.ndarray, starts: numpy.ndarray,
             lengths: numpy.ndarray) -> numpy.ndarray:
        """The entry of each chunk, -1 where there is none (or only another chunk's
        under the same key)."""
        slots = numpy.full(len(keys), -1, dtype="int64")
        if self.n == 0 or len(keys) == 0:
            return slots
        entries = _table_find(self.table_keys, self.table_slots, keys)
        found = numpy.flatnonzero((entries >= 0) & (lengths <= MAX_CHUNK_TOKENS))
        candidate = entries[found]
        same_length = self.orth_len[candidate] == lengths[found]
        found, candidate = found[same_length], candidate[same_length]
        counts = lengths[found]
        stored = self.orths[concat_ranges(self.orth_start[candidate], counts)]
        given = orths[concat_ranges(starts[found], counts)]
        chunk = numpy.repeat(numpy.arange(len(found)), counts)
        clashes = numpy.bincount(chunk[stored != given], minlength=len(found)) > 0
        slots[found[~clashes]] = candidate[~clashes]
        return slots


class PiecesCrossSpaces(Exception):
    """A piece of the joined chunks covered a space: the tokenizer does not
    split at spaces, whatever its description said (see `_encode_joined`)."""


#: Distinct new chunks are tokenized in texts of about this many characters
#: (`_encode_joined`): few enough texts that each costs little, enough that
#: the Rust tokenizer spreads them over the cores.
CHARS_PER_TEXT = 4096


def _encode_joined(strings: List[str], encode: Encode) -> Flat:
    """`encode(strings)`, laid end to end, with each string's count: but
    tokenized as texts of about CHARS_PER_TEXT characters, strings joined by spaces.

    A tokenizer that `splits_at_spaces` gives the joined text the pieces of
    each string in turn, and the Rust tokenizer's cost per text (an Encoding
    object with its own arrays) is paid a few times instead of once per chunk:
    on UD EWT dev, cold, 6,875 chunks one by one took 63-77 ms against 38-43 ms
    for the whole texts. Each piece goes back to the string its span starts in.
    (One text for all would leave a core idle: Chinese docs, one chunk each,
    took 1.3 times as long as their whole texts.)
    """
    lengths = numpy.fromiter(map(len, strings), dtype="int64", count=len(strings)) + 1
    starts = numpy.cumsum(lengths) - lengths  # each string's first character, all joined by spaces
    total = int(lengths.sum())
    # The first string of each text: the first to start at or past each multiple of the budget.
    firsts = numpy.unique(numpy.searchsorted(starts, numpy.arange(0, total, CHARS_PER_TEXT)))
    firsts = firsts[firsts < len(strings)]  # (past the last start, inside the last string: no new text)
    bounds = numpy.append(firsts, len(strings)).tolist()
    texts = [" ".join(strings[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    ids, spans, counts = encode(texts)
    shift = numpy.repeat(starts[firsts], counts)
    string = numpy.searchsorted(starts, spans[:, 0] + shift, side="right") - 1
    spans = spans + (shift - starts[string])[:, None]
    # A piece that is not inside its string (one that covers the space after
    # it, or lies on it) means the tokenizer does not split at spaces after
    # all: nothing is cached, and the caller tokenizes whole texts instead.
    if not numpy.all((spans[:, 0] < lengths[string] - 1) & (spans[:, 1] < lengths[string])):
        raise PiecesCrossSpaces
    return ids, spans, numpy.bincount(string, minlength=len(strings))


def _empty_cache(max_entries: int) -> "PieceCache":
    return PieceCache(max_entries=max_entries)


def _grown(buffer: numpy.ndarray, used: int, new: numpy.ndarray, limit: int) -> numpy.ndarray:
    """`buffer` with `new` written at [used, used + len(new)): in place where it
    fits (no snapshot reads past its own `used`), else into a copy twice the
    size, but never longer than `limit` (the caller keeps `used + len(new)` within it)."""
    need = used + len(new)
    if need > len(buffer):
        bigger = numpy.empty((min(max(need, 2 * len(buffer)), limit),) + buffer.shape[1:], dtype=buffer.dtype)
        bigger[:used] = buffer[:used]
        buffer = bigger
    buffer[used:need] = new
    return buffer


def _grown_table(snapshot: _Snapshot, n: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """A copy of the snapshot's hash table with room for n keys: as it is where
    it has room, else its keys put into one of `_capacity(n)` slots."""
    if len(snapshot.table_keys) >= 2 * n:
        return snapshot.table_keys.copy(), snapshot.table_slots.copy()
    size = _capacity(n)
    table_keys, table_slots = numpy.zeros(size, dtype="uint64"), numpy.full(size, -1, dtype="int32")
    taken = numpy.flatnonzero(snapshot.table_slots >= 0)
    _table_insert(table_keys, table_slots, snapshot.table_keys[taken], snapshot.table_slots[taken])
    return table_keys, table_slots


def chunk_strings(docs: Sequence[Doc], tokens: TokenTable, chunk_doc: numpy.ndarray, first: numpy.ndarray,
                  lengths: numpy.ndarray, char_start: numpy.ndarray, char_end: numpy.ndarray) -> List[str]:
    """The text of each chunk: tokens [first, first + length) of the run, in
    doc `chunk_doc`, characters [char_start, char_end) of that doc.

    A doc's text costs a Python call per token (spaCy makes a Token for
    each), so it is read only for docs with at least half their tokens in
    these chunks (as on a first pass); elsewhere a chunk's text is its
    tokens' strings joined, as no space follows a token inside a chunk.
    Both ways give the same string, as the characters come from the tokens'
    lengths and spaces (`TokenTable`), never from a possibly stale IDX. On
    UD EWT dev after UD EWT train, 3,160 new chunks in 296 docs, that took
    1.7 ms against 5.9 ms through the docs' texts.
    """
    in_chunks = numpy.bincount(chunk_doc, weights=lengths, minlength=len(docs))
    texts = {d: docs[d].text for d in numpy.flatnonzero(2 * in_chunks >= tokens.counts).tolist()
             if in_chunks[d]}
    orths = tokens.orths
    strings = []
    for d, start, end, at, n in zip(chunk_doc.tolist(), char_start.tolist(), char_end.tolist(), first.tolist(),
                                   lengths.tolist()):
        text = texts.get(d)
        if text is not None:
            strings.append(text[start:end])
        else:
            store = docs[d].vocab.strings
            strings.append("".join([store[orth] for orth in orths[at : at + n].tolist()]))
    return strings


def _tokenize(strings: List[str], encode: Encode) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray,
                                                          numpy.ndarray, numpy.ndarray]:
    """The pieces of new chunks' strings, each distinct string once: (ids,
    spans, start, length) over the distinct strings, and which string each
    chunk is."""
    distinct = {s: i for i, s in enumerate(dict.fromkeys(strings))}
    which = numpy.fromiter(map(distinct.__getitem__, strings), dtype="int64", count=len(strings))
    ids, spans, fresh_len = _encode_joined(list(distinct), encode)
    return ids, spans, numpy.cumsum(fresh_len) - fresh_len, fresh_len, which


class PieceCache:
    """`cache(docs, tokens, encode)` -> the docs' piece ids (n,), character spans
    (n, 2) and counts per doc, int64: what `encode([doc.text for doc in docs])`
    gives, for a tokenizer that `splits_at_spaces`.

    encode: the tokenizer (`Encode`), called with the chunks not in the cache.
    max_entries: how many chunks to keep at most (and PIECES_PER_ENTRY and
        TOKENS_PER_ENTRY times as many pieces and spaCy tokens).
    """

    def __init__(self, *, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._snapshot = _Snapshot.empty()
        #: One lock per process: a fork copies a lock that another thread may
        #: hold, and that thread is not in the child.
        self._lock: ProcessLocal[threading.Lock] = ProcessLocal(threading.Lock)

    def __len__(self) -> int:
        return self._snapshot.n

    def __reduce__(self):
        # A copy (pickled, or deep-copied with its runner) starts empty: the
        # entries are derived data, and a lock cannot be copied.
        return _empty_cache, (self.max_entries,)

    def __call__(self, docs: Sequence[Doc], tokens: TokenTable, encode: Encode) -> Flat:
        """The docs' pieces laid end to end: ids (n,), spans (n, 2) within each
        doc, and the count per doc, as `encode([doc.text for doc in docs])`.

        tokens: the docs' tokens (`TokenTable.of_docs(docs)`).
        """
        orths = tokens.orths
        # A chunk ends at a token followed by a space, and at each doc's last token.
        ends = tokens.space_after.copy()
        doc_ends = numpy.cumsum(tokens.counts)
        ends[doc_ends[tokens.counts > 0] - 1] = True
        chunk_end = numpy.flatnonzero(ends) + 1
        chunk_start = numpy.zeros_like(chunk_end)
        chunk_start[1:] = chunk_end[:-1]
        lengths = chunk_end - chunk_start
        chunk_doc = numpy.searchsorted(doc_ends, chunk_start, side="right")
        char_start = tokens.starts[chunk_start]

        keys = chunk_keys(orths, chunk_start, lengths)
        snapshot = self._snapshot
        slots = snapshot.find(keys, orths, chunk_start, lengths)
        missing = numpy.flatnonzero(slots < 0)
        counts = numpy.zeros(len(keys), dtype="int64")
        hit = numpy.flatnonzero(slots >= 0)
        counts[hit] = snapshot.piece_len[slots[hit]]
        if len(missing):
            strings = chunk_strings(docs, tokens, chunk_doc[missing], chunk_start[missing], lengths[missing],
                                    char_start[missing], tokens.ends[chunk_end[missing] - 1])
            fresh_ids, fresh_spans, fresh_start, fresh_len, which = _tokenize(strings, encode)
            counts[missing] = fresh_len[which]
            self._add(keys[missing], orths, chunk_start[missing], lengths[missing], which,
                      fresh_ids, fresh_spans, fresh_start, fresh_len)

        at = numpy.cumsum(counts) - counts
        total = int(counts.sum())
        ids = numpy.empty(total, dtype="int64")
        spans = numpy.empty((total, 2), dtype="int64")
        into = concat_ranges(at[hit], counts[hit])
        source = concat_ranges(snapshot.piece_start[slots[hit]], counts[hit])
        ids[into] = snapshot.ids[source]
        spans[into] = snapshot.spans[source]
        if len(missing):
            into = concat_ranges(at[missing], counts[missing])
            source = concat_ranges(fresh_start[which], counts[missing])
            ids[into] = fresh_ids[source]
            spans[into] = fresh_spans[source]
        spans += numpy.repeat(char_start, counts)[:, None]
        doc_pieces = numpy.bincount(chunk_doc, weights=counts, minlength=len(docs)).astype("int64")
        return ids, spans, doc_pieces

    def _add(self, keys: numpy.ndarray, orths: numpy.ndarray, starts: numpy.ndarray, lengths: numpy.ndarray,
             which: numpy.ndarray, ids: numpy.ndarray, spans: numpy.ndarray, fresh_start: numpy.ndarray,
             fresh_len: numpy.ndarray) -> None:
        """Cache the missing chunks that may be: short enough, one per key, and
        only keys no entry holds yet (another thread may have added them, or
        another chunk holds the key)."""
        cacheable = numpy.flatnonzero(lengths <= MAX_CHUNK_TOKENS)
        _, first = numpy.unique(keys[cacheable], return_index=True)
        chosen = cacheable[numpy.sort(first)]  # in the order the chunks came
        max_pieces, max_orths = PIECES_PER_ENTRY * self.max_entries, TOKENS_PER_ENTRY * self.max_entries
        with self._lock.get():
            old = self._snapshot
            chosen = chosen[_table_find(old.table_keys, old.table_slots, keys[chosen]) < 0]
            # As many as fit, in order: entries, pieces and tokens each within their limit.
            fits = ((numpy.arange(1, len(chosen) + 1) <= self.max_entries - old.n)
                    & (numpy.cumsum(fresh_len[which[chosen]]) <= max_pieces - old.n_pieces)
                    & (numpy.cumsum(lengths[chosen]) <= max_orths - old.n_orths))
            chosen = chosen[: int(numpy.argmin(fits)) if not fits.all() else len(chosen)]
            if len(chosen) == 0:
                return
            n_new = len(chosen)
            counts, strings = lengths[chosen], which[chosen]
            piece_counts = fresh_len[strings]
            orth_start = old.n_orths + numpy.cumsum(counts) - counts
            piece_start = old.n_pieces + numpy.cumsum(piece_counts) - piece_counts
            source = concat_ranges(fresh_start[strings], piece_counts)
            table_keys, table_slots = _grown_table(old, old.n + n_new)
            _table_insert(table_keys, table_slots, keys[chosen], numpy.arange(old.n, old.n + n_new, dtype="int32"))
            self._snapshot = _Snapshot(
                table_keys=table_keys,
                table_slots=table_slots,
                n=old.n + n_new,
                orth_start=_grown(old.orth_start, old.n, orth_start, self.max_entries),
                orth_len=_grown(old.orth_len, old.n, counts, self.max_entries),
                piece_start=_grown(old.piece_start, old.n, piece_start, self.max_entries),
                piece_len=_grown(old.piece_len, old.n, piece_counts, self.max_entries),
                orths=_grown(old.orths, old.n_orths, orths[concat_ranges(starts[chosen], counts)], max_orths),
                ids=_grown(old.ids, old.n_pieces, ids[source], max_pieces),
                spans=_grown(old.spans, old.n_pieces, spans[source], max_pieces),
                n_orths=old.n_orths + int(counts.sum()),
                n_pieces=old.n_pieces + int(piece_counts.sum()),
            )
