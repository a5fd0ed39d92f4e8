"""`span_as_doc`: cuts that carry only their own outputs, so that any of them join.

`span.as_doc(copy_user_data=True)` carries the whole source's outputs, and
two such cuts joined with `Doc.from_docs` cannot be read (which rows are
whose cannot be told). The references are the rows the sources read before
they were cut (or before they were retokenized), and the refusals that
plain `as_doc` cuts get.
"""
import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin

from spacy_ctxembed import restore_vectors, span_as_doc
from spacy_ctxembed.outputs import STORE, MissingOutputs, UnplacedOutputs, is_store_key

from .conftest import make_nlp


@pytest.fixture(scope="module")
def nlp(tiny_bert_dir):
    return make_nlp(tiny_bert_dir, layers=[1, 2], store_layers=True)


@pytest.fixture(scope="module")
def untensored(tiny_bert_dir):
    """Without doc.tensor: spaCy's Doc.from_docs refuses to join a doc with a tensor to one without."""
    return make_nlp(tiny_bert_dir, layers=[1, 2], store_layers=True, set_doc_tensor=False)


def _stores(doc):
    return [value for key, value in doc.user_data.items() if is_store_key(key)]


def _assert_reads(joined, spans):
    """The joined doc's vectors, layers, token and span vectors are the spans' rows in their sources."""
    vectors = numpy.concatenate([span.doc._.ctx_vectors[span.start:span.end] for span in spans])
    layers = numpy.concatenate([span.doc._.ctx_layers[:, span.start:span.end] for span in spans], axis=1)
    numpy.testing.assert_array_equal(joined._.ctx_vectors, vectors)
    numpy.testing.assert_array_equal(joined._.ctx_layers, layers)
    numpy.testing.assert_array_equal(numpy.stack([token.vector for token in joined]), vectors)
    numpy.testing.assert_allclose(joined[1:3].vector, vectors[1:3].mean(axis=0), rtol=1e-6)


def test_cuts_of_any_docs_join_in_any_order_and_read_their_sources_rows(nlp):
    first = nlp("New York is big and I ran to the park yesterday.")
    second = nlp("Cats sleep all day. Dogs bark at night.")
    # As spaCy cuts them, they cannot be joined: each carries its whole source's outputs.
    with pytest.raises(UnplacedOutputs, match="cannot be told"):
        restore_vectors(Doc.from_docs([first[0:4].as_doc(copy_user_data=True),
                                       second[5:9].as_doc(copy_user_data=True)]))
    for spans in ([first[0:4], second[5:9]],  # two docs
                  [first[5:9], first[0:4]],  # one doc's cuts apart, the other way round
                  [first[0:4], first[0:4]],  # one cut twice
                  [first[0:4], first[4:]],  # one doc's cuts that rebuild it (their shifted keys are one)
                  [second[5:9], first[2:6], second[0:5], first[9:]]):
        joined = restore_vectors(Doc.from_docs([span_as_doc(span) for span in spans]))
        _assert_reads(joined, spans)
        # Saved and read back: the same.
        docs = DocBin(docs=[joined], store_user_data=True).get_docs(nlp.vocab)
        _assert_reads(restore_vectors(next(docs)), spans)


def test_a_cut_keeps_its_own_tokens_only_and_leaves_its_source_alone(nlp):
    source = nlp("New York is big and I ran to the park yesterday.")
    rows = source._.ctx_vectors.copy()
    cut = span_as_doc(source[2:6])
    assert cut.text == "is big and I "
    (store,) = _stores(cut)
    (output,) = store["outputs"].values()
    assert len(output["starts"]) == len(output["vectors"]) == output["layers"].shape[1] == 4
    numpy.testing.assert_array_equal(cut._.ctx_vectors, rows[2:6])
    numpy.testing.assert_array_equal(cut[1].vector, rows[3])
    (source_output,) = _stores(source)[0]["outputs"].values()
    assert len(source_output["vectors"]) == len(source)
    numpy.testing.assert_array_equal(source._.ctx_vectors, rows)


def test_a_cut_of_a_long_doc_compares_its_tensor_with_its_own_rows_only(nlp, monkeypatch):
    """Whether a cut's `doc.tensor` is still the vectors a ctxembed component set
    (then it may be replaced) was asked of every row of its source's store,
    which `as_doc(copy_user_data=True)` carries whole: a cut of every sentence
    of a long doc was quadratic. Only the stored rows on the cut's characters
    are compared, and the cut's tensor still counts as the component's."""
    from spacy_ctxembed.outputs import tensor

    source = nlp(" ".join(f"Sentence {i} ran to the park with a dog." for i in range(40)))
    compared = []
    follows = tensor._tensor_follows
    monkeypatch.setattr(tensor, "_tensor_follows",
                        lambda doc, parts: compared.append(sum(len(p["vectors"]) for _, p in parts))
                        or follows(doc, parts))
    span = source[20:31]
    cut = span_as_doc(span)
    assert compared and max(compared) <= len(span) < len(source)
    (store,) = _stores(cut)
    assert store["tensor_set"] == "ctxembed_bert"
    numpy.testing.assert_array_equal(cut.tensor, source._.ctx_vectors[20:31])
    numpy.testing.assert_array_equal(cut._.ctx_vectors, source._.ctx_vectors[20:31])
    # Rows that spaCy shifted off their tokens (a split's spare zero row, joined in
    # by Doc.from_docs) are another token's, off the cut: all of them are asked then.
    split = nlp("I visited NewYork yesterday.")
    with split.retokenize() as retokenizer:
        retokenizer.split(split[2], ["New", "York"], heads=[(split[2], 1), split[2].head])
    joined = restore_vectors(Doc.from_docs([split, nlp("The dog barked at the mailman twice.")]))
    n = len(split)
    for start, end in ((n + 1, n + 3), (n + 2, n + 5)):
        cut = span_as_doc(joined[start:end])
        assert not numpy.array_equal(cut.tensor, joined._.ctx_vectors[start:end])  # (the premise: shifted)
        (store,) = _stores(cut)
        assert store["tensor_set"] == "ctxembed_bert"


def test_a_tensor_another_component_set_is_compared_with_the_rows_once(nlp, monkeypatch):
    """A doc whose tensor another component replaced (spaCy's tok2vec after
    the component), and nothing of its store off its characters: its rows are
    compared once, not a second time as "all of the rows", and it is not the
    component's."""
    from spacy_ctxembed.outputs import tensor
    from spacy_ctxembed.outputs.store import doc_stores

    doc = nlp("The dog barked at the mailman twice.")
    doc.tensor = numpy.random.default_rng(0).standard_normal(doc.tensor.shape).astype(doc.tensor.dtype)
    compared = []
    follows = tensor._tensor_follows
    monkeypatch.setattr(tensor, "_tensor_follows",
                        lambda doc, parts: compared.append(sum(len(p["vectors"]) for _, p in parts))
                        or follows(doc, parts))
    assert tensor.tensor_source(doc, doc_stores(doc)) is None
    assert compared == [len(doc)]


def test_parts_are_compared_only_with_the_parts_they_overlap():
    """Each pair of a joined doc's parts was compared for overlap: reading a
    `Doc.from_docs` of many docs was quadratic in them. The pairs that
    overlap are found by a sweep, the same pairs in the same order."""
    import itertools
    import random

    from spacy_ctxembed.outputs.placement import _overlapping

    rng = random.Random(0)
    for _ in range(500):
        extents = {i: (low, low + rng.choice([0, 0, 1, 2, 3, 7])) for i, low in
                   ((i, rng.randint(0, 15)) for i in range(rng.randint(0, 10))) if rng.random() < 0.8}
        pairs = [(i, j) for i, j in itertools.combinations(extents, 2)
                 if not (extents[i][1] <= extents[j][0] or extents[j][1] <= extents[i][0])]
        assert _overlapping(extents) == pairs, extents
    assert _overlapping({i: (2 * i, 2 * i + 2) for i in range(10_000)}) == []


def test_a_join_of_many_docs_reads_each_ones_rows(nlp):
    docs = list(nlp.pipe([f"Doc {i} ran to the park ." for i in range(300)]))
    joined = Doc.from_docs(docs)
    numpy.testing.assert_array_equal(joined._.ctx_vectors, numpy.concatenate([d._.ctx_vectors for d in docs]))
    cuts = Doc.from_docs([span_as_doc(d[1:4]) for d in docs])
    numpy.testing.assert_array_equal(cuts._.ctx_vectors, numpy.concatenate([d._.ctx_vectors[1:4] for d in docs]))


def test_a_merge_in_the_source_split_back_in_the_cut_gives_each_token_its_own_row(nlp):
    """The cut keeps the tokens as they were embedded, not the merged token's
    mean: split back, each word reads its own row, as in the source."""
    source = nlp("Well, I can't go home today.")
    rows = source._.ctx_vectors.copy()
    assert [token.text for token in source[3:5]] == ["ca", "n't"]
    with source.retokenize() as retokenizer:
        retokenizer.merge(source[3:5])
    numpy.testing.assert_allclose(source[3].vector, rows[3:5].mean(axis=0), rtol=1e-6)
    cut = span_as_doc(source[2:5])
    assert [token.text for token in cut] == ["I", "can't", "go"]
    numpy.testing.assert_allclose(cut[1].vector, rows[3:5].mean(axis=0), rtol=1e-6)
    with cut.retokenize() as retokenizer:
        retokenizer.split(cut[1], ["ca", "n't"], heads=[(cut[1], 1), cut[0]])
    joined = restore_vectors(Doc.from_docs([cut, span_as_doc(nlp("Cats sleep all day.")[0:2])]))
    numpy.testing.assert_array_equal(joined._.ctx_vectors[:4], rows[2:6])


def test_a_split_through_the_cuts_edge_is_clipped_to_the_cut(untensored):
    """A split in the source puts the cut's edge inside an embedded token
    ("NewYork" split, "New" cut): the cut keeps that token's row for its own
    piece only. Kept whole, it lay on the next part's characters once joined
    without a space, where a doc without outputs ("York") read its row with
    no error (found by fuzzing)."""
    nlp = untensored
    source = nlp("NewYork is big")
    rows = source._.ctx_vectors.copy()
    with source.retokenize() as retokenizer:
        retokenizer.split(source[0], ["New", "York"], heads=[(source[0], 1), (source[0], 1)])
    first, rest = span_as_doc(source[0:1]), span_as_doc(source[1:3])
    for cut, text in ((first, "New"), (rest, "York is ")):
        (store,) = _stores(cut)
        (output,) = store["outputs"].values()
        assert int(output["ends"].max()) <= len(cut.text) and int(output["starts"].min()) >= 0
        assert [nlp.vocab.strings[o] for o in output["orths"]][0] == text.split()[0]
    numpy.testing.assert_array_equal(first._.ctx_vectors, rows[0:1])
    numpy.testing.assert_array_equal(rest._.ctx_vectors, rows[[0, 1]])
    for parts in ([first, nlp.make_doc("York")], [nlp.make_doc("New"), rest]):
        with pytest.raises(MissingOutputs, match="no 'ctxembed_bert' output covers 1 of its"):
            _ = restore_vectors(Doc.from_docs(parts, ensure_whitespace=False))._.ctx_vectors
    other = nlp("Cats sleep")
    for parts in ([first, other], [other, rest], [first, rest]):
        joined = restore_vectors(Doc.from_docs(parts, ensure_whitespace=False))
        expected = numpy.concatenate([other._.ctx_vectors if part is other else part._.ctx_vectors for part in parts])
        numpy.testing.assert_array_equal(joined._.ctx_vectors, expected)


def test_a_span_of_a_joined_doc_keeps_what_the_joined_doc_reads(nlp):
    first, second = nlp("Apples grow well here."), nlp("Pears fall down.")
    joined = restore_vectors(Doc.from_docs([first, second]))
    n = len(first)
    for start, end in ((n - 2, n + 2), (0, 2), (n + 1, n + 3)):
        cut = span_as_doc(joined[start:end])
        assert len(_stores(cut)) == 1  # (the parts' stores read as one, the other part's dropped)
        numpy.testing.assert_array_equal(cut._.ctx_vectors, joined._.ctx_vectors[start:end])
        numpy.testing.assert_array_equal(cut._.ctx_layers, joined._.ctx_layers[:, start:end])
        again = restore_vectors(Doc.from_docs([span_as_doc(second[0:2]), cut]))
        numpy.testing.assert_array_equal(again._.ctx_vectors[2:], joined._.ctx_vectors[start:end])
        numpy.testing.assert_array_equal(again._.ctx_vectors[:2], second._.ctx_vectors[0:2])


def test_a_cut_of_a_joined_or_plain_cut_doc_keeps_the_embedded_tokens(nlp):
    """A cut of a joined doc, or of a plain `span.as_doc()`, keeps the tokens
    as they were embedded: a merge made there and split back in the cut gives
    each token its own row, and merges one after another average the embedded
    tokens. (Its first version kept the merged token's mean as one row:
    found by fuzzing.)"""
    one, two = nlp("I can't go"), nlp("Cats sleep")
    rows = one._.ctx_vectors.copy()  # I, ca, n't, go
    joined = restore_vectors(Doc.from_docs([one, two]))
    plain = one[0:4].as_doc()
    for doc in (joined, plain):
        with doc.retokenize() as retokenizer:
            retokenizer.merge(doc[1:3])  # "can't"
        cut = span_as_doc(doc[0:3])  # I | can't | go
        numpy.testing.assert_allclose(cut[1].vector, rows[1:3].mean(axis=0), rtol=1e-6)
        split = cut.copy()
        with split.retokenize() as retokenizer:
            retokenizer.split(split[1], ["ca", "n't"], heads=[(split[1], 1), (split[1], 1)])
        numpy.testing.assert_array_equal(split._.ctx_vectors, rows)
        with cut.retokenize() as retokenizer:
            retokenizer.merge(cut[0:2])  # "I can't"
        numpy.testing.assert_allclose(cut[0].vector, rows[0:3].mean(axis=0), rtol=1e-6)


def test_a_cut_reads_as_the_doc_it_is_cut_from(nlp):
    """The rows are those the span's doc reads, placed in that doc: a span of a
    joined doc whose other parts' stores would reach past the cut, and a span
    of a plain cut whose text is in the plain cut's source twice, though once
    in the plain cut, read (both were refused, as spaCy's own cuts are: found
    by fuzzing)."""
    whole = nlp("the hi the I New ran")
    rows = whole._.ctx_vectors.copy()
    joined = restore_vectors(Doc.from_docs([whole, whole[2:2].as_doc(copy_user_data=True)], ensure_whitespace=False))
    numpy.testing.assert_array_equal(joined._.ctx_vectors, rows)
    for start, end in ((5, 6), (4, 6), (0, 6)):
        numpy.testing.assert_array_equal(span_as_doc(joined[start:end])._.ctx_vectors, rows[start:end])
    source = nlp("New a New York")
    plain = source[1:4].as_doc()  # "a New York": once in the source
    with pytest.raises(MissingOutputs, match="occurs more than once"):
        _ = plain[1:2].as_doc(copy_user_data=True)._.ctx_vectors  # "New ": twice in the source
    numpy.testing.assert_array_equal(span_as_doc(plain[1:2])._.ctx_vectors, source._.ctx_vectors[2:3])


def test_a_span_of_joined_cuts_that_cannot_be_told_apart_is_an_error(nlp):
    """Cuts of two docs whose text is the same up to the cut: the joined doc
    cannot be read (either source's store lies in place on the first part), and
    neither can a span of it; trimmed, the two stores would lie on the same
    characters in place, and read as one source's rows twice (their mean)."""
    one, other = nlp("The cat sat. Birds sing."), nlp("The cat sat. Dogs bark.")
    joined = Doc.from_docs([one[0:4].as_doc(copy_user_data=True), other[4:].as_doc(copy_user_data=True)])
    assert joined.text == other.text
    with pytest.raises(UnplacedOutputs, match="cannot be told"):
        restore_vectors(joined)
    with pytest.raises(UnplacedOutputs, match="cannot be told"):
        span_as_doc(joined[0:3])


def test_a_span_of_a_plain_cut_reads_its_source(nlp):
    source = nlp("I ran home. Then I ran to the park.")
    plain = source[4:10].as_doc()  # reads the source's store by its text
    cut = span_as_doc(plain[1:4])
    assert cut.text == "I ran to "
    assert len(_stores(cut)) == 1
    numpy.testing.assert_array_equal(cut._.ctx_vectors, source._.ctx_vectors[5:8])
    # "I ran" is twice in the source: a plain cut of it cannot be placed, and neither can its span.
    twice = source[0:2].as_doc()
    with pytest.raises(MissingOutputs, match="occurs more than once"):
        span_as_doc(twice[0:2])


def test_restore_vectors_on_a_plain_cut_keeps_what_it_reads(nlp):
    """A plain cut (`span.as_doc()`) reads its source's store through the
    pointer its hooks carry: `restore_vectors` on it removed that pointer,
    and the cut then read no vectors at all (`ctx_vectors` None), nor did
    its own cuts."""
    source = nlp("New York is big and I ran to the park yesterday.")
    rows = source._.ctx_vectors[5:9].copy()  # I ran to the
    cut = source[5:9].as_doc()
    assert restore_vectors(cut) is cut
    numpy.testing.assert_array_equal(cut._.ctx_vectors, rows)
    numpy.testing.assert_array_equal(numpy.stack([token.vector for token in cut]), rows)
    numpy.testing.assert_array_equal(span_as_doc(cut[1:3])._.ctx_vectors, rows[1:3])


def test_a_span_without_outputs_is_spacys_cut_and_a_doc_is_refused(nlp):
    blank = spacy.blank("en")("No vectors here.")
    cut = span_as_doc(blank[1:3])
    assert cut.text == "vectors here"
    assert not _stores(cut) and cut[0].vector.size == 0
    with pytest.raises(TypeError, match="span_as_doc: expected a Span, got"):
        span_as_doc(nlp("A doc."))


def _embedded_again_without_warning(nlp, cut, tiny_bert_dir):
    """Run the pipeline on `cut`, failing on any warning; return what it must
    write: the mean of layers 1 and 2 of `transformers` on the cut's text,
    mean-pooled to its tokens."""
    import warnings

    from transformers import AutoModel, AutoTokenizer

    from .reference import hf_hidden_states, pool, token_pieces

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nlp(cut)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()
    states, offsets = hf_hidden_states(tokenizer, model, cut.text)
    pieces = token_pieces(cut, offsets)
    return numpy.mean([pool(states[1], pieces, "mean"), pool(states[2], pieces, "mean")], axis=0)


def test_a_cut_of_a_plain_cut_whose_text_repeats_keeps_the_components_tensor(nlp, tiny_bert_dir):
    """`span_as_doc` of a span of a plain `span.as_doc()` was placed by its own
    text in the source, where "ran" occurs twice: its tensor was taken for
    another component's, so the component run on the cut warned of tok2vec
    and left the old row in doc.tensor, under the new vectors. The reference
    is `transformers` on the cut's text."""
    source = nlp("I ran to the park and I ran home.")
    part = source[5:9].as_doc()  # "and I ran home": once in the source
    cut = span_as_doc(part[2:3])  # "ran": twice
    numpy.testing.assert_array_equal(cut._.ctx_vectors, source._.ctx_vectors[7:8])
    expected = _embedded_again_without_warning(nlp, cut, tiny_bert_dir)
    numpy.testing.assert_allclose(cut.tensor, expected, atol=1e-4, rtol=0)
    numpy.testing.assert_allclose(cut[0].vector, expected[0], atol=1e-4, rtol=0)


def test_the_component_run_on_a_plain_cut_whose_text_repeats_writes_its_own_vectors_and_tensor(nlp, tiny_bert_dir):
    """A plain `span.as_doc()` whose text occurs twice in its source reads no
    rows (which ones are its own cannot be told), but its tensor is still its
    source's rows: the component run on it replaces that tensor with its
    vectors, and does not warn of another component's (tok2vec's). The
    reference is `transformers` on the cut's text."""
    source = nlp("the cat sat . the cat sat .")
    cut = source[4:7].as_doc()
    with pytest.raises(MissingOutputs, match="occurs more than once"):
        _ = cut._.ctx_vectors
    numpy.testing.assert_array_equal(cut.tensor, source.tensor[4:7])
    expected = _embedded_again_without_warning(nlp, cut, tiny_bert_dir)
    numpy.testing.assert_allclose(cut._.ctx_vectors, expected, atol=1e-4, rtol=0)
    numpy.testing.assert_allclose(cut.tensor, expected, atol=1e-4, rtol=0)
    numpy.testing.assert_allclose(cut[1].vector, expected[1], atol=1e-4, rtol=0)


def test_spacys_cuts_of_one_doc_joined_back_read_its_rows(nlp):
    """`span.as_doc(copy_user_data=True)` cuts carry their whole source's
    outputs. Of a doc stored by an earlier version (a store key without an id),
    each cut gets an id of its own as it is read, so joined back into their
    source's text, both parts' stores lie in place on the same characters: one
    store twice, the same rows, which are read (not refused as cuts whose rows
    cannot be told apart)."""
    source = nlp("New York is big and I ran to the park yesterday.")
    for key in [key for key in source.user_data if is_store_key(key)]:
        source.user_data[("._.", STORE, *key[2:])] = source.user_data.pop(key)
    cuts = [restore_vectors(span.as_doc(copy_user_data=True)) for span in (source[0:4], source[4:])]
    joined = restore_vectors(Doc.from_docs(cuts))
    assert joined.text == source.text and len(_stores(joined)) == 2
    numpy.testing.assert_array_equal(joined._.ctx_vectors, source._.ctx_vectors)
    numpy.testing.assert_array_equal(joined._.ctx_layers, source._.ctx_layers)
    numpy.testing.assert_array_equal(joined[5].vector, source[5].vector)
