"""Listeners whose upstream does not give what they were trained on say so.

ContextualListener.v1 gives zeros only for the docs its component is
initialised on (as v2 does), and refuses layers of another shape; a
ContextualListener.v2 head whose weights were trained on other layers or
another width than its upstream now gives names both, rather than failing in
numpy or blis.
"""
import copy
import pickle

import numpy
import pytest
import spacy
from spacy.training import Example
from spacy.util import registry

from spacy_ctxembed import install_extensions
from spacy_ctxembed.errors import SettingError

from .conftest import ctx_config

WORDS = ["I", "ran", "to", "the", "park"]
TAGS = ["PRON", "VERB", "ADP", "DET", "NOUN"]
TEXT = " ".join(WORDS)
V1_NOT_RUN = r"ContextualListener\.v1: doc\._\.ctx_layers is missing: no upstream ctxembed component ran on this doc"


def _random_bert(path, minilm_dir, *, width):
    """A random 2-layer BERT of `width` with the MiniLM tokenizer (the conftest's tiny one: 32 wide, seed 0)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    BertModel(BertConfig(hidden_size=width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(path, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wide_bert_dir(tmp_path_factory, minilm_dir):
    return _random_bert(tmp_path_factory.mktemp("wide-bert"), minilm_dir, width=48)


@pytest.fixture(scope="module")
def other_bert_dir(tmp_path_factory, minilm_dir):
    """The conftest's tiny BERT with other random weights: every shape the same."""
    return _random_bert(tmp_path_factory.mktemp("other-bert"), minilm_dir, width=32)


def _examples(nlp):
    return [Example.from_dict(nlp.make_doc(TEXT), {"words": WORDS, "tags": TAGS})]


def _v1_pipeline(tiny_bert_dir, *, store_layers=True, layers=(1, 2), n_layers=2, upstream_width=32):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=list(layers),
                                                    store_layers=store_layers))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v1", "width": 16, "n_layers": n_layers,
        "upstream_width": upstream_width}}})
    nlp.initialize(lambda: _examples(nlp))
    return nlp


#: Static features a listener may concatenate to what it reads (`embed`), 8 wide.
HASH_EMBED = {"@architectures": "spacy.MultiHashEmbed.v2", "width": 8, "attrs": ["NORM", "SHAPE"],
              "rows": [100, 50], "include_static_vectors": False}


def _v2_pipeline(model_dir, *, layers, mix_layers, name="ctxembed_bert", tagger=None, embed=None):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name=name, config=ctx_config(name=model_dir, layers=list(layers), combine="concat"))
    if tagger is not None:
        nlp.add_pipe("tagger", source=tagger)
        return nlp
    nlp.add_pipe("tagger", config=_tagger_config(mix_layers=mix_layers, upstream=name,
                                                 **({} if embed is None else {"embed": embed})))
    nlp.initialize(lambda: _examples(nlp))
    return nlp


def _tagger_config(**listener):
    """A tagger on a ContextualListener.v2 of width 16 (mixing the layers of upstream "*" unless `listener` says)."""
    return {"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "mix_layers": True, **listener}}}


def _fine_tuned(model_dir, steps):
    """A new pipeline: ctxembed_bert of `model_dir` (layers [1, 2], concatenated) and a tagger listening to it
    ("*"), initialized and fine-tuned together for `steps` updates."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[1, 2], combine="concat"))
    nlp.add_pipe("tagger", config=_tagger_config())
    optimizer = nlp.initialize(lambda: _examples(nlp))
    for _ in range(steps):
        nlp.update(_examples(nlp), sgd=optimizer)
    return nlp


# ContextualListener.v1: zeros only for the docs it is initialised on --------------------
def _v1_head():
    """A ContextualListener.v1 head of two 32-wide upstream layers, 16 wide."""
    return registry.get("architectures", "spacy-ctxembed.ContextualListener.v1")(
        width=16, n_layers=2, upstream_width=32)


def test_v1_head_gives_zeros_only_for_its_sample_docs():
    install_extensions()  # as any ctxembed component does: docs without outputs read None
    model = _v1_head()
    nlp = spacy.blank("en")
    sample, other = nlp("no layers here"), nlp("no layers here")
    model.initialize(X=[sample])
    # Zero features: the mix of zeros is zero, so each row is the projection's bias.
    linear = next(node for node in model.walk() if node.name == "linear")
    numpy.testing.assert_array_equal(model.predict([sample])[0], numpy.tile(linear.get_param("b"), (3, 1)))
    # The same text in another doc is not a sample: zeros there would be features from nothing.
    with pytest.raises(ValueError, match=V1_NOT_RUN):
        model.predict([other])
    # The samples (held weakly) do not travel with a copy, which predicts on docs of its own.
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with pytest.raises(ValueError, match=V1_NOT_RUN):
            copied.predict([sample])
    assert model.predict([sample])[0].shape == (3, 16)


def test_v1_tagger_refuses_docs_its_upstream_did_not_annotate(tiny_bert_dir, tmp_path):
    nlp = _v1_pipeline(tiny_bert_dir)  # initialised on docs the upstream never saw: no error
    tags = [t.tag_ for t in nlp(TEXT)]
    with nlp.select_pipes(disable=["ctxembed_bert"]), pytest.raises(ValueError, match=V1_NOT_RUN):
        nlp(TEXT)
    nlp.to_disk(tmp_path / "pipeline")
    with pytest.raises(ValueError, match=V1_NOT_RUN + r".*disable=\[\.\.\.\]"):
        spacy.load(tmp_path / "pipeline", disable=["ctxembed_bert"])(TEXT)
    # The same saved pipeline with its embedder runs as before.
    assert [t.tag_ for t in spacy.load(tmp_path / "pipeline")(TEXT)] == tags


def test_v1_tagger_refuses_an_upstream_that_stores_no_layers(tiny_bert_dir):
    nlp = _v1_pipeline(tiny_bert_dir, store_layers=False)
    with pytest.raises(ValueError, match=r"ContextualListener\.v1: doc\._\.ctx_layers is missing: the upstream "
                                         r"ctxembed component 'ctxembed_bert' ran on this doc but stores no "
                                         r"layers \(store_layers = false\): set store_layers = true in "
                                         r"\[components\.ctxembed_bert\]"):
        nlp(TEXT)


def test_v1_tagger_names_no_one_of_several_upstreams_that_store_no_layers(tiny_bert_dir):
    """Two embedders ran, neither stores layers: the error told the user to set
    store_layers on the first by name, though the tagger may have been trained
    on the other's layers, which it would then read silently (a saved v1
    pipeline with its embedders reordered: both of the fixture's are 3 x 16)."""
    nlp = _v1_pipeline(tiny_bert_dir, store_layers=False)
    nlp.add_pipe("ctxembed_bert", name="bert_b", before="tagger",
                 config=ctx_config(name=tiny_bert_dir, layers=[1, 2], store_layers=False))
    nlp.get_pipe("bert_b").initialize()
    with pytest.raises(ValueError, match=r"the upstream ctxembed components 'bert_b', 'ctxembed_bert' ran on this "
                                         r"doc but store no layers .*: set store_layers = true in the one this "
                                         r"component was trained on") as error:
        nlp(TEXT)
    assert "[components." not in str(error.value)


@pytest.mark.parametrize("settings, stored", [
    ({"n_layers": 3}, "2 layers of width 32"),
    ({"upstream_width": 64}, "2 layers of width 32"),
    ({"layers": (1, 2, 0)}, "3 layers of width 32"),
])
def test_v1_refuses_layers_of_another_shape(tiny_bert_dir, settings, stored):
    nlp = _v1_pipeline(tiny_bert_dir, **settings)
    expected = {"n_layers": 2, "upstream_width": 32, **settings}
    # The stored shape is the upstream's own: an independent account of what it gives.
    doc = nlp.get_pipe("ctxembed_bert")(nlp.make_doc(TEXT))
    n_stored, _, width = doc._.ctx_layers.shape
    assert stored == f"{n_stored} layers of width {width}"
    with pytest.raises(ValueError, match=rf"ContextualListener\.v1: doc\._\.ctx_layers has {stored}, but this "
                                         rf"component has n_layers = {expected['n_layers']} and upstream_width = "
                                         rf"{expected['upstream_width']}"):
        nlp(TEXT)


# ContextualListener.v2: weights trained on other layers than the upstream gives -------------------


@pytest.mark.parametrize("embed", [None, HASH_EMBED])  # (the projection's input is wider by the embed's 8)
@pytest.mark.parametrize("mix_layers, trained, now", [
    (True, "2 layers", "1 layer"),  # its scalar mix has a weight per layer
    (False, "vectors of width 64", "vectors of width 32"),  # two concatenated layers of 32
])
def test_v2_tagger_sourced_next_to_an_embedder_with_other_layers(tiny_bert_dir, mix_layers, trained, now, embed):
    trained_nlp = _v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=mix_layers, embed=embed)
    tags = [t.tag_ for t in trained_nlp(TEXT)]
    same = _v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=mix_layers, tagger=trained_nlp)
    assert [t.tag_ for t in same(TEXT)] == tags
    other = _v2_pipeline(tiny_bert_dir, layers=(2,), mix_layers=mix_layers, tagger=trained_nlp)
    with pytest.raises(ValueError, match=rf"\[tagger\] ContextualListener upstream = 'ctxembed_bert': "
                                         rf"its weights were trained on {trained}, and its upstream 'ctxembed_bert' "
                                         rf"now gives {now}\. Give 'ctxembed_bert' the settings"):
        other(TEXT)


@pytest.mark.parametrize("mix_layers, what", [(True, "layers"), (False, "vectors")])
def test_v2_tagger_after_its_embedder_is_replaced_by_a_wider_model(tiny_bert_dir, wide_bert_dir, mix_layers, what):
    nlp = _v2_pipeline(tiny_bert_dir, layers=(1,), mix_layers=mix_layers, name="emb")
    nlp.replace_pipe("emb", "ctxembed_bert", config=ctx_config(name=wide_bert_dir, layers=[1], combine="concat"))
    doc = nlp.get_pipe("emb")(nlp.make_doc(TEXT))
    assert doc._.ctx_vectors.shape == (len(WORDS), 48)  # what the upstream now gives
    with pytest.raises(ValueError, match=rf"\[tagger\] ContextualListener upstream = 'emb': "
                                         rf"its weights were trained on {what} of width 32, and its upstream "
                                         rf"'emb' now gives {what} of width 48"):
        nlp(TEXT)


@pytest.mark.parametrize("mix_layers", [True, False])
def test_v2_tagger_sourced_next_to_other_layers_of_the_same_count(tiny_bert_dir, mix_layers, tmp_path):
    # The shapes fit (two layers of 32), but the scalar mix's weights (or the
    # projection of the concatenated layers) were trained on layers [1, 2].
    trained_nlp = _v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=mix_layers)
    tags = [t.tag_ for t in trained_nlp(TEXT)]
    trained_nlp.to_disk(tmp_path / "trained")
    loaded = spacy.load(tmp_path / "trained")
    assert [t.tag_ for t in loaded(TEXT)] == tags
    same = _v2_pipeline(tiny_bert_dir, layers=(-2, -1), mix_layers=mix_layers, tagger=loaded)  # = [1, 2]
    assert [t.tag_ for t in same(TEXT)] == tags
    other = _v2_pipeline(tiny_bert_dir, layers=(2, 1), mix_layers=mix_layers, tagger=loaded)
    with pytest.raises(ValueError, match=r"\[tagger\] ContextualListener upstream = 'ctxembed_bert': its weights were "
                                         r"trained on layers \[1, 2\], and its upstream 'ctxembed_bert' "
                                         r"now gives layers \[2, 1\]"):
        other(TEXT)


@pytest.mark.parametrize("mix_layers", [True, False])
def test_a_wildcard_tagger_given_a_second_upstream_says_it_matches_several(tiny_bert_dir, mix_layers):
    """A second ctxembed component added before a tagger listening to "*"
    sizes its listener as it links it (one layer of 32, where the tagger was
    trained on two, concatenated to 64). The head's check of its trained
    shapes ran first and blamed "upstream '*'" for giving one layer, telling
    the user to give '*' other settings: the cause is that '*' is ambiguous."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="a", config=ctx_config(name=tiny_bert_dir, layers=[1, 2], combine="concat"))
    nlp.add_pipe("tagger", config=_tagger_config(mix_layers=mix_layers))
    nlp.initialize(lambda: _examples(nlp))
    assert len(_tags(nlp)) == len(WORDS)
    nlp.add_pipe("ctxembed_bert", name="b", before="tagger",
                 config=ctx_config(name=tiny_bert_dir, layers=[2], combine="concat"))
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = '\*' matches several ctxembed "
                                         r"components \(a, b\): set upstream to the name of one of them$"):
        nlp(TEXT)


def test_a_tagger_initialised_before_its_new_upstream_loads_records_that_upstreams_layers(tiny_bert_dir):
    # The upstream replaced by one not loaded yet, then the tagger initialised
    # on its own (to train it anew): the upstream loads first, so the head is
    # sized by it and records its layers, not none.
    from spacy_ctxembed.models.listener import ContextualListenerNode
    from spacy_ctxembed.models.listener_checks import TRAINED_ON

    nlp = _v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True)
    nlp.remove_pipe("ctxembed_bert")
    nlp.add_pipe("ctxembed_bert", first=True, config=ctx_config(name=tiny_bert_dir, layers=[2, 1], combine="concat"))
    assert not nlp.get_pipe("ctxembed_bert")._loaded
    nlp.get_pipe("tagger").initialize(lambda: _examples(nlp), nlp=nlp)
    node = next(n for n in nlp.get_pipe("tagger").model.walk() if isinstance(n, ContextualListenerNode))
    assert node.attrs[TRAINED_ON] == [2, 1]
    assert len(nlp(TEXT)) == len(WORDS)


# ContextualListener.v2: features of another pooling, model or weights than it was trained on ----------


def _tags(nlp):
    return [t.tag_ for t in nlp(TEXT)]


def _trained(nlp, steps=3, *, frozen=False):
    """`nlp` after a few updates of the tagger and (not `frozen`) its upstream."""
    optimizer = nlp.resume_training()
    frozen_upstream = {"exclude": ["ctxembed_bert"], "annotates": ["ctxembed_bert"]} if frozen else {}
    for _ in range(steps):
        nlp.update(_examples(nlp), sgd=optimizer, **frozen_upstream)
    return nlp


def _sourced(model_dir, tagger_nlp, **settings):
    """A new pipeline: a new ctxembed_bert of `model_dir` (layers [1, 2], concatenated) and `tagger_nlp`'s tagger."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[1, 2], combine="concat", **settings))
    nlp.add_pipe("tagger", source=tagger_nlp)
    return nlp


@pytest.mark.parametrize("mix_layers", [True, False])
def test_v2_tagger_sourced_next_to_another_model_or_pooling_of_the_same_shapes(
        tiny_bert_dir, other_bert_dir, mix_layers):
    """Every shape fit, so the tagger ran on another model's features (or the
    same model's pooled otherwise), silently: other tags. The same frozen
    model, made again, gives the same features, and is used."""
    trained_nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=mix_layers), frozen=True)
    tags = _tags(trained_nlp)
    assert _tags(_sourced(tiny_bert_dir, trained_nlp)) == tags
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert': its weights "
                                         r"were trained on pooling mean, and its upstream 'ctxembed_bert' now "
                                         r"gives pooling first\. Give 'ctxembed_bert' the settings"):
        _sourced(tiny_bert_dir, trained_nlp, pooling="first")(TEXT)
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert': this "
                                         r"component was trained on the outputs of another 'ctxembed_bert' \(trained "
                                         r"on the outputs of weights [0-9a-f+]{16,33}, 'ctxembed_bert' has weights "
                                         r"[0-9a-f+]{16,33} now\)"):
        _sourced(other_bert_dir, trained_nlp)(TEXT)
    # The tagger is one object in both pipelines: in its own it still reads its own upstream.
    assert _tags(trained_nlp) == tags
    # Trained further next to the same frozen weights under another component: still those weights.
    again = _trained(_sourced(tiny_bert_dir, trained_nlp), steps=1, frozen=True)
    tags = _tags(again)
    assert _tags(_sourced(tiny_bert_dir, again)) == tags


def test_v2_tagger_sourced_next_to_elmo_of_the_same_weights_and_other_options(tmp_path):
    """ELMo's options (activation, clipping, skip connections) shape every
    vector without changing a weight: a tagger trained on one options file,
    sourced next to a new ctxembed_elmo of the same weight file and another
    activation, passed the weights' check (the same frozen weights) and the
    shapes', and tagged another model's features silently. The same options,
    in another file, are the same features, and are used."""
    import copy as copy_module
    import json

    from .elmo_fixture import SMALL, write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    tanh = copy_module.deepcopy(SMALL)
    tanh["char_cnn"]["activation"] = "tanh"
    (tmp_path / "tanh.json").write_text(json.dumps(tanh))
    (tmp_path / "same.json").write_text(json.dumps(json.loads(options.read_text())))

    def elmo(options_file, tagger=None):
        spacy.util.fix_random_seed(0)
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options_file), weight_file=str(weights),
                                                        combine="concat"))
        if tagger is not None:
            nlp.add_pipe("tagger", source=tagger)
            return nlp
        nlp.add_pipe("tagger", config=_tagger_config(upstream="ctxembed_elmo"))
        nlp.initialize(lambda: _examples(nlp))
        return nlp

    trained = elmo(options)
    optimizer = trained.resume_training()
    for _ in range(3):
        trained.update(_examples(trained), sgd=optimizer, exclude=["ctxembed_elmo"], annotates=["ctxembed_elmo"])
    tags = _tags(trained)
    assert _tags(elmo(tmp_path / "same.json", tagger=trained)) == tags
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_elmo': its weights "
                                         r"were trained on ELMo options \S+, and its upstream 'ctxembed_elmo' now "
                                         r"gives ELMo options \S+\. Give 'ctxembed_elmo' the settings"):
        elmo(tmp_path / "tanh.json", tagger=trained)(TEXT)


def test_a_replace_listeners_copy_is_held_to_what_its_head_was_trained_on(tiny_bert_dir, other_bert_dir, tmp_path):
    """replace_listeners gave a head trained on one upstream a copy of
    another's embedder, or of other layers, unchecked: the tagger tagged from
    features it was not trained on, silently, where its listener refused
    them. The copy now refuses as the listener did, also saved and loaded,
    until the head trains on it; a copy of what it was trained on runs."""
    trained_nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True), frozen=True)
    tags = _tags(trained_nlp)
    same = _sourced(tiny_bert_dir, pickle.loads(pickle.dumps(trained_nlp)))
    same.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    assert _tags(same) == tags
    copied = r"\. \(The copy that nlp\.replace_listeners made of 'ctxembed_bert' for this component is refused"
    other = _sourced(other_bert_dir, pickle.loads(pickle.dumps(trained_nlp)))
    other.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert': this component "
                                         rf"was trained on the outputs of another 'ctxembed_bert' .*{copied}"):
        other(TEXT)
    other.to_disk(tmp_path / "other")
    loaded = spacy.load(tmp_path / "other")
    with pytest.raises(ValueError, match=copied):
        loaded(TEXT)
    loaded.initialize(lambda: _examples(loaded))  # (the component starts afresh: no record to hold it to)
    assert len(_tags(loaded)) == len(WORDS)
    assert len(_tags(_trained(other, steps=1))) == len(WORDS)  # trained on its copy now
    other.to_disk(tmp_path / "trained")
    assert _tags(spacy.load(tmp_path / "trained")) == _tags(other)
    # An update that fails before the head's gradient comes back trains nothing:
    # neither the copy's refusal nor the listener's is lifted.
    bad = [Example.from_dict(other.make_doc(TEXT), {"words": WORDS, "tags": ["X"] * len(WORDS)})]
    for nlp in (spacy.load(tmp_path / "other"), _sourced(other_bert_dir, pickle.loads(pickle.dumps(trained_nlp)))):
        with pytest.raises((KeyError, ValueError), match="X"):
            nlp.update(bad)
        with pytest.raises(ValueError, match="this component was trained on the outputs of another"):
            nlp(TEXT)
    swapped = spacy.blank("en")
    swapped.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[2, 1], combine="concat"))
    swapped.add_pipe("tagger", source=pickle.loads(pickle.dumps(trained_nlp)))
    swapped.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    with pytest.raises(ValueError, match=r"its weights were trained on layers \[1, 2\], and its upstream "
                                         rf"'ctxembed_bert' now gives layers \[2, 1\]\..*{copied}"):
        swapped(TEXT)
    # An upstream whose load was refused holds parts of two models: no copy of it.
    half = pickle.loads(pickle.dumps(trained_nlp))
    with pytest.raises(SettingError, match="saved for layers"):
        half.get_pipe("ctxembed_bert").from_bytes(swapped.get_pipe("ctxembed_bert").to_bytes())
    with pytest.raises(SettingError, match=r"^\[ctxembed_bert\] model = .*: loading it was refused"):
        half.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])


def test_a_replace_listeners_copy_for_a_wildcard_of_several_upstreams_names_the_one_copied(
        tiny_bert_dir, other_bert_dir):
    """A tagger listening to "*", sourced next to two ctxembed components, and
    given a copy of one of them by replace_listeners: the refusal named the
    copy as made "of '*'", not of the component copied, and blamed "another
    '*'". It names the component copied, and that '*' matches several."""
    spacy.util.fix_random_seed(0)
    trained_nlp = spacy.blank("en")
    trained_nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[1, 2], combine="concat"))
    trained_nlp.add_pipe("tagger", config=_tagger_config())  # (upstream "*")
    trained_nlp.initialize(lambda: _examples(trained_nlp))
    _trained(trained_nlp, frozen=True)
    nlp = spacy.blank("en")
    for name in ("a", "b"):
        nlp.add_pipe("ctxembed_bert", name=name, config=ctx_config(name=other_bert_dir, layers=[1, 2],
                                                                   combine="concat"))
    nlp.add_pipe("tagger", source=pickle.loads(pickle.dumps(trained_nlp)))  # (not also listed by trained_nlp's)
    nlp.replace_listeners("b", "tagger", ["model.tok2vec"])
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = '\*': this component was "
                                         r"trained on the outputs of another 'b' .*\. \(The copy that "
                                         r"nlp\.replace_listeners made of 'b' \(one of the ctxembed components "
                                         r"its upstream '\*' matches: 'a', 'b'\) for this component is refused"):
        nlp(TEXT)


@pytest.mark.parametrize("mix_layers", [True, False])
def test_a_head_on_the_layers_is_not_held_to_its_upstreams_combiner(tiny_bert_dir, mix_layers):
    """A head that mixes the layers itself never reads the upstream's combiner:
    another combiner (or another listener training it) is the same features
    to it. A head on the vectors reads them through it."""
    # (One layer: concatenated or mixed, of one width.)
    trained_nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(2,), mix_layers=mix_layers), frozen=True)
    tags = _tags(trained_nlp)
    mixed = spacy.blank("en")
    mixed.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[2], combine="scalar_mix"))
    mixed.add_pipe("tagger", source=trained_nlp)
    if mix_layers:
        assert _tags(mixed) == tags
    else:
        with pytest.raises(ValueError, match=r"its weights were trained on combiner concat_layers, and its "
                                             r"upstream 'ctxembed_bert' now gives combiner scalar_mix"):
            mixed(TEXT)


def test_v2_tagger_fine_tuned_with_its_upstream_is_held_to_that_upstream(tiny_bert_dir, tmp_path):
    """Fine-tuned together, the tagger's weights are for the fine-tuned
    encoder's features: the base model made again gives others (silently,
    until now), as does the upstream initialized again. Saved and loaded, or
    pickled, it is the same upstream; trained on a new upstream, the tagger
    is held to that one."""
    nlp = _fine_tuned(tiny_bert_dir, steps=3)
    tags = _tags(nlp)
    nlp.to_disk(tmp_path / "tuned")
    assert _tags(spacy.load(tmp_path / "tuned")) == tags
    assert _tags(pickle.loads(pickle.dumps(nlp))) == tags
    fine_tuned = r"the weights moved while it was trained on them, and 'ctxembed_bert' has other weights now"
    base = _sourced(tiny_bert_dir, spacy.load(tmp_path / "tuned"))
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = '\*': this component was "
                                         rf"trained on the outputs of another 'ctxembed_bert' \({fine_tuned}"):
        base(TEXT)
    _trained(base, steps=1)  # trained (fine-tuned) on this upstream now: held to it
    assert len(_tags(base)) == len(WORDS)
    with pytest.raises(ValueError, match=fine_tuned):
        _sourced(tiny_bert_dir, base)(TEXT)
    # Loaded without its model folder, a component keeps its weights, and their lineage.
    loaded = spacy.load(tmp_path / "tuned")
    loaded.get_pipe("ctxembed_bert").from_disk(tmp_path / "tuned" / "ctxembed_bert", exclude=["model"])
    assert _tags(loaded) == tags
    nlp.get_pipe("ctxembed_bert").initialize()  # the base weights again
    with pytest.raises(ValueError, match=fine_tuned):
        nlp(TEXT)


def test_two_loads_of_one_pipeline_trained_apart_are_not_one_upstream(tiny_bert_dir, tmp_path):
    """Two loads of one saved pipeline share its weights' lineage. Trained
    further (`spacy train` sourcing both components, `resume_training`), one
    load's embedder moves and the other's does not: the tagger trained further
    was taken silently next to the untrained load's embedder (the same lineage,
    and a head fine-tuned with its upstream records no fingerprint), on
    vectors its weights were not trained on. A training step gives the weights
    a lineage of their own, which the heads trained with them follow."""
    _fine_tuned(tiny_bert_dir, steps=3).to_disk(tmp_path / "tuned")
    further, as_saved = spacy.load(tmp_path / "tuned"), spacy.load(tmp_path / "tuned")
    tags = _tags(_trained(further, steps=2))
    mixed = spacy.blank("en")
    mixed.add_pipe("ctxembed_bert", source=as_saved)
    mixed.add_pipe("tagger", source=further)
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = '\*': this component was "
                                         r"trained on the outputs of another 'ctxembed_bert' \(the weights moved"):
        mixed(TEXT)
    # Its own upstream, saved and loaded with it, is still the one it trained with.
    further.to_disk(tmp_path / "further")
    assert _tags(spacy.load(tmp_path / "further")) == _tags(further) == tags


@pytest.mark.parametrize("record, frozen", [("encoder_weights", False), ("encoder_probe", False),
                                            ("encoder_probe", True)])
def test_a_model_folder_kept_on_purpose_is_not_the_one_its_listeners_were_trained_on(
        tiny_bert_dir, other_bert_dir, tmp_path, record, frozen):
    """A saved pipeline's model folder swapped for another model's is refused,
    and the error says how to keep it on purpose: remove the cfg's record. The
    folder then loaded under the saved lineage, and the tagger fine-tuned with
    the saved weights tagged from the other model's, silently; a tagger trained
    on the frozen weights, from an edited config.json's hidden states (the
    weights' fingerprint is the same). Both are refused now; the pipeline as
    saved still loads and tags, and a tagger trained again on the folder kept
    runs, saved and loaded too."""
    import shutil

    import srsly

    nlp = (_trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True), frozen=True) if frozen
           else _fine_tuned(tiny_bert_dir, steps=3))
    tags = _tags(nlp)
    nlp.to_disk(tmp_path / "tuned")
    model = tmp_path / "tuned" / "ctxembed_bert" / "model"
    shutil.copy(other_bert_dir / "model.safetensors", model / "model.safetensors")
    cfg = srsly.read_json(tmp_path / "tuned" / "ctxembed_bert" / "cfg")
    if record == "encoder_probe":  # (the config.json edited instead: other hidden states for the same weights)
        nlp.to_disk(tmp_path / "tuned")  # (its own weights back)
        config = srsly.read_json(model / "config.json")
        srsly.write_json(model / "config.json", {**config, "hidden_act": "relu"})
    else:
        with pytest.raises(SettingError, match=r"remove 'encoder_weights' from that cfg file \(the components "
                                               r"listening to this one through a ContextualListener.v2, .* are "
                                               r"then refused until trained again\)"):
            spacy.load(tmp_path / "tuned")
    del cfg[record]
    srsly.write_json(tmp_path / "tuned" / "ctxembed_bert" / "cfg", cfg)
    kept = spacy.load(tmp_path / "tuned")
    refused = (r"^\[tagger\] ContextualListener upstream = '[^']+': this component was trained on the outputs of "
               r"another 'ctxembed_bert': 'ctxembed_bert' was loaded from a model folder kept on purpose")
    with pytest.raises(ValueError, match=refused):
        _tags(kept)
    # Saved again, the folder has its records, written anew: still not the one the tagger was trained on.
    kept.to_disk(tmp_path / "resaved")
    with pytest.raises(ValueError, match=refused):
        _tags(spacy.load(tmp_path / "resaved"))
    with pytest.raises(ValueError, match=refused):
        _tags(spacy.util.load_model_from_config(kept.config).from_bytes(kept.to_bytes()))
    nlp.to_disk(tmp_path / "again")
    assert _tags(spacy.load(tmp_path / "again")) == tags
    _trained(kept, steps=1, frozen=frozen)
    tags = _tags(kept)
    kept.to_disk(tmp_path / "retrained")
    assert _tags(spacy.load(tmp_path / "retrained")) == tags


def test_an_error_of_a_listener_whose_upstream_was_renamed_names_its_component(tiny_bert_dir):
    nlp = _v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True)
    nlp.rename_pipe("ctxembed_bert", "emb")
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert': the component "
                                         r"it was linked to as 'ctxembed_bert' is named 'emb' now"):
        nlp(TEXT)
    # Another component of the old name, linked to it, is its upstream now (and held to its record);
    # the head starts afresh on it (zeros for the docs it is initialized on: they have no outputs yet).
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[1, 2], combine="concat"),
                 before="tagger")
    assert len(_tags(nlp)) == len(WORDS)
    nlp.initialize(lambda: _examples(nlp))
    assert _tags(_trained(nlp, frozen=True)) == TAGS
    annotated = _trained(nlp, steps=1)(TEXT)  # (by weights of its own: not the renamed one's)
    tagger = nlp.get_pipe("tagger").model
    tagger.predict([_trained(nlp, steps=1)(TEXT)])  # (read after they moved on, as without the rename)
    assert tagger.predict([annotated])[0].shape == (len(WORDS), len(set(TAGS)))
    with nlp.select_pipes(disable=["ctxembed_bert"]), pytest.raises(ValueError, match=r"did not run on it: it is "
                                                                                      r"disabled"):
        nlp(TEXT)


def test_a_doc_annotated_before_its_upstream_was_renamed_and_trained_is_read_as_it_was(tiny_bert_dir):
    """The renamed upstream's outputs stored before the rename are its own,
    also those of weights it has moved from since: read, as without a rename."""
    nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True))
    annotated = nlp(TEXT)
    _trained(nlp, steps=1)
    tagger = nlp.get_pipe("tagger").model
    unrenamed = tagger.predict([annotated])[0]
    assert not numpy.array_equal(unrenamed, tagger.predict([nlp(TEXT)])[0])  # (the upstream's weights moved)
    nlp.rename_pipe("ctxembed_bert", "emb")
    numpy.testing.assert_array_equal(tagger.predict([annotated])[0], unrenamed)


def _two_upstreams(tiny_bert_dir, other_bert_dir):
    """Embedders "A" (the tiny BERT) and "B" (other weights, primary = false), and a tagger listening to each."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="A", config=ctx_config(name=tiny_bert_dir, layers=[1, 2]))
    nlp.add_pipe("ctxembed_bert", name="B", config=ctx_config(name=other_bert_dir, layers=[1, 2], primary=False))
    nlp.add_pipe("tagger", name="tA", config=_tagger_config(upstream="A"))
    nlp.add_pipe("tagger", name="tB", config=_tagger_config(upstream="B"))
    nlp.initialize(lambda: _examples(nlp))
    return nlp


def test_a_listener_whose_upstream_another_pipeline_renamed_reads_no_other_outputs(tiny_bert_dir, other_bert_dir):
    """spaCy renames a component that another pipeline takes in under another
    name: one object in both, renamed in both, and it stores its outputs under
    its new name. Two embedders taken in under each other's names left each
    head of the pipeline they came from reading the other one's features
    (the shapes fit), with no error; pickled (`n_process`), as well, and
    where a third pipeline links a component of the old name to the head.
    Outputs that the renamed component made before are its own: read."""
    src = _two_upstreams(tiny_bert_dir, other_bert_dir)
    annotated = src(TEXT)
    before = {name: src.get_pipe(name).model.predict([annotated])[0] for name in ("tA", "tB")}
    new = spacy.blank("en", vocab=src.vocab)
    new.add_pipe("B", source=src, name="A")
    new.add_pipe("A", source=src, name="B")
    assert [pipe.name for _, pipe in src.pipeline][:2] == ["B", "A"]
    refused = (r"^\[tA\] ContextualListener upstream = 'A': the component it was linked to as 'A' is named 'B' now, "
               r"and stores its outputs under 'B': those under 'A' on the doc are another model's")
    for pipeline in (src, pickle.loads(pickle.dumps(src))):
        with pytest.raises(ValueError, match=refused):
            pipeline(TEXT)
    for name in ("tA", "tB"):
        numpy.testing.assert_array_equal(src.get_pipe(name).model.predict([annotated])[0], before[name])
        with pytest.raises(ValueError, match=r"is named '[AB]' now"):  # (each read the other's outputs)
            src.get_pipe(name).model.predict([src.make_doc(TEXT)])
    third = spacy.blank("en", vocab=src.vocab)
    third.add_pipe("ctxembed_bert", name="A", config=ctx_config(name=tiny_bert_dir, layers=[1, 2]))
    third.add_pipe("tA", source=src)  # (one object: "A" of `third` links src's head too)
    with pytest.raises(ValueError, match=refused):
        src(TEXT)
    numpy.testing.assert_array_equal(src.get_pipe("tA").model.predict([annotated])[0], before["tA"])
    # The pipeline saved, as it is, loads with its components named as their slots, and predicts as before.
    loaded = spacy.util.load_model_from_config(src.config).from_bytes(src.to_bytes())
    doc = loaded(TEXT)
    for name in ("tA", "tB"):
        numpy.testing.assert_allclose(loaded.get_pipe(name).model.predict([doc])[0], before[name], atol=1e-6)


def test_a_disabled_upstream_is_not_taken_for_a_renamed_one(tiny_bert_dir, other_bert_dir):
    """Another embedder's outputs on the doc made the error say that the upstream was renamed."""
    nlp = _two_upstreams(tiny_bert_dir, other_bert_dir)
    with nlp.select_pipes(disable=["A"]):
        with pytest.raises(ValueError, match=r"^\[tA\] ContextualListener upstream = 'A': doc has no layers from "
                                             r"upstream 'A', which did not run on it: it is disabled"):
            nlp(TEXT)


def test_a_tagger_sourced_into_a_pipeline_without_an_embedder_is_told_its_upstream_is_not_there(tiny_bert_dir):
    """Sourced into a pipeline with no ctxembed component, its source pipeline
    still alive (whose embedder still lists the shared listener): the error
    said only that the upstream "did not run on it: it is disabled", which it
    is not. It names the true cause, and the source pipeline still tags."""
    nlp = _fine_tuned(tiny_bert_dir, 1)
    tags = _tags(nlp)
    other = spacy.blank("en")
    other.add_pipe("tagger", source=nlp)
    with pytest.raises(ValueError, match=(
            r"^\[tagger\] ContextualListener upstream = '\*': doc has no layers from upstream 'ctxembed_bert', which "
            r"did not run on it: it is disabled \(.*\), or it is not in the pipeline that ran this component \(a "
            r"component taken into another pipeline with nlp.add_pipe\(\.\.\., source=\.\.\.\) is one object in "
            r"both, and still listens to 'ctxembed_bert' of its source pipeline: add a ctxembed component before it")):
        other(TEXT)
    assert _tags(nlp) == tags


def test_the_record_is_not_held_to_what_changes_with_library_versions(tiny_bert_dir):
    """The tokenizer's and config.json's digests change with the versions of
    tokenizers and transformers (a BPE tokenizer's definition gained a field in
    tokenizers 0.20): a head trained under older ones, with its upstream or
    next to the same weights, is not refused for them. The weights tell another model."""
    from spacy_ctxembed.models.listener import ContextualListenerNode
    from spacy_ctxembed.models.listener_checks import TRAINED_WITH

    trained_nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True), frozen=True)
    tags = _tags(trained_nlp)
    node = next(n for n in trained_nlp.get_pipe("tagger").model.walk() if isinstance(n, ContextualListenerNode))
    record = node.attrs[TRAINED_WITH]
    assert record["features"]["tokenizer"] != "0" * 16 and record["features"]["config"] != "1" * 16
    node.attrs[TRAINED_WITH] = {**record, "features": {**record["features"], "tokenizer": "0" * 16, "config": "1" * 16}}
    assert _tags(_sourced(tiny_bert_dir, trained_nlp)) == tags  # (another lineage: held to what is held)


def test_a_listener_left_unlinked_by_spacy_train_says_why(tiny_bert_dir):
    """spacy train's init_nlp links the pipeline, then initializes it with the
    sourced components disabled, and Language.initialize links again the
    enabled ones only: a sourced tagger next to a new trained upstream is not
    sent its outputs. Its first update said only that the upstream had not run."""
    trained_nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True), frozen=True)
    nlp = _sourced(tiny_bert_dir, trained_nlp)
    nlp._link_components()
    with nlp.select_pipes(disable=["tagger"]):
        optimizer = nlp.initialize()  # (as init_nlp: the sourced tagger is resumed, not initialized)
    with pytest.raises(ValueError, match=r"'ctxembed_bert' does not list this listener now: spaCy linked the "
                                         r"pipeline again while this component was disabled"):
        nlp.update(_examples(nlp), sgd=optimizer)


@pytest.mark.parametrize("model", ["same", "other"])
def test_a_listener_left_unlinked_is_still_held_to_the_upstream_it_reads(tiny_bert_dir, other_bert_dir, model):
    """A frozen sourced tagger that spaCy linked again without (spacy train) was
    not checked at all: it read another model's features in every evaluation,
    and was refused only once the trained pipeline was loaded. (A listener of
    the vectors: one that mixes layers finds none stored, and says so.)"""
    trained_nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=False), frozen=True)
    tags = _tags(trained_nlp)
    nlp = _sourced(tiny_bert_dir if model == "same" else other_bert_dir, trained_nlp)
    nlp._link_components()
    with nlp.select_pipes(disable=["tagger"]):
        nlp.initialize()
    assert not nlp.get_pipe("ctxembed_bert").listening_components
    if model == "same":
        assert _tags(nlp) == tags
    else:
        with pytest.raises(ValueError, match=r"this component was trained on the outputs of another 'ctxembed_bert'"):
            nlp(TEXT)


def test_the_upstream_it_trained_with_is_held_to_its_pooling_and_to_the_weights_it_trained_on(tiny_bert_dir, tmp_path):
    """The upstream's own lineage was accepted as it was: another pooling loaded
    on purpose (encoder_features removed from its cfg, as the load's error
    says), or its weights fine-tuned by another component after this one
    trained on them frozen, were silently other features."""
    import srsly

    trained_nlp = _trained(_v2_pipeline(tiny_bert_dir, layers=(1, 2), mix_layers=True), frozen=True)
    tags = _tags(trained_nlp)
    trained_nlp.to_disk(tmp_path / "p")
    assert _tags(spacy.load(tmp_path / "p")) == tags
    config = (tmp_path / "p" / "config.cfg").read_text()
    assert config.count('pooling = "mean"') == 1
    (tmp_path / "p" / "config.cfg").write_text(config.replace('pooling = "mean"', 'pooling = "first"'))
    cfg = srsly.read_json(tmp_path / "p" / "ctxembed_bert" / "cfg")
    del cfg["encoder_features"]
    srsly.write_json(tmp_path / "p" / "ctxembed_bert" / "cfg", cfg)
    with pytest.raises(ValueError, match=r"its weights were trained on pooling mean, and its upstream "
                                         r"'ctxembed_bert' now gives pooling first"):
        spacy.load(tmp_path / "p")(TEXT)
    # Another listener fine-tunes the upstream: the tagger trained on it frozen reads moved weights.
    trained_nlp.add_pipe("tagger", name="tagger2", config=_tagger_config())
    trained_nlp.get_pipe("tagger2").initialize(lambda: _examples(trained_nlp), nlp=trained_nlp)
    optimizer = trained_nlp.resume_training()
    for _ in range(2):  # (the tagger never calls back: the encoder steps at the next update)
        trained_nlp.update(_examples(trained_nlp), sgd=optimizer, exclude=["tagger"])
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert': this component "
                                         r"was trained on other weights of 'ctxembed_bert' \(on the outputs of weights "
                                         r"[0-9a-f]{16} as they were; those of 'ctxembed_bert' have moved since"):
        trained_nlp(TEXT)


def test_a_listening_component_not_trained_yet_is_not_held_to_the_weights_it_was_initialized_next_to(tiny_bert_dir):
    """spaCy's ner (or parser) skips every batch without its annotation: while
    another listener fine-tunes the upstream, its head, never trained, was
    refused at the first evaluation (`spacy train` stopped there)."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[1, 2], combine="concat"))
    for name in ("tagger", "tagger2"):
        nlp.add_pipe("tagger", name=name, config=_tagger_config())
    optimizer = nlp.initialize(lambda: _examples(nlp))
    for _ in range(2):
        nlp.update(_examples(nlp), sgd=optimizer, exclude=["tagger2"])
    assert len(nlp(TEXT)) == len(WORDS)


def test_a_component_fine_tuned_before_is_held_to_the_frozen_weights_it_trains_on_next(tiny_bert_dir):
    """A head fine-tuned with one upstream, then trained on a new frozen one,
    takes that upstream's weights as what it trained on: they must stay
    those. Before, it kept no fingerprint, and another component fine-tuning
    them later was accepted."""
    nlp = _fine_tuned(tiny_bert_dir, steps=2)  # fine-tuned together
    frozen = _trained(_sourced(tiny_bert_dir, nlp), steps=1, frozen=True)
    frozen.add_pipe("tagger", name="tagger2", config=_tagger_config())
    frozen.get_pipe("tagger2").initialize(lambda: _examples(frozen), nlp=frozen)
    optimizer = frozen.resume_training()
    for _ in range(2):  # another component fine-tunes the upstream the tagger was trained on frozen
        frozen.update(_examples(frozen), sgd=optimizer, exclude=["tagger"])
    with pytest.raises(ValueError, match=r"this component was trained on other weights of 'ctxembed_bert' \(on "
                                         r"the outputs of weights [0-9a-f]{16} as they were"):
        frozen(TEXT)


IN_TRAINING = (r"^ContextualListener\.v1: doc\._\.ctx_layers is missing: the upstream ctxembed component must run "
               r"with store_layers = true, before this component \(in training: list it in \[training\] "
               r"frozen_components and annotating_components\)$")


def test_v1_head_in_training_refuses_docs_without_layers_even_its_samples():
    """In training no doc may read zeros for missing layers, not even a sample
    doc (those get zeros only in prediction, while spaCy initialises), and the
    error says what training needs: the upstream frozen and annotating."""
    install_extensions()
    model = _v1_head()
    nlp = spacy.blank("en")
    sample, other = nlp("no layers here"), nlp("no layers here")
    model.initialize(X=[sample])
    assert model.predict([sample])[0].shape == (3, 16)  # the premise: zeros in prediction
    for doc in (sample, other):
        with pytest.raises(ValueError, match=IN_TRAINING):
            model.begin_update([doc])


def test_v1_head_gives_no_zeros_to_a_new_doc_where_a_freed_sample_doc_was():
    """The sample docs are held by id and weakly: once one is freed, CPython may
    give a new doc its address, and so its id. That doc is not a sample, and
    must not read zeros for the upstream's missing layers."""
    import gc

    install_extensions()
    model = _v1_head()
    nlp = spacy.blank("en")
    sample = nlp("no layers here")
    model.initialize(X=[sample])
    freed = id(sample)
    del sample
    gc.collect()
    kept = []  # (each try kept alive, so that the next one gets another address)
    for _ in range(200):
        kept.append(nlp("no layers here"))
        if id(kept[-1]) == freed:
            break
    else:
        pytest.skip("no new doc was given the freed sample's address")
    with pytest.raises(ValueError, match=V1_NOT_RUN):
        model.predict([kept[-1]])


def test_v1_head_initialized_again_forgets_the_earlier_sample_docs():
    """Zeros are for the docs of the latest initialization only: a doc the
    head was first initialised on is a doc like any other once it has been
    initialised again on others (in training, `nlp.initialize` runs again)."""
    install_extensions()
    model = _v1_head()
    nlp = spacy.blank("en")
    first, second = nlp("no layers here"), nlp("no layers here")
    model.initialize(X=[first])
    model.initialize(X=[second])
    assert model.predict([second])[0].shape == (3, 16)
    with pytest.raises(ValueError, match=V1_NOT_RUN):
        model.predict([first])


@pytest.mark.parametrize("shape, says", [
    ((2, 6, 32), "the layers are not this doc's (was the doc retokenized"),
    ((3, 5, 32), "has 3 layers of width 32, but this component has n_layers = 2 and upstream_width = 32"),
    ((2, 5, 48), "has 2 layers of width 48, but this component has n_layers = 2 and upstream_width = 32"),
])
def test_v1_says_whether_stored_layers_are_another_docs_or_another_setting(shape, says):
    """Layers of another token count than the doc's (n_layers 2, 5 tokens, width
    32 here) are another doc's (it was retokenized after the upstream ran),
    whatever their layer count and width: the error must not send the user to
    change settings that are right. Another count or width over the doc's own
    tokens is a settings mismatch."""
    from spacy_ctxembed.layers.read_ctx_layers import _shape_error

    assert says in _shape_error(shape, 2, 5, 32)


def test_output_width_is_the_models_own_nO_else_the_last_layer_that_knows_it():
    """What an `embed` concatenated to the mix adds to the projection's input: a chain
    such as MultiHashEmbed sets no nO of its own before init, and ends in a layer with
    no width (ragged2list); its width is its last Maxout's, found at any depth."""
    from thinc.api import HashEmbed, Maxout, chain, concatenate, list2ragged, ragged2list, with_array

    from spacy_ctxembed.models.listener_checks import output_width

    flat = chain(list2ragged(), with_array(HashEmbed(8, 100)), with_array(Maxout(4, 8, nP=2)), ragged2list())
    assert flat.has_dim("nO") is None and output_width(flat) == 4
    nested = chain(chain(list2ragged(), with_array(Maxout(6, 8, nP=2)), ragged2list()), ragged2list())
    assert output_width(nested) == 6
    told = concatenate(HashEmbed(8, 100), HashEmbed(4, 100))
    told.set_dim("nO", 12)
    assert output_width(told) == 12
    with pytest.raises(ValueError, match="cannot tell the output width of 'list2ragged>>ragged2list': give it an nO"):
        output_width(chain(list2ragged(), ragged2list()))


def test_output_width_adds_a_concatenates_parts_and_does_not_guess_past_an_unsized_layer():
    """A concatenate (nO unset until init) is as wide as its parts together; a chain
    whose last layer has no width yet (Maxout without nO) cannot be told, not taken to
    be as wide as the layer before it."""
    from thinc.api import HashEmbed, Maxout, chain, concatenate

    from spacy_ctxembed.models.listener_checks import output_width

    parts = concatenate(HashEmbed(8, 100), HashEmbed(4, 100))
    assert parts.has_dim("nO") is None and output_width(parts) == 12
    assert output_width(chain(parts, Maxout(6, nP=2))) == 6
    with pytest.raises(ValueError, match="cannot tell the output width of 'maxout': give it an nO"):
        output_width(chain(HashEmbed(8, 100), Maxout(nP=2)))
