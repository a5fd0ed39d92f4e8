"""Weights load whole or not at all: damaged model directories give clear errors.

Every case copies the tiny random BERT (`tiny_bert_dir`) into tmp_path,
damages one thing, and checks that `load_encoder` raises a `SettingError`
naming the component instance, the file and the offending key or setting.
"""
import json
import pickle
import resource
import shutil
import threading
from pathlib import Path

import pytest
import torch

from spacy_ctxembed.errors import SettingError
from spacy_ctxembed.models import hf_loading
from spacy_ctxembed.models.hf_loading import (
    WEIGHTS_FILE,
    HFEncoder,
    load_encoder,
    resolve_model_dir,
)

from .conftest import run_in_threads

COMPONENT = "bert_a"
TEXT = "Weights load whole, or not at all: a short test sentence."


def copy_model(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(directory: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / WEIGHTS_FILE))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS_FILE),
              metadata={"format": "pt"})


def load_error(directory: Path, **kwargs) -> str:
    with pytest.raises(SettingError) as excinfo:
        load_encoder(directory, component=COMPONENT, **kwargs)
    message = str(excinfo.value)
    assert message.startswith(f"[{COMPONENT}] "), message
    return message


def hidden_states(module, tokenizer):
    inputs = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        out = module(**inputs, output_hidden_states=True)
    return out.hidden_states


def assert_same_hidden_states(encoder: HFEncoder, reference_module, atol: float = 1e-5) -> None:
    ours = hidden_states(encoder.module, encoder.tokenizer)
    theirs = hidden_states(reference_module, encoder.tokenizer)
    assert len(ours) == len(theirs) == encoder.n_hidden_states
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def assert_materialised(module) -> None:
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        assert not t.is_meta, name
        if t.is_floating_point():
            assert torch.isfinite(t).all(), name


# --- damaged weights -----------------------------------------------------------------


def test_renamed_key(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    old = "encoder.layer.0.attention.self.query.weight"
    new = "encoder.layer.0.attention.self.qry.weight"
    rewrite_weights(d, lambda t: t.__setitem__(new, t.pop(old)))
    message = load_error(d)
    assert WEIGHTS_FILE in message
    assert old in message and new in message
    assert "2 problems" in message


def test_missing_layer(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)

    def drop_layer(tensors):
        for key in [k for k in tensors if k.startswith("encoder.layer.1.")]:
            del tensors[key]

    rewrite_weights(d, drop_layer)
    message = load_error(d)
    assert WEIGHTS_FILE in message
    assert "encoder.layer.1." in message and "is missing" in message
    assert "16 problems" in message and "and 11 more" in message  # at most 5 listed


def test_unexpected_tensor(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    rewrite_weights(d, lambda t: t.__setitem__("encoder.layer.0.adapter.weight", torch.ones(4, 32)))
    message = load_error(d)
    assert WEIGHTS_FILE in message
    assert "encoder.layer.0.adapter.weight" in message and "[4, 32]" in message


def test_wrong_shape(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    key = "encoder.layer.0.intermediate.dense.weight"
    rewrite_weights(d, lambda t: t.__setitem__(key, torch.zeros(63, 32)))
    message = load_error(d)
    assert WEIGHTS_FILE in message and key in message
    assert "[63, 32]" in message and "[64, 32]" in message


def test_huge_hidden_size_fails_before_allocating(tiny_bert_dir, tmp_path, monkeypatch):
    from transformers import AutoModel

    d = copy_model(tiny_bert_dir, tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["hidden_size"] = 65536  # ~17 GB of float32 weights if it were allocated
    (d / "config.json").write_text(json.dumps(config))

    def must_not_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called before the shapes were checked")

    monkeypatch.setattr(AutoModel, "from_pretrained", must_not_load)
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = load_error(d)
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb) / 1024
    assert peak_growth_mb < 500, peak_growth_mb
    assert WEIGHTS_FILE in message and "config.json" in message
    assert "hidden_size=65536" in message
    assert "embeddings.word_embeddings.weight" in message and "[30522, 65536]" in message


def test_nan_in_a_tensor(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    key = "encoder.layer.1.output.dense.bias"

    def poison(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key][3] = float("nan")

    rewrite_weights(d, poison)
    message = load_error(d)
    assert WEIGHTS_FILE in message and key in message and "NaN" in message


def test_unreadable_safetensors(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    message = load_error(d)
    assert WEIGHTS_FILE in message and "could not be read" in message


# --- damaged config and tokenizer ----------------------------------------------------


def test_truncated_config_json(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    text = (d / "config.json").read_text()
    (d / "config.json").write_text(text[: len(text) // 2])
    message = load_error(d)
    assert "config.json is not valid JSON" in message and "JSONDecodeError" in message


def test_missing_config_json(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    (d / "config.json").unlink()
    message = load_error(d, setting="model")
    assert "] model = " in message and "no config.json" in message


def test_truncated_tokenizer_json(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    text = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(text[: len(text) // 2])
    message = load_error(d)
    assert str(d) in message
    assert "tokenizer.json is not valid JSON" in message and "JSONDecodeError" in message


@pytest.mark.parametrize("kept, has", [
    ((), "has no tokenizer files: it needs a tokenizer.json, or a slow tokenizer's files to convert"),
    (("tokenizer_config.json", "special_tokens_map.json"),
     "has tokenizer_config.json, special_tokens_map.json but no vocabulary: it needs a tokenizer.json, or a slow "
     "tokenizer's files to convert"),
])
def test_a_directory_without_a_vocabulary_says_which_files_are_missing(tiny_bert_dir, tmp_path, kept, has):
    """Its message carried transformers' incidental "TypeError: stat: path should
    be string, ... not NoneType" and advice to convert a slow tokenizer that is not there."""
    d = copy_model(tiny_bert_dir, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if name not in kept:
            (d / name).unlink()
    message = load_error(d)
    assert message.startswith(f"[{COMPONENT}] name = {str(d)!r}: the tokenizer could not be loaded: the directory "
                              f"{has}")
    assert "(vocab.txt; vocab.json and merges.txt; or a sentencepiece model such as spiece.model)" in message
    assert "save_pretrained(DIR)" in message
    assert "TypeError" not in message and "NoneType" not in message and "converted from the slow one" not in message


def test_garbage_tokenizer_config(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    (d / "tokenizer_config.json").write_text("{ this is not json")
    message = load_error(d)
    assert str(d) in message and "tokenizer_config.json" in message


# --- only safetensors ----------------------------------------------------------------


class _Boobytrap:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_only_directory_is_never_unpickled(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    (d / WEIGHTS_FILE).unlink()
    marker = tmp_path / "unpickled"
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Boobytrap(marker), f)
    message = load_error(d)
    assert "only safetensors" in message and "pytorch_model.bin" in message
    command = (
        'python -c "from transformers import AutoModel; '
        f"AutoModel.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\""
    )
    assert command in message
    assert not marker.exists()


def test_no_weights_at_all(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    (d / WEIGHTS_FILE).unlink()
    message = load_error(d, setting="model")
    assert f"no {WEIGHTS_FILE}" in message and "] model = " in message


# --- good directories load, and equal transformers -----------------------------------


def test_minilm_matches_transformers(minilm_dir, hf_reference):
    _, reference = hf_reference
    encoder = load_encoder(minilm_dir, component=COMPONENT)
    assert not encoder.module.training
    assert encoder.module.pooler is not None  # the file has a pooler: loaded whole
    assert_materialised(encoder.module)
    assert_same_hidden_states(encoder, reference)


def test_tiny_matches_transformers(tiny_bert_dir):
    from transformers import AutoModel

    encoder = load_encoder(tiny_bert_dir, component=COMPONENT)
    assert_materialised(encoder.module)
    assert_same_hidden_states(encoder, AutoModel.from_pretrained(tiny_bert_dir).eval())


def test_missing_pooler_is_left_out(tiny_bert_dir, tmp_path):
    from transformers import AutoModel

    d = copy_model(tiny_bert_dir, tmp_path)

    def drop_pooler(tensors):
        for key in [k for k in tensors if k.startswith("pooler.")]:
            del tensors[key]

    rewrite_weights(d, drop_pooler)
    encoder = load_encoder(d, component=COMPONENT)
    assert encoder.module.pooler is None  # not randomly initialised: absent
    assert_materialised(encoder.module)
    assert_same_hidden_states(encoder, AutoModel.from_pretrained(tiny_bert_dir).eval())


def test_head_model_checkpoint_loads(tiny_bert_dir, tmp_path):
    """A checkpoint saved from BertForMaskedLM ("bert." prefix, a "cls." head)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertForMaskedLM

    d = tmp_path / "mlm"
    torch.manual_seed(1)
    BertForMaskedLM(AutoConfig.from_pretrained(tiny_bert_dir)).save_pretrained(d, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(d)
    encoder = load_encoder(d, component=COMPONENT)
    assert encoder.module.pooler is None
    assert_materialised(encoder.module)
    assert_same_hidden_states(encoder, AutoModel.from_pretrained(d).eval())

    # ... but a damaged encoder tensor under the prefix is still an error.
    key = "bert.encoder.layer.0.output.dense.weight"
    rewrite_weights(d, lambda t: t.pop(key))
    message = load_error(d)
    assert WEIGHTS_FILE in message and "encoder.layer.0.output.dense.weight" in message


def test_save_writes_safetensors_that_load(tiny_bert_dir, tmp_path):
    encoder = load_encoder(tiny_bert_dir, component=COMPONENT)
    out = tmp_path / "saved"
    encoder.save(out)
    assert (out / WEIGHTS_FILE).is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.bin"))
    again = load_encoder(out, component=COMPONENT, setting="model")
    assert_same_hidden_states(again, encoder.module, atol=0)


def test_save_keeps_a_model_over_the_shard_size_in_one_file(tiny_bert_dir, tmp_path, monkeypatch):
    """`save_pretrained` shards a model over 5 GB (xlm-roberta-xl, deberta-v2-xxlarge) by
    default, and only a single model.safetensors loads: a pipeline saved such a model
    and could not load it back. Here the default shard size is made tiny instead."""
    from transformers import PreTrainedModel

    save_pretrained = PreTrainedModel.save_pretrained

    def small_shards(self, *args, **kwargs):
        kwargs.setdefault("max_shard_size", "100KB")
        return save_pretrained(self, *args, **kwargs)

    encoder = load_encoder(tiny_bert_dir, component=COMPONENT)
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", small_shards)
    small_shards(encoder.module, tmp_path / "sharded", safe_serialization=True)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1  # the tiny model is over 100KB
    encoder.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").glob("*.safetensors")) == [WEIGHTS_FILE]
    assert_same_hidden_states(load_encoder(tmp_path / "saved", component=COMPONENT, setting="model"),
                              encoder.module, atol=0)


def test_concurrent_first_loads(tiny_bert_dir, tmp_path):
    results = run_in_threads(8, lambda: load_encoder(tiny_bert_dir, component=COMPONENT))
    outputs = []
    for encoder in results:
        assert encoder is not None
        assert_materialised(encoder.module)
        outputs.append(hidden_states(encoder.module, encoder.tokenizer))
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"missing_keys": ["encoder.layer.0.output.dense.weight"]}, "encoder.layer.0.output.dense.weight"),
        ({"unexpected_keys": ["encoder.layer.9.extra"]}, "encoder.layer.9.extra"),
        ({"mismatched_keys": [("embeddings.LayerNorm.bias", (3,), (32,))]}, "embeddings.LayerNorm.bias"),
        ({"meta": True}, "meta device"),
    ],
)
def test_second_line_of_defence(tiny_bert_dir, monkeypatch, info, expected):
    """What from_pretrained reports (or leaves on the meta device) is checked too."""
    from transformers import AutoModel

    real = AutoModel.from_pretrained

    def reporting(*args, **kwargs):
        module, _ = real(*args, **kwargs)
        if info.get("meta"):
            module.encoder.layer[1].output.dense.to("meta")
        report = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        report.update({k: v for k, v in info.items() if k != "meta"})
        return module, report

    monkeypatch.setattr(AutoModel, "from_pretrained", reporting)
    message = load_error(tiny_bert_dir)
    assert WEIGHTS_FILE in message and expected in message


def test_load_lock_is_module_level():
    assert isinstance(hf_loading._LOAD_LOCK.get(), type(threading.Lock()))
    assert hf_loading._LOAD_LOCK.get() is hf_loading._LOAD_LOCK.get()


def test_resolve_model_dir_names_component(tmp_path):
    with pytest.raises(SettingError, match=r"^\[bert_b\] name = .*no such model directory"):
        resolve_model_dir(str(tmp_path / "nowhere" / "model"), component="bert_b")
    assert resolve_model_dir(str(tmp_path), component="bert_b") == tmp_path


def test_shards_and_a_renamed_weights_file_get_advice_that_works(tiny_bert_dir, tmp_path):
    """Shards (with their index) get the merge command, which must work; a single
    weights file under another name was taken for shards, and the merge command
    given then failed (transformers finds no model.safetensors either)."""
    import subprocess
    import sys

    from transformers import AutoModel

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_bert_dir, sharded)
    (sharded / WEIGHTS_FILE).unlink()
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / f"{WEIGHTS_FILE}.index.json").is_file()  # the premise: real shards
    with pytest.raises(SettingError, match="merge the shards once with: ") as error:
        load_encoder(sharded, component=COMPONENT)
    command = str(error.value).split("merge the shards once with: ", 1)[1]
    assert command.startswith('python -c "') and command.endswith('"')
    subprocess.run([sys.executable, "-c", command[len('python -c "'):-1]], check=True, capture_output=True)
    assert_same_hidden_states(load_encoder(sharded, component=COMPONENT),
                              load_encoder(tiny_bert_dir, component=COMPONENT).module, atol=0)

    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_bert_dir, renamed)
    (renamed / WEIGHTS_FILE).rename(renamed / "pytorch_model.safetensors")
    with pytest.raises(SettingError, match=r"only pytorch_model\.safetensors: only a file named model\.safetensors "
                                           r"is read; if pytorch_model\.safetensors holds this model's weights, "
                                           r"rename it to model\.safetensors"):
        load_encoder(renamed, component=COMPONENT)


def test_exactly_five_problems_are_all_listed_without_a_count_of_more(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    dropped = ["encoder.layer.1.output.dense.weight", "encoder.layer.1.output.dense.bias",
               "encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.intermediate.dense.bias",
               "encoder.layer.1.attention.self.query.weight"]

    def drop(tensors):
        for k in dropped:
            del tensors[k]

    rewrite_weights(d, drop)
    message = load_error(d)
    assert "5 problems: " in message
    assert all(repr(k) in message for k in dropped)
    assert "more" not in message


def test_an_integer_tensor_where_a_float_weight_belongs_is_refused(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    key = "encoder.layer.0.output.dense.weight"

    def to_int(tensors):
        tensors[key] = tensors[key].round().to(torch.int64)

    rewrite_weights(d, to_int)
    message = load_error(d)
    assert WEIGHTS_FILE in message and repr(key) in message
    assert "has dtype I64, expected a floating-point dtype" in message


def test_a_bfloat16_checkpoint_loads(tiny_bert_dir, tmp_path):
    from transformers import AutoModel

    d = copy_model(tiny_bert_dir, tmp_path)
    rewrite_weights(d, lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items() if v.is_floating_point()}))
    encoder = load_encoder(d, component=COMPONENT)
    assert_materialised(encoder.module)
    reference = AutoModel.from_pretrained(d, torch_dtype=torch.float32).eval()
    assert_same_hidden_states(encoder, reference)


def test_a_checkpoint_with_old_layernorm_names_loads(tiny_bert_dir, tmp_path):
    """Old TF-converted BERT checkpoints name LayerNorm weights gamma/beta; transformers renames them."""
    from transformers import AutoModel

    d = copy_model(tiny_bert_dir, tmp_path)

    def rename(tensors):
        for k in [k for k in tensors if "LayerNorm." in k]:
            tensors[k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")] = \
                tensors.pop(k)

    rewrite_weights(d, rename)
    encoder = load_encoder(d, component=COMPONENT)
    assert_materialised(encoder.module)
    assert_same_hidden_states(encoder, AutoModel.from_pretrained(tiny_bert_dir).eval())


def _reported_by_transformers(monkeypatch, **info):
    """`from_pretrained(..., output_loading_info=True)` loads as it does, and reports `info`: what the
    second line of defence (after ctxembed's own plan of the checkpoint's tensors) reads."""
    from transformers import AutoModel

    real = AutoModel.from_pretrained

    def reporting(*args, **kwargs):
        module, _ = real(*args, **kwargs)
        return module, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": [], **info}

    monkeypatch.setattr(AutoModel, "from_pretrained", reporting)


def test_second_line_of_defence_forgives_a_missing_pooler(tiny_bert_dir, monkeypatch):
    """transformers reporting the pooler missing is no fault: the encoder never uses it."""
    _reported_by_transformers(monkeypatch, missing_keys=["pooler.dense.weight", "pooler.dense.bias"])
    encoder = load_encoder(tiny_bert_dir, component=COMPONENT)
    assert_materialised(encoder.module)


def test_a_tokenizer_that_fails_with_valid_files_names_them_all_and_its_error(tiny_bert_dir, tmp_path):
    import json

    d = copy_model(tiny_bert_dir, tmp_path)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "NoSuchTokenizerFast"
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    message = load_error(d)
    present = [n for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
               if (d / n).is_file()]
    assert "vocab.txt" in present
    assert f"the tokenizer could not be loaded from {', '.join(present)} (" in message
    assert "NoSuchTokenizerFast" in message
    assert "not valid JSON" not in message
    assert "without a tokenizer.json" not in message


def test_code_in_the_model_directory_is_never_run(tiny_bert_dir, tmp_path):
    import json

    d = copy_model(tiny_bert_dir, tmp_path)
    marker = tmp_path / "code_ran"
    (d / "configuration_trap.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import BertConfig\n\n\n"
        "class TrapConfig(BertConfig):\n    pass\n"
    )
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_trap.TrapConfig",
                          "AutoModel": "configuration_trap.TrapModel",
                          "AutoTokenizer": ["configuration_trap.TrapTokenizer", None]}
    (d / "config.json").write_text(json.dumps(config))
    try:
        load_encoder(d, component=COMPONENT)
    except Exception:  # noqa: BLE001 - loading may refuse it; running its code is what must not happen
        pass
    assert not marker.exists()


def test_a_config_json_that_is_not_an_object_is_named_so(tiny_bert_dir, tmp_path):
    d = copy_model(tiny_bert_dir, tmp_path)
    (d / "config.json").write_text('["bert", 32]')
    message = load_error(d)
    assert message == f"[{COMPONENT}] name = {str(d)!r}: config.json is not a JSON object"


def test_a_partial_pooler_is_left_out_too(tiny_bert_dir, tmp_path):
    from transformers import AutoModel

    d = copy_model(tiny_bert_dir, tmp_path)
    rewrite_weights(d, lambda t: t.pop("pooler.dense.bias"))
    encoder = load_encoder(d, component=COMPONENT)
    assert encoder.module.pooler is None
    assert_materialised(encoder.module)
    assert_same_hidden_states(encoder, AutoModel.from_pretrained(tiny_bert_dir).eval())


def test_second_line_of_defence_reports_loading_errors(tiny_bert_dir, monkeypatch):
    """Errors transformers reports while it copies the weights refuse the load, quoted."""
    _reported_by_transformers(monkeypatch, error_msgs=["Error(s) in loading state_dict: copying a param failed"])
    message = load_error(tiny_bert_dir)
    assert f"{WEIGHTS_FILE} did not load whole: 1 problem: " in message
    assert "copying a param failed" in message


# --- other families, and config.json values transformers cannot use ------------------


def _edit_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("fields, expected", ids=["unknown-model-type", "no-automodel", "cannot-build"], argvalues=[
    # Not a model_type transformers knows (a typo, or a newer transformers' model).
    ({"model_type": "no-such-model"}, "config.json could not be loaded by transformers.AutoConfig (ValueError: "),
    # A config transformers knows that no AutoModel class builds (REALM's retriever).
    ({"model_type": "realm"}, "model_type 'realm' in config.json has no transformers AutoModel class; use a "
                              "BERT-family encoder"),
    # Built, the attention layer refuses it: 32 wide in 3 heads.
    ({"num_attention_heads": 3}, "config.json describes a model that cannot be built (ValueError: The hidden size "
                                 "(32) is not a multiple of the number of attention heads (3))"),
])
def test_a_config_json_transformers_cannot_build_is_named(tiny_bert_dir, tmp_path, monkeypatch, fields, expected):
    from transformers import AutoModel

    def must_not_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called for a config that cannot be built")

    d = copy_model(tiny_bert_dir, tmp_path)
    _edit_json(d / "config.json", **fields)
    monkeypatch.setattr(AutoModel, "from_pretrained", must_not_load)
    message = load_error(d)
    assert message.startswith(f"[{COMPONENT}] name = {str(d)!r}: {expected}"), message


def test_a_sentencepiece_tokenizer_without_tokenizer_json_says_how_to_convert_it(tiny_bert_dir, tmp_path):
    """A DeBERTa-v3 or ALBERT folder with only its spm.model needs the slow tokenizer
    converted, which takes sentencepiece (not a dependency): the error says where
    and how to write the tokenizer.json once."""
    d = copy_model(tiny_bert_dir, tmp_path)
    for name in ("tokenizer.json", "vocab.txt"):
        (d / name).unlink()
    (d / "spm.model").write_bytes(b"\x00 not a sentencepiece model")
    _edit_json(d / "tokenizer_config.json", tokenizer_class="DebertaV2Tokenizer")
    message = load_error(d)
    assert "the tokenizer could not be loaded from tokenizer_config.json, special_tokens_map.json, spm.model (" \
           in message
    assert message.endswith("; without a tokenizer.json the fast tokenizer has to be converted from the slow one: do "
                            "that once where the converter's dependencies (sentencepiece, protobuf) are installed, "
                            "with AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR), which writes "
                            "tokenizer.json"), message


def test_an_architecture_that_always_has_a_pooler_loads_without_one_the_same_every_time(tmp_path, minilm_dir, caplog):
    """SqueezeBERT builds its pooler whatever it is given. transformers drew the
    weights the file lacks from torch's global RNG, so two loads of one folder
    differed (and so did the signature of their outputs, which fingerprints
    every tensor: `.similarity()` refused docs of two pipelines initialised from
    one folder); the hidden states must equal transformers' all the same."""
    import logging

    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer, SqueezeBertConfig, SqueezeBertModel

    d = tmp_path / "squeezebert"
    torch.manual_seed(0)
    SqueezeBertModel(SqueezeBertConfig(vocab_size=30522, hidden_size=32, embedding_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
                     ).save_pretrained(d, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(d)

    def drop_pooler(tensors):
        for key in [k for k in tensors if k.startswith("pooler.")]:
            del tensors[key]

    rewrite_weights(d, drop_pooler)
    assert not [k for k in load_file(str(d / WEIGHTS_FILE)) if "pooler" in k]  # the premise

    loads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with caplog.at_level(logging.INFO, logger=hf_loading.__name__):
            loads.append(load_encoder(d, component=COMPONENT))
    assert f"[{COMPONENT}] {d} has no pooler weights; SqueezeBertModel always has a pooler" in caplog.text
    first, second = (encoder.module.state_dict() for encoder in loads)
    assert "pooler.dense.weight" in first and first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
    assert_materialised(loads[0].module)
    assert_same_hidden_states(loads[0], AutoModel.from_pretrained(d).eval())


def _deberta_with_unused_positions(tmp_path: Path, minilm_dir: Path) -> Path:
    """A tiny DeBERTa-v2 without absolute positions (`position_biased_input = false`,
    as DeBERTa-v3 sets it) whose file holds a `position_embeddings` table all the
    same: a tensor the architecture declares harmless (`_keys_to_ignore_on_load_unexpected`)."""
    from transformers import AutoModel, AutoTokenizer, DebertaV2Config

    d = tmp_path / "deberta"
    torch.manual_seed(0)
    AutoModel.from_config(DebertaV2Config(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                          relative_attention=True, pos_att_type=["p2c", "c2p"],
                                          position_biased_input=False)).save_pretrained(d, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(d)
    rewrite_weights(d, lambda t: t.__setitem__("embeddings.position_embeddings.weight", torch.randn(64, 32)))
    return d


def test_deberta_v2_position_embeddings_it_does_not_use_are_ignored_as_transformers_does(tmp_path, minilm_dir):
    """Such a checkpoint loads, and gives transformers' states. Any other unused tensor is still refused."""
    from transformers import AutoModel

    d = _deberta_with_unused_positions(tmp_path, minilm_dir)
    encoder = load_encoder(d, component=COMPONENT)
    assert_materialised(encoder.module)
    assert_same_hidden_states(encoder, AutoModel.from_pretrained(d).eval())

    rewrite_weights(d, lambda t: t.__setitem__("embeddings.extra.weight", torch.ones(4, 32)))
    message = load_error(d)
    assert "'embeddings.extra.weight' is not a tensor of DebertaV2Model (shape [4, 32])" in message
    assert "position_embeddings" not in message


def test_second_line_of_defence_forgives_a_tensor_the_architecture_declares_harmless(tmp_path, minilm_dir,
                                                                                    monkeypatch):
    """transformers reporting that declared-harmless table as unused is no fault either."""
    d = _deberta_with_unused_positions(tmp_path, minilm_dir)
    _reported_by_transformers(monkeypatch, unexpected_keys=["embeddings.position_embeddings.weight"])
    assert_materialised(load_encoder(d, component=COMPONENT).module)


def test_a_model_that_reads_token_types_as_words_is_refused_until_its_tokenizer_gives_none(tmp_path, minilm_dir):
    """XLM adds the word embedding of each piece's token type id (for zeros,
    token 0's), and windows go in without type ids: with a tokenizer that
    makes them, no vector would equal transformers'. The remedy the error
    gives, a tokenizer that makes none, loads, and then every vector equals
    pooling over transformers' own states on `tokenizer(text)`."""
    import numpy
    from transformers import AutoModel, AutoTokenizer, XLMConfig, XLMModel

    from .conftest import make_nlp
    from .reference import hf_hidden_states, pool, token_pieces

    d = tmp_path / "xlm"
    torch.manual_seed(0)
    XLMModel(XLMConfig(vocab_size=30522, emb_dim=32, n_layers=2, n_heads=2, max_position_embeddings=64)
             ).save_pretrained(d, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(d)
    message = load_error(d)
    assert message.startswith(f"[{COMPONENT}] name = {str(d)!r}: model_type 'xlm' gives other hidden states with the "
                              "token_type_ids its tokenizer makes ([0] for one text) than without them"), message
    assert '"model_input_names": ["input_ids", "attention_mask"] in tokenizer_config.json' in message

    _edit_json(d / "tokenizer_config.json", model_input_names=["input_ids", "attention_mask"])
    tokenizer = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    assert "token_type_ids" not in tokenizer(TEXT)  # the premise: transformers' input has none either
    doc = make_nlp(d, layers=[0, 2], store_layers=True)(TEXT)
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    pieces = token_pieces(doc, offsets)
    expected = numpy.stack([pool(states[i], pieces, "mean") for i in (0, 2)])
    numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-4, rtol=0)
