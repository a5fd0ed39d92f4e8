"""A listener after loading: the config's settings win over the saved bytes, and an
upstream that is excluded or disabled is named, never replaced by zero features."""
import re
import shutil

import numpy
import pytest
import spacy
import srsly
import torch
from spacy.training import Example
from thinc.api import SGD, Adam, Linear, Model, with_array

from spacy_ctxembed.errors import SettingError
from spacy_ctxembed.models.grad_scale import scale_gradient

from .conftest import ctx_config, param_copies

WORDS = ["I", "ran", "to", "the", "park"]
TAGS = ["PRON", "VERB", "ADP", "DET", "NOUN"]
TEXT = " ".join(WORDS)
NO_UPSTREAM = r"ContextualListener upstream = '\*': no ctxembed component of that name comes before"
NOT_RUN = (r"\[tagger\] ContextualListener upstream = '\*': doc has no layers from upstream 'ctxembed_bert', "
           "which did not run")


def _pipeline(tiny_bert_dir, *, disabled_at_initialize=False, **settings):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[1, 2], **settings))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}}})
    examples = [Example.from_dict(nlp.make_doc(TEXT), {"words": WORDS, "tags": TAGS})]
    if disabled_at_initialize:
        # As `spacy train` initialises a pipeline with a frozen upstream: linked, then
        # initialised with it disabled; the tagger is initialised on docs it never annotated.
        with nlp.select_pipes(disable=["ctxembed_bert"]):
            nlp.initialize(lambda: examples)
    else:
        nlp.initialize(lambda: examples)
    return nlp, examples


def _trained(tiny_bert_dir):
    nlp, examples = _pipeline(tiny_bert_dir)
    optimizer = nlp.resume_training()
    for _ in range(20):
        nlp.update(examples, sgd=optimizer)
    assert [t.tag_ for t in nlp(TEXT)] == TAGS
    return nlp, examples


# Settings from the config -------------------------------------------------------


def _private_encoder(nlp):
    return next(shim for node in nlp.get_pipe("tagger").model.walk() for shim in node.shims)._model


def _step_moves_private_encoder(nlp, examples) -> bool:
    encoder = _private_encoder(nlp)
    before = {k: v.detach().clone() for k, v in encoder.named_parameters()}
    nlp.update(examples, sgd=False, exclude=["ctxembed_bert"])
    # Weight decay moves a weight even on a zero gradient: only no gradient at all leaves it.
    nlp.get_pipe("tagger").finish_update(Adam(0.01, L2=0.01, L2_is_weight_decay=True, grad_clip=0.0))
    return any(not torch.equal(before[k], v.detach()) for k, v in encoder.named_parameters())


def test_an_edited_grad_factor_of_a_saved_replaced_listener_is_used(tiny_bert_dir, tmp_path):
    """A saved pipeline after replace_listeners, its config edited to grad_factor = 0
    (do not train the tagger's copy of the encoder): loaded, it is not trained, as one
    built from that config is not. The bytes, saved with 1.0, used to win."""
    nlp, examples = _pipeline(tiny_bert_dir)
    nlp.update(examples, sgd=False)
    for _, proc in nlp.pipeline:  # one step past the tagger's zero softmax, so the encoder gets a gradient
        proc.finish_update(SGD(0.1, L2=0.0, grad_clip=0.0))
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    nlp.to_disk(tmp_path / "p")
    assert _step_moves_private_encoder(spacy.load(tmp_path / "p"), examples)  # as saved: it trains
    config = (tmp_path / "p" / "config.cfg").read_text()
    assert config.count("grad_factor = 1.0") == 1
    (tmp_path / "p" / "config.cfg").write_text(config.replace("grad_factor = 1.0", "grad_factor = 0.0"))
    edited = spacy.load(tmp_path / "p")
    assert edited.config["components"]["tagger"]["model"]["tok2vec"]["grad_factor"] == 0.0
    assert not _step_moves_private_encoder(edited, examples)


def test_gradient_scaler_keeps_its_settings_over_saved_ones():
    """Bytes of a gradient scaler saved with factor 1 (as every version wrote them:
    its settings as plain attrs) load into one built with factor 0.5: it scales by 0.5."""
    X = [numpy.ones((3, 4), dtype="float32")]
    dY = [numpy.ones((3, 2), dtype="float32")]
    layer = with_array(Linear(2, 4))
    layer.initialize(X=X)
    plain = layer.begin_update(X)[1](dY)[0]  # the layer's own gradient: the reference
    saved = Model("ctxembed-grad-factor", lambda model, X, is_train: None, layers=[layer.copy()],
                  attrs={"grad_factor": 1.0, "frozen": False})
    assert srsly.msgpack_loads(saved.to_bytes())["attrs"][0] == {
        "grad_factor": srsly.msgpack_dumps(1.0), "frozen": srsly.msgpack_dumps(False)}
    model = scale_gradient(layer, 0.5)
    model.from_bytes(saved.to_bytes())
    numpy.testing.assert_allclose(model.begin_update(X)[1](dY)[0], 0.5 * plain)


# An upstream that is not there ----------------------------------------------------


@pytest.mark.parametrize("how", ["exclude", "disable"])
def test_loaded_pipeline_without_its_upstream_says_so(tiny_bert_dir, tmp_path, how):
    """Loaded without the embedder, the tagger used to tag every token from zero
    features (the dims it restores from its bytes hid that nothing feeds it);
    it says what is missing, as the same pipeline never saved does."""
    nlp, _ = _trained(tiny_bert_dir)
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p", **{how: ["ctxembed_bert"]})
    # Excluded, nothing links the tagger's listener: the name it served under was
    # saved with it, and the error starts with it, as after nlp.remove_pipe.
    with pytest.raises(ValueError, match=r"^\[tagger\] " + NO_UPSTREAM if how == "exclude" else NOT_RUN):
        loaded(TEXT)
    if how == "disable":
        loaded.enable_pipe("ctxembed_bert")
        assert [t.tag_ for t in loaded(TEXT)] == TAGS


def _edited_copy(saved, tmp_path, old, new):
    """A copy of the saved pipeline folder `saved`, `old` (once in its config.cfg) edited to `new`."""
    path = tmp_path / "edited"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(saved, path)
    config = (path / "config.cfg").read_text()
    assert config.count(old) == 1
    (path / "config.cfg").write_text(config.replace(old, new))
    return path


@pytest.mark.parametrize("replaced", [False, True], ids=["listener", "replace_listeners-copy"])
def test_an_edited_width_or_mix_layers_of_a_saved_head_is_refused_by_name(tiny_bert_dir, tmp_path, replaced):
    """`width` or `mix_layers` edited in a saved pipeline's config.cfg failed in
    spacy.load with thinc's "Attempt to change dimension 'nO' for model
    'contextual_listener_v2'" or a KeyError of an unknown dimension, naming
    neither the component nor the setting. Refused by name, with both values;
    the unedited pipeline loads and tags as before."""
    nlp, _ = _pipeline(tiny_bert_dir)
    if replaced:
        nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    nlp.to_disk(tmp_path / "p")
    assert [t.tag_ for t in spacy.load(tmp_path / "p")(TEXT)] == [t.tag_ for t in nlp(TEXT)]
    who = r"\[ContextualTok2Vec\] width = 8: this" if replaced else (
        r"\[tagger\] ContextualListener upstream = '\*': width = 8 in the config, but this")
    with pytest.raises(SettingError, match=rf"^{who} component's weights were saved with width = 16.*: put back "
                                           r"width = 16 in the saved pipeline's config.cfg, or train this component "
                                           r"again$"):
        spacy.load(_edited_copy(tmp_path / "p", tmp_path, "width = 16", "width = 8"))
    if replaced:  # (a listener's head of another mix_layers has other nodes: see test_..._mix_layers_...)
        with pytest.raises(SettingError, match=r"^\[ContextualTok2Vec\] mix_layers = False: this component's "
                                               r"weights were saved with mix_layers = true .*: set mix_layers = "
                                               r"true in the saved pipeline's config.cfg"):
            spacy.load(_edited_copy(tmp_path / "p", tmp_path, "mix_layers = true", "mix_layers = false"))


def test_disabled_upstream_in_memory_says_so(tiny_bert_dir):
    """select_pipes(disable=...) and disable_pipe: prediction says the upstream did
    not run rather than tag from zeros; enabled again, the tags are as before.
    Initialising with the upstream disabled (as `spacy train` does with a frozen
    one) still works: spaCy initialises the tagger on docs nothing annotated."""
    nlp, examples = _pipeline(tiny_bert_dir, disabled_at_initialize=True)
    optimizer = nlp.resume_training()
    for _ in range(20):
        nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert"], annotates=["ctxembed_bert"])
    assert [t.tag_ for t in nlp(TEXT)] == TAGS
    with nlp.select_pipes(disable=["ctxembed_bert"]), pytest.raises(ValueError, match=NOT_RUN):
        nlp(TEXT)
    assert [t.tag_ for t in nlp(TEXT)] == TAGS
    nlp.disable_pipe("ctxembed_bert")
    with pytest.raises(ValueError, match=NOT_RUN):
        nlp(TEXT)
    with pytest.raises(ValueError, match=NOT_RUN):  # nor the tagger called on a doc the pipeline did not make
        nlp.get_pipe("tagger")(nlp.make_doc(TEXT))
    nlp.enable_pipe("ctxembed_bert")
    assert [t.tag_ for t in nlp(TEXT)] == TAGS


@pytest.mark.parametrize("flow", ["initialized", "trained", "initialized-frozen-then-trained"])
@pytest.mark.parametrize("how", ["disable_pipe", "remove_pipe"])
def test_the_docs_the_tagger_was_initialized_on_get_no_zeros_once_it_is_initialized(tiny_bert_dir, flow, how):
    """spaCy initialises the tagger on the docs of the examples it is given
    (`eg.predicted`), and only there may the listener give zeros. Those docs
    stay the caller's: run through the pipeline later with the upstream
    disabled or removed, they were tagged from zeros without a word, where any
    other doc is refused. The pipeline is linked again at the end of
    nlp.initialize (without a disabled upstream), and training comes after it."""
    nlp, examples = _pipeline(tiny_bert_dir, disabled_at_initialize=flow.startswith("initialized-frozen"))
    if flow != "initialized":
        nlp.update(examples, sgd=nlp.resume_training())  # (trained, not annotating: the docs get no outputs)
    removed = getattr(nlp, how)("ctxembed_bert")  # (the removed component kept, as a caller may)
    with pytest.raises(ValueError, match=NOT_RUN):
        nlp(examples[0].predicted)
    assert removed is None or removed[0] == "ctxembed_bert"


@pytest.mark.parametrize("exclude", [[], ["ctxembed_bert", "tagger"]], ids=["both-trained", "both-frozen"])
def test_a_listening_component_that_annotates_without_its_upstream_is_told_why(tiny_bert_dir, exclude):
    """A tagger in `annotating_components` whose upstream is not: the upstream
    did run in the update, and the error blamed only a disabled upstream or a
    doc that skipped the pipeline. It names annotating_components too."""
    nlp, examples = _pipeline(tiny_bert_dir)
    said = re.escape("in training, this component annotates the training docs ([training] annotating_components, "
                     "nlp.update(annotates=[...])) and 'ctxembed_bert' is not listed there with it")
    with pytest.raises(ValueError, match=NOT_RUN + ".*" + said):
        nlp.update(examples, sgd=nlp.resume_training(), exclude=exclude, annotates=["tagger"])


@pytest.mark.parametrize("grad_factor", [1.0, 0.0], ids=["trained-copy", "frozen-copy"])
def test_a_replaced_listener_refuses_nan_from_its_copy(tiny_bert_dir, grad_factor):
    """After `replace_listeners` the tagger's own copy of the embedder predicts
    its features, and nothing a ctxembed component writes is checked: nan
    there (the copy's weights diverged, here under `use_params`) tagged every
    token the same without a word. Refused as the component refuses it; the
    clean weights tag as before."""
    from thinc.api import torch2xp

    from spacy_ctxembed.errors import NonFiniteOutputs

    nlp, _ = _trained(tiny_bert_dir)
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    nlp.remove_pipe("ctxembed_bert")
    if grad_factor == 0.0:
        node = next(n for n in nlp.get_pipe("tagger").model.walk() if n.name == "ctxembed-grad-factor")
        node.attrs["frozen"] = True
    shim = next(shim for node in nlp.get_pipe("tagger").model.walk() for shim in node.shims)
    table = shim._model.state_dict()["embeddings.word_embeddings.weight"]
    with nlp.use_params({f"pytorch_{shim.id}_embeddings.word_embeddings.weight": torch2xp(table * float("nan"))}):
        with pytest.raises(NonFiniteOutputs, match=r"^\[ContextualTok2Vec\] the model gave nan or inf for 1 of "):
            nlp(TEXT)
    assert [t.tag_ for t in nlp(TEXT)] == TAGS


@pytest.mark.parametrize("where", ["component", "component-frozen", "copy", "component-bf16"])
def test_a_training_batch_with_nan_stops_at_its_update(tiny_bert_dir, where):
    """Weights that diverged in training (here a row of the embedding table set
    to nan, in place): the batch is refused at its update, before any listening
    component trains on it, and names the learning rate. It used to be sent on:
    the tagger's loss went nan, its weights after it, and the run stopped (if
    at all) at the next evaluation. Also for a frozen encoder (the feature
    cache's path), a `replace_listeners` copy training inside the tagger, and
    under bf16, whose range is float32's (it advised precision = 'fp32', which
    gives the same nan, and not the learning rate)."""
    from spacy_ctxembed.errors import NonFiniteOutputs

    nlp, examples = _pipeline(tiny_bert_dir, trainable=where != "component-frozen",
                              precision="bf16" if where == "component-bf16" else "fp32")
    optimizer = nlp.resume_training()
    nlp.update(examples, sgd=optimizer)  # a clean step first
    if where == "copy":
        nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
        nlp.remove_pipe("ctxembed_bert")
    shim = next(shim for node in nlp.get_pipe("tagger" if where == "copy" else "ctxembed_bert").model.walk()
                for shim in node.shims)
    with torch.no_grad():
        shim._model.embeddings.word_embeddings.weight.fill_(float("nan"))
    tagger_before = param_copies(nlp.get_pipe("tagger").model)
    name = "ContextualTok2Vec" if where == "copy" else "ctxembed_bert"
    refused = (rf"^\[{name}\] the model gave nan or inf for 1 of the 1 docs of this batch .*this training batch is "
               r"refused \(no listening component is updated on it\): .*lower \[training.optimizer\] learn_rate")
    with pytest.raises(NonFiniteOutputs, match=refused) as excinfo:
        nlp.update(examples, sgd=optimizer)
    assert "precision" not in str(excinfo.value)
    after = param_copies(nlp.get_pipe("tagger").model)
    changed = [(node, name) for (node, name, was), (_, _, now) in zip(tagger_before, after)
               if not numpy.array_equal(was, now, equal_nan=True)]
    assert not changed

