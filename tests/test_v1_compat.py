"""A pipeline saved by version 0.1 (the v1 names) loads and gives its recorded outputs."""
import json
import re
from pathlib import Path

import numpy
import pytest
import spacy

from spacy_ctxembed.errors import SettingError

from .conftest import assert_recorded, ctx_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v1_pipeline"


@pytest.fixture(scope="module")
def v1_nlp():
    return spacy.load(FIXTURE)


def test_config_is_v1(v1_nlp):
    config = v1_nlp.config["components"]
    assert config["ctxembed_bert"]["model"]["@architectures"] == "spacy-ctxembed.BertEmbedder.v1"
    assert config["ctxembed_elmo"]["model"]["@architectures"] == "spacy-ctxembed.ElmoEmbedder.v1"
    assert config["tagger"]["model"]["tok2vec"]["@architectures"] == "spacy-ctxembed.ContextualListener.v1"
    assert config["ctxembed_bert"]["combine"] == "scalar_mix"


def test_outputs_equal_the_recorded_ones(v1_nlp):
    expected = numpy.load(FIXTURE / "expected.npz")
    texts = json.loads((FIXTURE / "texts.json").read_text(encoding="utf8"))
    for i, text in enumerate(texts):
        doc = v1_nlp.make_doc(text)
        v1_nlp.get_pipe("ctxembed_elmo")(doc)
        elmo = doc._.ctx_vectors.copy()
        assert_recorded(elmo, expected[f"elmo_vectors_{i}"])
        v1_nlp.get_pipe("ctxembed_bert")(doc)
        assert_recorded(doc._.ctx_vectors, expected[f"bert_vectors_{i}"])
        assert_recorded(doc._.ctx_layers, expected[f"bert_layers_{i}"])
        v1_nlp.get_pipe("tagger")(doc)
        assert [t.tag_ for t in doc] == list(expected[f"tags_{i}"])
        # v2 keeps each component's own outputs too.
        numpy.testing.assert_array_equal(doc._.ctx_outputs["ctxembed_elmo"]["vectors"], elmo)


def test_the_analysis_reads_every_layer_of_a_saved_v1_component_with_a_scalar_mix():
    """The analysis reads the layers under a plain mean, also of a v1 component (whose `combine` is a
    setting of its own): its scalar mix, whose weights it does not read, has none. The layers are the
    recorded ones."""
    from spacy_ctxembed.analysis import PipelineSource
    from spacy_ctxembed.analysis.source import all_layer_edits

    source = PipelineSource(model=str(FIXTURE))
    saved = source.load()
    assert saved.config["components"]["ctxembed_bert"]["combine"] == "scalar_mix"  # the premise
    nlp = source.load(all_layer_edits(saved, "ctxembed_bert", [0, 1, 2]), new_combiner="ctxembed_bert")
    text = json.loads((FIXTURE / "texts.json").read_text(encoding="utf8"))[0]
    doc = nlp.get_pipe("ctxembed_bert")(nlp.make_doc(text))
    assert_recorded(doc._.ctx_layers, numpy.load(FIXTURE / "expected.npz")["bert_layers_0"])


def test_resaved_v1_pipeline_loads_the_same(v1_nlp, tmp_path):
    v1_nlp.to_disk(tmp_path / "again")
    again = spacy.load(tmp_path / "again")
    text = "I ran to the park this morning."
    numpy.testing.assert_array_equal(again(text)._.ctx_vectors, v1_nlp(text)._.ctx_vectors)


@pytest.mark.parametrize("setting, value, block", [
    ("layers", [0, 1], "model.encoder"), ("pooling", "first", "model.encoder"), ("combine", "concat", "model.combiner"),
    ("layers", [], "model.encoder"),  # (given, if empty: not taken as left out)
])
def test_v1_settings_are_refused_on_a_v2_model(tiny_bert_dir, setting, value, block):
    """A v1 component setting given to a v2 model is refused, naming the block it moved to."""
    nlp = spacy.blank("en")
    with pytest.raises(SettingError, match=re.escape(
            f"[bert_a] {setting} = {value!r}: a v1 component setting; with the v2 model set it in the "
            f"component's [{block}] block")):
        nlp.add_pipe("ctxembed_bert", name="bert_a", config={setting: value, **ctx_config(name=tiny_bert_dir)})


def _v1_doc(tmp_path, rows, *, with_layers=False):
    """("written by 0.1" as 0.1's embed saved it, read back from its DocBin; its `rows` vectors):
    the plain doc extension values in user data, the layers (the vectors as one layer) if asked."""
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    doc = nlp("written by 0.1")
    vectors = numpy.arange(rows * 3, dtype="float32").reshape(rows, 3)
    doc.user_data[("._.", "ctx_vectors", None, None)] = vectors
    if with_layers:
        doc.user_data[("._.", "ctx_layers", None, None)] = vectors[None]
    DocBin(docs=[doc], store_user_data=True).to_disk(tmp_path / "v1.spacy")
    return next(DocBin().from_disk(tmp_path / "v1.spacy").get_docs(nlp.vocab)), vectors


def test_restore_vectors_reads_docs_written_by_v1(tmp_path):
    from spacy.tokens import Doc

    from spacy_ctxembed import restore_vectors

    doc, vectors = _v1_doc(tmp_path, 3, with_layers=True)
    back = restore_vectors(doc)
    numpy.testing.assert_array_equal(back._.ctx_vectors, vectors)
    numpy.testing.assert_array_equal(back._.ctx_layers, vectors[None])
    numpy.testing.assert_array_equal(back[1].vector, vectors[1])
    assert isinstance(back, Doc)


@pytest.mark.parametrize("layers,refused", [([2, 1, 0], True), ([0, 2, 1], True), ([-3, -2, -1], False)])
def test_a_v1_pipeline_with_its_layers_edited_is_refused(tmp_path, layers, refused):
    """0.1's cfg recorded the `layers` setting as written; an edit of it in
    config.cfg that keeps the count (the mix's weights, trained for layers 0, 1,
    2, on others) loaded silently. The same layers written from the top load."""
    import shutil

    from spacy.util import load_config

    path = tmp_path / "edited"
    shutil.copytree(FIXTURE, path)
    config = load_config(path / "config.cfg", interpolate=False)
    config["components"]["ctxembed_bert"]["layers"] = layers
    config.to_disk(path / "config.cfg")
    if refused:
        with pytest.raises(SettingError, match=r"^\[ctxembed_bert\] combiner = .*saved for layers \[0, 1, 2\]"):
            spacy.load(path)
        return
    expected = numpy.load(FIXTURE / "expected.npz")
    text = json.loads((FIXTURE / "texts.json").read_text(encoding="utf8"))[0]
    nlp = spacy.load(path)
    assert_recorded(nlp(text)._.ctx_outputs["ctxembed_bert"]["vectors"], expected["bert_vectors_0"])


@pytest.mark.parametrize("family", ["bert", "elmo"])
@pytest.mark.parametrize("mix_layers", [True, False])
def test_replace_listeners_of_a_v1_model_writes_a_pipeline_that_loads_the_same(
        tiny_bert_dir, tmp_path, family, mix_layers):
    """The copy's config was the v1 model block, without the component's v1 layers,
    pooling and combine: the saved pipeline failed to load (IndexError), and would
    otherwise have taken the v1 defaults. It is written as the v2 block that the
    component's upgrade builds."""
    from spacy.training import Example

    from .elmo_fixture import write_elmo_fixture

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    if family == "bert":
        name = "ctxembed_bert"
        nlp.add_pipe(name, config={"layers": [1, 2], "pooling": "max", "combine": "scalar_mix", "model": {
            "@architectures": "spacy-ctxembed.BertEmbedder.v1", "name": str(tiny_bert_dir)}})
    else:
        name = "ctxembed_elmo"
        options, weights = write_elmo_fixture(tmp_path / "elmo")
        nlp.add_pipe(name, config={"layers": [0, 2], "combine": "concat", "model": {
            "@architectures": "spacy-ctxembed.ElmoEmbedder.v1", "options_file": str(options),
            "weight_file": str(weights)}})
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 8, "mix_layers": mix_layers}}})
    words = ["I", "ran", "to", "the", "park", "."]
    examples = [Example.from_dict(nlp.make_doc(" ".join(words)),
                                  {"words": words, "tags": ["PRP", "VBD", "IN", "DT", "NN", "."]})]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(2):
        nlp.update(examples, sgd=optimizer)
    text = "She ran the tests in the park."
    before = nlp.get_pipe("tagger").model.predict([nlp(text)])[0]
    nlp.replace_listeners(name, "tagger", ["model.tok2vec"])
    embedder = nlp.config["components"]["tagger"]["model"]["tok2vec"]["embedder"]
    assert embedder["@architectures"] == "spacy-ctxembed.Embedder.v2"
    assert embedder["encoder"]["layers"] == ([1, 2] if family == "bert" else [0, 2])
    assert embedder["encoder"].get("pooling") == ("max" if family == "bert" else None)
    assert embedder["combiner"]["@layers"] == ("spacy-ctxembed.ScalarMix.v1" if family == "bert" else
                                               "spacy-ctxembed.ConcatLayers.v1")
    numpy.testing.assert_array_equal(nlp.get_pipe("tagger").model.predict([nlp(text)])[0], before)
    nlp.to_disk(tmp_path / "replaced")
    loaded = spacy.load(tmp_path / "replaced")
    numpy.testing.assert_array_equal(loaded.get_pipe("tagger").model.predict([loaded(text)])[0], before)


@pytest.mark.parametrize("setting,value,expected", [
    ("combine", "sum", "expected one of 'mean', 'concat', 'scalar_mix'"),
    ("pooling", "median", "expected one of 'mean', 'first', 'last', 'max'"),
    ("layers", [], "expected a non-empty list of integers"),
])
def test_a_bad_v1_component_setting_is_named(setting, value, expected):
    """The upgrade of a v1 model checks the component's v1 settings before it builds the v2 chain."""
    nlp = spacy.blank("en")
    with pytest.raises(SettingError, match=re.escape(f"[ctxembed_bert] {setting} = {value!r}: {expected}")):
        nlp.add_pipe("ctxembed_bert", config={setting: value, "model": {
            "@architectures": "spacy-ctxembed.BertEmbedder.v1"}})


@pytest.mark.parametrize("family, defaults", [
    ("bert", {"layers": [-1], "pooling": "mean", "combine": "mean"}),
    ("elmo", {"layers": [0, 1, 2], "pooling": None, "combine": "mean"}),
])
def test_a_v1_component_without_settings_gets_v1s_defaults(tiny_bert_dir, tmp_path, family, defaults):
    """A 0.1 component that gave no settings gets 0.1's defaults: for BERT the top
    layer, mean pooling, mean; for ELMo the mean of all three layers."""
    from spacy_ctxembed.models.legacy import V1_SETTINGS, BertEmbedder, ElmoEmbedder, upgrade
    from spacy_ctxembed.models.torch_bridge import encoder_shim

    from .elmo_fixture import write_elmo_fixture

    if family == "bert":
        model = BertEmbedder(name=str(tiny_bert_dir))
    else:
        options, weights = write_elmo_fixture(tmp_path / "elmo")
        model = ElmoEmbedder(options_file=str(options), weight_file=str(weights))
    upgraded = upgrade("ctxembed", model, layers=None, pooling=None, combine=None)
    assert upgraded.attrs[V1_SETTINGS] == defaults
    assert list(encoder_shim(upgraded).settings["layers"]) == defaults["layers"]


@pytest.mark.parametrize("architecture, encoder", [
    ("spacy-ctxembed.BertEmbedder.v1", {"@architectures": "spacy-ctxembed.BertEncoder.v2", "name": None,
                                        "window": None, "stride": None, "max_batch_items": 4096,
                                        "precision": "fp32", "layers": [0, 2], "pooling": "mean",
                                        "trainable": False}),
    ("spacy-ctxembed.ElmoEmbedder.v1", {"@architectures": "spacy-ctxembed.ElmoEncoder.v3", "options_file": None,
                                        "weight_file": None, "max_batch_items": 4096, "layers": [0, 2],
                                        "trainable": False}),
])
def test_a_v1_copys_block_takes_the_v1_architectures_defaults(architecture, encoder):
    """What a v1 model block leaves out is what 0.1's architecture defaulted it to
    (BERT's batch budget 4096 items, where v2's is sized from memory), written out
    in the v2 block of a copy (replace_listeners), so that it loads the same."""
    from spacy_ctxembed.models.legacy import upgrade_cfg

    v1 = {"layers": [0, 2], "pooling": "mean", "combine": "mean"}
    assert upgrade_cfg({"@architectures": architecture}, v1) == {
        "@architectures": "spacy-ctxembed.Embedder.v2", "encoder": encoder,
        "combiner": {"@layers": "spacy-ctxembed.MeanLayers.v1"}}


def test_a_v1_copys_block_keeps_what_it_gives():
    """What the v1 block gives wins over the architecture's defaults (only what it leaves out is filled in)."""
    from spacy_ctxembed.models.legacy import upgrade_cfg

    v1 = {"layers": [1], "pooling": "first", "combine": "mean"}
    block = upgrade_cfg({"@architectures": "spacy-ctxembed.BertEmbedder.v1", "name": "some/model",
                         "max_batch_items": 64, "precision": "bf16"}, v1)
    assert block["encoder"] == {"@architectures": "spacy-ctxembed.BertEncoder.v2", "name": "some/model",
                                "window": None, "stride": None, "max_batch_items": 64, "precision": "bf16",
                                "layers": [1], "pooling": "first", "trainable": False}


def test_a_v1_trf_pooler_gets_v1s_defaults_and_keeps_its_pooling():
    """0.1's TrfPooler: without settings the top layer, mean-pooled, mean; a pooling it gives reaches the
    v2 encoder (upgraded, and in a copy's block)."""
    from spacy_ctxembed.models.legacy import V1_SETTINGS, TrfPooler, upgrade, upgrade_cfg
    from spacy_ctxembed.models.trf_pooler import MODEL_NAME
    from spacy_ctxembed.settings import config_value

    def encoder_settings(model):
        return next(config_value(node.attrs["settings"]) for node in model.walk() if node.name == MODEL_NAME)

    upgraded = upgrade("ctxembed", TrfPooler(), layers=None, pooling=None, combine=None)
    assert upgraded.attrs[V1_SETTINGS] == {"layers": [-1], "pooling": "mean", "combine": "mean"}
    assert dict(encoder_settings(upgraded)) == {"layers": [-1], "pooling": "mean"}
    upgraded = upgrade("ctxembed", TrfPooler(), layers=[0, 2], pooling="max", combine=None)
    assert dict(encoder_settings(upgraded)) == {"layers": [0, 2], "pooling": "max"}
    v1 = {"layers": [0, 2], "pooling": "max", "combine": "mean"}
    assert upgrade_cfg({"@architectures": "spacy-ctxembed.TrfPooler.v1"}, v1) == {
        "@architectures": "spacy-ctxembed.Embedder.v2",
        "encoder": {"@architectures": "spacy-ctxembed.TrfEncoder.v2", "layers": [0, 2], "pooling": "max"},
        "combiner": {"@layers": "spacy-ctxembed.MeanLayers.v1"}}


def test_an_upgraded_v1_bert_embedder_stays_frozen(tiny_bert_dir):
    """0.1's BERT encoder was never trained: upgraded, it stays frozen."""
    from spacy_ctxembed.models.legacy import BertEmbedder, upgrade
    from spacy_ctxembed.models.torch_bridge import encoder_shim

    upgraded = upgrade("ctxembed", BertEmbedder(name=str(tiny_bert_dir)), layers=None, pooling=None, combine=None)
    assert encoder_shim(upgraded).settings["trainable"] is False


def test_restoring_a_v1_doc_leaves_its_tensor_alone(tmp_path):
    """restore_vectors re-attaches the vectors and hooks; doc.tensor (not saved by
    this DocBin) stays as the DocBin gave it."""
    from spacy_ctxembed import restore_vectors

    doc, vectors = _v1_doc(tmp_path, 3)
    back = restore_vectors(doc)
    numpy.testing.assert_array_equal(back._.ctx_vectors, vectors)
    assert back.tensor.size == 0


@pytest.mark.parametrize("rows", [2, 4])
def test_a_v1_doc_whose_vectors_are_not_one_per_token_is_refused(tmp_path, rows):
    from spacy_ctxembed import restore_vectors
    from spacy_ctxembed.outputs import MissingOutputs

    doc, _ = _v1_doc(tmp_path, rows)
    with pytest.raises(MissingOutputs, match=rf"^restore_vectors: the doc's stored vectors do not have one row per "
                                             rf"token \({rows} rows, 3 tokens\)$"):
        restore_vectors(doc)


def test_dropping_the_layers_of_a_doc_written_by_v1_drops_its_stored_layers(tmp_path):
    """`doc._.ctx_layers = None` (doc_cleaner) on a doc read from a v1 DocBin,
    not restored yet: its v1 layers are dropped too, so restore_vectors gives
    the vectors without them."""
    from spacy_ctxembed import install_extensions, restore_vectors

    install_extensions()
    doc, vectors = _v1_doc(tmp_path, 3, with_layers=True)
    doc._.ctx_layers = None
    back = restore_vectors(doc)
    numpy.testing.assert_array_equal(back._.ctx_vectors, vectors)
    assert back._.ctx_layers is None
