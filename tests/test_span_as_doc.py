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
from spacy_ctxembed.outputs import MissingOutputs, UnplacedOutputs, is_store_key

from .conftest import make_nlp


@pytest.fixture(scope="module")
def nlp(tiny_bert_dir):
    return make_nlp(tiny_bert_dir, layers=[1, 2], store_layers=True)


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


def test_a_span_without_outputs_is_spacys_cut_and_a_doc_is_refused(nlp):
    blank = spacy.blank("en")("No vectors here.")
    cut = span_as_doc(blank[1:3])
    assert cut.text == "vectors here"
    assert not _stores(cut) and cut[0].vector.size == 0
    with pytest.raises(TypeError, match="span_as_doc: expected a Span, got"):
        span_as_doc(nlp("A doc."))
