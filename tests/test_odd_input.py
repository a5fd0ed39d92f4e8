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
