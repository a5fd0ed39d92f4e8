"""`ctxembed_from_trf` pools spacy-transformers' own output into the same contract."""
import numpy
import pytest
import spacy

from .conftest import ctx_config
from .reference import hf_hidden_states, pool, token_pieces

TEXT = "It was nice out this morning when I ran to the park."


def _trf_nlp(model_dir, hidden_states: bool, **settings):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(model_dir),
        "tokenizer_config": {"use_fast": True},
        "transformer_config": {"output_hidden_states": hidden_states},
    }})
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(**settings))
    nlp.initialize()
    return nlp


@pytest.mark.parametrize("pooling", ["mean", "first", "max"])
def test_from_trf_matches_transformers(minilm_dir, hf_reference, pooling):
    tokenizer, model = hf_reference
    nlp = _trf_nlp(minilm_dir, True, pooling=pooling, layers=[0, -1], store_layers=True)
    doc = nlp(TEXT)
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    pieces = token_pieces(doc, offsets)
    expected = numpy.stack([pool(states[0], pieces, pooling), pool(states[-1], pieces, pooling)])
    numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-4, rtol=0)
    numpy.testing.assert_allclose(doc.tensor, expected.mean(axis=0), atol=1e-4, rtol=0)
    assert doc[8].has_vector and doc[8].vector.shape == (384,)


def test_from_trf_last_layer_without_hidden_states(minilm_dir, hf_reference):
    tokenizer, model = hf_reference
    doc = _trf_nlp(minilm_dir, False)(TEXT)
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    numpy.testing.assert_allclose(doc._.ctx_vectors, pool(states[-1], token_pieces(doc, offsets), "mean"), atol=1e-4)


def test_from_trf_asks_for_hidden_states(minilm_dir):
    nlp = _trf_nlp(minilm_dir, False, layers=[0, -1])
    with pytest.raises(ValueError, match=r"layers = \[0, -1\].*output_hidden_states"):
        nlp(TEXT)


def test_from_trf_without_transformer():
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_from_trf")
    with pytest.raises(ValueError, match="trf_data is missing"):
        nlp(TEXT)


def test_from_trf_settings_come_from_the_config_not_the_bytes(tiny_bert_dir, tmp_path):
    """A component configured with pooling = "first" that loads the bytes of a "mean"
    one pools by "first", as its config says (and as a load from disk does): the
    settings saved with the bytes used to win."""
    mean = _trf_nlp(tiny_bert_dir, False, pooling="mean")
    first = _trf_nlp(tiny_bert_dir, False, pooling="first")
    text = "Tokenization of unbelievably long words."
    expected = first(text)._.ctx_vectors  # freshly configured "first", before any loading
    assert not numpy.allclose(mean(text)._.ctx_vectors, expected)  # the two poolings differ on this text
    first.get_pipe("ctxembed_from_trf").from_bytes(mean.get_pipe("ctxembed_from_trf").to_bytes())
    numpy.testing.assert_allclose(first(text)._.ctx_vectors, expected, atol=1e-6)
    first.to_disk(tmp_path / "p")
    numpy.testing.assert_allclose(spacy.load(tmp_path / "p")(text)._.ctx_vectors, expected, atol=1e-6)


def test_tokens_cut_off_by_the_transformer_are_said_and_vectors_are_float32(tiny_bert_dir):
    """spacy-transformers cuts a span at the model's length: with doc_spans the
    tail of a long doc got zero vectors without a word. And fp16 outputs of the
    transformer gave fp16 vectors."""
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}, "transformer_config": {"output_hidden_states": False},
        "get_spans": {"@span_getters": "spacy-transformers.doc_spans.v1"}}})
    nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    with pytest.warns(UserWarning, match=r"\[ctxembed_from_trf\] \d+ of \d+ tokens .* no wordpiece"):
        doc = nlp(" ".join(["word"] * 700))
    assert not doc[-1].has_vector and doc[0].has_vector
    short = nlp.get_pipe("transformer")(nlp.make_doc(TEXT))
    short._.trf_data.model_output["last_hidden_state"] = short._.trf_data.model_output["last_hidden_state"].astype(
        "float16")
    assert nlp.get_pipe("ctxembed_from_trf")(short)._.ctx_vectors.dtype == numpy.float32
