"""pipeline.saved: the records a saved component keeps, and the checks of a saved pipeline edited by hand."""
import json
import warnings

import numpy
import pytest
import spacy
import srsly
import torch
from thinc.api import Model, PyTorchShim

from spacy_ctxembed.errors import SettingError
from spacy_ctxembed.layers.scalar_mix import ScalarMix
from spacy_ctxembed.models import torch_bridge as tb
from spacy_ctxembed.pipeline import saved as sv

from .conftest import ctx_config, make_nlp
from .elmo_fixture import write_elmo_fixture
from .test_torch_bridge import _passthrough


def _encoder(n_layers=3, width=4):
    return Model("enc", lambda m, X, is_train: (X, None), dims={"nL": n_layers, "nO": width})


def _mix(n_layers=3, width=4, s=None, gamma=None):
    mix = ScalarMix(n_layers=n_layers)
    mix.set_dim("nI", width)
    mix.set_dim("nO", width)
    mix.set_param("s", numpy.zeros(n_layers, "f") if s is None else numpy.asarray(s, "f"))
    mix.set_param("gamma", numpy.ones(1, "f") if gamma is None else numpy.asarray(gamma, "f"))
    return mix


# --- check_format / read_cfg ---------------------------------------------------
@pytest.mark.parametrize("cfg", [{}, {"format": 1}, {"format": 2}])
def test_check_format_reads_formats_1_and_2(cfg):
    """A cfg without a format (v1), of format 1 or 2, is read."""
    sv.check_format("c", cfg, "p")


@pytest.mark.parametrize("cfg,shown,why", [
    ({"format": 3}, "3", "was written by a newer spacy-ctxembed"),
    ({"format": "2"}, "'2'", "is no format spacy-ctxembed writes (edited?)"),
    ({"format": True}, "True", "is no format spacy-ctxembed writes (edited?)"),
    ({"format": 1.0}, "1.0", "is no format spacy-ctxembed writes (edited?)"),
    ({"format": 0}, "0", "is no format spacy-ctxembed writes (edited?)"),
])
def test_check_format_refuses_others_naming_what_it_reads(cfg, shown, why):
    """Any other format is refused, saying it reads 1 and 2: a higher number as a newer version's, anything
    else as no format at all (`true` and `1.0` equal 1 in Python, and are none)."""
    with pytest.raises(SettingError) as err:
        sv.check_format("c", cfg, "the/cfg")
    assert str(err.value) == f"[c] cfg = 'the/cfg': format {shown} {why}; this one reads 1 and 2"


@pytest.mark.parametrize("cfg,kind", [([1], "list"), ("2", "str"), (None, "NoneType")])
def test_a_cfg_that_is_not_an_object_is_named_so(cfg, kind):
    """A cfg that is not a JSON object is no format at all: said so, not taken for a newer version's."""
    with pytest.raises(SettingError) as err:
        sv.check_format("c", cfg, "the/cfg")
    assert str(err.value) == f"[c] cfg = 'the/cfg': not a JSON object (a {kind}): not a saved ctxembed component's cfg"


def test_read_cfg_names_a_missing_folder_a_missing_file_and_bad_json(tmp_path):
    """A missing component folder says `exclude`; a missing file and invalid JSON are named."""
    with pytest.raises(SettingError, match=r"component's folder .* is missing \(was the pipeline saved with "
                                           r"this component in `exclude`\?\)"):
        sv.read_cfg("c", tmp_path / "nope" / "cfg")
    with pytest.raises(SettingError, match=r"^\[c\] cfg = .*: the file is missing$"):
        sv.read_cfg("c", tmp_path / "cfg")
    (tmp_path / "cfg").write_text("{")
    with pytest.raises(SettingError, match=r"^\[c\] cfg = .*: not valid JSON \(\w+\)$"):
        sv.read_cfg("c", tmp_path / "cfg")
    (tmp_path / "cfg").write_text(json.dumps({"format": 2, "x": 1}))
    assert sv.read_cfg("c", tmp_path / "cfg") == {"format": 2, "x": 1}


# --- check_combiner ---------------------------------------------------------------
def test_check_combiner_accepts_a_mix_that_fits():
    """A mix of the encoder's width and layer count, finite, is accepted."""
    sv.check_combiner("c", _encoder(), _mix(), "src")


def test_check_combiner_refuses_a_mix_of_another_width():
    """A mix saved beside an encoder of another width names both widths."""
    with pytest.raises(SettingError, match=r"^\[c\] combiner = 'src': it was saved beside an encoder of width 8, "
                                           r"but the loaded model's is 4"):
        sv.check_combiner("c", _encoder(width=4), _mix(width=8), "src")


@pytest.mark.parametrize("s,gamma,message", [
    ([0.0, 0.0], [1.0], r"weight 's' has shape \(2,\), expected \(3,\) for 3 layers"),
    ([0.0, 0.0, 0.0], [1.0, 1.0], r"weight 'gamma' has shape \(2,\), expected \(1,\) for 3 layers"),
    ([0.0, numpy.nan, 0.0], [1.0], r"weight 's' has non-finite values"),
    ([0.0, 0.0, 0.0], [numpy.inf], r"weight 'gamma' has non-finite values"),
])
def test_check_combiner_refuses_mix_weights_of_other_shapes_or_not_finite(s, gamma, message):
    """A mix's `s` must have one weight per encoder layer, `gamma` one value, all finite."""
    with pytest.raises(SettingError, match=r"^\[c\] combiner = 'src': " + message):
        sv.check_combiner("c", _encoder(n_layers=3), _mix(n_layers=3, s=s, gamma=gamma), "src")


# --- check_saved_combiner ------------------------------------------------------------
def test_check_saved_combiner_refuses_another_combiner_or_layer_count():
    """Saved nodes of another combiner name both; the same combiner saved for another layer count names both counts."""
    mix = _mix(n_layers=3)
    sv.check_saved_combiner("c", mix, None, "src")
    sv.check_saved_combiner("c", mix, [{"name": "scalar_mix", "dims": {"nL": 3}}], "src")
    sv.check_saved_combiner("c", mix, [{"name": "scalar_mix", "dims": {"nL": None}}], "src")
    with pytest.raises(SettingError, match=r"it was saved as mean_layers, but the config's \[model\.combiner\] is "
                                           r"scalar_mix"):
        sv.check_saved_combiner("c", mix, [{"name": "mean_layers", "dims": {}}], "src")
    with pytest.raises(SettingError, match=r"^\[c\] combiner = 'src': it was saved for 2 layer\(s\), but the "
                                           r"config's layers select 3"):
        sv.check_saved_combiner("c", mix, [{"name": "scalar_mix", "dims": {"nL": 2}}], "src")


def test_check_saved_combiner_refuses_another_inner_layer_under_the_same_outer_name():
    """A combiner of several nodes (a registered one wrapping a mix) whose
    config.cfg was edited to build another inner layer keeps its outer name:
    compared on the outer node alone, the edit loaded the saved weights into
    the other inner layer silently (thinc renames each node to its saved
    name). Every node's name is compared, and both lists are named."""
    def wrapper(inner):
        return Model("my_combiner", lambda m, X, is_train: (X, None), layers=[inner])

    mix = wrapper(_mix(n_layers=3))
    sv.check_saved_combiner("c", mix, [{"name": "my_combiner", "dims": {}}, {"name": "scalar_mix", "dims": {}}],
                            "src")
    with pytest.raises(SettingError, match=r"^\[c\] combiner = 'src': it was saved as \['my_combiner', "
                                           r"'mean_layers'\], but the config's \[model\.combiner\] is "
                                           r"\['my_combiner', 'scalar_mix'\]"):
        sv.check_saved_combiner("c", mix, [{"name": "my_combiner", "dims": {}}, {"name": "mean_layers", "dims": {}}],
                                "src")


# --- saved_dim / is_v1_bytes / load_failure -----------------------------------------
def test_saved_dim_reads_integer_dims_only():
    """A node's dim is an int (not a bool), else None."""
    assert sv.saved_dim({"dims": {"nL": 3}}, "nL") == 3
    assert sv.saved_dim({"dims": {"nL": True}}, "nL") is None
    assert sv.saved_dim({"dims": {"nL": 3.0}}, "nL") is None
    assert sv.saved_dim({"dims": None}, "nL") is None
    assert sv.saved_dim("x", "nL") is None


def test_is_v1_bytes_knows_the_0_1_layout():
    """0.1's bytes: a non-empty dict of str -> bytes, keys cfg, combiner or model/...; not 0.2's (a "model" key)."""
    assert sv.is_v1_bytes({"cfg": b"{}", "combiner": b"", "model/config.json": b"{}"})
    assert not sv.is_v1_bytes({})
    assert not sv.is_v1_bytes({"cfg": b"{}", "model": b""})
    assert not sv.is_v1_bytes({"cfg": b"{}", "other": b""})
    assert not sv.is_v1_bytes({"cfg": "{}"})
    assert not sv.is_v1_bytes([b"cfg"])


def test_load_failure_says_other_dimensions_for_thincs_dimension_error():
    """Thinc's "Attempt to change dimension" is explained as another width or layer count; others name their type."""
    err = ValueError("Attempt to change dimension 'nO' for model 'x' from 32 to 48")
    assert sv.load_failure("a model", err) == (
        "saved for a model of other dimensions than this component's config builds "
        "(Attempt to change dimension 'nO' for model 'x' from 32 to 48); load it into a component with the "
        "config it was saved with")
    assert sv.load_failure("a model", KeyError("k")) == "not a model (KeyError: 'k')"


# --- check_saved_layers / v1_saved_layers ------------------------------------------------
def _shimless(layers):
    return _passthrough(settings={"layers": layers})


def test_check_saved_layers_refuses_other_layers_of_the_combiner():
    """Layers recorded in the cfg other than the config's are refused by name, the same ones or none load."""
    enc = _shimless([-1])
    sv.check_saved_layers("c", enc, [-1], "src")
    sv.check_saved_layers("c", enc, None, "src")
    sv.check_saved_layers("c", _shimless("x"), [3], "src")  # not known: not checked
    with pytest.raises(SettingError, match=r"^\[c\] combiner = 'src': it was saved for layers \[-2\], but the "
                                           r"config's layers select \[-1\] of the loaded model"):
        sv.check_saved_layers("c", enc, [-2], "src")


def test_v1_saved_layers_reads_format_1_cfgs_only():
    """Only a 0.1 cfg (format 1) gives layers, a list of ints; without a loaded shim nothing is resolved."""
    enc = _shimless([-1])
    assert sv.v1_saved_layers("c", enc, {"format": 2, "layers": [1]}) is None
    assert sv.v1_saved_layers("c", enc, {"layers": [True]}) is None
    assert sv.v1_saved_layers("c", enc, {"layers": []}) is None
    assert sv.v1_saved_layers("c", enc, {"layers": [1]}) is None  # no shim to resolve against


# --- check_saved_weights / saved_cfg ------------------------------------------------
def _torch_encoder(seed=0):
    torch.manual_seed(seed)
    return Model("enc", lambda m, X, is_train: (X, None), shims=[PyTorchShim(torch.nn.Linear(3, 2))])


def test_check_saved_weights_refuses_another_fingerprint_naming_the_key(tmp_path):
    """The fingerprint of other weights is refused, naming the model folder and the cfg key to remove."""
    enc = _torch_encoder()
    cfg = sv.saved_cfg({"a": 1}, enc, probe=False, lineage="L", kept=True)
    assert cfg["format"] == 2 and cfg["a"] == 1
    assert cfg["weights_lineage"] == "L" and cfg["weights_kept_on_purpose"] is True
    assert cfg["encoder_layers"] is None
    sv.check_saved_weights("c", enc, cfg["encoder_weights"], tmp_path)
    sv.check_saved_weights("c", enc, None, tmp_path)
    with pytest.raises(SettingError) as err:
        sv.check_saved_weights("c", _torch_encoder(seed=1), cfg["encoder_weights"], tmp_path)
    message = str(err.value)
    assert message.startswith(f"[c] model = {str(tmp_path / 'model')!r}: it holds other weights")
    assert "remove 'encoder_weights' from that cfg file" in message


def test_saved_cfg_writes_no_lineage_or_kept_mark_unless_given():
    """Without a lineage or `kept`, the cfg records neither; without shims, no fingerprint."""
    cfg = sv.saved_cfg({}, _torch_encoder(), probe=False, lineage=None)
    assert "weights_lineage" not in cfg and "weights_kept_on_purpose" not in cfg
    cfg = sv.saved_cfg({}, _shimless([-1]), probe=True, lineage=None)
    assert "encoder_weights" not in cfg and cfg["encoder_layers"] == [-1]


def test_vouching_keys_of_an_encoder_without_options_are_the_fingerprint_and_the_probe():
    """BERT (no ELMo options): the weights' fingerprint and the probe vouch for the model folder."""
    assert sv.vouching_keys(_torch_encoder()) == ["encoder_weights", "encoder_probe"]


# --- on real encoders (tiny BERT, the ELMo fixture) ------------------------------------
@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    return make_nlp(tiny_bert_dir, layers=[0, -1]).get_pipe("ctxembed_bert")


@pytest.fixture(scope="module")
def elmo(tmp_path_factory):
    options, weights = write_elmo_fixture(tmp_path_factory.mktemp("elmo"))
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights)))
    nlp.initialize()
    return nlp.get_pipe("ctxembed_elmo")


def test_saved_cfg_records_the_source_the_resolved_layers_and_the_probe_only_when_asked(bert, tiny_bert_dir):
    """The cfg records the config's `name`, the layers resolved (tiny BERT: 3 states, -1 is 2), and the
    probe only with `probe=True`."""
    cfg = sv.saved_cfg({}, bert.encoder, probe=False, lineage=None)
    assert cfg["encoder_source"] == {"name": str(tiny_bert_dir)}
    assert cfg["encoder_layers"] == [0, 2]
    assert "encoder_probe" not in cfg
    assert isinstance(sv.saved_cfg({}, bert.encoder, probe=True, lineage=None)["encoder_probe"], dict)


def test_an_edited_name_is_warned_of_naming_both_and_where_the_weights_came_from(bert, tiny_bert_dir, tmp_path):
    """An edited `name` is said: the setting now and as saved, and where the loaded model is
    (the component's bytes, or the pipeline's own model folder); an unedited one is not."""
    now = str(tiny_bert_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sv.warn_if_source_edited("c", bert.encoder, {"name": now})
    with pytest.warns(UserWarning) as record:
        sv.warn_if_source_edited("c", bert.encoder, {"name": "/was/here"})
    assert str(record[0].message) == (
        f"[c] name = {now!r}: the serialized component was saved with name = '/was/here'; it loaded the model it "
        f"holds (its weights are the saved ones, as always), and only nlp.initialize() would load name = {now!r}")
    with pytest.warns(UserWarning) as record:
        sv.warn_if_source_edited("c", bert.encoder, {"name": "/was/here"}, tmp_path)
    assert str(record[0].message).startswith(
        f"[c] name = {now!r}: the pipeline at {str(tmp_path)!r} was saved with name = '/was/here'; "
        "it loaded its own model folder")


def test_v1_layers_are_resolved_against_the_loaded_model(bert):
    """A 0.1 cfg's layers as written (-1 the top of 3 states), kept as written where out of range; not ints: None."""
    assert sv.v1_saved_layers("c", bert.encoder, {"layers": [-1, 0]}) == [2, 0]
    assert sv.v1_saved_layers("c", bert.encoder, {"format": 1, "layers": [7]}) == [7]
    assert sv.v1_saved_layers("c", bert.encoder, {"layers": [True]}) is None
    assert sv.v1_saved_layers("c", bert.encoder, {"format": 2, "layers": [-1]}) is None


def test_v1_elmo_layers_are_resolved_against_the_loaded_bilm(elmo):
    """ELMo's states are its token layer and one per LSTM layer (2 in the fixture):
    -1 is state 2, -3 state 0; -4 is out of range, kept as written."""
    assert sv.v1_saved_layers("c", elmo.encoder, {"layers": [-1, 0]}) == [2, 0]
    assert sv.v1_saved_layers("c", elmo.encoder, {"layers": [-3, 1]}) == [0, 1]
    assert sv.v1_saved_layers("c", elmo.encoder, {"layers": [-4]}) == [-4]


def test_an_edited_probe_names_the_tokenizer_or_the_config(bert, tmp_path):
    """A probe record of other wordpieces names the tokenizer files; of other hidden states, config.json."""
    record = sv.saved_probe(bert.encoder)
    sv.check_saved_probe("c", bert.encoder, record, tmp_path)
    sv.check_saved_probe("c", bert.encoder, None, tmp_path)
    with pytest.raises(SettingError, match=r"its tokenizer files differ from the ones this pipeline was saved with"):
        sv.check_saved_probe("c", bert.encoder, {**record, "ids": [0]}, tmp_path)
    with pytest.raises(SettingError, match=r"its config\.json differs from the one this pipeline was saved with.*"
                                           r"remove 'encoder_probe' from that cfg file"):
        sv.check_saved_probe("c", bert.encoder, {**record, "states": [[1e9]]}, tmp_path)


def test_elmo_is_vouched_for_by_its_options_and_other_options_are_refused(elmo, tmp_path):
    """ELMo: the fingerprint and the options digest vouch for the folder; another digest is refused by name."""
    assert sv.vouching_keys(elmo.encoder) == ["encoder_weights", "encoder_options"]
    digest = sv.saved_cfg({}, elmo.encoder, probe=True, lineage=None)["encoder_options"]
    sv.check_saved_options("c", elmo.encoder, digest, tmp_path)
    with pytest.raises(SettingError) as err:
        sv.check_saved_options("c", elmo.encoder, "0" * len(digest), tmp_path)
    assert str(err.value).startswith(f"[c] model = {str(tmp_path / 'model')!r}: its options.json differs from the "
                                     "one this pipeline was saved with")
    assert "remove 'encoder_options' from that cfg file" in str(err.value)


def test_shim_bytes_record_the_resolved_layers_and_features(bert):
    """An encoder shim's bytes record the layers (resolved) and the features it was saved with."""
    shim = tb.encoder_shim(bert.encoder)
    msg = srsly.msgpack_loads(shim.to_bytes())
    assert msg["layers"] == [0, 2]
    assert msg["features"] == dict(shim.features) and "pooling" in msg["features"]


def test_a_copys_bytes_of_another_pooling_are_refused_by_the_copys_setting(bert):
    """A copy of the encoder (lr_scale in its settings) refuses bytes saved with another pooling,
    naming `[ContextualTok2Vec] embedder.encoder.pooling`."""
    shim = tb.encoder_shim(bert.encoder)
    msg = srsly.msgpack_loads(shim.to_bytes())
    other = "first" if msg["features"]["pooling"] != "first" else "mean"
    msg["features"] = {**msg["features"], "pooling": other}
    copy = type(shim)({**shim.settings, "lr_scale": 1.0})
    with pytest.raises(SettingError, match=r"^\[ContextualTok2Vec\] embedder\.encoder\.pooling = .*"
                                           rf"saved with pooling = '{other}'"):
        copy.from_bytes(srsly.msgpack_dumps(msg))


@pytest.mark.parametrize("cfg,kind", [([1], "list"), ("2", "str")])
def test_component_bytes_whose_cfg_is_not_an_object_are_refused_by_name(bert, tiny_bert_dir, cfg, kind):
    """A component's bytes whose cfg was replaced by another JSON value are refused
    before anything loads, naming the component and its cfg (from_bytes reads that
    cfg as a dict from there on)."""
    msg = srsly.msgpack_loads(bert.to_bytes())
    msg["cfg"] = cfg
    receiver = spacy.blank("en").add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, -1]))
    with pytest.raises(SettingError) as err:
        receiver.from_bytes(srsly.msgpack_dumps(msg))
    assert str(err.value) == (f"[ctxembed_bert] cfg = 'bytes': not a JSON object (a {kind}): not a saved ctxembed "
                              "component's cfg")


def test_an_encoder_before_its_weights_has_no_selected_layers(tiny_bert_dir):
    """Before initialize the layers are not known: None, and the cfg records None."""
    nlp = spacy.blank("en")
    component = nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    assert tb.selected_layers(component.encoder) is None
    assert tb.encoder_features(component.encoder) == {}


def test_setting_the_same_layer_count_again_is_allowed_and_loaded_dims_replace_others(bert):
    """Setting nL to its value is no change; set_loaded_dims puts the loaded model's dims back over others."""
    node = next(n for n in bert.encoder.walk() if isinstance(n, tb.EncoderNode))
    n_layers = node.get_dim("nL")
    node.set_dim("nL", n_layers)
    node.set_dim("nL", n_layers + 3, force=True)
    try:
        tb.set_loaded_dims(node)
        assert node.get_dim("nL") == n_layers == 2
    finally:
        node.set_dim("nL", n_layers, force=True)


def test_load_dir_of_a_copy_names_the_copys_block(bert, tmp_path):
    """A damaged model folder loaded by a copy names `[ContextualTok2Vec] embedder.encoder`; by a component, `model`."""
    shim = tb.encoder_shim(bert.encoder)
    copy = type(shim)({**shim.settings, "lr_scale": 1.0})
    with pytest.raises(Exception, match=r"^\[ContextualTok2Vec\] embedder\.encoder"):
        copy.load_dir(tmp_path)
    with pytest.raises(Exception, match=r"^\[ctxembed_bert\] model"):
        type(shim)(dict(shim.settings)).load_dir(tmp_path)


def test_an_elmo_shims_bytes_load_into_a_fresh_shim(elmo):
    """ELMo's shim bytes (its layers recorded as saved) load into a new shim of the same settings."""
    shim = tb.encoder_shim(elmo.encoder)
    fresh = type(shim)(dict(shim.settings)).from_bytes(shim.to_bytes())
    assert list(fresh.layers) == list(shim.layers)
