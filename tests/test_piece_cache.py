"""The chunk cache gives every doc the pieces and spans that the `transformers`
tokenizer gives the doc's whole text, cold and warm, whatever the doc.

Reference: `tokenizer([doc.text ...], add_special_tokens=False,
return_offsets_mapping=True)`, the tokenizer itself over whole texts. The
cache tokenizes space-separated chunks (joined into a few texts) and reuses
them across docs, so every test runs the same docs through one cache at
least twice, and mixes docs seen before with new ones.
"""
import random

import numpy
import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.tokens import Doc

from spacy_ctxembed.models import piece_cache
from spacy_ctxembed.models.piece_cache import PieceCache, splits_at_spaces
from spacy_ctxembed.models.wordpieces import Wordpieces

from .conftest import SHARED_DATA, run_in_threads

ODD_TEXTS = [
    "I ran to the park. I ran significance tests.",
    "",
    "   ",
    "Naïve café owners   didn't\tlike   \"unbelievably\" long-winded résumés!\n\nNew paragraph.",
    "[CLS] special [SEP] tokens [MASK] inside[PAD]the text [UNK]x [mask]",
    "Emoji 🙂🙃 and CJK 漢字かな漢 and a control char \x07 and combining e\u0301 and \u0301 alone.",
    # Characters that spaCy takes for spaces but BERT's normalizer drops
    # (\x1c-\x1f, \x0b, \x0c, U+0085), or keeps inside a word (U+200B), or
    # splits at without spaCy's help (NBSP, U+2028, U+3000).
    "a\x1cb c\x0bd e\x0cf g\x85h i\u200bj k\u00a0l m\u2028n o\u3000p q\x00r s\ufffdt",
    "ΣΊΣΥΦΟΣ ΟΔΟΣ and ǅemal and İstanbul and ß and ﬁne",
    "U.S. don't can't (parenthesised) \"quoted,\" 1,000.50 e-mail@example.com http://x.org/a?b=c",
    "x" * 150 + " " + "y" * 99 + " end",  # longer than WordPiece's 100 characters: [UNK]
    "a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u-v-w-x-y-z-a-b-c-d",  # one chunk of many spaCy tokens
    "word " * 300,
]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def nlp():
    return spacy.blank("en")


def _assert_as_transformers(tokenizer, docs, got):
    encoding = tokenizer([doc.text for doc in docs], add_special_tokens=False, return_offsets_mapping=True,
                         verbose=False)
    flat_ids, flat_spans, counts = got  # the docs' pieces laid end to end, and the count per doc
    assert len(counts) == len(docs) and counts.dtype == numpy.int64
    assert len(flat_ids) == len(flat_spans) == counts.sum()
    cuts = numpy.cumsum(counts)[:-1]
    ids, spans = numpy.split(flat_ids, cuts), numpy.split(flat_spans, cuts)
    for doc, got_ids, got_spans, expected_ids, expected_spans in zip(
            docs, ids, spans, encoding["input_ids"], encoding["offset_mapping"]):
        assert got_ids.dtype == got_spans.dtype == numpy.int64
        numpy.testing.assert_array_equal(got_ids, numpy.asarray(expected_ids, dtype="int64"), err_msg=repr(doc.text))
        numpy.testing.assert_array_equal(got_spans, numpy.asarray(expected_spans, dtype="int64").reshape(-1, 2),
                                         err_msg=repr(doc.text))


def _odd_docs(nlp):
    docs = [nlp.make_doc(text) for text in ODD_TEXTS]
    words = [
        (["New York", "is", "big"], [True, True, False]),  # a token with a space inside
        ([" x", "y ", "z"], [False, True, False]),  # tokens that start and end with spaces
        (["hello", "world"], [False, False]),  # no space between: one chunk, "helloworld"
        (["\n", "a", "\t", " ", "b"], [False, False, False, False, True]),
        (["do", "n't", "do", "n't"], [False, True, False, False]),
    ]
    docs += [Doc(nlp.vocab, words=w, spaces=s) for w, s in words]
    merged = nlp.make_doc("I moved to New York City last year. New York is big.")
    with merged.retokenize() as retokenizer:
        retokenizer.merge(merged[3:6])
        retokenizer.merge(merged[9:11])
    split = nlp.make_doc("I saw newyork yesterday")
    with split.retokenize() as retokenizer:
        retokenizer.split(split[2], ["new", "york"], heads=[(split[2], 1), split[1]])
    return docs + [merged, split]


def test_minilm_goes_through_the_cache(tokenizer):
    assert Wordpieces(tokenizer).chunks is not None


def test_odd_docs_cold_and_warm(tokenizer, nlp):
    docs = _odd_docs(nlp)
    pieces = Wordpieces(tokenizer)
    for order in range(3):  # cold, warm, then warm in another order with a doc seen in part
        batch = docs if order < 2 else random.Random(order).sample(docs, len(docs)) + [nlp.make_doc("park tests")]
        _assert_as_transformers(tokenizer, batch, pieces.of_docs(batch))
    assert len(pieces.chunks) > 0


@pytest.mark.parametrize("chars_per_text", [1, 7, 50])
def test_new_chunks_in_texts_of_any_size(tokenizer, nlp, monkeypatch, chars_per_text):
    """New chunks are tokenized joined into texts of about CHARS_PER_TEXT
    characters: one chunk a text, a few, and a text that a long chunk overruns."""
    monkeypatch.setattr(piece_cache, "CHARS_PER_TEXT", chars_per_text)
    docs = _odd_docs(nlp)
    pieces = Wordpieces(tokenizer)
    for _ in range(2):
        _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))


def test_no_docs_and_empty_docs(tokenizer, nlp):
    pieces = Wordpieces(tokenizer)
    assert [len(a) for a in pieces.of_docs([])] == [0, 0, 0]
    docs = [nlp.make_doc(""), nlp.make_doc("a b"), nlp.make_doc("")]
    _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))


_ALPHABET = st.sampled_from(
    list("aAbzé漢.'-, \n\t") + ["e\u0301", "\u0301", "\x1c", "\x0b", "\x85", "\x00", "\ufffd", "\u00a0",
                               "\u2028", "\u200b", "Σ", "[MASK]", "[UNK", "##", "🙂", "don't"])
_SHARED = {}


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(_ALPHABET, max_size=30).map("".join), min_size=1, max_size=6))
def test_any_text_through_one_cache(tokenizer, nlp, texts):
    # One cache across every example, so chunks from earlier examples are hits here.
    pieces = _SHARED.setdefault("pieces", Wordpieces(tokenizer))
    docs = [nlp.make_doc(text) for text in texts]
    _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))


def _corpus_texts():
    texts = []
    ud = SHARED_DATA / "ud_english_ewt" / "en_ewt-ud-dev.conllu"
    texts += [line[9:].rstrip("\n") for line in ud.open(encoding="utf8") if line.startswith("# text = ")]
    wnut = SHARED_DATA / "wnut17" / "emerging.dev.conll"
    sentence = []
    for line in wnut.open(encoding="utf8"):
        if line.strip():
            sentence.append(line.split("\t")[0])
        elif sentence:
            texts.append(" ".join(sentence))
            sentence = []
    wic = SHARED_DATA / "wic" / "train.data.txt"
    for line in wic.open(encoding="utf8"):
        texts += line.rstrip("\n").split("\t")[3:5]
    return texts


@pytest.mark.skipif(not (SHARED_DATA / "wic").is_dir(), reason="needs ../shared/data")
def test_corpora_in_batches_through_one_cache(tokenizer, nlp):
    """UD EWT dev, WNUT-17 dev and WiC train, in batches of 256 texts as `nlp.pipe`
    gives them, the first pass cold and then again warm."""
    texts = _corpus_texts()
    assert len(texts) > 10_000
    docs = list(nlp.tokenizer.pipe(texts))
    pieces = Wordpieces(tokenizer)
    for _ in range(2):
        for start in range(0, len(docs), 256):
            batch = docs[start : start + 256]
            _assert_as_transformers(tokenizer, batch, pieces.of_docs(batch))


def test_clashing_keys_and_a_full_cache_stay_exact(tokenizer, nlp, monkeypatch):
    """Every chunk under one key: each hit is checked against the stored ORTHs,
    so another chunk's pieces are never taken; and a cache that is full
    tokenizes new chunks every time."""
    docs = _odd_docs(nlp)
    monkeypatch.setattr(piece_cache, "chunk_keys", lambda orths, starts, lengths: numpy.zeros(len(starts), "uint64"))
    clashing = Wordpieces(tokenizer)
    for _ in range(2):
        _assert_as_transformers(tokenizer, docs, clashing.of_docs(docs))
    assert len(clashing.chunks) == 1
    monkeypatch.undo()
    small = Wordpieces(tokenizer)
    small.chunks = PieceCache(max_entries=5)
    for _ in range(2):
        _assert_as_transformers(tokenizer, docs, small.of_docs(docs))
    assert len(small.chunks) == 5


def _more_odd_docs(nlp):
    """Words that are spaCy symbols (their ORTH is a small id, not a hash), and
    a doc of another vocab."""
    words = (["ADJ", "PERSON", "IS_ALPHA", "x"], [False, True, True, False])
    return [Doc(nlp.vocab, words=words[0], spaces=words[1]),
            spacy.blank("en").make_doc("Another vocab's doc: seen, unseen; zyzzyva.")]


def test_chunk_strings_from_texts_and_from_token_strings(nlp):
    """Both ways to a chunk's text (the doc's text, or its tokens' strings
    joined) give what a chunk is: a run of tokens up to one followed by a space."""
    from dataclasses import replace

    from spacy_ctxembed.alignment import TokenTable

    docs = _odd_docs(nlp) + _more_odd_docs(nlp)
    chunks = []  # (doc, first token in the run, tokens, first character, end character), one token at a time
    at = 0
    for d, doc in enumerate(docs):
        start = 0
        for i, token in enumerate(doc):
            if token.whitespace_ or i == len(doc) - 1:
                chunks.append((d, at + start, i + 1 - start, doc[start].idx, token.idx + len(token)))
                start = i + 1
        at += len(doc)
    chunk_doc, first, lengths, char_start, char_end = (numpy.array(c, dtype="int64") for c in zip(*chunks))
    expected = [docs[d].text[s:e] for d, s, e in zip(chunk_doc, char_start, char_end)]
    tokens = TokenTable.of_docs(docs)
    for counts in (numpy.zeros_like(tokens.counts), numpy.full_like(tokens.counts, 10**9), tokens.counts):
        got = piece_cache.chunk_strings(docs, replace(tokens, counts=counts), chunk_doc, first, lengths,
                                        char_start, char_end)
        assert got == expected


def test_docs_seen_in_part_take_their_new_chunks_from_token_strings(tokenizer, nlp):
    """A doc mostly seen before has its new chunks joined from its tokens'
    strings (`chunk_strings`): the pieces stay the tokenizer's."""
    filler = " ".join(["the park and a word seen before"] * 12)
    pieces = Wordpieces(tokenizer)
    pieces.of_docs([nlp.make_doc(filler)])
    same_vocab, other_vocab = _more_odd_docs(nlp)
    docs = [Doc.from_docs([nlp.make_doc(filler), doc]) for doc in _odd_docs(nlp) + [same_vocab]]
    docs.append(Doc.from_docs([Doc(other_vocab.vocab, words=filler.split()), other_vocab]))
    for _ in range(2):
        _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))


def _stale_offsets(nlp):
    """Docs whose spaces were changed with `Doc.from_array`, which leaves the
    tokens' IDX as it was: it no longer says where they are in `doc.text`."""
    from spacy.attrs import SPACY

    docs = []
    for text, spaces in [("Hello world significance", [0, 1, 0]), ("a b c d", [1, 0, 0, 1])]:
        doc = nlp.make_doc(text)
        doc.from_array([SPACY], numpy.array([[s] for s in spaces], dtype="uint64"))
        assert [t.idx for t in doc] != [len(doc[:i].text_with_ws) for i in range(len(doc))]  # (stale, as claimed)
        docs.append(doc)
    return docs


def test_docs_with_stale_offsets_neither_go_wrong_nor_spoil_the_cache(tokenizer, nlp):
    """A chunk's characters are found from the tokens' lengths and spaces, not
    from IDX: such a doc gets its text's pieces, and a later doc sharing its
    words gets its own (the cache once kept the stale doc's cut)."""
    pieces = Wordpieces(tokenizer)
    stale = _stale_offsets(nlp)
    for _ in range(2):
        _assert_as_transformers(tokenizer, stale, pieces.of_docs(stale))
    later = [nlp.make_doc("a significance test"), nlp.make_doc("Helloworld a b")]
    _assert_as_transformers(tokenizer, later, pieces.of_docs(later))


def test_a_warm_pass_tokenizes_only_what_cannot_be_cached(tokenizer, nlp):
    """The second pass over the same docs sends the tokenizer nothing but the
    chunks of more than MAX_CHUNK_TOKENS spaCy tokens."""
    docs = _odd_docs(nlp)
    pieces = Wordpieces(tokenizer)
    pieces.of_docs(docs)
    sent = []
    flat = pieces.flat

    def counting(texts):
        sent.extend(texts)
        return flat(texts)

    pieces.flat = counting  # what `of_docs` hands the cache as its tokenizer
    _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))
    assert sent == ["a-b-c-d-e-f-g-h-i-j-k-l-m-n-o-p-q-r-s-t-u-v-w-x-y-z-a-b-c-d"]
    sent.clear()
    # Words seen in other docs are hits too: of these, only "park," is new.
    new = [nlp.make_doc("I ran to the park."), nlp.make_doc("the park, I ran to")]
    _assert_as_transformers(tokenizer, new, pieces.of_docs(new))
    assert sent == ["park,"]


def test_memory_stays_within_its_limits(tokenizer, nlp):
    """Entries, pieces and tokens each stop at their limit, buffers included:
    long hex strings have many pieces each."""
    import hashlib

    cache = PieceCache(max_entries=64)
    pieces = Wordpieces(tokenizer)
    pieces.chunks = cache
    words = [hashlib.sha1(str(i).encode()).hexdigest() + ("-x" * (i % 4)) for i in range(400)]
    docs = [nlp.make_doc(" ".join(words[i : i + 5])) for i in range(0, 400, 5)]
    for doc in docs:  # a few entries at a time: buffers grow by doubling, up to their limit
        _assert_as_transformers(tokenizer, [doc], pieces.of_docs([doc]))
    _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))
    snapshot = cache._snapshot
    n, n_pieces, n_orths = len(cache), snapshot.n_pieces, snapshot.n_orths
    assert 0 < n <= 64 and n_pieces <= piece_cache.PIECES_PER_ENTRY * 64
    assert n_orths <= piece_cache.TOKENS_PER_ENTRY * 64
    assert n_pieces > piece_cache.PIECES_PER_ENTRY * 64 - 40  # the pieces' limit is what stopped it
    # The buffers themselves, not only what is used of them.
    # The hash table: a power of two, at least twice the entries, at most twice the limit.
    size = len(snapshot.table_keys)
    assert size == len(snapshot.table_slots) and size & (size - 1) == 0 and 2 * n <= size <= 2 * 64
    assert (snapshot.table_slots >= 0).sum() == n
    assert max(len(snapshot.orth_start), len(snapshot.orth_len), len(snapshot.piece_start),
               len(snapshot.piece_len)) <= 64
    assert len(snapshot.ids) == len(snapshot.spans) <= piece_cache.PIECES_PER_ENTRY * 64
    assert len(snapshot.orths) <= piece_cache.TOKENS_PER_ENTRY * 64


def test_threads_share_one_cache(tokenizer, nlp):
    docs = _odd_docs(nlp) + [nlp.make_doc(f"thread text number {i}, unseen{i} words") for i in range(40)]
    pieces = Wordpieces(tokenizer)
    counter = iter(range(100))

    def work():
        k = next(counter)
        mine = random.Random(k).sample(docs, len(docs))
        return mine, [pieces.of_docs(mine[i : i + 7]) for i in range(0, len(mine), 7)]

    for mine, results in run_in_threads(8, work):
        for i, got in zip(range(0, len(mine), 7), results):
            _assert_as_transformers(tokenizer, mine[i : i + 7], got)


def _wordpiece_tokenizer(normalizer, pre_tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[UNK]", "[PAD]", "a", "b", "ab", "##b", "##a", ".", "Ġ", "Ġa", "Ġb"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def _chunk_by_chunk(tokenizer, text):
    """What a cache would give `text`: each space-separated chunk tokenized alone."""
    ids, spans, at = [], [], 0
    for chunk in text.split(" "):
        encoding = tokenizer([chunk], add_special_tokens=False, return_offsets_mapping=True)
        ids += encoding["input_ids"][0]
        spans += [(s + at, e + at) for s, e in encoding["offset_mapping"][0]]
        at += len(chunk) + 1
    return ids, spans


def test_tokenizers_whose_pieces_cross_a_space_take_the_whole_text(nlp):
    """Where chunks tokenized alone are not the text's pieces, the cache is not
    used, and the whole-text path gives the tokenizer's own pieces."""
    from tokenizers import normalizers, pre_tokenizers

    cases = {
        # "Ġb": the space before a word is part of its first piece.
        "byte_level": _wordpiece_tokenizer(None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)),
        # A pre-tokenizer that does not split at spaces: "a b" is one word.
        "no_split": _wordpiece_tokenizer(None, pre_tokenizers.Split("x", behavior="isolated")),
        # Spaces removed before the pre-tokenizer sees them: "ab ab  a" is "ababa".
        "spaces_removed": _wordpiece_tokenizer(normalizers.Replace(" ", ""), pre_tokenizers.WhitespaceSplit()),
    }
    texts = ["a b ab. b a", "ab ab  a"]
    docs = [nlp.make_doc(text) for text in texts]
    for name, tokenizer in cases.items():
        whole = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        assert any(_chunk_by_chunk(tokenizer, text) != (i, [tuple(o) for o in offsets])
                   for text, i, offsets in zip(texts, whole["input_ids"], whole["offset_mapping"])), name
        pieces = Wordpieces(tokenizer)
        assert pieces.chunks is None, name
        _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))
    # and where chunk by chunk is right, the cache serves
    tokenizer = _wordpiece_tokenizer(normalizers.Lowercase(), pre_tokenizers.WhitespaceSplit())
    assert Wordpieces(tokenizer).chunks is not None
    _assert_as_transformers(tokenizer, docs, Wordpieces(tokenizer).of_docs(docs))


def _minilm_backend(tokenizer, **parts):
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    for name, part in parts.items():
        setattr(copy, name, part)
    return copy


def test_which_tokenizers_split_at_spaces(tokenizer):
    from tokenizers import AddedToken, normalizers, pre_tokenizers

    def backend(**parts):
        return _minilm_backend(tokenizer, **parts)

    assert splits_at_spaces(backend())
    assert splits_at_spaces(backend(pre_tokenizer=pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.WhitespaceSplit()])))
    assert splits_at_spaces(backend(normalizer=normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])))
    assert not splits_at_spaces(backend(normalizer=normalizers.NFC()))  # composes across characters
    assert not splits_at_spaces(backend(normalizer=None, pre_tokenizer=None))
    assert not splits_at_spaces(backend(pre_tokenizer=pre_tokenizers.Metaspace()))
    # Pre-tokenizers that never split at a space: "a b" stays one word.
    assert not splits_at_spaces(backend(pre_tokenizer=pre_tokenizers.Punctuation()))
    assert not splits_at_spaces(backend(pre_tokenizer=pre_tokenizers.Digits()))
    assert not splits_at_spaces(backend(pre_tokenizer=pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.Digits()])))
    stripping = backend()
    stripping.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    assert not splits_at_spaces(stripping)
    spaced = backend()
    spaced.add_tokens([AddedToken("new york")])
    assert not splits_at_spaces(spaced)
    # Matched in the normalized text, where NFKD makes "´" a space and a combining accent.
    acute = backend(normalizer=normalizers.NFKD())
    acute.add_tokens([AddedToken("´", normalized=True)])
    assert not splits_at_spaces(acute)
    as_written = backend(normalizer=normalizers.NFKD())
    as_written.add_tokens([AddedToken("´", normalized=False)])
    assert splits_at_spaces(as_written)


def test_accepted_tokenizers_are_exact(tokenizer, nlp):
    """Each kind of tokenizer `splits_at_spaces` accepts, through the cache, cold
    and warm, against the tokenizer itself over whole texts."""
    from tokenizers import AddedToken, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bert = normalizers.BertNormalizer
    setups = {
        "cased, accents stripped": dict(normalizer=bert(lowercase=False, strip_accents=True)),
        "no CJK handling": dict(normalizer=bert(handle_chinese_chars=False, clean_text=False)),
        "NFKD, accents stripped, lowercase": dict(normalizer=normalizers.Sequence(
            [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])),
        "no normalizer": dict(normalizer=None),
        "punctuation, digits, whitespace": dict(pre_tokenizer=pre_tokenizers.Sequence(
            [pre_tokenizers.Punctuation("contiguous"), pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.Whitespace()])),
    }
    docs = _odd_docs(nlp) + [nlp.make_doc("a \u0301 a ´ a ¨ x ﬁ 2024-12-02 3.14")]
    for name, parts in setups.items():
        backend = _minilm_backend(tokenizer, **parts)
        backend.add_tokens([AddedToken("´", normalized=False)])
        assert splits_at_spaces(backend), name
        fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
        pieces = Wordpieces(fast)
        assert pieces.chunks is not None, name
        for _ in range(2):
            _assert_as_transformers(fast, docs, pieces.of_docs(docs))
        assert pieces.chunks is not None, name


def test_pieces_across_a_space_switch_the_cache_off(nlp, monkeypatch):
    """Should a tokenizer that `splits_at_spaces` accepts put a space inside a
    piece after all, the joined chunks show it before anything is cached: the
    call, and every later one, takes whole texts."""
    from tokenizers import pre_tokenizers

    from spacy_ctxembed.models import wordpieces

    monkeypatch.setattr(wordpieces, "splits_at_spaces", lambda backend: True)
    docs = [nlp.make_doc("a b ab. b a"), nlp.make_doc("a"), nlp.make_doc("b")]
    for pre_tokenizer in (pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False)):
        tokenizer = _wordpiece_tokenizer(None, pre_tokenizer)
        pieces = Wordpieces(tokenizer)
        assert pieces.chunks is not None
        _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))
        assert pieces.chunks is None
        _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))


def test_a_copy_starts_with_an_empty_cache(tokenizer, nlp):
    import copy
    import pickle

    pieces = Wordpieces(tokenizer)
    docs = _odd_docs(nlp)
    pieces.of_docs(docs)
    assert len(pieces.chunks) > 0
    for copied in (copy.deepcopy(pieces), pickle.loads(pickle.dumps(pieces))):
        assert len(copied.chunks) == 0 and copied.chunks.max_entries == pieces.chunks.max_entries
        _assert_as_transformers(tokenizer, docs, copied.of_docs(docs))


@settings(deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 15)), max_size=50), max_size=6),
       absent=st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 15)), max_size=20))
def test_hash_table_finds_each_snapshots_keys_and_no_others(batches, absent):
    """Keys added batch by batch (the table growing on the way), with low bits
    from 16 values only, so that they pile up in long probe runs: every
    snapshot, the earlier ones too, finds exactly the keys it was made with,
    against a dict."""
    from dataclasses import replace

    def key(high, low):
        return (high << 20) | low  # the table's slot comes from the low bits

    snapshot, reference, seen = piece_cache._Snapshot.empty(), {}, []
    for batch in batches:
        keys = [k for k in dict.fromkeys(key(*pair) for pair in batch) if k not in reference]
        n, keys = len(reference), numpy.array(keys, dtype="uint64")
        table_keys, table_slots = piece_cache._grown_table(snapshot, n + len(keys))
        piece_cache._table_insert(table_keys, table_slots, keys, numpy.arange(n, n + len(keys), dtype="int32"))
        seen.append((snapshot, dict(reference)))
        reference.update((k, n + i) for i, k in enumerate(keys.tolist()))
        snapshot = replace(snapshot, table_keys=table_keys, table_slots=table_slots, n=len(reference))
    seen.append((snapshot, reference))
    queries = numpy.array(list(reference) + [key(*pair) for pair in absent], dtype="uint64")
    for earlier, expected in seen:
        found = piece_cache._table_find(earlier.table_keys, earlier.table_slots, queries)
        assert found.tolist() == [expected.get(k, -1) for k in queries.tolist()]
        size = len(earlier.table_keys)
        assert size == 0 or (size & (size - 1) == 0 and size >= 2 * earlier.n)


def test_a_clashing_key_never_takes_a_longer_chunks_pieces(tokenizer, nlp, monkeypatch):
    """Every chunk under one key, and the one entry cached is a chunk of two
    tokens ("park."): a later chunk of its first token alone ("park") must not
    take its pieces."""
    monkeypatch.setattr(piece_cache, "chunk_keys", lambda orths, starts, lengths: numpy.zeros(len(starts), "uint64"))
    pieces = Wordpieces(tokenizer)
    first = [nlp.make_doc("park.")]
    _assert_as_transformers(tokenizer, first, pieces.of_docs(first))
    assert len(pieces.chunks) == 1
    later = [nlp.make_doc("park"), nlp.make_doc("park park.")]
    for _ in range(2):
        _assert_as_transformers(tokenizer, later, pieces.of_docs(later))


def test_a_piece_that_takes_in_the_space_after_its_chunk_switches_the_cache_off(nlp, monkeypatch):
    """A pre-tokenizer that keeps each space with the word before it ("a " "b"),
    and a vocabulary without "## ": WordPiece makes "a " one "[UNK]" over
    characters [0, 2), the space included, where "a" alone is the piece "a".
    Joined chunks show it: the cache is switched off, and whole texts give the
    tokenizer's own pieces."""
    from tokenizers import pre_tokenizers

    from spacy_ctxembed.models import wordpieces

    monkeypatch.setattr(wordpieces, "splits_at_spaces", lambda backend: True)
    tokenizer = _wordpiece_tokenizer(None, pre_tokenizers.Split(" ", behavior="merged_with_previous"))
    assert tokenizer(["a b"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][0][0] == (0, 2)
    docs = [nlp.make_doc("a b"), nlp.make_doc("a"), nlp.make_doc("b a")]
    pieces = Wordpieces(tokenizer)
    for _ in range(2):
        _assert_as_transformers(tokenizer, docs, pieces.of_docs(docs))
    assert pieces.chunks is None
