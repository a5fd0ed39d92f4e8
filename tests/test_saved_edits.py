"""A saved pipeline whose config.cfg (or receiving pipeline) no longer matches what
was saved is refused by name, never loaded into the wrong combiner or layers."""
import json
import shutil
from pathlib import Path

import numpy
import pytest
import spacy
import srsly
from spacy.util import load_config, load_model_from_config

from spacy_ctxembed.errors import SettingError

from .conftest import COMBINERS, assert_recorded, ctx_config
from .elmo_fixture import write_elmo_fixture

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
