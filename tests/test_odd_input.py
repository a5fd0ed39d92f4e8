"""Odd text never crashes; shapes always match the doc; uncovered tokens have no vector."""
import numpy
import pytest

ODD_TEXTS = [
    "",
    " ",
    "   \n\n\t  ",
    "Emoji 😀👩‍🔬🇺🇸 and more 🙂",
    "中文文本没有空格。日本語のテキスト",
    "שלום עולם مرحبا بالعالم",
    "Cafe\u0301 na\u0308ive \u0301\u0301 ",
    "control\u0000chars\u0007here \u0001",
    "zero\u200bwidth\u200d joiner\ufeff",
    "x" * 5000 + " and after",
    "A " + "antidisestablishmentarianism" * 200,
]


@pytest.mark.parametrize("text", ODD_TEXTS, ids=range(len(ODD_TEXTS)))
def test_odd_text(nlp_default, text):
    doc = nlp_default(text)
    assert doc._.ctx_vectors.shape == (len(doc), 384)
    assert doc._.ctx_layers.shape == (3, len(doc), 384)
    assert numpy.isfinite(doc._.ctx_vectors).all()
    for token in doc:
        if token.is_space:
            assert not token.has_vector
            assert not token.vector.any()
    assert doc.vector.shape == (384,)


def test_dropped_characters_give_no_vector(nlp_default):
    # A token made only of characters the tokenizer drops (controls, zero-width).
    doc = nlp_default("before \u200b\u0007 after")
    dropped = [t for t in doc if t.text == "\u200b\u0007"]
    assert dropped and not dropped[0].has_vector
    assert doc[0].has_vector and doc[-1].has_vector


@pytest.mark.parametrize("spaces", [[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]])
def test_spaces_changed_by_from_array(nlp_default, spaces):
    """`Doc.from_array` with SPACY changes the text but leaves the tokens' IDX as
    it was: the vectors are those of the same words and spaces in a new doc,
    whose offsets are right, and docs after it are not affected."""
    from spacy.attrs import SPACY
    from spacy.tokens import Doc

    changed = nlp_default.make_doc("Hello world significance tests ran")
    changed.from_array([SPACY], numpy.array([[s] for s in spaces], dtype="uint64"))
    fresh = Doc(nlp_default.vocab, words=[t.text for t in changed], spaces=[bool(s) for s in spaces])
    assert changed.text == fresh.text and [t.idx for t in changed] != [t.idx for t in fresh]
    after = "significance tests ran to the Helloworld"
    got = [doc._.ctx_vectors for doc in nlp_default.pipe([changed, nlp_default.make_doc(after)])]
    expected = [doc._.ctx_vectors for doc in nlp_default.pipe([fresh, nlp_default.make_doc(after)])]
    for g, e in zip(got, expected):
        numpy.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    # Its outputs were stored at the stale offsets: a copy rebuilt from the text
    # (pickle, DocBin) cannot place them, and the error names this cause among the others.
    import pickle

    from spacy_ctxembed.outputs import MissingOutputs

    with pytest.raises(MissingOutputs, match=r"Doc\.from_array with SPACY changes the spaces but not token\.idx"):
        _ = pickle.loads(pickle.dumps(changed))._.ctx_vectors
