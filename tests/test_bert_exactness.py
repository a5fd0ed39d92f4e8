"""Every token vector equals pooling over `transformers`' own hidden states."""
import numpy
import pytest

from spacy_ctxembed.errors import SettingError
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
    from transformers import (
        AlbertConfig,
        DebertaV2Config,
        DistilBertConfig,
        ElectraConfig,
        MegatronBertConfig,
        ModernBertConfig,
        MPNetConfig,
        RobertaConfig,
        XLMRobertaXLConfig,
    )

    small = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    return {
        "roberta": lambda: RobertaConfig(**small, pad_token_id=0),  # the BERT tokenizer's padding id
        "electra": lambda: ElectraConfig(**small, embedding_size=16),
        "distilbert": lambda: DistilBertConfig(vocab_size=30522, dim=32, n_layers=3, n_heads=2, hidden_dim=64),
        "albert": lambda: AlbertConfig(**small, embedding_size=16),
        # Both normalize after their last layer: cut below it, they would
        # normalize the selected layer's states too.
        "megatron-bert": lambda: MegatronBertConfig(**small),
        "xlm-roberta-xl": lambda: XLMRobertaXLConfig(**small, pad_token_id=0),
        # Relative positions: DeBERTa-v2's disentangled attention (as v3 sets
        # it), MPNet's bucketed bias, both computed from the padded length.
        "deberta-v2": lambda: DebertaV2Config(**small, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                              position_buckets=256, share_att_key=True,
                                              position_biased_input=False),
        "mpnet": lambda: MPNetConfig(**small, pad_token_id=0),
        # Rotary positions, sliding-window attention (16 pieces: shorter than
        # the texts) in every other layer, and a final norm on the top state
        # only (so it runs whole, like Megatron-BERT).
        "modernbert": lambda: ModernBertConfig(**small, pad_token_id=0, local_attention=16,
                                               global_attn_every_n_layers=2),
    }[family]()


@pytest.mark.parametrize("family,broadcast,cut", [
    ("roberta", True, True), ("electra", True, True), ("distilbert", False, True), ("albert", False, False),
    ("megatron-bert", True, False), ("xlm-roberta-xl", True, False), ("deberta-v2", False, True),
    ("mpnet", True, True), ("modernbert", False, False),
])
def test_other_families_match_transformers_in_padded_batches(minilm_dir, tmp_path, family, broadcast, cut):
    """RoBERTa and ELECTRA take the broadcast mask; DistilBERT's and ALBERT's
    forward passes do not, and keep the 2-D one. One selected layer is read as
    the top state only where the layer stack was cut there (not ALBERT's layer
    groups). Megatron-BERT, XLM-RoBERTa-XL and ModernBERT run whole, since
    cutting their stack would change the states below the top. Either way each text equals
    `transformers` alone."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    AutoModel.from_config(_tiny_family_model(family)).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for layers in ([0, 1, 3], [1], [0, 2]):
        nlp = make_nlp(tmp_path, layers=layers, store_layers=True)
        _assert_padded_batches_match(nlp, tokenizer, model, layers, broadcast)
        runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
        assert runner.top_state_only is (layers == [1] and cut)
        assert (runner.runner is runner.encoder.module) is (not cut or max(layers) == 3)


@pytest.mark.parametrize("family,broadcast", [("deberta-v2", False), ("roberta", True)])
def test_embedding_output_alone_matches_transformers(minilm_dir, tmp_path, family, broadcast):
    """layers = [0] (the embedding output only) cuts the layer stack short. Cut to
    no layer at all, DeBERTa-v2's encoder failed at `initialize` with
    transformers' own UnboundLocalError ('output_states'); such a model runs
    its first layer (others none), and each text equals `transformers` alone."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    AutoModel.from_config(_tiny_family_model(family)).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    nlp = make_nlp(tmp_path, layers=[0], store_layers=True)
    _assert_padded_batches_match(nlp, tokenizer, model, [0], broadcast)
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    assert runner.runner is not runner.encoder.module  # still cut: the layers above the first are not run


def test_padding_sensitive_model_gets_unpadded_batches(minilm_dir, tmp_path):
    """ConvBERT's span convolutions read the padding, so `transformers` itself
    gives a padded text other states than the text alone. Its windows are
    batched by equal length, unpadded, and each text equals `transformers`
    alone, as with any other model."""
    import torch
    from transformers import AutoModel, AutoTokenizer, ConvBertConfig

    torch.manual_seed(0)
    config = ConvBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, embedding_size=32)
    AutoModel.from_config(config).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    encoded = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    n = int(encoded["attention_mask"][0].sum())
    with torch.no_grad():
        padded = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
        alone = model(input_ids=encoded["input_ids"][:1, :n]).last_hidden_state
    assert (padded[0, :n] - alone[0]).abs().max() > 1e-3  # the premise: padding is not neutral here

    nlp = make_nlp(tmp_path, layers=[0, 2], store_layers=True)
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    assert not runner.pads and get_runner(make_nlp(minilm_dir).get_pipe("ctxembed_bert").encoder).pads
    (run,) = runner.runs([nlp.make_doc(t) for t in TEXTS])
    batches = runner.prepare(run).batches
    assert all(batch.attention_mask is None or bool(batch.attention_mask.all()) for batch in batches)
    for text, doc in zip(TEXTS, nlp.pipe(TEXTS)):
        states, offsets = hf_hidden_states(tokenizer, model, text)
        expected = numpy.stack([pool(states[i], token_pieces(doc, offsets), "mean") for i in [0, 2]])
        numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["roberta", "ibert"])
def test_default_window_of_a_model_numbering_positions_after_padding(minilm_dir, tmp_path, family):
    """RoBERTa-style models number positions from padding_idx + 1, so they take
    two pieces fewer than their position table has rows. With a tokenizer
    saved without a length limit, the default window is still the longest
    input `transformers` accepts, and a doc longer than it runs. (I-BERT's
    position table is not a torch Embedding: its window was two pieces too
    long, an IndexError inside `transformers`.)"""
    import torch
    from transformers import AutoModel, AutoTokenizer, IBertConfig, RobertaConfig

    torch.manual_seed(0)
    config_class = {"roberta": RobertaConfig, "ibert": IBertConfig}[family]
    config = config_class(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=24, pad_token_id=0)
    AutoModel.from_config(config).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir, model_max_length=int(1e30)).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    runner = get_runner(make_nlp(tmp_path).get_pipe("ctxembed_bert").encoder)
    framed = runner.window + runner.n_special
    with torch.no_grad():
        model(input_ids=torch.full((1, framed), 5))  # the longest window fits ...
        with pytest.raises(IndexError):
            model(input_ids=torch.full((1, framed + 1), 5))  # ... and is the longest that does
    nlp = make_nlp(tmp_path)
    doc = nlp(" ".join(TEXTS))
    assert len(AutoTokenizer.from_pretrained(tmp_path)(doc.text)["input_ids"]) > 2 * framed
    assert numpy.isfinite(doc.tensor).all() and all(token.has_vector for token in doc if not token.is_space)


@pytest.mark.parametrize("family", ["xlm", "flaubert"])
def test_a_model_that_reads_token_types_as_words_is_refused_until_its_tokenizer_gives_none(
        minilm_dir, tmp_path, family):
    """Windows go in without token_type_ids. XLM and FlauBERT add the word
    embedding row of each type id to every piece (for the zeros a tokenizer
    gives one text, token 0's row), so their vectors differed from
    `transformers` on `tokenizer(text)` everywhere (by 2.4), silently. Refused,
    naming the component, setting and value; with a tokenizer saved without
    token_type_ids, as its error says, every vector equals `transformers`'."""
    import torch
    from transformers import AutoModel, AutoTokenizer, FlaubertConfig, XLMConfig

    torch.manual_seed(0)
    config_class = {"xlm": XLMConfig, "flaubert": FlaubertConfig}[family]
    # pad_index 2 as the released checkpoints have it: row 0 is a word's, not zeros.
    config = config_class(vocab_size=30522, emb_dim=32, n_layers=2, n_heads=2, max_position_embeddings=64,
                          pad_index=2)
    AutoModel.from_config(config).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    tokenizer, model = AutoTokenizer.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path).eval()
    encoded = tokenizer(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        typed = model(**encoded).last_hidden_state
        untyped = model(input_ids=encoded["input_ids"]).last_hidden_state
    assert (typed - untyped).abs().max() > 0.1  # the premise: the type ids change every state
    with pytest.raises(SettingError) as caught:
        make_nlp(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"[ctxembed_bert] name = '{tmp_path}': model_type '{family}'")
    assert "token_type_ids" in message and '"model_input_names": ["input_ids", "attention_mask"]' in message

    AutoTokenizer.from_pretrained(minilm_dir, model_input_names=["input_ids", "attention_mask"]).save_pretrained(
        tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    nlp = make_nlp(tmp_path, layers=[0, 1, 2], store_layers=True)
    for text, doc in zip(TEXTS, nlp.pipe(TEXTS)):
        states, offsets = hf_hidden_states(tokenizer, model, text)
        expected = numpy.stack([pool(states[i], token_pieces(doc, offsets), "mean") for i in [0, 1, 2]])
        numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-4, rtol=0)


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


WHITESPACE_TEXTS = ["hello  world again", "hello world\n\nagain and\tagain", "  New York City is big  ", "a \u00a0 b"]
PIECE_SENTENCES = ["It was nice out this morning when I ran to the park.", "New York City is big",
                   "hello world again and again"] * 10


def _sentencepiece_model(path):
    """A tiny XLM-R with a SentencePiece-style (Metaspace, unigram) tokenizer."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    backend = SentencePieceUnigramTokenizer()
    backend.train_from_iterator(PIECE_SENTENCES, vocab_size=120, unk_token="<unk>",
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=backend._tokenizer, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                        model_max_length=128)
    return tokenizer, XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                       **_SMALL))


def _byte_level_bpe_model(path):
    """A tiny RoBERTa with a byte-level BPE tokenizer (roberta-base's offset settings)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(PIECE_SENTENCES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.mkdir(parents=True, exist_ok=True)
    backend.model.save(str(path))
    tokenizer = RobertaTokenizerFast(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=128)
    return tokenizer, RobertaModel(RobertaConfig(vocab_size=300, pad_token_id=1, **_SMALL))


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=130)


@pytest.mark.parametrize("build", [_sentencepiece_model, _byte_level_bpe_model], ids=["sentencepiece", "bpe"])
def test_whitespace_tokens_take_no_piece_with_any_tokenizer(tmp_path, build):
    """A SentencePiece or byte-level BPE tokenizer gives the piece after a run of
    spaces offsets that cover the last space ("▁w" covers " w"), so the whitespace
    token took a copy of the next word's first piece (|v| 5.7): with WordPiece,
    and in ELMo, whitespace tokens have no vector. Every other token stays exact."""
    import torch

    torch.manual_seed(0)
    tokenizer, model = build(tmp_path / "vocab")
    tokenizer.save_pretrained(tmp_path / "model")
    model.eval().save_pretrained(tmp_path / "model")
    nlp = make_nlp(tmp_path / "model", layers=[-1])
    for text in WHITESPACE_TEXTS:
        doc = nlp(text)
        states, offsets = hf_hidden_states(tokenizer, model, text)
        assert any(t.is_space for t in doc)
        for token in doc:
            if token.is_space:
                assert not token.has_vector and not doc._.ctx_vectors[token.i].any(), (text, token.i)
        numpy.testing.assert_allclose(doc._.ctx_vectors, pool(states[-1], token_pieces(doc, offsets), "mean"),
                                      atol=1e-5, rtol=0)


def test_specials_are_placed_where_the_tokenizer_gives_no_piece_for_a_probe_letter(tmp_path):
    """A BPE vocabulary without "a" and without an unknown token gives "a" no
    piece. The runner read its windows' special tokens off `tokenizer("a")`,
    found no text between them, and appended both after each window ("б в
    [CLS] [SEP]"): every vector was off (by up to 1.04 here). Each text equals
    `transformers` on it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, **{c: 3 + i for i, c in enumerate(
        "бвгдежзиклмнопрст")}}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                        pad_token="[PAD]")
    assert tokenizer("a", add_special_tokens=False)["input_ids"] == []  # the premise
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), pad_token_id=0, **_SMALL)).eval()
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    nlp = make_nlp(tmp_path, layers=[-1])
    for text in ["бв гд вб", "прост лес, где мост", "вот"]:
        doc = nlp(text)
        states, offsets = hf_hidden_states(tokenizer, model, text)
        numpy.testing.assert_allclose(doc._.ctx_vectors, pool(states[-1], token_pieces(doc, offsets), "mean"),
                                      atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet"])
def test_relative_position_families_are_batch_independent_under_small_budgets(minilm_dir, tmp_path, family):
    """Relative positions are computed from the padded batch's length: a doc's
    vectors must not depend on which docs share its forward batches, at a
    budget of 64 pieces (a window to a batch) or 300 (windows of several docs
    padded together), with cut windows; and each budget gives the same vectors."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    AutoModel.from_config(_tiny_family_model(family)).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    long_text = " ".join(TEXTS * 12)  # cut into several windows of 48 pieces
    texts = [TEXTS[0], long_text, TEXTS[2], TEXTS[1][:20], long_text[:300]]
    outputs, masks = {}, []
    for budget in (64, 300):
        nlp = make_nlp(tmp_path, layers=[0, 1, 3], store_layers=True, window=48, stride=32, max_batch_items=budget)
        masks.clear()
        hook = get_runner(nlp.get_pipe("ctxembed_bert").encoder).encoder.module.register_forward_pre_hook(
            lambda module, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True)
        try:
            together = [doc._.ctx_layers for doc in nlp.pipe(texts, batch_size=5)]
        finally:
            hook.remove()
        # The premise: windows of several docs share padded batches.
        assert any(m is not None and m.shape[0] > 1 and not bool(m.bool().all()) for m in masks)
        for text, got in zip(texts, together):
            numpy.testing.assert_allclose(got, nlp(text)._.ctx_layers, atol=1e-5, rtol=0)
        outputs[budget] = together
    for a, b in zip(outputs[64], outputs[300]):
        numpy.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
