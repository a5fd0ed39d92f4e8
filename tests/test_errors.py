"""Each bad setting fails early, with the setting and the value in the message."""
import json

import pytest
import spacy

from spacy_ctxembed.errors import SettingError

from .conftest import make_nlp


def _add(config):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=config)
    return nlp


@pytest.mark.parametrize(
    "config, pattern",
    [
        ({"pooling": "avg"}, r"pooling = 'avg'.*'mean'"),
        ({"combine": "sum"}, r"combine = 'sum'.*'scalar_mix'"),
        ({"layers": []}, r"layers = \[\]"),
        ({"model": {"precision": "fp8"}}, r"precision = 'fp8'"),
        ({"model": {"window": 0}}, r"window = 0"),
    ],
)
def test_errors_at_add_pipe(config, pattern):
    with pytest.raises(Exception, match=pattern):
        _add(config)


def test_layer_out_of_range_at_initialize(minilm_dir):
    nlp = _add({"layers": [0, 7], "model": {"name": str(minilm_dir)}})
    with pytest.raises(SettingError, match=r"layers = \[0, 7\].*index 7 is out of range.*-7 \.\. 6"):
        nlp.initialize()


def test_window_larger_than_model(minilm_dir):
    nlp = _add({"model": {"name": str(minilm_dir), "window": 600}})
    with pytest.raises(SettingError, match=r"window = 600.*at most 510"):
        nlp.initialize()


def test_missing_model_directory(tmp_path):
    missing = str(tmp_path / "no-such-model")
    nlp = _add({"model": {"name": missing}})
    with pytest.raises(SettingError, match=r"name = '.*no-such-model': no such model directory"):
        nlp.initialize()


def test_hub_name_not_in_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    nlp = _add({"model": {"name": "some-org/never-downloaded"}})
    with pytest.raises(SettingError, match=r"name = 'some-org/never-downloaded'.*never downloaded at run time"):
        nlp.initialize()


def test_model_that_is_not_an_encoder(tmp_path, minilm_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30522)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    nlp = _add({"model": {"name": str(tmp_path)}})
    with pytest.raises(SettingError, match=r"name = .*model_type 'gpt2' is not an encoder"):
        nlp.initialize()


def test_tokenizer_that_is_not_fast(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=8)).save_pretrained(tmp_path)
    # CTRL's tokenizer exists only as a slow (Python) tokenizer.
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "UNK": 3}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CTRLTokenizer"}))
    nlp = _add({"model": {"name": str(tmp_path)}})
    with pytest.raises(SettingError, match=r"name = .*CTRLTokenizer\) is not a fast tokenizer"):
        nlp.initialize()


def test_stride_larger_than_window(tiny_bert_dir):
    with pytest.raises(SettingError, match=r"stride = 40: must not exceed window \(30\)"):
        make_nlp(tiny_bert_dir, window=30, stride=40)
