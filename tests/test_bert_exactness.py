"""Every token vector equals pooling over `transformers`' own hidden states."""
import numpy
import pytest

from spacy_ctxembed.models.bert import get_runner

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


def test_padded_batches_match_transformers_on_each_text(minilm_dir, hf_reference):
    """The texts share one padded forward batch (masked in the (batch, 1, length)
    form); each must still equal `transformers` on that text alone."""
    tokenizer, model = hf_reference
    nlp = _nlp_cache(minilm_dir, "mean", [0, 3, -1])
    _assert_padded_batches_match(nlp, tokenizer, model, [0, 3, -1], broadcast=True)


def _tiny_family_model(family: str):
    from transformers import AlbertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

    small = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    return {
        "roberta": lambda: RobertaConfig(**small, pad_token_id=0),  # the BERT tokenizer's padding id
        "electra": lambda: ElectraConfig(**small, embedding_size=16),
        "distilbert": lambda: DistilBertConfig(vocab_size=30522, dim=32, n_layers=3, n_heads=2, hidden_dim=64),
        "albert": lambda: AlbertConfig(**small, embedding_size=16),
    }[family]()


@pytest.mark.parametrize("family,broadcast,cut", [
    ("roberta", True, True), ("electra", True, True), ("distilbert", False, True), ("albert", False, False),
])
def test_other_families_match_transformers_in_padded_batches(minilm_dir, tmp_path, family, broadcast, cut):
    """RoBERTa and ELECTRA take the broadcast mask; DistilBERT's and ALBERT's
    forward passes do not, and keep the 2-D one. One selected layer is read as
    the top state only where the layer stack was cut there (not ALBERT's layer
    groups). Either way each text equals `transformers` alone."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    AutoModel.from_config(_tiny_family_model(family)).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for layers in ([0, 1, 3], [1]):
        nlp = make_nlp(tmp_path, layers=layers, store_layers=True)
        _assert_padded_batches_match(nlp, tokenizer, model, layers, broadcast)
        assert get_runner(nlp.get_pipe("ctxembed_bert").encoder).top_state_only is (layers == [1] and cut)


def _assert_padded_batches_match(nlp, tokenizer, model, layers, broadcast):
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    assert runner.broadcast_mask is broadcast
    (run,) = runner.runs([nlp.make_doc(t) for t in TEXTS])
    (batch,) = runner.prepare(run).batches
    assert batch.attention_mask.dim() == (3 if broadcast else 2)
    assert not bool(batch.attention_mask.all())  # the texts' lengths differ: there is padding
    for text, doc in zip(TEXTS, nlp.pipe(TEXTS)):
        states, offsets = hf_hidden_states(tokenizer, model, text)
        pieces = token_pieces(doc, offsets)
        expected = numpy.stack([pool(states[i], pieces, "mean") for i in layers])
        numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-4, rtol=0)


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
