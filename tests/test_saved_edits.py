"""A saved pipeline whose config.cfg (or receiving pipeline) no longer matches what
was saved is refused by name, never loaded into the wrong combiner or layers."""
import json
import shutil
import warnings
from pathlib import Path

import numpy
import pytest
import spacy
import srsly
from spacy.training import Example
from spacy.util import load_config, load_model_from_config

from spacy_ctxembed.errors import SettingError
from spacy_ctxembed.models.hf_probe import probe_difference

from .conftest import COMBINERS, assert_recorded, ctx_config, other_bert
from .elmo_fixture import write_elmo_fixture
from .reference import hf_hidden_states, pool, token_pieces

NAME = "bert_a"
TEXT = "It was nice out this morning when I ran to the park."
V1_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v1_pipeline"
# Weights no fresh ScalarMix has (it starts at s = 0, gamma = 1, the plain mean):
# a pipeline that silently dropped them gives other vectors.
TRAINED_S, TRAINED_GAMMA = [3.0, -2.0, 0.5], [2.0]


def _nlp(tiny_bert_dir, combine, layers=(0, 1, 2), initialize=True):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name=NAME,
                 config=ctx_config(name=tiny_bert_dir, layers=list(layers), combine=combine, store_layers=True))
    if initialize:
        nlp.initialize()
        if combine == "scalar_mix":
            combiner = nlp.get_pipe(NAME).combiner
            combiner.set_param("s", numpy.asarray(TRAINED_S[:len(layers)], dtype="f"))
            combiner.set_param("gamma", numpy.asarray(TRAINED_GAMMA, dtype="f"))
    return nlp


@pytest.fixture(scope="module")
def saved(tiny_bert_dir, tmp_path_factory):
    """Per combiner: the pipeline saved to disk (layers [0, 1, 2]) and its vectors of TEXT."""
    result = {}
    for combine in ("scalar_mix", "mean"):
        nlp = _nlp(tiny_bert_dir, combine)
        path = tmp_path_factory.mktemp(f"saved-{combine}") / "pipeline"
        nlp.to_disk(path)
        result[combine] = (path, nlp(TEXT)._.ctx_vectors.copy())
    return result


def _copy_with(saved_path, tmp_path, *, combine=None, layers=None):
    """A copy of a saved pipeline, its config.cfg edited as a user would."""
    path = tmp_path / "edited"
    shutil.copytree(saved_path, path)
    config = load_config(path / "config.cfg")
    model = config["components"][NAME]["model"]
    if combine is not None:
        model["combiner"] = {"@layers": COMBINERS[combine]}
    if layers is not None:
        model["encoder"]["layers"] = list(layers)
    config.to_disk(path / "config.cfg")
    return path


@pytest.mark.parametrize("was, now, was_node, now_node", [
    ("scalar_mix", "mean", "scalar_mix", "mean_layers"),  # the trained mix would be dropped silently
    ("mean", "scalar_mix", "mean_layers", "scalar_mix"),  # would fail at the first call (E109)
    ("mean", "concat", "mean_layers", "concat_layers"),  # would claim 32 wide and give 96
])
def test_combiner_edited_in_config_is_refused(saved, tmp_path, was, now, was_node, now_node):
    path = _copy_with(saved[was][0], tmp_path, combine=now)
    with pytest.raises(SettingError) as excinfo:
        spacy.load(path)
    message = str(excinfo.value)
    assert message.startswith(f"[{NAME}] combiner = '{path / NAME / 'combiner'}': ")
    assert f"saved as {was_node}, but the config's [model.combiner] is {now_node}" in message


def test_combiner_of_other_kind_is_refused_from_bytes(tiny_bert_dir):
    source = _nlp(tiny_bert_dir, "scalar_mix")
    for load in (lambda nlp: nlp.get_pipe(NAME).from_bytes(source.get_pipe(NAME).to_bytes()),
                 lambda nlp: nlp.from_bytes(source.to_bytes())):
        with pytest.raises(SettingError, match=rf"^\[{NAME}\] combiner = 'bytes': it was saved as scalar_mix, "
                                               r"but the config's \[model.combiner\] is mean_layers"):
            load(_nlp(tiny_bert_dir, "mean", initialize=False))


def test_other_layers_of_the_same_count_are_refused_and_the_same_layers_load(saved, tmp_path):
    saved_path, original = saved["scalar_mix"]
    path = _copy_with(saved_path, tmp_path, layers=[2, 1, 0])
    with pytest.raises(SettingError) as excinfo:
        spacy.load(path)
    assert str(excinfo.value).startswith(
        f"[{NAME}] combiner = '{path / NAME / 'combiner'}': it was saved for layers [0, 1, 2], "
        "but the config's layers select [2, 1, 0]")
    # The tiny BERT has 3 hidden states: [-3, -2, -1] are the layers it was saved with.
    shutil.rmtree(path)
    path = _copy_with(saved_path, tmp_path, layers=[-3, -2, -1])
    numpy.testing.assert_allclose(spacy.load(path)(TEXT)._.ctx_vectors, original, atol=1e-6)
    # A cfg written before the layers were recorded keeps the count check only.
    shutil.rmtree(path)
    path = _copy_with(saved_path, tmp_path, layers=[2, 1, 0])
    cfg = json.loads((path / NAME / "cfg").read_text())
    (path / NAME / "cfg").write_text(json.dumps({k: v for k, v in cfg.items() if k != "encoder_layers"}))
    assert spacy.load(path)(TEXT)._.ctx_vectors.shape == original.shape


def test_other_layers_of_the_same_count_are_refused_from_bytes(tiny_bert_dir):
    source = _nlp(tiny_bert_dir, "scalar_mix", layers=[-1, 0])
    data = source.get_pipe(NAME).to_bytes()
    # (The encoder's bytes record its layers too, and say it first.)
    with pytest.raises(SettingError, match=rf"^\[{NAME}\] layers = \[0, 2\]: the encoder was saved for layers "
                                           r"\[2, 0\] .*, but the config's layers select \[0, 2\]"):
        _nlp(tiny_bert_dir, "scalar_mix", layers=[0, 2], initialize=False).get_pipe(NAME).from_bytes(data)
    same = _nlp(tiny_bert_dir, "scalar_mix", layers=[2, 0], initialize=False)
    same.get_pipe(NAME).from_bytes(data)
    numpy.testing.assert_allclose(same(TEXT)._.ctx_vectors, source(TEXT)._.ctx_vectors, atol=1e-6)


def test_a_refused_load_leaves_no_half_loaded_component_running(tiny_bert_dir, tmp_path):
    """A load refused after the encoder's weights went in left that encoder beside
    the old combiner; a caller who caught the error got vectors from the mix
    (bytes), or, never initialized, from the config's base weights (disk)."""
    source = _nlp(tiny_bert_dir, "scalar_mix", layers=[-1, 0])
    expected = source(TEXT)._.ctx_vectors.copy()
    data = source.get_pipe(NAME).to_bytes()
    receiver = _nlp(tiny_bert_dir, "scalar_mix", layers=[0, 2])  # initialized: it ran before
    receiver(TEXT)
    component = receiver.get_pipe(NAME)
    with pytest.raises(SettingError, match="saved for layers"):
        component.from_bytes(data)
    for use in (lambda: receiver(TEXT), lambda: component.to_bytes()):
        with pytest.raises(SettingError, match=rf"^\[{NAME}\] model = '.*bytes': loading it was refused"):
            use()
    # A load that fits, or initialize(), makes it whole again.
    same = _nlp(tiny_bert_dir, "scalar_mix", layers=[2, 0], initialize=False)
    with pytest.raises(SettingError, match="saved for layers"):
        same.get_pipe(NAME).from_bytes(_nlp(tiny_bert_dir, "scalar_mix", layers=[0, 2]).get_pipe(NAME).to_bytes())
    same.get_pipe(NAME).from_bytes(data)
    numpy.testing.assert_allclose(same(TEXT)._.ctx_vectors, expected, atol=1e-6)
    receiver.initialize()
    assert receiver(TEXT)._.ctx_vectors.shape == expected.shape

    # From disk, into a pipeline never initialized: it would have run the config's weights.
    source.to_disk(tmp_path / "saved")
    fresh = _nlp(tiny_bert_dir, "scalar_mix", layers=[0, 2], initialize=False)
    with pytest.raises(SettingError, match="saved for layers"):
        fresh.from_disk(tmp_path / "saved")
    with pytest.raises(SettingError, match="loading it was refused"):
        fresh(TEXT)


def test_elmo_layers_edited_in_config_are_refused(tmp_path):
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", name="elmo_a", config=ctx_config(
        options_file=str(options), weight_file=str(weights), layers=[1, 2], combine="scalar_mix"))
    nlp.initialize()
    nlp.to_disk(tmp_path / "saved")
    config = load_config(tmp_path / "saved" / "config.cfg")
    config["components"]["elmo_a"]["model"]["encoder"]["layers"] = [0, 1]
    config.to_disk(tmp_path / "saved" / "config.cfg")
    with pytest.raises(SettingError, match=r"^\[elmo_a\] combiner = .*saved for layers \[1, 2\], "
                                           r"but the config's layers select \[0, 1\]"):
        spacy.load(tmp_path / "saved")


def test_missing_cfg_or_component_folder_is_named(saved, tmp_path):
    nlp = spacy.load(saved["mean"][0])
    nlp.to_disk(tmp_path / "excluded", exclude=[NAME])
    with pytest.raises(SettingError) as excinfo:
        spacy.load(tmp_path / "excluded")
    folder = tmp_path / "excluded" / NAME
    assert str(excinfo.value).startswith(f"[{NAME}] cfg = '{folder / 'cfg'}': the component's folder "
                                         f"'{folder}' is missing")
    shutil.copytree(saved["mean"][0], tmp_path / "no-cfg")
    (tmp_path / "no-cfg" / NAME / "cfg").unlink()
    with pytest.raises(SettingError) as excinfo:
        spacy.load(tmp_path / "no-cfg")
    assert str(excinfo.value) == f"[{NAME}] cfg = '{tmp_path / 'no-cfg' / NAME / 'cfg'}': the file is missing"


@pytest.mark.parametrize("component, expected", [("ctxembed_bert", "bert_vectors"),
                                                 ("ctxembed_elmo", "elmo_vectors")])
def test_bytes_written_by_v1_load(component, expected):
    # What 0.1's to_bytes wrote: its to_disk files, by relative path, in one msgpack dict.
    root = V1_FIXTURE / component
    data = srsly.msgpack_dumps({str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()})
    # A pipeline built from the 0.1 config, without weights: all of them come from the bytes.
    nlp = load_model_from_config(load_config(V1_FIXTURE / "config.cfg"))
    nlp.get_pipe(component).from_bytes(data)
    from_disk = spacy.load(V1_FIXTURE)
    recorded = numpy.load(V1_FIXTURE / "expected.npz")
    texts = json.loads((V1_FIXTURE / "texts.json").read_text(encoding="utf8"))
    for i, text in enumerate(texts):
        doc = nlp.get_pipe(component)(nlp.make_doc(text))
        assert_recorded(doc._.ctx_vectors, recorded[f"{expected}_{i}"])
        reference = from_disk.get_pipe(component)(from_disk.make_doc(text))
        numpy.testing.assert_array_equal(doc._.ctx_vectors, reference._.ctx_vectors)


def test_bytes_written_by_v1_load_nothing_of_the_model_with_model_excluded():
    """exclude=["model"] leaves the component's whole model as it is, the combiner
    too, as with the current bytes (whose "model" holds it): 0.1's bytes kept the
    combiner apart from the encoder's folder, and it was loaded anyway."""
    root = V1_FIXTURE / "ctxembed_bert"
    data = srsly.msgpack_dumps({str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()})
    nlp = spacy.load(V1_FIXTURE)
    component = nlp.get_pipe("ctxembed_bert")
    assert component.combiner.name == "scalar_mix" and numpy.abs(component.combiner.get_param("s")).max() > 0
    mine = numpy.zeros_like(component.combiner.get_param("s"))
    component.combiner.set_param("s", mine)
    component.from_bytes(data, exclude=["model"])
    numpy.testing.assert_array_equal(component.combiner.get_param("s"), mine)
    current = component.to_bytes(exclude=["cfg", "model"])
    assert component.from_bytes(current, exclude=["cfg", "model"]) is component
    numpy.testing.assert_array_equal(component.combiner.get_param("s"), mine)


@pytest.mark.parametrize("data, says", [
    (b"\xc1 not msgpack", r"not a serialized ctxembed component \(\w+\)"),
    (srsly.msgpack_dumps(["cfg", "model"]), r"not a serialized ctxembed component$"),
    (spacy.blank("en").vocab.to_bytes(), r"not a serialized ctxembed component$"),
])
def test_bytes_that_are_not_a_component_s_are_refused_by_name_and_change_nothing(tiny_bert_dir, data, says):
    """Bytes that do not decode, or decode as something else (a list, a vocab's
    dict), are refused naming the component and the bytes, before anything is
    loaded: its vectors stay those of its own weights."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name=NAME, config=ctx_config(name=tiny_bert_dir))
    before = nlp(TEXT)._.ctx_vectors
    with pytest.raises(SettingError, match=rf"^\[{NAME}\] bytes = '{len(data)} bytes': {says}"):
        nlp.get_pipe(NAME).from_bytes(data)
    numpy.testing.assert_array_equal(nlp(TEXT)._.ctx_vectors, before)


def test_v1_bytes_naming_a_file_outside_the_component_write_nothing_there(tiny_bert_dir, tmp_path, monkeypatch):
    """0.1's bytes are unpacked into a temporary folder by their relative paths:
    a path that leads out of it ("model/../../x") is refused, and nothing is
    written outside; the component keeps its weights."""
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    root = V1_FIXTURE / "ctxembed_bert"
    files = {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}
    files["model/../../escaped.txt"] = b"written outside"
    nlp = spacy.load(V1_FIXTURE)
    component = nlp.get_pipe("ctxembed_bert")
    before = component(nlp.make_doc(TEXT))._.ctx_vectors
    with pytest.raises(SettingError, match=r"^\[ctxembed_bert\] bytes = 'model/\.\./\.\./escaped\.txt': a file "
                                           r"outside the component: not loaded"):
        component.from_bytes(srsly.msgpack_dumps(files))
    assert not (temp / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    numpy.testing.assert_array_equal(component(nlp.make_doc(TEXT))._.ctx_vectors, before)


def _hf_pooled_layers(model_dir, layers, text=TEXT, pooling="mean"):
    """`transformers` itself on `model_dir`: the selected layers pooled by `pooling`."""
    from transformers import AutoModel, AutoTokenizer

    states, offsets = hf_hidden_states(AutoTokenizer.from_pretrained(model_dir),
                                       AutoModel.from_pretrained(model_dir).eval(), text)
    pieces = token_pieces(spacy.blank("en")(text), offsets)
    return numpy.stack([pool(states[i], pieces, pooling) for i in layers])


def _hf_mean_of_layers(model_dir, layers, text=TEXT, pooling="mean"):
    """The selected layers' plain mean (what a fresh ScalarMix gives: s = 0, gamma = 1)."""
    return _hf_pooled_layers(model_dir, layers, text, pooling).mean(axis=0)


def _encoder_edited(saved_path, tmp_path, **settings):
    """A copy of a saved pipeline, settings of its [model.encoder] edited in config.cfg."""
    path = tmp_path / "edited"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(saved_path, path)
    config = load_config(path / "config.cfg")
    config["components"][NAME]["model"]["encoder"].update(settings)
    config.to_disk(path / "config.cfg")
    return path


POOLING_TEXT = "Tokenization unbelievably outperformed embeddings"  # (words of several pieces)


def test_pooling_edited_in_config_is_refused_where_trained_weights_read_the_vectors(saved, tiny_bert_dir, tmp_path):
    """Another pooling loaded silently under a trained mix: every vector changed
    (first pieces for the mean of pieces). A plain embedder takes the config's."""
    first = _hf_pooled_layers(tiny_bert_dir, [0, 1, 2], POOLING_TEXT, pooling="first")
    assert not numpy.allclose(_hf_mean_of_layers(tiny_bert_dir, [0, 1, 2], POOLING_TEXT), first.mean(axis=0),
                              atol=1e-3)  # the premise: the pooling matters on this text
    path = _encoder_edited(saved["mean"][0], tmp_path, pooling="first")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numpy.testing.assert_allclose(spacy.load(path)(POOLING_TEXT)._.ctx_vectors, first.mean(axis=0), atol=1e-5)

    path = _encoder_edited(saved["scalar_mix"][0], tmp_path, pooling="first")
    cfg_path = path / NAME / "cfg"
    with pytest.raises(SettingError) as excinfo:
        spacy.load(path)
    assert str(excinfo.value) == (
        f"[{NAME}] pooling = 'first': the encoder was saved with pooling = 'mean', and what was trained on those "
        "vectors (its scalar_mix) reads them: put back pooling = 'mean', or train again; to load it with the "
        f"config's on purpose, remove 'encoder_features' from '{cfg_path}'")
    # As the error says (and as a cfg written before the key existed): the config's pooling under the saved mix.
    cfg = json.loads(cfg_path.read_text())
    assert cfg.pop("encoder_features") == {"pooling": "mean", "window": 62, "stride": 46}
    cfg_path.write_text(json.dumps(cfg))
    weights = numpy.exp(TRAINED_S) / numpy.exp(TRAINED_S).sum()
    expected = TRAINED_GAMMA[0] * numpy.einsum("l,lnd->nd", weights, first)
    numpy.testing.assert_allclose(spacy.load(path)(POOLING_TEXT)._.ctx_vectors, expected, atol=1e-5)


def test_pooling_of_other_bytes_is_refused_under_a_trained_mix(tiny_bert_dir):
    for combine, refused in (("scalar_mix", True), ("mean", False)):
        source = _nlp(tiny_bert_dir, combine)
        receiver = spacy.blank("en")
        receiver.add_pipe("ctxembed_bert", name=NAME, config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2],
                                                                         combine=combine, pooling="max"))
        if refused:
            with pytest.raises(SettingError, match=(
                    rf"^\[{NAME}\] pooling = 'max': the encoder was saved with pooling = 'mean', and what was "
                    r"trained on those vectors \(its scalar_mix\) reads them: put back pooling = 'mean', or train "
                    r"again$")):
                receiver.from_bytes(source.to_bytes())
        else:
            receiver.from_bytes(source.to_bytes())
            expected = _hf_mean_of_layers(tiny_bert_dir, [0, 1, 2], POOLING_TEXT, pooling="max")
            numpy.testing.assert_allclose(receiver(POOLING_TEXT)._.ctx_vectors, expected, atol=1e-5)


@pytest.mark.parametrize("s", [None, [0.7, 0.7, 0.7]])
def test_another_pooling_under_an_untrained_mix_loads(tiny_bert_dir, tmp_path, s):
    """A ScalarMix as initialised (or with all `s` equal, `gamma` 1) gives the
    plain mean of the layers: nothing was trained on the vectors, and the
    pooling check refused such a pipeline all the same."""
    source = _nlp(tiny_bert_dir, "scalar_mix", initialize=False)
    source.initialize()
    if s is not None:
        source.get_pipe(NAME).combiner.set_param("s", numpy.asarray(s, dtype="f"))
    source.to_disk(tmp_path / "saved")
    expected = _hf_mean_of_layers(tiny_bert_dir, [0, 1, 2], POOLING_TEXT, pooling="max")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = spacy.load(_encoder_edited(tmp_path / "saved", tmp_path, pooling="max"))
        numpy.testing.assert_allclose(loaded(POOLING_TEXT)._.ctx_vectors, expected, atol=1e-5)
        receiver = spacy.blank("en")
        receiver.add_pipe("ctxembed_bert", name=NAME, config=ctx_config(
            name=tiny_bert_dir, layers=[0, 1, 2], combine="scalar_mix", pooling="max"))
        receiver.from_bytes(source.to_bytes())
        numpy.testing.assert_allclose(receiver(POOLING_TEXT)._.ctx_vectors, expected, atol=1e-5)
    # One step of training away from the plain mean is enough to refuse it.
    source.get_pipe(NAME).combiner.set_param("gamma", numpy.asarray([1.01], dtype="f"))
    source.to_disk(tmp_path / "saved")
    with pytest.raises(SettingError, match=r"what was trained on those vectors \(its scalar_mix\) reads them"):
        spacy.load(_encoder_edited(tmp_path / "saved", tmp_path, pooling="max"))


def test_listening_components_hold_the_pooling_and_are_warned_of_other_windows(tiny_bert_dir, tmp_path):
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name=NAME, config=ctx_config(name=tiny_bert_dir, window=16, combine="mean"))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": NAME}}})
    words, tags = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})])
    nlp.to_disk(tmp_path / "saved")
    with pytest.raises(SettingError, match=(
            rf"^\[{NAME}\] pooling = 'last': the encoder was saved with pooling = 'mean', and what was trained on "
            r"those vectors \('tagger'\) reads them")):
        spacy.load(_encoder_edited(tmp_path / "saved", tmp_path, pooling="last"))
    with pytest.warns(UserWarning, match=(
            rf"^\[{NAME}\] window = 8, stride = 6: the encoder was saved with window = 16, stride = 12 "
            r"\(resolved\), and what was trained on its vectors \('tagger'\) saw those; docs longer than 8 "
            r"wordpieces get other vectors now$")):
        spacy.load(_encoder_edited(tmp_path / "saved", tmp_path, window=8))
    # The same windows spelled out (stride = null resolved to 12) say nothing; without a listener, nor do others.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = spacy.load(_encoder_edited(tmp_path / "saved", tmp_path, window=16, stride=12))
        numpy.testing.assert_array_equal(loaded(TEXT)._.ctx_vectors, nlp(TEXT)._.ctx_vectors)
        spacy.load(_encoder_edited(tmp_path / "saved", tmp_path, window=8), exclude=["tagger"])


def test_initialize_after_a_refused_load_starts_from_the_configs_model(tiny_bert_dir, minilm_dir, tmp_path):
    """The refused load's error says "call initialize() to start from the config's":
    initialize kept the encoder the refused load had put in (another model's),
    beside a fresh mix, and said nothing."""
    other = other_bert(tmp_path / "other", minilm_dir)
    source = spacy.blank("en")
    source.add_pipe("ctxembed_bert", name=NAME, config=ctx_config(name=other, layers=[2, 0], combine="scalar_mix"))
    source.initialize()
    source.to_disk(tmp_path / "saved")
    expected = _hf_mean_of_layers(tiny_bert_dir, [0, 2])
    assert not numpy.allclose(_hf_mean_of_layers(other, [0, 2]), expected, atol=1e-3)  # the premise
    for load in (lambda c: c.from_disk(tmp_path / "saved" / NAME),
                 lambda c: c.from_bytes(source.get_pipe(NAME).to_bytes())):
        receiver = _nlp(tiny_bert_dir, "scalar_mix", layers=[0, 2], initialize=False)
        with pytest.raises(SettingError, match="saved for layers"):
            load(receiver.get_pipe(NAME))
        receiver.initialize()
        numpy.testing.assert_allclose(receiver(TEXT)._.ctx_vectors, expected, atol=1e-5)


def test_initialize_on_a_loaded_pipeline_starts_from_the_config(tiny_bert_dir, tmp_path):
    """nlp.initialize() on a loaded pipeline with fine-tuned weights and a trained
    mix kept the encoder's weights and reset the mix: vectors of neither the
    saved pipeline nor the config. It starts from the config, as spaCy's own
    components do."""
    import torch

    nlp = _nlp(tiny_bert_dir, "scalar_mix", layers=[0, 2])  # trained mix
    with torch.no_grad():  # as fine-tuning would leave them
        for param in nlp.get_pipe(NAME).encoder.shims[0]._model.parameters():
            param.add_(0.05)
    nlp.to_disk(tmp_path / "tuned")
    loaded = spacy.load(tmp_path / "tuned")
    tuned = loaded(TEXT)._.ctx_vectors.copy()
    expected = _hf_mean_of_layers(tiny_bert_dir, [0, 2])
    assert not numpy.allclose(tuned, expected, atol=1e-3)  # the premise: the saved pipeline is its own
    loaded.initialize()
    numpy.testing.assert_allclose(loaded(TEXT)._.ctx_vectors, expected, atol=1e-5)


def _swapped(saved_path, tmp_path, model_dir, *, component=NAME, forget_fingerprint=False):
    """A copy of a saved pipeline whose component's model folder is another model's."""
    path = tmp_path / "swapped"
    shutil.copytree(saved_path, path)
    shutil.rmtree(path / component / "model")
    shutil.copytree(model_dir, path / component / "model")
    if forget_fingerprint:  # as a pipeline saved before the fingerprint was recorded
        cfg = srsly.read_json(path / component / "cfg")
        del cfg["encoder_weights"]
        srsly.write_json(path / component / "cfg", cfg)
    return path


@pytest.mark.parametrize("shape", [{}, {"width": 48}, {"depth": 3}], ids=["same shapes", "wider", "deeper"])
def test_a_model_folder_swapped_for_another_models_is_refused(saved, minilm_dir, tmp_path, shape):
    """Another model's folder in place of the saved one loaded under the mix
    trained on the saved one: silently where the shapes were the same, else
    with thinc's "Attempt to change dimension" or an error that the user's
    `layers` had changed, where it was the model."""
    other = other_bert(tmp_path / "other", minilm_dir, **shape)
    path = _swapped(saved["scalar_mix"][0], tmp_path, other)
    with pytest.raises(SettingError, match=rf"^\[{NAME}\] model = '.*model': it holds other weights than this "
                                           r"pipeline was saved with"):
        spacy.load(path)


def test_a_model_folder_whose_biases_alone_were_trained_is_refused(saved, tmp_path):
    """A model folder put back with the same weight matrices but other biases
    and norms (a bias-only fine-tune, such as BitFit, saved over it) computes
    other vectors under the mix trained on the saved one: the fingerprint
    samples every floating-point tensor, the 1-d ones too, and refuses it."""
    import torch
    from transformers import AutoModel

    path = tmp_path / "biases"
    shutil.copytree(saved["scalar_mix"][0], path)
    model_dir = path / NAME / "model"
    model = AutoModel.from_pretrained(model_dir)
    with torch.no_grad():
        for tensor in model.parameters():
            if tensor.dim() == 1:
                tensor.add_(0.5)
    model.save_pretrained(model_dir, safe_serialization=True)
    with pytest.raises(SettingError, match=rf"^\[{NAME}\] model = '.*model': it holds other weights than this "
                                           r"pipeline was saved with"):
        spacy.load(path)


def _saved_elmo(tmp_path):
    """An ELMo pipeline ("elmo_a", a scalar mix over its 3 layers) on fixture files, saved to tmp_path/saved;
    (nlp, options path, weights path)."""
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", name="elmo_a", config=ctx_config(
        options_file=str(options), weight_file=str(weights), layers=[0, 1, 2], combine="scalar_mix"))
    nlp.initialize()
    nlp.to_disk(tmp_path / "saved")
    return nlp, options, weights


def test_an_elmo_model_folder_swapped_for_another_models_is_refused(tmp_path):
    _saved_elmo(tmp_path)
    write_elmo_fixture(tmp_path / "other", seed=1)  # the same shapes
    path = _swapped(tmp_path / "saved", tmp_path, tmp_path / "other", component="elmo_a")
    with pytest.raises(SettingError, match=r"^\[elmo_a\] model = '.*model': it holds other weights"):
        spacy.load(path)


def test_without_a_fingerprint_a_wider_model_under_a_mix_is_named(saved, minilm_dir, tmp_path):
    """A cfg without the fingerprint (saved before it was recorded, or removed
    on purpose): a wider model under a mix gets an error that names the
    component and the widths, not thinc's; one of the same shapes loads, as
    the error about the fingerprint says it will."""
    path = _swapped(saved["scalar_mix"][0], tmp_path / "wider", other_bert(tmp_path / "w", minilm_dir, width=48),
                    forget_fingerprint=True)
    with pytest.raises(SettingError, match=rf"^\[{NAME}\] combiner = .*: it was saved beside an encoder of width "
                                           r"32, but the loaded model's is 48"):
        spacy.load(path)
    other = other_bert(tmp_path / "same", minilm_dir)
    path = _swapped(saved["scalar_mix"][0], tmp_path / "same-shapes", other, forget_fingerprint=True)
    assert not numpy.allclose(spacy.load(path)(TEXT)._.ctx_vectors, saved["scalar_mix"][1], atol=1e-3)


@pytest.mark.parametrize("file", ["options.json", "weights.hdf5"])
def test_a_damaged_file_of_a_saved_elmo_pipeline_names_its_model_folder(tmp_path, file):
    """A saved pipeline reads its own files, never the config's options_file and
    weight_file: the error named those settings (and the saved file's path
    under them), as BERT's names `model`."""
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", name="elmo_a", config=ctx_config(options_file=str(options),
                                                                   weight_file=str(weights)))
    nlp.initialize()
    nlp.to_disk(tmp_path / "saved")
    damaged = tmp_path / "saved" / "elmo_a" / "model" / file
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"^\[elmo_a\] model = '{damaged}': "):
        spacy.load(tmp_path / "saved")


def test_an_edited_options_file_of_a_saved_elmo_pipeline_is_refused(tmp_path):
    """The fingerprint reads the weights only: the saved model folder's
    options.json edited (other clipping, no skip connections) loaded under the
    mix trained on the vectors before, every vector changed, without a word."""
    from .elmo_reference import ReferenceElmo

    nlp, options, weights = _saved_elmo(tmp_path)
    saved_options = tmp_path / "saved" / "elmo_a" / "model" / "options.json"
    edited = json.loads(saved_options.read_text())
    edited["lstm"]["cell_clip"], edited["lstm"]["use_skip_connections"] = 0.5, False
    saved_options.write_text(json.dumps(edited))
    words = "The cat sat on the mat with naive cafe owners .".split()
    before, after = (ReferenceElmo(o, weights)(words).mean(axis=0) for o in (options, saved_options))
    assert not numpy.allclose(before, after, atol=1e-3)  # the premise: every vector changes
    cfg_path = tmp_path / "saved" / "elmo_a" / "cfg"
    with pytest.raises(SettingError) as excinfo:
        spacy.load(tmp_path / "saved")
    assert str(excinfo.value) == (
        f"[elmo_a] model = '{tmp_path / 'saved' / 'elmo_a' / 'model'}': its options.json differs from the one this "
        f"pipeline was saved with (the digest in '{cfg_path}' differs), and with it every vector (an edit that "
        "changes no value used, 3.0 for 3 or a key not read, is refused too): put back the options file it was "
        "saved with; to keep these options on purpose, remove 'encoder_options' from that cfg file (the "
        "components listening to this one through a ContextualListener.v2, trained on what it was saved with, "
        "are then refused until trained again)")
    # As the error says (and as a cfg saved before the digest was recorded): the edited options.
    cfg = json.loads(cfg_path.read_text())
    del cfg["encoder_options"]
    cfg_path.write_text(json.dumps(cfg))
    doc = spacy.load(tmp_path / "saved")(" ".join(words))
    numpy.testing.assert_allclose(doc._.ctx_vectors, after, atol=2e-5)
    # Another model's folder (other weights and options) is refused for its weights; kept on purpose, as that
    # error says (`encoder_weights` removed), it loads with its own options, not refused a second time.
    other_options, other_weights = write_elmo_fixture(tmp_path / "other", options=edited, seed=1)
    swapped = tmp_path / "swapped"
    nlp.to_disk(swapped)
    for source in (other_options, other_weights):
        shutil.copy(source, swapped / "elmo_a" / "model" / source.name)
    with pytest.raises(SettingError, match=r"it holds other weights than this pipeline was saved with"):
        spacy.load(swapped)
    cfg = json.loads((swapped / "elmo_a" / "cfg").read_text())
    del cfg["encoder_weights"]
    (swapped / "elmo_a" / "cfg").write_text(json.dumps(cfg))
    numpy.testing.assert_allclose(spacy.load(swapped)(" ".join(words))._.ctx_vectors,
                                  ReferenceElmo(other_options, other_weights)(words).mean(axis=0), atol=2e-5)
    # The same options written otherwise (keys reordered, indented) are the same options.
    nlp.to_disk(tmp_path / "again")
    (tmp_path / "again" / "elmo_a" / "model" / "options.json").write_text(
        json.dumps(json.loads(options.read_text()), indent=2, sort_keys=True))
    numpy.testing.assert_allclose(spacy.load(tmp_path / "again")(" ".join(words))._.ctx_vectors, before, atol=2e-5)


def test_the_fingerprint_reads_values_not_names_or_integer_buffers(tiny_bert_dir, tmp_path):
    """transformers 4.30 saved BERT's position ids (an integer buffer) with the
    weights, 4.31 and later do not: a fingerprint of the state dict refused
    every pipeline saved under the one and loaded under the other."""
    nlp = _nlp(tiny_bert_dir, "scalar_mix")
    module = nlp.get_pipe(NAME).encoder.shims[0]._model
    module.embeddings._non_persistent_buffers_set.discard("position_ids")  # as transformers 4.30 had it
    nlp.to_disk(tmp_path / "saved")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "saved" / NAME / "model" / "model.safetensors"), "pt") as f:
        assert "embeddings.position_ids" in f.keys()  # the premise
    numpy.testing.assert_array_equal(spacy.load(tmp_path / "saved")(TEXT)._.ctx_vectors, nlp(TEXT)._.ctx_vectors)


def test_the_fingerprint_holds_when_an_elmo_pipeline_is_edited_to_train(tmp_path):
    """ELMo keeps frozen weights as buffers and trainable ones as parameters:
    `trainable` edited in config.cfg must not make the folder another model's."""
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", name="elmo_a", config=ctx_config(
        options_file=str(options), weight_file=str(weights), trainable=False))
    nlp.initialize()
    nlp.to_disk(tmp_path / "saved")
    config = load_config(tmp_path / "saved" / "config.cfg")
    config["components"]["elmo_a"]["model"]["encoder"]["trainable"] = True
    config.to_disk(tmp_path / "saved" / "config.cfg")
    numpy.testing.assert_array_equal(spacy.load(tmp_path / "saved")(TEXT)._.ctx_vectors, nlp(TEXT)._.ctx_vectors)


def test_excluding_the_model_folder_keeps_the_components_own(tiny_bert_dir, tmp_path):
    """`from_disk(exclude=["model"])` into a component not loaded yet: its own
    weights are the config's (loaded on first use), beside the saved combiner."""
    source = _nlp(tiny_bert_dir, "scalar_mix")
    source.to_disk(tmp_path / "saved")
    receiver = _nlp(tiny_bert_dir, "scalar_mix", initialize=False)
    receiver.get_pipe(NAME).from_disk(tmp_path / "saved" / NAME, exclude=["model"])
    numpy.testing.assert_allclose(receiver(TEXT)._.ctx_vectors, source(TEXT)._.ctx_vectors, atol=1e-6)


def test_initialize_without_the_configs_model_says_how_to_keep_the_loaded_one(tiny_bert_dir, tmp_path):
    """A loaded pipeline works after its base model is gone; nlp.initialize()
    then fails, and the error says why it looked for it and how to keep it."""
    base = tmp_path / "base"
    shutil.copytree(tiny_bert_dir, base)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name=NAME, config=ctx_config(name=base))
    nlp.initialize()
    nlp.to_disk(tmp_path / "saved")
    shutil.rmtree(base)
    loaded = spacy.load(tmp_path / "saved")
    with pytest.raises(SettingError, match=rf"^\[{NAME}\] name = .*nlp\.initialize\(\) starts the component from "
                                           rf"its config.*nlp\.select_pipes\(disable=\['{NAME}'\]\)"):
        loaded.initialize()
    with loaded.select_pipes(disable=[NAME]):
        loaded.initialize()
    assert loaded(TEXT)._.ctx_vectors.shape[0] == len(loaded.make_doc(TEXT))


def test_a_config_that_sources_a_saved_component_embeds_with_its_weights(tiny_bert_dir, tmp_path):
    """`embed --config`, the Ray actors and `analyze --config` initialize what
    the config builds: a sourced, fine-tuned component got its base model's
    weights (and a fresh mix). Sourced components keep theirs, as in spacy train."""
    import torch
    from thinc.api import Config

    from spacy_ctxembed.analysis.source import PipelineSource
    from spacy_ctxembed.pipeline.build import load_pipeline

    nlp = _nlp(tiny_bert_dir, "scalar_mix")
    with torch.no_grad():  # as fine-tuning would leave them
        for param in nlp.get_pipe(NAME).encoder.shims[0]._model.parameters():
            param.add_(0.05)
    nlp.to_disk(tmp_path / "tuned")
    expected = nlp(TEXT)._.ctx_vectors
    assert not numpy.allclose(expected, _hf_mean_of_layers(tiny_bert_dir, [0, 1, 2]), atol=1e-3)  # the premise
    config = (f'[nlp]\nlang = "en"\npipeline = ["{NAME}"]\n[components]\n'
              f'[components.{NAME}]\nsource = "{tmp_path / "tuned"}"\n')
    numpy.testing.assert_allclose(load_pipeline(config=config)(TEXT)._.ctx_vectors, expected, atol=1e-6)
    source = PipelineSource(config=Config().from_str(config))
    numpy.testing.assert_allclose(source.load()(TEXT)._.ctx_vectors, expected, atol=1e-6)


def test_the_fingerprint_leaves_out_buffers_that_are_never_saved(tiny_bert_dir, tmp_path, monkeypatch):
    """Buffers computed when a model is built (rotary `inv_freq`) are not in its
    file, and newer transformers add or reshape them: a pipeline saved before
    must still load. Simulated with a float buffer the embeddings gain."""
    import torch
    from transformers.models.bert import modeling_bert

    nlp = _nlp(tiny_bert_dir, "scalar_mix")
    nlp.to_disk(tmp_path / "saved")
    built = modeling_bert.BertEmbeddings.__init__

    def with_a_computed_buffer(self, config):
        built(self, config)
        self.register_buffer("inv_freq", torch.arange(4, dtype=torch.float32) + 1, persistent=False)

    monkeypatch.setattr(modeling_bert.BertEmbeddings, "__init__", with_a_computed_buffer)
    loaded = spacy.load(tmp_path / "saved")
    assert hasattr(loaded.get_pipe(NAME).encoder.shims[0]._model.embeddings, "inv_freq")  # the premise
    numpy.testing.assert_array_equal(loaded(TEXT)._.ctx_vectors, nlp(TEXT)._.ctx_vectors)


def test_analysis_refuses_to_edit_a_sourced_component_and_names_the_command(tiny_bert_dir, tmp_path):
    """`analyze --config` with the analysed component sourced failed with a
    KeyError: the analysis writes its layers into the component's block, which
    a sourced component does not have (spaCy would not read them)."""
    from thinc.api import Config

    from spacy_ctxembed.analysis.errors import AnalysisInputError
    from spacy_ctxembed.analysis.source import PipelineSource

    _nlp(tiny_bert_dir, "mean").to_disk(tmp_path / "saved")
    config = (f'[nlp]\nlang = "en"\npipeline = ["{NAME}"]\n[components]\n'
              f'[components.{NAME}]\nsource = "{tmp_path / "saved"}"\n')
    source = PipelineSource(config=Config().from_str(config))
    with pytest.raises(AnalysisInputError, match=rf"--model {tmp_path / 'saved'} --component {NAME}"):
        source.load([(NAME, ("model", "encoder", "layers"), [0, 1, 2])], component=NAME)


def _json_edited(path, file, edit):
    data = json.loads((path / file).read_text(encoding="utf8"))
    edit(data)
    (path / file).write_text(json.dumps(data, indent=1), encoding="utf8")


def _swap_vocab(tokenizer):
    vocab = tokenizer["model"]["vocab"]
    vocab["nice"], vocab["park"] = vocab["park"], vocab["nice"]


FOLDER_EDITS = {
    "activation": ("config.json", lambda c: c.update(hidden_act="relu"), "config"),
    "heads": ("config.json", lambda c: c.update(num_attention_heads=6), "config"),
    "cased": ("tokenizer_config.json", lambda t: t.update(do_lower_case=False), "tokenizer"),
    "vocabulary": ("tokenizer.json", _swap_vocab, "tokenizer"),
}


@pytest.fixture(scope="module")
def saved_minilm(minilm_dir, tmp_path_factory):
    """MiniLM (real weights: a random tiny model's states barely move under another
    activation or number of heads), saved with layers [0, 3, 6], and its vectors of TEXT."""
    nlp = _nlp(minilm_dir, "mean", layers=(0, 3, 6))
    path = tmp_path_factory.mktemp("saved-minilm") / "pipeline"
    nlp.to_disk(path)
    return path, nlp(TEXT)._.ctx_vectors.copy()


@pytest.mark.parametrize("edit", FOLDER_EDITS)
def test_an_edited_config_or_tokenizer_of_a_saved_bert_pipeline_is_refused(saved, saved_minilm, tmp_path, edit):
    """config.json or the tokenizer's files edited in a saved pipeline's model folder
    (another activation or number of heads, cased, two words' ids swapped) loaded
    silently under the weights saved with them, every vector moved: the weights'
    fingerprint cannot see them. The cfg records what the folder computes; as
    the error says, it can be kept on purpose, and then gives the edited
    folder's vectors (`transformers` itself on it)."""
    file, change, kind = FOLDER_EDITS[edit]
    (saved_path, vectors), layers = (saved_minilm, [0, 3, 6]) if kind == "config" else (saved["mean"], [0, 1, 2])
    path = tmp_path / "edited"
    shutil.copytree(saved_path, path)
    model_dir = path / NAME / "model"
    _json_edited(model_dir, file, change)
    expected = _hf_mean_of_layers(model_dir, layers)
    assert not numpy.allclose(expected, vectors, atol=1e-3)  # the premise: the edit moves the vectors
    what = ("its tokenizer files differ from the ones this pipeline was saved with: they split a probe text "
            "otherwise, or hold another vocabulary" if kind == "tokenizer" else
            "its config.json differs from the one this pipeline was saved with: the model computes other hidden "
            "states for a probe text")
    with pytest.raises(SettingError) as caught:
        spacy.load(path)
    assert str(caught.value) == (
        f"[{NAME}] model = '{model_dir}': {what} (the record in '{path / NAME / 'cfg'}'), and every vector "
        "with it: put back the files it was saved with; to keep them on purpose, remove 'encoder_probe' from "
        "that cfg file (the components listening to this one through a ContextualListener.v2, trained on what "
        "it was saved with, are then refused until trained again)")
    cfg = srsly.read_json(path / NAME / "cfg")
    del cfg["encoder_probe"]  # (as the error says; and as a pipeline saved before the record was kept)
    srsly.write_json(path / NAME / "cfg", cfg)
    numpy.testing.assert_allclose(spacy.load(path)(TEXT)._.ctx_vectors, expected, atol=1e-5)


EDGE_EDITS = {
    "word-length": lambda t: t["model"].update(max_input_chars_per_word=8),
    "unknown-token": lambda t: t["model"].update(unk_token="[PAD]"),
    "control-characters": lambda t: t["normalizer"].update(clean_text=False),
}


@pytest.mark.parametrize("edit", EDGE_EDITS)
def test_tokenizer_edits_at_its_edges_are_refused(saved, tmp_path, edit):
    """tokenizer.json edits that leave the probe text's pieces alone (it has no
    word of more than 8 letters, no character outside the vocabulary, no
    control character) loaded silently, and moved the vectors of text that
    has them: the record splits a text of such edges too."""
    text = "Tokenizationally speaking, \U0001fab8 and a\x07b."
    saved_path, _ = saved["mean"]
    path = tmp_path / "edited"
    shutil.copytree(saved_path, path)
    model_dir = path / NAME / "model"
    before = _hf_mean_of_layers(model_dir, [0, 1, 2], text)
    _json_edited(model_dir, "tokenizer.json", EDGE_EDITS[edit])
    assert not numpy.allclose(_hf_mean_of_layers(model_dir, [0, 1, 2], text), before, atol=1e-3)  # the premise
    with pytest.raises(SettingError, match=rf"^\[{NAME}\] model = .*its tokenizer files differ from the ones"):
        spacy.load(path)


def test_edits_that_change_nothing_computed_load(saved, tmp_path):
    """What transformers and tokenizers write otherwise from one version to the
    next (the version field, indentation, key order) and settings that do not
    change a prediction (dropout) are not edits to refuse."""
    path = tmp_path / "edited"
    shutil.copytree(saved["scalar_mix"][0], path)
    model_dir = path / NAME / "model"
    _json_edited(model_dir, "config.json", lambda c: c.update(hidden_dropout_prob=0.5, transformers_version="4.0.0"))
    _json_edited(model_dir, "tokenizer.json", lambda t: None)  # (rewritten, indented)
    numpy.testing.assert_array_equal(spacy.load(path)(TEXT)._.ctx_vectors, saved["scalar_mix"][1])


def test_the_probe_record_is_what_transformers_computes(tiny_bert_dir, tmp_path):
    """The record's ids and states are those of `transformers` itself on the probe text."""
    from transformers import AutoModel, AutoTokenizer

    from spacy_ctxembed.models.hf_probe import PROBE_TEXT

    nlp = _nlp(tiny_bert_dir, "mean")
    nlp.to_disk(tmp_path / "saved")
    record = srsly.read_json(tmp_path / "saved" / NAME / "cfg")["encoder_probe"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    assert record["ids"] == tokenizer(f"{PROBE_TEXT} {tokenizer.mask_token}")["input_ids"]
    import torch

    with torch.no_grad():  # (every piece, special tokens included, as the record takes them)
        states = AutoModel.from_pretrained(tiny_bert_dir).eval()(
            input_ids=torch.tensor([record["ids"]]), output_hidden_states=True).hidden_states
    assert len(record["states"]) == len(states) == 3
    for got, state in zip(record["states"], states):
        flat = state[0].double().numpy().reshape(-1)
        at = numpy.arange(16) * (len(flat) - 1) // 15  # 16 values evenly spaced, first and last included
        numpy.testing.assert_allclose(got, flat[at], atol=1e-5)


@pytest.mark.parametrize("family,positions,usable", [("roberta", 20, 19), ("distilbert", 512, None)])
def test_the_probe_record_keeps_to_other_families_and_short_positions(minilm_dir, tmp_path, family, positions,
                                                                      usable):
    """RoBERTa numbers positions from its padding row and DistilBERT takes no token
    types: each saves a record and loads against it; a model with fewer positions
    than the probe's pieces records as many as it takes."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .test_bert_exactness import _tiny_family_model

    torch.manual_seed(0)
    config = _tiny_family_model(family)
    config.max_position_embeddings = positions
    AutoModel.from_config(config).save_pretrained(tmp_path / "model", safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "model")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name=NAME, config=ctx_config(name=str(tmp_path / "model")))
    nlp.initialize()
    nlp.to_disk(tmp_path / "saved")
    record = srsly.read_json(tmp_path / "saved" / NAME / "cfg")["encoder_probe"]
    assert len(record["ids"]) == (usable or 27) and len(record["states"]) == 4
    numpy.testing.assert_array_equal(spacy.load(tmp_path / "saved")(TEXT)._.ctx_vectors, nlp(TEXT)._.ctx_vectors)


def test_an_edit_that_moves_the_states_as_little_as_rounding_loads(saved_minilm, tmp_path):
    """GELU's tanh form for its exact one moves MiniLM's states by 1.5e-3 at most,
    as TF32 matmuls on a GPU would (8e-4): not an edit to refuse; the vectors are
    the edited folder's (`transformers` itself on it)."""
    path = tmp_path / "edited"
    shutil.copytree(saved_minilm[0], path)
    _json_edited(path / NAME / "model", "config.json", lambda c: c.update(hidden_act="gelu_new"))
    expected = _hf_mean_of_layers(path / NAME / "model", [0, 3, 6])
    assert not numpy.allclose(expected, saved_minilm[1], atol=1e-5, rtol=0)  # the premise: they moved
    numpy.testing.assert_allclose(spacy.load(path)(TEXT)._.ctx_vectors, expected, atol=1e-5)


def test_special_tokens_split_in_a_saved_tokenizer_are_refused(saved, tmp_path):
    """`split_special_tokens` (tokenizer_config.json) splits "[MASK]" in a doc's text
    like other text: not in the tokenizer's definition, and not in a probe text
    without a special token's text, so it loaded silently."""
    path = tmp_path / "edited"
    shutil.copytree(saved["mean"][0], path)
    _json_edited(path / NAME / "model", "tokenizer_config.json", lambda t: t.update(split_special_tokens=True))
    with pytest.raises(SettingError, match=r"its tokenizer files differ from the ones this pipeline was saved with"):
        spacy.load(path)


@pytest.mark.parametrize("was, now, was_node, now_node", [
    ("scalar_mix", "mean", "scalar_mix", "mean_layers"),  # the trained mix was dropped silently
    ("mean", "concat", "mean_layers", "concat_layers"),  # failed in blis at the first call
])
def test_combiner_of_a_replaced_listener_edited_in_config_is_refused(tiny_bert_dir, tmp_path, was, now,
                                                                    was_node, now_node):
    """After replace_listeners, a listener of the combined vectors (`mix_layers =
    false`) holds a copy of the whole embedder, combiner and all, which loads with
    the tagger through thinc alone: an edit of its combiner block is refused at
    its first call, and the unedited pipeline gives what it gave before saving."""
    nlp = _nlp(tiny_bert_dir, was, initialize=False)
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": NAME,
        "mix_layers": False}}})
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc("I like green eggs"),
                                              {"tags": ["PRP", "VBP", "JJ", "NNS"]})])
    if was == "scalar_mix":
        nlp.get_pipe(NAME).combiner.set_param("s", numpy.asarray(TRAINED_S, dtype="f"))
    nlp.replace_listeners(NAME, "tagger", ["model.tok2vec"])
    nlp.remove_pipe(NAME)
    nlp.to_disk(tmp_path / "p")
    doc = nlp.make_doc(TEXT)
    expected = nlp.get_pipe("tagger").model.get_ref("tok2vec").predict([doc])[0]
    loaded = spacy.load(tmp_path / "p").get_pipe("tagger").model.get_ref("tok2vec")
    numpy.testing.assert_allclose(loaded.predict([doc])[0], expected, atol=1e-6)
    config = (tmp_path / "p" / "config.cfg").read_text()
    block = f'@layers = "{COMBINERS[was]}"' + ("\nn_layers = null" if was == "scalar_mix" else "")
    assert config.count(block) == 1
    (tmp_path / "p" / "config.cfg").write_text(config.replace(block, f'@layers = "{COMBINERS[now]}"'))
    edited = spacy.load(tmp_path / "p")
    with pytest.raises(SettingError, match=rf"^\[ContextualTok2Vec\] embedder.combiner = '{now_node}': the copied "
                                           rf"embedder's combiner was saved as {was_node}"):
        edited(TEXT)


def test_bytes_loaded_into_a_component_of_another_name_say_so(saved, tmp_path):
    """As from disk: a component built with another `name` loads the model its
    bytes hold, which until now was said only by from_disk. The same name says nothing."""
    saved_path, vectors = saved["mean"]
    data = spacy.load(saved_path).get_pipe(NAME).to_bytes()
    config = load_config(saved_path / "config.cfg")
    recorded = config["components"][NAME]["model"]["encoder"]["name"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = load_model_from_config(config, auto_fill=True)
        same.get_pipe(NAME).from_bytes(data)
    other = str(tmp_path / "another-model")
    config["components"][NAME]["model"]["encoder"]["name"] = other
    nlp = load_model_from_config(config, auto_fill=True)
    with pytest.warns(UserWarning, match=rf"^\[{NAME}\] name = '{other}': the serialized component was saved with "
                                         rf"name = '{recorded}'; it loaded the model it holds"):
        nlp.get_pipe(NAME).from_bytes(data)
    numpy.testing.assert_array_equal(nlp(TEXT)._.ctx_vectors, vectors)


def test_an_edited_name_is_said_and_the_saved_model_is_loaded(saved, tmp_path):
    """config.cfg's `name` edited to another model (or overridden at spacy.load):
    the saved model folder loads, as always (a fallback would be another model),
    and the vectors are the saved model's; which until now was said nowhere,
    while the config named another. Unedited, nothing is said."""
    saved_path, vectors = saved["mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (an unedited load says nothing)
        spacy.load(saved_path)
    other = str(tmp_path / "another-model")
    path = _encoder_edited(saved_path, tmp_path, name=other)
    recorded = load_config(saved_path / "config.cfg")["components"][NAME]["model"]["encoder"]["name"]
    override = {"components": {NAME: {"model": {"encoder": {"name": other}}}}}
    for load in (lambda: spacy.load(path), lambda: spacy.load(saved_path, config=override)):
        with pytest.warns(UserWarning, match=rf"^\[{NAME}\] name = '{other}': the pipeline at .* was saved with "
                                             rf"name = '{recorded}'; it loaded its own model folder") as caught:
            nlp = load()
        assert len([w for w in caught if f"[{NAME}] name" in str(w.message)]) == 1
        numpy.testing.assert_array_equal(nlp(TEXT)._.ctx_vectors, vectors)


def _record(states):
    return {"vocab": "0123456789abcdef", "ids": [101, 7, 102], "edge_ids": [1, 2],
            "states": [list(map(float, s)) for s in states]}


def test_the_probe_accepts_states_within_its_documented_tolerance_and_refuses_beyond():
    """|a - b| <= 2e-2 * (1 + |b|) passes (TF32 matmuls, GELU's tanh form, another
    LayerNorm epsilon move states by up to about 1e-3); an edit moves them by 0.38
    and more: a change of 5% is refused as another model."""
    current = _record(numpy.linspace(-3, 3, 32).reshape(2, 16))
    b = numpy.asarray(current["states"])
    near = _record(b + 0.01 * (1 + numpy.abs(b)))  # half the tolerance
    far = _record(b + 0.05 * (1 + numpy.abs(b)))   # beyond it
    assert probe_difference(near, current) is None
    assert probe_difference(far, current) == "model"


def test_a_saved_probe_that_is_not_a_record_is_not_compared():
    """A saved probe that is no record (a hand-edited cfg, an earlier version's) says nothing: not compared."""
    current = _record(numpy.zeros((2, 16)))
    for saved in (None, "edited", [1, 2], 3):
        assert probe_difference(saved, current) is None


def test_the_saved_fingerprint_reads_neither_the_order_of_tensors_nor_their_names():
    """Two modules of the same tensors in another order (and so under other
    names) have one fingerprint; a changed sampled value gives another."""
    import copy

    import torch
    from thinc.api import PyTorchWrapper

    from spacy_ctxembed.pipeline.signature import saved_weights_fingerprint

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    one = PyTorchWrapper(torch.nn.Sequential(a, b))
    reordered = PyTorchWrapper(torch.nn.Sequential(copy.deepcopy(b), copy.deepcopy(a)))
    assert saved_weights_fingerprint(one) == saved_weights_fingerprint(reordered)
    with torch.no_grad():
        b.weight[0, 0] += 1.0  # (a sampled value: the first)
    assert saved_weights_fingerprint(one) != saved_weights_fingerprint(reordered)


def test_a_saved_probe_whose_states_are_not_numbers_is_refused_as_another_model():
    """A record whose states cannot be read as numbers (a hand-edited or damaged
    cfg) vouches for nothing: it is refused, not taken for a match."""
    current = _record(numpy.zeros((2, 16)))
    for states in ("edited", [[0.0] * 16, [0.0] * 3], [["a"] * 16, [0.0] * 16]):
        assert probe_difference({**current, "states": states}, current) == "model"
