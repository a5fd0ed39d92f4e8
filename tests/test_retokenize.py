"""Vectors follow their tokens: retokenization, as_doc, from_docs, copy (all three factories).

The reference is the vectors from before the edit, looked up by character
offsets, with the rule written here in NumPy: an untouched token keeps its own
row exactly, a merged token gets the mean of its parts that have a vector, a
piece of a split gets the row of the token it came from.
"""
import pickle

import numpy
import pytest
import spacy
from spacy.attrs import SPACY
from spacy.tokens import Doc, DocBin

from spacy_ctxembed import restore_vectors
from spacy_ctxembed.outputs import MissingOutputs

from .conftest import ctx_config, each_factory_nlp

TEXT = "Apple Inc. is looking at buying U.K. startup  for $1 billion in New York City."


def _by_offsets(doc, name):
    """(start, end) -> (vector, layers) as they are now."""
    out = doc._.ctx_outputs[name]
    layers = out.get("layers")
    return {(t.idx, t.idx + len(t)): (out["vectors"][t.i].copy(), None if layers is None else layers[:, t.i].copy())
            for t in doc}


def _expected(before, start, end):
    """The rule: mean of the embedded tokens overlapping [start, end) that have a vector."""
    parts = [v for (s, e), v in before.items() if s < end and start < e and v[0].any()]
    if not parts:
        return numpy.zeros_like(next(iter(before.values()))[0]), None
    vectors = numpy.mean([p[0] for p in parts], axis=0)
    layers = None if parts[0][1] is None else numpy.mean([p[1] for p in parts], axis=0)
    return vectors, layers


def _check(doc, before, name, shift=0):
    out = doc._.ctx_outputs[name]
    assert out["vectors"].shape[0] == len(doc)
    for token in doc:
        start, end = token.idx + shift, token.idx + shift + len(token)
        vector, layers = _expected(before, start, end)
        if (start, end) in before:  # untouched: exactly its own row
            numpy.testing.assert_array_equal(out["vectors"][token.i], before[(start, end)][0])
        numpy.testing.assert_allclose(out["vectors"][token.i], vector, rtol=1e-6, atol=1e-7)
        if layers is not None:
            numpy.testing.assert_allclose(out["layers"][:, token.i], layers, rtol=1e-6, atol=1e-7)
        if doc.user_token_hooks:
            numpy.testing.assert_array_equal(token.vector, out["vectors"][token.i])
            assert token.has_vector == bool(vector.any())
    if doc.user_span_hooks and len(doc) > 3:
        covered = [out["vectors"][i] for i in range(1, 4) if out["vectors"][i].any()]
        numpy.testing.assert_allclose(doc[1:4].vector, numpy.mean(covered, axis=0), rtol=1e-6)
        u, v = doc[0].vector, doc[2].vector
        assert doc[0].similarity(doc[2]) == pytest.approx(float(u @ v / numpy.linalg.norm(u) / numpy.linalg.norm(v)))


@pytest.fixture(scope="module", params=["ctxembed_bert", "ctxembed_elmo", "ctxembed_from_trf"])
def nlp(request, tiny_bert_dir, tmp_path_factory):
    return each_factory_nlp(request.param, tiny_bert_dir, tmp_path_factory.mktemp("elmo"), store_layers=True)


def test_merge(nlp):
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])  # Apple Inc.
        retokenizer.merge(doc[-4:-1])  # New York City
    assert doc[1].text == "is"
    _check(doc, before, "emb")


def test_merge_where_spacy_shifts_the_tensor_in_place(nlp, monkeypatch):
    """On GPU spaCy's retokenizer shifts doc.tensor's rows in place (its cupy
    branch), where on the host it makes a new array: doc.tensor was the stored
    vectors, so a merge moved them under their tokens (off by up to 2.5). The
    branch is taken here on host arrays, as spaCy takes it for a cupy tensor."""
    import types

    from spacy.tokens import _retokenize

    device_like = types.SimpleNamespace(asarray=numpy.asarray)  # all the branch calls; `is numpy` is False
    monkeypatch.setattr(_retokenize, "get_array_module", lambda array: device_like)
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])  # Apple Inc.
        retokenizer.merge(doc[-4:-1])  # New York City
    _check(doc, before, "emb")
    source = nlp(TEXT)
    before = _by_offsets(source, "emb")
    part = source[2:9].as_doc()  # (its tensor is a view of the source's)
    with part.retokenize() as retokenizer:
        retokenizer.merge(part[0:2])
    _check(source, before, "emb")


def test_split(nlp):
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    token = next(t for t in doc if t.text == "startup")
    with doc.retokenize() as retokenizer:
        retokenizer.split(token, ["start", "up"], heads=[(token, 1), token.head])
    _check(doc, before, "emb")
    last = doc[-1]
    assert last.vector.shape == before[(last.idx, last.idx + 1)][0].shape  # never an IndexError


def test_merge_then_split(nlp):
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    dollar = next(t.i for t in doc if t.text == "$")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[dollar : dollar + 2])  # "$1"
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[dollar], ["$", "1"], heads=[(doc[dollar], 1), doc[dollar]])
    _check(doc, before, "emb")  # back to the embedded tokens: each its own row again


def test_merge_and_split_of_outputs_stored_without_their_words(nlp):
    """Outputs stored by earlier versions record no words ("orths"): their
    tokens all count as in place, and a merge and a split follow the rule as
    for current stores (`_expected`), rather than failing on the missing words."""
    from spacy_ctxembed.outputs import is_store_key

    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    for key in [k for k in doc.user_data if is_store_key(k)]:
        store = doc.user_data[key]
        outputs = {name: {k: v for k, v in out.items() if k != "orths"} for name, out in store["outputs"].items()}
        doc.user_data[key] = {**store, "outputs": outputs}
    token = next(t for t in doc if t.text == "startup")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])  # Apple Inc.
        retokenizer.split(token, ["start", "up"], heads=[(token, 1), token.head])
    _check(doc, before, "emb")


def test_merges_one_after_another_average_the_embedded_tokens(nlp):
    """"New York" merged, then "New York City": the mean of the three embedded
    rows, not of the merged row and City's (as the README says)."""
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[-4:-2])
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[-3:-1])
    assert doc[-2].text == "New York City"
    _check(doc, before, "emb")


def test_merge_entities_and_subtokens(nlp):
    # merge_entities / merge_subtokens (merge_noun_chunks: below) all go through doc.retokenize.
    from spacy.pipeline.functions import merge_entities, merge_subtokens

    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    city = TEXT.index("New York City")
    doc.ents = [doc.char_span(0, 10, label="ORG"), doc.char_span(city, city + 13, label="GPE")]
    merge_entities(doc)
    _check(doc, before, "emb")
    doc = nlp(TEXT)
    for token in doc:
        token.dep_ = "subtok" if token.text in ("New", "York") else "dep"
        token.head = doc[token.i + 1] if token.text in ("New", "York") else token
    merge_subtokens(doc)
    _check(doc, before, "emb")


def test_merge_noun_chunks(nlp):
    """Issue 14 names merge_noun_chunks: each chunk gets the mean of its tokens' rows."""
    from spacy.pipeline.functions import merge_noun_chunks

    doc = nlp(TEXT)  # a parse whose noun chunks are "Apple Inc.", "U.K. startup" and "New York City"
    arcs = {"Apple": ("Inc.", "compound"), "Inc.": ("looking", "nsubj"), "U.K.": ("startup", "compound"),
            "startup": ("buying", "dobj"), "New": ("City", "compound"), "York": ("City", "compound"),
            "City": ("in", "pobj"), "looking": ("looking", "ROOT")}
    index = {token.text: token.i for token in doc}
    for token in doc:
        head, dep = arcs.get(token.text, ("looking", "dep"))
        token.head, token.dep_ = doc[index[head]], dep
        token.pos_ = {"startup": "NOUN", "looking": "VERB"}.get(token.text, "PROPN" if token.text in arcs else "X")
    before = _by_offsets(doc, "emb")
    assert [chunk.text for chunk in doc.noun_chunks] == ["Apple Inc.", "U.K. startup", "New York City"]
    merge_noun_chunks(doc)
    assert len(doc) == len(before) - 4
    _check(doc, before, "emb")


def test_as_doc(nlp):
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    span = doc[3:9]
    for copy_user_data in (False, True):
        sub = span.as_doc(copy_user_data=copy_user_data)
        assert sub[0].vector.shape[0] > 0
        _check(sub, before, "emb", shift=span.start_char)


def test_a_plain_cut_is_placed_in_its_source_once_not_per_token(nlp, monkeypatch):
    """Each token's read of a plain `as_doc()` searched the source's text for the
    cut's text again: a loop over a long cut's tokens was quadratic (134 s for
    20,000 tokens). It is placed once, and again only when its tokens change."""
    from spacy_ctxembed.outputs import views

    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    span = doc[3:12]
    sub = span.as_doc()
    searches = []
    placements = views.source_placements
    monkeypatch.setattr(views, "source_placements", lambda *a, **k: searches.append(1) or placements(*a, **k))
    rows = [token.vector for token in sub]
    assert len(searches) == 1
    for token, row in zip(sub, rows):
        numpy.testing.assert_array_equal(row, before[(token.idx + span.start_char, token.idx + span.start_char +
                                                      len(token))][0])
    with sub.retokenize() as retokenizer:  # the cut's tokens change: placed again, read by the rule
        retokenizer.merge(sub[1:3])
    _check(sub, before, "emb", shift=span.start_char)
    assert len(searches) == 2


@pytest.mark.parametrize("copy_user_data", [False, True])
def test_a_cut_aligns_only_the_stored_tokens_on_its_characters(nlp, monkeypatch, copy_user_data):
    """A cut's store is its whole source's: aligning all of it for each cut made a
    loop over a long doc's sentences quadratic in our reads. Only the stored
    tokens that reach onto the cut's characters are aligned, and the rows are the rule's."""
    from spacy_ctxembed.outputs import placement

    doc = nlp(" ".join([TEXT, "The dog barked at the mailman twice.", "She ran significance tests on the data.",
                        "We sat on the river bank after lunch."]))
    before = _by_offsets(doc, "emb")
    span = doc[22:28]
    sub = span.as_doc(copy_user_data=copy_user_data)
    with sub.retokenize() as retokenizer:  # (a merge: the stored tokens are aligned, not taken as they are)
        retokenizer.merge(sub[1:3])
    aligned = []
    align = placement.align_pieces
    monkeypatch.setattr(placement, "align_pieces", lambda s, *a: aligned.append(len(s)) or align(s, *a))
    _check(sub, before, "emb", shift=span.start_char)
    assert aligned and max(aligned) <= len(span) < len(doc)


def test_a_cut_whose_edge_a_split_put_inside_a_token_keeps_its_row(nlp):
    """A cut (`as_doc`) after a split, its edge inside the stored token ("start|up",
    cut after "start" or from "up"): the stored token lay across the cut's edge
    and was left out, so "start" read as having no output (an error blaming
    from_docs), and a token merged from "up" and "for" read the mean of "for"
    alone, silently. Their rows are the rule's, as in the doc they were cut from."""
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    token = next(t for t in doc if t.text == "startup")
    with doc.retokenize() as retokenizer:
        retokenizer.split(token, ["start", "up"], heads=[(token, 1), token.head])
    start = next(t.i for t in doc if t.text == "start")
    merged = doc.copy()
    with merged.retokenize() as retokenizer:
        retokenizer.merge(merged[start + 1 : start + 4])  # "up  for"
    for source, span in ((doc, doc[start - 2 : start + 1]), (doc, doc[start + 1 : start + 5]),
                         (merged, merged[start + 1 : start + 3])):
        for copy_user_data in (False, True):
            sub = span.as_doc(copy_user_data=copy_user_data)
            _check(sub, before, "emb", shift=span.start_char)
            numpy.testing.assert_array_equal(sub[0:2].vector, source[span.start : span.start + 2].vector)


def test_as_doc_of_a_repeated_text_is_a_clear_error(nlp):
    doc = nlp("the cat sat . the cat sat .")
    sub = doc[4:7].as_doc()
    with pytest.raises(MissingOutputs, match=r"^\[emb\] this doc was made with span\.as_doc\(\) from a doc in "
                                             r"which its text \('the cat sat '\) occurs more than once.*"
                                             r"copy_user_data=True"):
        _ = sub[0].vector
    with pytest.raises(MissingOutputs, match=r"^\[emb\] .*occurs more than once"):  # (spaCy's as_doc reads it)
        sub[0:1].as_doc()
    # The extensions say so too: None and {} read as "this doc has no outputs".
    for attribute in ("ctx_vectors", "ctx_layers", "ctx_outputs"):
        with pytest.raises(MissingOutputs, match=r"^\[emb\] .*occurs more than once"):
            getattr(sub._, attribute)
    numpy.testing.assert_array_equal(doc[4:7].as_doc(copy_user_data=True)[0].vector, doc[4].vector)


def test_a_plain_cut_of_a_cut_is_placed_in_the_first_source_and_the_error_says_so(nlp):
    """spaCy's as_doc passes the doc's hook dicts on, with or without
    copy_user_data: a plain cut of a cut is placed in the first source, where
    "the " occurs twice, though the cut it was made from has it once. The
    error said only that the text occurs more than once in the doc it was made
    from, which was not so (found by fuzzing doc operations). After
    restore_vectors the cut has hooks of its own, and its cuts are placed in it."""
    doc = nlp("the cat sat . the dog ran .")
    before = _by_offsets(doc, "emb")
    cut = doc[4:8].as_doc(copy_user_data=True)
    assert cut.text.count("the ") == 1
    with pytest.raises(MissingOutputs, match=r"occurs more than once.*a cut of a cut is placed in the doc the "
                                             r"first cut was made from"):
        _ = cut[0:1].as_doc()[0].vector
    restore_vectors(cut)
    _check(cut[0:1].as_doc(), before, "emb", shift=doc[4].idx)


def test_a_plain_cut_whose_text_is_not_in_its_source_is_an_error_saying_so(nlp):
    """A plain cut reads its source's rows where its text is in the source. Its
    spaces rewritten since (spaCy's Doc.from_array with SPACY) leave a text that
    the source does not have: no rows can be read, and the error says that it
    cannot be placed (not that its text occurs more than once)."""
    doc = nlp("the cat sat on the mat")
    sub = doc[1:4].as_doc()
    sub.from_array([SPACY], numpy.zeros((len(sub), 1), dtype="uint64"))
    assert sub.text == "catsaton" and "catsaton" not in doc.text
    with pytest.raises(MissingOutputs, match=r"^\[emb\] this doc has the ctxembed vector hooks but no ctxembed "
                                             r"outputs: a doc made with span\.as_doc\(\) from a doc whose text it "
                                             r"cannot be placed in"):
        _ = sub[0].vector


def test_a_plain_cut_whose_text_overlaps_itself_in_its_source_is_the_same_error(nlp):
    """ "la la" is in "la la la" twice, the second time overlapping the first
    (at characters 0 and 3). A search for the next place past the end of the
    last one found it once, and the cut silently read the rows of tokens 0-1,
    not its own 1-2."""
    doc = nlp("la la la")
    sub = doc[1:3].as_doc()
    assert sub.text == "la la"
    with pytest.raises(MissingOutputs, match=r"^\[emb\] .*its text \('la la'\) occurs more than once"):
        _ = sub[0].vector


def test_a_token_read_before_a_merge_and_a_split_that_keep_the_token_count_reads_the_merge(nlp):
    """One retokenize that merges two tokens and splits another leaves as many
    tokens, and the first token's start where it was: a view memoised by the
    read before, checked only by its tokens' starts, was taken as still valid
    and "Apple Inc." read the row of "Apple" alone."""
    doc = nlp("Apple Inc. is buying NewYork startups.")
    before = _by_offsets(doc, "emb")
    _ = doc[0].vector  # (memoises the view of the doc as it is now)
    n_tokens = len(doc)
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])  # Apple Inc.
        retokenizer.split(doc[4], ["New", "York"], heads=[(doc[4], 1), doc[3]])
    assert len(doc) == n_tokens and doc[0].text == "Apple Inc." and doc[0].idx == 0
    expected = numpy.mean([numpy.asarray(before[span][0], dtype="float64") for span in ((0, 5), (6, 10))], axis=0)
    numpy.testing.assert_allclose(doc[0].vector, expected, rtol=1e-6, atol=1e-6)
    numpy.testing.assert_array_equal(doc[3].vector, before[(21, 28)][0])  # "New": the row of "NewYork"
    _check(doc, before, "emb")


def test_a_sentence_of_a_long_doc_reads_its_own_tokens_spans_only(nlp, monkeypatch):
    """`span.vector` checked the memoised view against the whole doc's token
    spans for any span of more than 8 tokens: every sentence's vector of a long
    doc read all of its tokens, quadratic in the doc. A short span's own tokens
    are checked, and a merge and a split inside it that keep the token count
    (and the span's first token) are still seen."""
    from spacy_ctxembed.outputs import views

    doc = nlp(" ".join([TEXT] * 12))
    before = _by_offsets(doc, "emb")
    span = (20, 32)  # 12 tokens: more than 8, less than an eighth of the doc
    assert 8 * (span[1] - span[0]) < len(doc)
    rows = doc._.ctx_vectors[span[0]:span[1]]  # (memoises the view)
    read = []
    spans_of = views.token_char_spans
    monkeypatch.setattr(views, "token_char_spans", lambda d: read.append(len(d)) or spans_of(d))
    numpy.testing.assert_allclose(doc[span[0]:span[1]].vector, rows[rows.any(axis=1)].mean(axis=0), rtol=1e-6)
    assert read == []  # (the memoised view, checked by the span's tokens)
    n_tokens = len(doc)
    with doc.retokenize() as retokenizer:  # inside the span: as many tokens, the first one where it was
        retokenizer.merge(doc[span[0] + 2 : span[0] + 4])  # "at buying"
        token = doc[span[0] + 7]  # "for"
        retokenizer.split(token, ["fo", "r"], heads=[(token, 1), token.head])
    assert len(doc) == n_tokens
    got = doc[span[0]:span[1]].vector
    rows = numpy.stack([_expected(before, t.idx, t.idx + len(t))[0] for t in doc[span[0]:span[1]]])
    numpy.testing.assert_allclose(got, rows[rows.any(axis=1)].mean(axis=0), rtol=1e-6, atol=1e-7)
    _check(doc, before, "emb")


def test_from_docs_and_copy(nlp):
    docs = [nlp(TEXT), nlp("Another one ran .")]
    befores = [_by_offsets(d, "emb") for d in docs]
    joined = restore_vectors(Doc.from_docs(docs))
    offset = len(docs[0].text) + 1  # from_docs adds a space between docs
    first, second = joined[: len(docs[0])], joined[len(docs[0]):]
    for token in first:
        numpy.testing.assert_array_equal(token.vector, befores[0][(token.idx, token.idx + len(token))][0])
    for token in second:
        key = (token.idx - offset, token.idx - offset + len(token))
        numpy.testing.assert_array_equal(token.vector, befores[1][key][0])
    copied = docs[0].copy()
    _check(copied, befores[0], "emb")


def test_docs_joined_without_a_space_keep_their_rows(nlp):
    """`Doc.from_docs(docs, ensure_whitespace=False)` lays the docs' texts end
    to end: the first doc's last token ends where the second's first begins.
    Parts that only touch are apart, each keeping its own rows; only the
    default join (a space between) was tested, so taking parts that touch for
    parts that overlap passed, and the join raised UnplacedOutputs."""
    docs = [nlp("New York is big"), nlp("Paris is not")]
    befores = [_by_offsets(d, "emb") for d in docs]
    joined = restore_vectors(Doc.from_docs(docs, ensure_whitespace=False))
    offset = len(docs[0].text)
    assert joined.text == "New York is bigParis is not"
    for token in joined:
        before, shift = (befores[0], 0) if token.i < len(docs[0]) else (befores[1], offset)
        numpy.testing.assert_array_equal(token.vector, before[(token.idx - shift, token.idx - shift + len(token))][0])


def test_doc_vector_norm_follows_retokenization(nlp):
    """spaCy caches a doc's norm on first use; it must follow the tokens."""
    doc = nlp(TEXT)
    first = doc.vector_norm
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:5])
    assert doc.vector_norm == pytest.approx(float(numpy.linalg.norm(doc.vector)), rel=1e-6)
    assert doc.vector_norm != pytest.approx(first, rel=1e-6)
    assert doc[1:3].vector_norm == pytest.approx(float(numpy.linalg.norm(doc[1:3].vector)), rel=1e-6)


def test_another_output_keeps_those_of_joined_and_cut_docs(nlp, tiny_bert_dir):
    """A doc whose outputs came with Doc.from_docs or span.as_doc keeps them
    when another component writes one more, primary or not."""
    other = spacy.blank("en", vocab=nlp.vocab)
    other.add_pipe("ctxembed_bert", name="more", config=ctx_config(name=tiny_bert_dir, layers=[1], primary=False))
    other.initialize()
    more = other.get_pipe("more")
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    for copy_user_data in (False, True):
        sub = more(doc[3:9].as_doc(copy_user_data=copy_user_data))
        assert set(sub._.ctx_outputs) == {"emb", "more"}
        _check(sub, before, "emb", shift=doc[3].idx)  # still the primary: token.vector is emb's
    joined = more(restore_vectors(Doc.from_docs([nlp(TEXT), nlp("Another one ran .")])))
    assert set(joined._.ctx_outputs) == {"emb", "more"}
    _check(joined[: len(doc)].as_doc(copy_user_data=True), before, "emb")
    if "transformer" not in nlp.pipe_names:  # (ctxembed_from_trf needs the transformer's data on the doc)
        again = nlp.get_pipe("emb")(joined)  # the primary again: "more" stays
        assert set(again._.ctx_outputs) == {"emb", "more"}


def test_joined_docs_of_different_primary_components_say_so(nlp, tiny_bert_dir):
    """Doc.from_docs of docs whose vectors come from different components:
    neither model's vectors can stand for the other's tokens."""
    other = spacy.blank("en", vocab=nlp.vocab)
    other.add_pipe("ctxembed_bert", name="other", config=ctx_config(name=tiny_bert_dir))
    other.initialize()
    # (Without the tensors: spaCy cannot join tensors of different widths.)
    joined = Doc.from_docs([nlp(TEXT), other("Another one ran .")], exclude=["tensor"])
    with pytest.raises(MissingOutputs, match=r"different components \(emb, other\)"):
        restore_vectors(joined)
    assert set(joined._.ctx_outputs) == {"emb", "other"}  # each component's own outputs still read
    # A non-primary output added to it leaves it so; a primary one settles it.
    other.add_pipe("ctxembed_bert", name="more", config=ctx_config(name=tiny_bert_dir, primary=False))
    other.get_pipe("more").initialize(lambda: [], nlp=other)
    joined = other.get_pipe("more")(joined)
    with pytest.raises(MissingOutputs, match=r"different components \(emb, other\)"):
        restore_vectors(joined)
    joined = other.get_pipe("other")(joined)
    numpy.testing.assert_array_equal(joined[0].vector, joined._.ctx_outputs["other"]["vectors"][0])


def test_a_plain_cut_of_a_doc_with_non_primary_outputs_only_reads_them(tiny_bert_dir):
    """A pipeline whose only ctxembed component is not primary: its outputs were
    lost from every `span.as_doc()` ({} read as "no outputs"), while next to a
    primary component they were kept. The cut reads the rows of its tokens, by
    character offsets, and its vector hooks stay spaCy's own."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="more", config=ctx_config(name=tiny_bert_dir, store_layers=True,
                                                                   primary=False))
    nlp.initialize()
    doc = nlp(TEXT)
    before = _by_offsets(doc, "more")
    for span in (doc[1:4], doc[3:9]):
        cut = span.as_doc()
        assert set(cut._.ctx_outputs) == {"more"} and "vector" not in cut.user_token_hooks
        _check(cut, before, "more", shift=span.start_char)
    repeated = nlp("the cat sat . the cat sat .")
    with pytest.raises(MissingOutputs, match="occurs more than once"):
        _ = repeated[0:3].as_doc()._.ctx_outputs
    # And so after a DocBin round trip and restore_vectors ("as when they left the pipeline").
    back = restore_vectors(next(DocBin(docs=[doc], store_user_data=True).get_docs(nlp.vocab)))
    assert "vector" not in back.user_token_hooks
    _check(back[1:4].as_doc(), before, "more", shift=back[1].idx)


def test_a_split_piece_at_a_cuts_edge_joined_after_another_doc_is_an_error_not_a_wrong_row(nlp):
    """A known limit: a token split at the edge of a cut (copy_user_data=True)
    takes its token's row where the cut starts the joined doc, and is refused,
    with a message that names the case, where another doc comes before it."""
    doc = nlp("Visit NewYork today .")
    before = doc._.ctx_vectors.copy()
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[1], ["New", "York"], heads=[(doc[1], 1), doc[0]])
    tail = doc[2:4].as_doc(copy_user_data=True)  # "York today"
    other = nlp("Other stuff .")
    joined = restore_vectors(Doc.from_docs([tail, other]))
    numpy.testing.assert_array_equal(joined._.ctx_vectors[0], before[1])
    with pytest.raises(MissingOutputs, match=r"from token 3: 'York'.*a token split at the edge of a cut"):
        restore_vectors(Doc.from_docs([other, tail]))


def test_a_split_piece_at_a_cuts_edge_read_with_a_new_vocab_is_refused_naming_the_vocab(nlp):
    """Such a cut, saved in a DocBin: read with the pipeline's vocab, its piece
    takes its token's row; read with a new Vocab (which has the cut's words,
    not "NewYork"), the stored token's text cannot be checked: refused, with
    the vocab named (it raised StringStore's KeyError when unguarded, and the
    error named no cause that fits)."""
    from spacy.vocab import Vocab

    doc = nlp("NewYork is big .")
    before = doc._.ctx_vectors.copy()
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[0], ["New", "York"], heads=[(doc[0], 1), doc[1]])
    data = DocBin(docs=[doc[0:1].as_doc(copy_user_data=True)], store_user_data=True).to_bytes()  # "New"
    same = restore_vectors(next(DocBin().from_bytes(data).get_docs(nlp.vocab)))
    numpy.testing.assert_array_equal(same._.ctx_vectors, before[0:1])
    fresh = next(DocBin().from_bytes(data).get_docs(Vocab()))
    with pytest.raises(MissingOutputs, match=r"^\[emb\] no 'emb' output covers 1 of its 1 tokens \(from token 0: "
                                             r"'New'\).*read it with the pipeline's nlp\.vocab"):
        restore_vectors(fresh)


def test_a_whitespace_token_split_off_a_merge_has_no_vector_not_an_error(nlp):
    """"New York" merged, then split into "New", " ", "York": the " " lies on
    the whitespace between the embedded tokens, which no stored token covers,
    and reading any vector of the doc raised MissingOutputs (as for text never
    embedded). Whitespace is no text to embed: it has no vector, as a
    whitespace token that was embedded has none."""
    doc = nlp("New York is big")
    before = _by_offsets(doc, "emb")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[0], ["New", " ", "York"], heads=[(doc[0], 0)] * 3)
    assert [t.text for t in doc] == ["New", " ", "York", "is", "big"]
    assert not doc[1].has_vector and not doc[1].vector.any()
    _check(doc, before, "emb")
    numpy.testing.assert_array_equal(doc[0].vector, before[(0, 3)][0])


def test_a_plain_cut_of_a_joined_doc_averages_the_embedded_tokens_not_the_pieces(nlp):
    """A plain cut (`span.as_doc()`) of a joined doc read the joined doc's rows
    as its tokens were at `restore_vectors`: "NewYork" split there into "New"
    and "York", then merged with "a", read (2 * NewYork + a) / 3 in the cut,
    silently, where the joined doc itself read (NewYork + a) / 2 (merges
    average the embedded tokens). The cut reads the embedded tokens too."""
    doc = nlp("I like NewYork a lot")
    before = _by_offsets(doc, "emb")
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[2], ["New", "York"], heads=[(doc[2], 1), doc[1]])
    joined = restore_vectors(Doc.from_docs([doc, nlp("Other words here .")], exclude=["tensor"]))
    with joined.retokenize() as retokenizer:
        retokenizer.merge(joined[2:5])  # "New York a"
    assert joined[2].text == "NewYork a"
    expected = numpy.mean([numpy.asarray(before[span][0], dtype="float64") for span in ((7, 14), (15, 16))], axis=0)
    numpy.testing.assert_allclose(joined[2].vector, expected, rtol=1e-6, atol=1e-6)
    cut = joined[1:4].as_doc()
    assert cut[1].text == "NewYork a"
    numpy.testing.assert_allclose(cut[1].vector, expected, rtol=1e-6, atol=1e-6)
    _check(cut, before, "emb", shift=joined[1].idx)


def test_another_output_on_a_joined_doc_keeps_the_embedded_tokens(nlp, tiny_bert_dir):
    """Another component run on a joined doc gathered its outputs as the
    joined doc's tokens then were: "NewYork" split into "New" and "York",
    then merged with "a", read (2 * NewYork + a) / 3, silently, not
    (NewYork + a) / 2 as without the other output."""
    other = spacy.blank("en", vocab=nlp.vocab)
    other.add_pipe("ctxembed_bert", name="more", config=ctx_config(name=tiny_bert_dir, layers=[1], primary=False))
    other.initialize()
    doc = nlp("I like NewYork a lot")
    before = _by_offsets(doc, "emb")
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[2], ["New", "York"], heads=[(doc[2], 1), doc[1]])
    joined = other.get_pipe("more")(restore_vectors(Doc.from_docs([doc, nlp("Other words here .")],
                                                                  exclude=["tensor"])))
    with joined.retokenize() as retokenizer:
        retokenizer.merge(joined[2:5])  # "New York a"
    expected = numpy.mean([numpy.asarray(before[span][0], dtype="float64") for span in ((7, 14), (15, 16))], axis=0)
    numpy.testing.assert_allclose(joined[2].vector, expected, rtol=1e-6, atol=1e-6)
    _check(joined[:4].as_doc(), before, "emb")


def test_retokenized_doc_survives_serialization(nlp, tmp_path):
    doc = nlp(TEXT)
    before = _by_offsets(doc, "emb")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])
    _check(pickle.loads(pickle.dumps(doc)), before, "emb")
    DocBin(docs=[doc], store_user_data=True).to_disk(tmp_path / "d.spacy")
    back = restore_vectors(next(DocBin().from_disk(tmp_path / "d.spacy").get_docs(nlp.vocab)))
    _check(back, before, "emb")


def test_restore_vectors_on_a_doc_without_outputs_is_an_error():
    doc = spacy.blank("en")("nothing here")
    with pytest.raises(MissingOutputs, match="no ctxembed outputs"):
        restore_vectors(doc)


def test_a_token_embedded_only_in_part_takes_no_row(tiny_bert_dir):
    """A token that overlaps stored tokens took their mean, whatever else it
    held: "New York yesterday", merged across a doc embedded up to "New" and
    one never embedded, read as "New"; "homework", in a doc given the user
    data of "I ran home", as "home". Text no output covers is missing, in
    part of a token too; whitespace is no text to embed."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, set_doc_tensor=False))
    joined = Doc.from_docs([nlp("I visited New"), nlp.make_doc("York yesterday")], ensure_whitespace=True)
    with pytest.raises(MissingOutputs, match=r"covers 2 of its 5 tokens \(from token 3: 'York yesterday'\)"):
        restore_vectors(joined)
    with joined.retokenize() as retokenizer:
        retokenizer.merge(joined[2:5])
    with pytest.raises(MissingOutputs, match=r"covers 1 of its 3 tokens \(from token 2: 'New York yesterday'\), or "
                                             r"only part of their text"):
        restore_vectors(joined)
    edited = Doc(nlp.vocab, words=["I", "ran", "homework"])
    edited.user_data = dict(nlp("I ran home").user_data)
    with pytest.raises(MissingOutputs, match=r"from token 2: 'homework'"):
        restore_vectors(edited)
    # Spaces removed by spaCy's Doc.from_array (token.idx unmoved: tokens past the text), then a merge.
    squeezed = nlp("New York is big")
    squeezed.from_array([SPACY], numpy.zeros((len(squeezed), 1), dtype="uint64"))
    with squeezed.retokenize() as retokenizer:
        retokenizer.merge(squeezed[0:2])
    with pytest.raises(MissingOutputs, match=r"from token 0: 'NewYork'"):
        restore_vectors(squeezed)
    doc = nlp("I visited New  York yesterday")  # (two spaces: a whitespace token inside the merge)
    expected = doc._.ctx_vectors[[2, 4]].astype("float64").mean(axis=0)
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[2:5])
    numpy.testing.assert_allclose(doc[2].vector, expected, rtol=1e-6, atol=1e-7)
