"""Every token vector equals pooling over `transformers`' own hidden states."""
import numpy
import pytest

from .conftest import make_nlp
from .reference import hf_hidden_states, pool, token_pieces

TEXTS = [
    "It was nice out this morning when I ran to the park.",
    "Yesterday afternoon I ran some more significance tests, e.g. the U.S. data-set (n=3,000).",
    "Naïve café owners   didn't\tlike   \"unbelievably\" long-winded résumés!\n\nNew paragraph.",
]


@pytest.mark.parametrize("pooling", ["mean", "first", "last", "max"])
@pytest.mark.parametrize("layers", [[-1], [0], [2, 4], [0, 3, -1], [-2, 1]])
def test_matches_transformers(minilm_dir, hf_reference, pooling, layers):
    tokenizer, model = hf_reference
    nlp = _nlp_cache(minilm_dir, pooling, layers)
    for text in TEXTS:
        doc = nlp(text)
        states, offsets = hf_hidden_states(tokenizer, model, text)
        pieces = token_pieces(doc, offsets)
        expected_layers = numpy.stack([pool(states[i], pieces, pooling) for i in layers])
        numpy.testing.assert_allclose(doc._.ctx_layers, expected_layers, atol=1e-4, rtol=0)
        numpy.testing.assert_allclose(doc._.ctx_vectors, expected_layers.mean(axis=0), atol=1e-4, rtol=0)
        numpy.testing.assert_array_equal(doc.tensor, doc._.ctx_vectors)


def test_concat_orders_layers_as_selected(minilm_dir, hf_reference):
    tokenizer, model = hf_reference
    nlp = make_nlp(minilm_dir, layers=[-1, 0], combine="concat")
    doc = nlp(TEXTS[0])
    states, offsets = hf_hidden_states(tokenizer, model, TEXTS[0])
    pieces = token_pieces(doc, offsets)
    expected = numpy.concatenate([pool(states[-1], pieces, "mean"), pool(states[0], pieces, "mean")], axis=1)
    assert doc._.ctx_vectors.shape == (len(doc), 2 * 384)
    numpy.testing.assert_allclose(doc._.ctx_vectors, expected, atol=1e-4, rtol=0)


def test_untrained_scalar_mix_equals_mean(minilm_dir, hf_reference):
    tokenizer, model = hf_reference
    nlp = make_nlp(minilm_dir, layers=[1, 2, 3], combine="scalar_mix")
    doc = nlp(TEXTS[1])
    states, offsets = hf_hidden_states(tokenizer, model, TEXTS[1])
    pieces = token_pieces(doc, offsets)
    expected = numpy.mean([pool(states[i], pieces, "mean") for i in (1, 2, 3)], axis=0)
    numpy.testing.assert_allclose(doc._.ctx_vectors, expected, atol=1e-4, rtol=0)


def test_contextual_senses_differ(nlp_default):
    """The seed example: the same word gets a different vector in each sentence."""
    park = nlp_default("It was nice out this morning when I ran to the park")
    tests = nlp_default("Yesterday afternoon I ran some more significance tests")
    ran_park, ran_tests = park[8], tests[3]
    assert ran_park.text == ran_tests.text == "ran"
    assert not numpy.allclose(ran_park.vector, ran_tests.vector, atol=1e-3)
    assert ran_park.similarity(ran_tests) < 0.99


_CACHE = {}


def _nlp_cache(model_dir, pooling, layers):
    key = (pooling, tuple(layers))
    if key not in _CACHE:
        _CACHE[key] = make_nlp(model_dir, pooling=pooling, layers=layers, store_layers=True)
    return _CACHE[key]
