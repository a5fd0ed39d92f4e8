"""v2 training: listeners through spaCy's mechanism, gradients into the mix and the encoder."""
import numpy
import pytest
import spacy
import torch
from spacy.training import Example

from .conftest import PredictedAhead, ctx_config

WORDS = ["I", "ran", "to", "the", "park"]
TAGS = ["PRON", "VERB", "ADP", "DET", "NOUN"]


def _listener(width=16, **settings):
    return {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": width, **settings}


def _pipeline(tiny_bert_dir, *, combine="mean", tok2vec=None, trainable=True, **component):
    spacy.util.fix_random_seed(0)  # the heads' initialisation, so every run is the same
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2], combine=combine,
                                                    trainable=trainable, **component))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2",
                                             "tok2vec": tok2vec or _listener()}})
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    nlp.initialize(lambda: examples)
    return nlp, examples


def _train_step(nlp, examples, optimizer):
    """One step as `spacy train` takes it: every backward pass first, then every component's update.
    (`nlp.update(sgd=...)` asks each component to step right after its own update, before its
    listeners have sent their gradients; the embedder then steps once they have: see
    tests/test_training_steps.py.)"""
    nlp.update(examples, sgd=False)
    for _, proc in nlp.pipeline:
        proc.finish_update(optimizer)


def _encoder_params(nlp):
    return {k: v.detach().clone() for k, v in nlp.get_pipe("ctxembed_bert").encoder.shims[0]._model.named_parameters()}


def test_listener_is_linked_and_sized(tiny_bert_dir):
    nlp, _ = _pipeline(tiny_bert_dir)
    embedder = nlp.get_pipe("ctxembed_bert")
    assert embedder.listening_components == ["tagger"]
    (listener,) = embedder.listeners
    assert (listener.get_dim("nL"), listener.get_dim("nO")) == (3, 32)  # from the encoder, not the config


def test_scalar_mix_of_the_component_learns(tiny_bert_dir):
    nlp, examples = _pipeline(tiny_bert_dir, combine="scalar_mix", tok2vec=_listener(mix_layers=False))
    mix = nlp.get_pipe("ctxembed_bert").combiner
    s0, gamma0 = mix.get_param("s").copy(), mix.get_param("gamma").copy()
    optimizer = nlp.resume_training()
    losses = {}
    for _ in range(5):
        nlp.update(examples, sgd=optimizer, losses=losses)
    assert not numpy.allclose(mix.get_param("s"), s0)
    assert not numpy.allclose(mix.get_param("gamma"), gamma0)
    assert losses["ctxembed_bert"] > 0


def test_fine_tuning_moves_the_encoder_and_grad_factor_zero_does_not(tiny_bert_dir):
    nlp, examples = _pipeline(tiny_bert_dir)
    before = _encoder_params(nlp)
    optimizer = nlp.resume_training()
    for _ in range(3):
        _train_step(nlp, examples, optimizer)
    after = _encoder_params(nlp)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # Layers 0..2 and the embeddings train; the pooler is never run.
    assert any(k.startswith("embeddings.") for k in changed) and any(".layer.1." in k for k in changed)
    assert not any(k.startswith("pooler.") for k in changed)

    frozen, examples = _pipeline(tiny_bert_dir, tok2vec=_listener(grad_factor=0.0))
    before = _encoder_params(frozen)
    optimizer = frozen.resume_training()  # with weight decay: a zero gradient must not reach it either
    for _ in range(3):
        _train_step(frozen, examples, optimizer)
    assert all(torch.equal(before[k], v) for k, v in _encoder_params(frozen).items())


def test_fine_tuned_pipeline_saves_and_loads(tiny_bert_dir, tmp_path):
    nlp, examples = _pipeline(tiny_bert_dir)
    optimizer = nlp.resume_training()
    for _ in range(20):
        nlp.update(examples, sgd=optimizer)
    text = " ".join(WORDS)
    doc = nlp(text)
    assert [t.tag_ for t in doc] == TAGS
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    again = loaded(text)
    assert [t.tag_ for t in again] == TAGS
    numpy.testing.assert_allclose(again._.ctx_vectors, doc._.ctx_vectors, atol=1e-5)


def test_frozen_annotating_component_uses_the_cache_and_stays_put(tiny_bert_dir):
    nlp, examples = _pipeline(tiny_bert_dir, trainable=False, cache_mb=16)
    before = _encoder_params(nlp)
    optimizer = nlp.resume_training()
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert"], annotates=["ctxembed_bert"])
    assert all(torch.equal(before[k], v) for k, v in _encoder_params(nlp).items())
    assert len(nlp.get_pipe("ctxembed_bert").cache) == 1


def test_frozen_without_annotating_says_what_to_do(tiny_bert_dir):
    nlp, examples = _pipeline(tiny_bert_dir)
    optimizer = nlp.resume_training()
    with pytest.raises(ValueError, match="annotating_components"):
        nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert"])
    # The listening component updated alone (as `spacy debug model` does): the same error, which says so.
    with pytest.raises(ValueError, match=r"has no upstream outputs to read$"):
        nlp.get_pipe("tagger").update(examples, sgd=optimizer)


def test_replace_listeners(tiny_bert_dir, tmp_path):
    nlp, examples = _pipeline(tiny_bert_dir)
    text = " ".join(WORDS)
    before = nlp(text)
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    assert nlp.get_pipe("ctxembed_bert").listeners == []
    tok2vec_cfg = nlp.config["components"]["tagger"]["model"]["tok2vec"]
    assert tok2vec_cfg["@architectures"] == "spacy-ctxembed.ContextualTok2Vec.v3"
    replaced = nlp(text)
    assert [t.tag_ for t in replaced] == [t.tag_ for t in before]
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert [t.tag_ for t in loaded(text)] == [t.tag_ for t in before]
    optimizer = loaded.resume_training()
    loaded.update(examples, sgd=optimizer)  # the tagger trains its own copy of the encoder


@pytest.mark.parametrize("mix_layers", [True, False])
def test_a_pipeline_with_replaced_listeners_initializes_as_one_built_from_its_config(tiny_bert_dir, mix_layers):
    """With mix_layers = false the copy is the whole embedder, whose init read
    refs that thinc's Model.copy() drops: nlp.initialize() after
    replace_listeners failed with a KeyError from thinc."""
    nlp, examples = _pipeline(tiny_bert_dir, tok2vec=_listener(mix_layers=mix_layers))
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    spacy.util.fix_random_seed(0)
    nlp.initialize(lambda: examples)
    built = spacy.util.load_model_from_config(nlp.config, auto_fill=False)
    spacy.util.fix_random_seed(0)
    built.initialize(lambda: [Example.from_dict(built.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})])
    numpy.testing.assert_array_equal(_tagger_scores(nlp), _tagger_scores(built))
    optimizer = nlp.resume_training()
    _train_step(nlp, examples, optimizer)
    assert not numpy.array_equal(_tagger_scores(nlp), _tagger_scores(built))  # (it trains)


def _tagger_scores(nlp, text=" ".join(WORDS)):
    doc = nlp(text)
    return nlp.get_pipe("tagger").model.predict([doc])[0]


def _assert_scaled_on_a_second_step(nlp, examples, sent, received, factor):
    """Two training steps (the tagger's output layer starts at zero: so do its
    first gradients); on the second, what was `received` (one array) is
    `factor` times what was `sent`, recorded by the caller's hooks."""
    optimizer = nlp.resume_training()
    _train_step(nlp, examples, optimizer)
    sent.clear()
    received.clear()
    _train_step(nlp, examples, optimizer)
    assert len(sent) == len(received) == 1 and numpy.abs(sent[0]).max() > 0
    numpy.testing.assert_allclose(received[0], factor * sent[0], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("grad_factor", [0.5, 2.0])
def test_the_listener_sends_its_gradient_scaled_by_grad_factor(tiny_bert_dir, monkeypatch, grad_factor):
    """What reaches the embedder is grad_factor times what the tagger's head sent
    into its listener (0 and 1 have their own paths)."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    into_listener, to_embedder = [], []
    receive, backprop_and_clear = ContextualListenerNode.receive, ContextualListenerNode.backprop_and_clear

    def receiving(self, batch_id, outputs, backprop, upstream, **told):
        def recorded(d_outputs):
            to_embedder.extend(numpy.array(d, dtype="float64") for d in d_outputs)
            return backprop(d_outputs)
        return receive(self, batch_id, outputs, recorded, upstream, **told)

    def answering(self, d_outputs):
        into_listener.extend(numpy.array(d, dtype="float64") for d in d_outputs)
        return backprop_and_clear(self, d_outputs)

    monkeypatch.setattr(ContextualListenerNode, "receive", receiving)
    monkeypatch.setattr(ContextualListenerNode, "backprop_and_clear", answering)
    nlp, examples = _pipeline(tiny_bert_dir, tok2vec=_listener(grad_factor=grad_factor))
    _assert_scaled_on_a_second_step(nlp, examples, into_listener, to_embedder, grad_factor)


def test_replace_listeners_finds_a_listener_nested_in_the_tok2vec_block(tiny_bert_dir, tmp_path):
    """spaCy hands the hook the whole model.tok2vec block whatever path it
    replaces: a listener as a spacy.Tok2Vec.v2's `embed` (the layout of the
    shipped configs) was refused as "not a ContextualListener"."""
    encode = {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": 16, "window_size": 1, "maxout_pieces": 2,
              "depth": 1}
    nlp, examples = _pipeline(tiny_bert_dir, tok2vec={"@architectures": "spacy.Tok2Vec.v2",
                                                      "embed": _listener(grad_factor=0.5), "encode": encode})
    optimizer = nlp.resume_training()
    for _ in range(2):
        _train_step(nlp, examples, optimizer)
    before = _tagger_scores(nlp)
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec.embed"])
    embed_cfg = nlp.config["components"]["tagger"]["model"]["tok2vec"]["embed"]
    assert embed_cfg["@architectures"] == "spacy-ctxembed.ContextualTok2Vec.v3"
    assert (embed_cfg["width"], embed_cfg["grad_factor"]) == (16, 0.5)
    assert nlp.get_pipe("ctxembed_bert").listeners == []
    numpy.testing.assert_array_equal(_tagger_scores(nlp), before)
    nlp.to_disk(tmp_path / "p")
    numpy.testing.assert_array_equal(_tagger_scores(spacy.load(tmp_path / "p")), before)


def test_replace_listeners_takes_the_listener_of_its_upstream_among_several(tiny_bert_dir):
    """A concatenate of listeners to two embedders: each path gets its own
    listener's settings (the block holds both)."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    for name in ("a", "b"):
        nlp.add_pipe("ctxembed_bert", name=name, config=ctx_config(name=tiny_bert_dir, primary=name == "a"))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@layers": "concatenate.v1", "*": {"a": _listener(8, upstream="a"), "b": _listener(12, upstream="b")}}}})
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    nlp.initialize(lambda: examples)
    before = _tagger_scores(nlp)
    nlp.replace_listeners("b", "tagger", ["model.tok2vec.*.b"])
    replaced = nlp.config["components"]["tagger"]["model"]["tok2vec"]["*"]
    assert replaced["b"]["@architectures"] == "spacy-ctxembed.ContextualTok2Vec.v3" and replaced["b"]["width"] == 12
    assert replaced["a"]["@architectures"] == "spacy-ctxembed.ContextualListener.v2"
    assert nlp.get_pipe("a").listening_components == ["tagger"] and nlp.get_pipe("b").listeners == []
    numpy.testing.assert_array_equal(_tagger_scores(nlp), before)


def test_replace_listeners_after_a_rename_and_beside_a_v1_listener(tiny_bert_dir):
    """The hook told its listener by the name the component was made with (a
    renamed one found none), and took a v1 listener (never linked) for one."""
    nlp = spacy.blank("en")
    for name in ("a", "b"):
        nlp.add_pipe("ctxembed_bert", name=name, config=ctx_config(name=tiny_bert_dir, primary=name == "a",
                                                                   store_layers=name == "a", layers=[1, 2]))
    nlp.rename_pipe("b", "c")
    v1 = {"@architectures": "spacy-ctxembed.ContextualListener.v1", "width": 8, "n_layers": 2, "upstream_width": 32}
    listeners = {"a": v1, "b": _listener(8, upstream="a"), "c": _listener(12, upstream="c")}
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@layers": "concatenate.v1", "*": listeners}}})
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})])
    before = _tagger_scores(nlp)
    nlp.replace_listeners("c", "tagger", ["model.tok2vec.*.c"])
    replaced = nlp.config["components"]["tagger"]["model"]["tok2vec"]["*"]
    assert replaced["c"]["@architectures"] == "spacy-ctxembed.ContextualTok2Vec.v3" and replaced["c"]["width"] == 12
    nlp.replace_listeners("a", "tagger", ["model.tok2vec.*.b"])
    assert replaced["b"]["@architectures"] == "spacy-ctxembed.ContextualTok2Vec.v3" and replaced["b"]["width"] == 8
    assert replaced["a"]["@architectures"] == "spacy-ctxembed.ContextualListener.v1"
    numpy.testing.assert_array_equal(_tagger_scores(nlp), before)


def _two_listeners(tiny_bert_dir):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@layers": "concatenate.v1", "*": {"a": _listener(8), "b": _listener(12)}}}})
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})])
    return nlp


def test_replace_listeners_gives_each_path_its_own_listeners_settings(tiny_bert_dir, tmp_path):
    """Two listeners of one upstream with different widths: spaCy hands the hook the
    same block for each path, and the hook refused them as not told apart. It reads
    the path from replace_listeners' frame: each copy gets its listener's width, and
    the saved pipeline loads (with the widths swapped, its weights would not)."""
    nlp = _two_listeners(tiny_bert_dir)
    before = _tagger_scores(nlp)
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec.*.a", "model.tok2vec.*.b"])
    replaced = nlp.config["components"]["tagger"]["model"]["tok2vec"]["*"]
    assert [(replaced[k]["@architectures"], replaced[k]["width"]) for k in "ab"] == [
        ("spacy-ctxembed.ContextualTok2Vec.v3", 8), ("spacy-ctxembed.ContextualTok2Vec.v3", 12)]
    # (spaCy removes each listener while it walks the list it read: a removal in place skipped the second.)
    assert not [node for node in nlp.get_pipe("tagger").model.walk() if node.name == "ctxembed-listener"]
    numpy.testing.assert_array_equal(_tagger_scores(nlp), before)
    nlp.to_disk(tmp_path / "p")
    numpy.testing.assert_array_equal(_tagger_scores(spacy.load(tmp_path / "p")), before)


def test_the_hook_called_outside_replace_listeners_refuses_what_it_cannot_tell_apart():
    """Without replace_listeners' frame, which path is replaced is not known."""
    from spacy_ctxembed.models.embedder import replace_listener_cfg

    block = {"@layers": "concatenate.v1", "*": {"a": _listener(8), "b": _listener(12)}}
    with pytest.raises(ValueError, match=r"^replace_listeners: the listening component has 2 ContextualListeners "
                                         r"of 'ctxembed_bert' with different settings"):
        replace_listener_cfg({"@architectures": "spacy-ctxembed.Embedder.v2"}, block, upstream="ctxembed_bert")
    assert replace_listener_cfg({"@architectures": "spacy-ctxembed.Embedder.v2"}, {"embed": _listener(8)},
                                upstream="ctxembed_bert")["width"] == 8


def test_replace_listeners_refuses_a_path_above_the_listener(tiny_bert_dir):
    """With the listener at model.tok2vec.embed (the shipped configs), the path
    model.tok2vec wrote the copy's block over the whole Tok2Vec.v2 in the config
    (its encode too) while the model kept its encoder: the saved pipeline did not
    load. It is refused before spaCy writes it; the pipeline is as it was, and the
    listener's own path still works."""
    encode = {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": 16, "window_size": 1, "maxout_pieces": 2,
              "depth": 1}
    nlp, _ = _pipeline(tiny_bert_dir, tok2vec={"@architectures": "spacy.Tok2Vec.v2", "embed": _listener(),
                                               "encode": encode})
    config = nlp.config.to_str()
    with pytest.raises(ValueError) as caught:
        nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    assert str(caught.value) == (
        "[tagger] nlp.replace_listeners('ctxembed_bert', 'tagger', ['model.tok2vec']): 'model.tok2vec' is not the "
        "path of a ContextualListener of 'ctxembed_bert' in the config of 'tagger', which has it at "
        "'model.tok2vec.embed': pass that path (spaCy would write the copy's block over all of 'model.tok2vec' in "
        "the config but swap only the listener in the model, and the saved pipeline would not load)")
    assert nlp.config.to_str() == config and nlp.get_pipe("ctxembed_bert").listening_components == ["tagger"]
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec.embed"])
    assert nlp.get_pipe("ctxembed_bert").listeners == []


def test_a_sourced_components_wrong_replace_listeners_path_is_refused_in_the_settings_words(tiny_bert_dir, tmp_path):
    """A sourced component's `replace_listeners` setting makes spaCy call
    nlp.replace_listeners on the source pipeline: the error names the setting the
    user wrote (the component under its new name, and the source), and the
    listener's own path, given there, works."""
    encode = {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": 16, "window_size": 1, "maxout_pieces": 2,
              "depth": 1}
    nlp, _ = _pipeline(tiny_bert_dir, tok2vec={"@architectures": "spacy.Tok2Vec.v2", "embed": _listener(),
                                               "encode": encode})
    nlp.to_disk(tmp_path / "p")
    config = spacy.util.load_config(tmp_path / "p" / "config.cfg")
    config["nlp"]["pipeline"] = ["tagger2"]
    del config["components"]["tagger"], config["components"]["ctxembed_bert"]
    source = str(tmp_path / "p")
    config["components"]["tagger2"] = {"source": source, "component": "tagger", "replace_listeners": ["model.tok2vec"]}
    with pytest.raises(ValueError) as caught:
        spacy.util.load_model_from_config(config, auto_fill=True)
    assert str(caught.value).startswith(
        f"[components.tagger2] replace_listeners = ['model.tok2vec'], of 'tagger' sourced from {source!r} (spaCy "
        "calls nlp.replace_listeners('ctxembed_bert', 'tagger', ...) there): 'model.tok2vec' is not the path of a "
        "ContextualListener of 'ctxembed_bert' in the config of 'tagger', which has it at 'model.tok2vec.embed': "
        "pass that path (")
    config["components"]["tagger2"]["replace_listeners"] = ["model.tok2vec.embed"]
    sourced = spacy.util.load_model_from_config(config, auto_fill=True)
    embed_cfg = sourced.config["components"]["tagger2"]["model"]["tok2vec"]["embed"]
    assert embed_cfg["@architectures"] == "spacy-ctxembed.ContextualTok2Vec.v3"
    text = " ".join(WORDS)
    assert [t.tag_ for t in sourced(text)] == [t.tag_ for t in nlp(text)]


def test_replace_listeners_refuses_a_wrong_path_among_several_before_writing_any(tiny_bert_dir):
    """The second path is wrong, or the same as the first: the first was written (and
    its model node swapped) before the hook saw the second. All are checked at the first."""
    nlp = _two_listeners(tiny_bert_dir)
    config = nlp.config.to_str()
    with pytest.raises(ValueError, match=r"^\[tagger\] nlp.replace_listeners\('ctxembed_bert', 'tagger', "
                                         r"\['model.tok2vec.\*.a', 'model.tok2vec'\]\): 'model.tok2vec' is not the "
                                         r"path .* which has them at 'model.tok2vec.\*.a', 'model.tok2vec.\*.b': "
                                         r"pass those \("):
        nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec.*.a", "model.tok2vec"])
    # (Both listeners swapped in the model, one path's block written twice, the other left a listener.)
    with pytest.raises(ValueError, match=r"\): 'model.tok2vec.\*.b' is given twice; each listener needs its own path "
                                         r"\('model.tok2vec.\*.a', 'model.tok2vec.\*.b'\)$"):
        nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec.*.b", "model.tok2vec.*.b"])
    assert nlp.config.to_str() == config and len(nlp.get_pipe("ctxembed_bert").listeners) == 2


def test_a_damaged_encoder_copy_after_replace_listeners_is_named_not_its_temporary_path(tiny_bert_dir, tmp_path):
    """The tagger's own copy of the encoder is unpacked into a temporary directory
    to load; spaCy names no component when a tagger fails to load, and the error
    named only that directory, gone by the time it was read."""
    import tempfile

    import srsly

    from spacy_ctxembed.errors import SettingError

    nlp, _ = _pipeline(tiny_bert_dir)
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    nlp.to_disk(tmp_path / "p")
    model_file = tmp_path / "p" / "tagger" / "model"
    msg = srsly.msgpack_loads(model_file.read_bytes())
    (index,) = [i for i, shims in enumerate(msg["shims"]) if shims]
    shim = srsly.msgpack_loads(msg["shims"][index][0])
    del shim["hf_files"]["config.json"]
    msg["shims"][index][0] = srsly.msgpack_dumps(shim)
    model_file.write_bytes(srsly.msgpack_dumps(msg))
    with pytest.raises(SettingError) as excinfo:
        spacy.load(tmp_path / "p")
    message = str(excinfo.value)
    # (The copy's block named, not a ctxembed_bert component that may not be there.)
    assert message.startswith("[ContextualTok2Vec] embedder.encoder = '<serialized encoder>': no config.json")
    assert message.endswith("(the encoder saved in the model of a component whose listener replace_listeners "
                            "replaced with its own copy)")
    assert tempfile.gettempdir() not in message


def test_elmo_and_bert_in_one_pipeline(tiny_bert_dir, tmp_path):
    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    spacy.util.fix_random_seed(0)  # the tagger's own initialisation, so the run is reproducible
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", name="elmo", config=ctx_config(options_file=str(options),
                                                                weight_file=str(weights), combine="scalar_mix"))
    nlp.add_pipe("ctxembed_bert", name="bert", config=ctx_config(name=tiny_bert_dir, layers=[1, 2]))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@layers": "concatenate.v1",
        "*": {"elmo": _listener(8, upstream="elmo"), "bert": _listener(8, upstream="bert")}}}})
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    nlp.initialize(lambda: examples)
    assert nlp.get_pipe("elmo").listening_components == ["tagger"]
    assert nlp.get_pipe("bert").listening_components == ["tagger"]
    doc = nlp(" ".join(WORDS))
    assert set(doc._.ctx_outputs) == {"elmo", "bert"}
    assert doc._.ctx_outputs["elmo"]["vectors"].shape == (5, 16)
    numpy.testing.assert_array_equal(doc._.ctx_vectors, doc._.ctx_outputs["bert"]["vectors"])  # the last one
    mix = nlp.get_pipe("elmo").combiner
    s0 = mix.get_param("s").copy()
    optimizer = nlp.resume_training()
    for _ in range(40):
        nlp.update(examples, sgd=optimizer)
    assert [t.tag_ for t in nlp(" ".join(WORDS))] == TAGS
    assert numpy.allclose(mix.get_param("s"), s0)  # the tagger mixes ELMo's layers itself
    listener_mixes = [n for n in nlp.get_pipe("tagger").model.walk() if n.name == "scalar_mix"]
    assert len(listener_mixes) == 2 and all(numpy.abs(m.get_param("s")).sum() > 0 for m in listener_mixes)


def test_wildcard_listener_with_two_embedders_is_an_error(tiny_bert_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="a", config=ctx_config(name=tiny_bert_dir))
    nlp.add_pipe("ctxembed_bert", name="b", config=ctx_config(name=tiny_bert_dir))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": _listener()}})
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    with pytest.raises(ValueError, match=r"upstream = '\*' matches several ctxembed components \(a, b\)"):
        nlp.initialize(lambda: examples)
        nlp(" ".join(WORDS))


def test_elmo_bilm_trains_when_trainable(tmp_path):
    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights),
                                                    trainable=True))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": _listener(8)}})
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    nlp.initialize(lambda: examples)
    net = nlp.get_pipe("ctxembed_elmo").encoder.shims[0]._model
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert before  # trainable: the weights are parameters
    optimizer = nlp.resume_training()
    for _ in range(3):  # the tagger's output layer starts at zero: no gradient at step 1
        nlp.update(examples, sgd=optimizer)
    changed = [k for k, v in net.named_parameters() if not torch.equal(before[k], v)]
    assert any(k.startswith("bilstm.w_h_") for k in changed) and any(k.startswith("char_cnn.") for k in changed)


def test_fine_tuning_never_serves_stale_cached_layers(tiny_bert_dir):
    nlp, examples = _pipeline(tiny_bert_dir, cache_mb=16, store_layers=True)
    text = " ".join(WORDS)
    nlp(text)  # fills the cache with the untrained encoder's layers
    optimizer = nlp.resume_training()
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    pipe = nlp.get_pipe("ctxembed_bert")
    cached = nlp(text)._.ctx_layers
    fresh = pipe.encoder.predict([nlp.make_doc(text)])[0]
    numpy.testing.assert_allclose(cached, fresh, atol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 0.0])
def test_encoder_lr_scale_slows_only_the_encoder(tiny_bert_dir, scale):
    # Adam's first step moves every parameter with a gradient by lr * g / (|g| + eps), about lr:
    # the largest move of each part is its learning rate, known without running ours twice.
    from thinc.api import SGD, Adam

    nlp, examples = _pipeline(tiny_bert_dir, encoder_lr_scale=scale)
    tagger = nlp.get_pipe("tagger").model

    # spaCy's tagger starts with a zero softmax, so nothing below it gets a gradient
    # on the first update: take one plain step first, then Adam's first step.
    _train_step(nlp, examples, SGD(0.1, L2=0.0, grad_clip=0.0))
    before = _encoder_params(nlp)
    tagger_before = {(node.id, name): node.get_param(name).copy() for node in tagger.walk()
                     for name in node.param_names if node.has_param(name)}
    learn_rate = 0.01
    _train_step(nlp, examples, Adam(learn_rate, L2=0.0, grad_clip=0.0))
    encoder_step = max(float((v - before[k]).abs().max()) for k, v in _encoder_params(nlp).items())
    tagger_step = max(float(numpy.abs(node.get_param(name) - tagger_before[(node.id, name)]).max())
                      for node in tagger.walk() for name in node.param_names if (node.id, name) in tagger_before)
    assert tagger_step == pytest.approx(learn_rate, rel=1e-3)
    assert encoder_step == pytest.approx(learn_rate * scale, rel=1e-3, abs=1e-9)


def _radam_reference(weights, grads, *, learn_rates, L2, b1=0.9, b2=0.999, eps=1e-8):
    """thinc's RAdam (optimizers.py `_radam`, weight decay after it) in float64 over
    a sequence of gradients, at each step's learning rate; thinc counts its
    bias-correction step from 2."""
    w, m, v = weights.copy(), numpy.zeros_like(weights), numpy.zeros_like(weights)
    n_max = 2 / (1 - b2) - 1
    for t, g, learn_rate in zip(range(2, len(grads) + 2), grads, learn_rates):
        v = b2 * v + (1 - b2) * g * g
        m = b1 * m + (1 - b1) * g
        b2_t = b2 ** t
        n_sma = n_max - 2 * t * b2_t / (1 - b2_t)
        if n_sma >= 5:
            size = numpy.sqrt((1 - b2_t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max / (n_max - 2))
            w = w - size / (1 - b1 ** t) * learn_rate * m / (numpy.sqrt(v) + eps)
        else:
            w = w - learn_rate / (1 - b1 ** t) * m
        w = w - learn_rate * L2 * w
    return w


@pytest.mark.parametrize("replaced", [False, True])
def test_encoder_lr_scale_holds_under_radam(tiny_bert_dir, replaced):
    """thinc's RAdam ignores the per-call `lr_scale` it takes: the encoder (the
    component's, and the copy replace_listeners gives a tagger) trained at the
    full rate whatever encoder_lr_scale. Each weight after three steps of a
    learning-rate schedule (stepped as spacy train steps it), against thinc's
    RAdam in float64 at the scaled rates (the tagger's own at the full ones)."""
    from thinc.api import SGD, RAdam

    scale, learn_rates, L2 = 0.1, [0.02, 0.005, 0.03], 0.01
    nlp, examples = _pipeline(tiny_bert_dir, encoder_lr_scale=scale)
    _train_step(nlp, examples, SGD(0.1, L2=0.0, grad_clip=0.0))  # past the tagger's zero softmax
    if replaced:
        nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    owner = nlp.get_pipe("tagger").model if replaced else nlp.get_pipe("ctxembed_bert").encoder
    encoder = next(shim for node in owner.walk() for shim in node.shims)._model
    softmax = next(node for node in nlp.get_pipe("tagger").model.walk() if node.name == "softmax")
    start = {k: p.detach().double().numpy().copy() for k, p in encoder.named_parameters()}
    start["softmax W"] = softmax.get_param("W").astype("float64")
    grads: dict = {k: [] for k in start}
    optimizer = RAdam(list(learn_rates), L2=L2, grad_clip=0.0)
    for _ in range(3):
        nlp.update(examples, sgd=False)
        for k, p in encoder.named_parameters():
            grads[k].append(None if p.grad is None else p.grad.double().numpy().copy())
        grads["softmax W"].append(softmax.get_grad("W").astype("float64"))
        for _, proc in nlp.pipeline:
            proc.finish_update(optimizer)
        optimizer.step_schedules()
    got = {k: p.detach().double().numpy() for k, p in encoder.named_parameters()}
    got["softmax W"] = softmax.get_param("W")
    checked = 0
    for name, weights in start.items():
        if grads[name][0] is None:  # (BERT's pooler: never run)
            assert numpy.array_equal(got[name], weights), name
            continue
        rates = [rate if name == "softmax W" else rate * scale for rate in learn_rates]
        want = _radam_reference(weights, grads[name], learn_rates=rates, L2=L2)
        numpy.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-6, err_msg=name)
        checked += 1
    assert checked > 20


def test_encoder_lr_scale_is_checked(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"\[ctxembed_bert\] encoder_lr_scale = -1"):
        spacy.blank("en").add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, encoder_lr_scale=-1))


def test_fine_tuning_runs_with_dropout_and_prediction_stays_deterministic(tiny_bert_dir):
    from spacy_ctxembed.models.bert import get_runner

    nlp, examples = _pipeline(tiny_bert_dir)
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    docs = [eg.predicted for eg in examples]
    torch.manual_seed(0)
    first, second = runner.embed(docs, grad=True)[0], runner.embed(docs, grad=True)[0]
    assert not torch.equal(first, second)  # the model's dropout (0.1) is on in training
    predicted = runner.embed(docs)[0]
    assert torch.equal(predicted, runner.embed(docs)[0])
    assert not runner.runner.training and not any(m.training for m in runner.runner.modules())
    # One set of weights: a step on the training copy is a step on the model that predicts.
    trained = dict(runner.train_runner.named_parameters())
    assert all(trained[name] is param for name, param in runner.runner.named_parameters())
    _train_step(nlp, examples, nlp.resume_training())
    _train_step(nlp, examples, nlp.resume_training())
    assert not torch.equal(runner.embed(docs)[0], predicted)


def test_the_training_copy_shares_the_buffers_of_a_moved_model(tiny_bert_dir, monkeypatch):
    """Moving the model (`.cuda()`: parameters moved in place, buffers replaced by new tensors, simulated
    here by copies on the CPU) leaves the training copy on the moved buffers too (it kept the old ones:
    position ids on the CPU under weights on the GPU)."""
    from spacy_ctxembed.models.bert import get_runner

    nlp, examples = _pipeline(tiny_bert_dir)
    encoder = nlp.get_pipe("ctxembed_bert").encoder
    monkeypatch.setattr(torch.nn.Module, "cpu", lambda module: module._apply(lambda t: t.clone()))
    before = dict(get_runner(encoder).runner.named_buffers())
    encoder.to_cpu()
    runner = get_runner(encoder)
    moved = dict(runner.runner.named_buffers())
    assert moved and all(moved[name] is not tensor for name, tensor in before.items())  # (new tensors)
    assert all(dict(runner.train_runner.named_buffers())[name] is tensor for name, tensor in moved.items())
    trained = dict(runner.train_runner.named_parameters())
    assert all(trained[name] is param for name, param in runner.runner.named_parameters())
    assert runner.train_runner.training and not runner.runner.training
    _train_step(nlp, examples, nlp.resume_training())
    unloaded = spacy.blank("en").add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    unloaded.model.to_cpu()  # before its model loads: nothing to move (it raised an AttributeError)


def test_a_batch_predicted_ahead_before_a_training_step_is_predicted_again(tiny_bert_dir, monkeypatch):
    """run_ahead (on by default on GPU) predicts batch k+1 in a worker while batch k is handed on: a
    training step in between left batch k+1 with the old weights' vectors."""
    nlp, examples = _pipeline(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    component.run_ahead = True
    predicted_ahead = PredictedAhead(component, monkeypatch)
    texts = ["I ran to the park", "She ran some tests", "The dog ran home", "We ran again"]
    stream = component.pipe((nlp.make_doc(t) for t in texts), batch_size=2)
    first = [next(stream), next(stream)]
    assert predicted_ahead.wait(2)  # the worker predicted the second batch, with the weights before the step
    before = component.predict([nlp.make_doc(texts[2])])[1][0]
    optimizer = nlp.resume_training()
    for _ in range(3):
        _train_step(nlp, examples, optimizer)
    rest = list(stream)
    assert predicted_ahead.generations[1] != component._generation  # (so it was one to predict again)
    after = component.predict([nlp.make_doc(t) for t in texts[2:]])[1]
    assert [d.text for d in first + rest] == texts
    assert not numpy.allclose(before, after[0], atol=1e-4)  # (the step moved the vectors)
    for doc, expected in zip(rest, after):
        numpy.testing.assert_array_equal(doc._.ctx_vectors, expected)


def _ner_listener_pipeline(tiny_bert_dir, with_ner):
    nlp, _ = _pipeline(tiny_bert_dir)  # the tagger is made (and seeded) first either way
    if with_ner:
        nlp.add_pipe("ner", config={"model": {
            "@architectures": "spacy.TransitionBasedParser.v2", "state_type": "ner", "hidden_width": 16,
            "maxout_pieces": 2, "use_upper": False, "tok2vec": _listener()}})
    words = WORDS
    both = Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": TAGS,
                                                             "entities": ["O", "O", "O", "O", "U-LOC"]})
    spacy.util.fix_random_seed(0)
    nlp.initialize(lambda: [both])
    return nlp


@pytest.mark.parametrize("how", ["ner without annotation", "ner excluded"])
def test_a_listener_that_never_calls_back_does_not_hold_back_the_others(tiny_bert_dir, how):
    """spaCy's NER skips a batch without entity annotation, and an excluded
    component is not updated: their listeners never call back. The tagger's
    gradient still reaches the encoder, exactly as without the NER."""
    from thinc.api import SGD

    tags_only = [Example.from_dict(spacy.blank("en").make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    moved = []
    for with_ner in (False, True):
        nlp = _ner_listener_pipeline(tiny_bert_dir, with_ner)
        sgd = SGD(0.1, L2=0.0, grad_clip=0.0)
        exclude = ["ner"] if with_ner and how == "ner excluded" else []
        for _ in range(2):  # the tagger's softmax starts at zero: nothing below it learns on the first step
            nlp.update(tags_only, sgd=False, exclude=exclude)
            for name, proc in nlp.pipeline:
                if name not in exclude:
                    proc.finish_update(sgd)
        moved.append(_encoder_params(nlp))
    alone, with_ner = moved
    assert any(not torch.equal(alone[k], _pipeline(tiny_bert_dir)[0].get_pipe("ctxembed_bert").encoder.shims[0]
                               ._model.state_dict()[k]) for k in alone)
    for k in alone:
        torch.testing.assert_close(with_ner[k], alone[k], rtol=1e-5, atol=1e-7)


def test_an_unread_combiner_keeps_its_weights(tiny_bert_dir):
    """Every listener mixes the layers itself: the component's own ScalarMix
    gets no gradient, so weight decay leaves it (and the doc vectors) alone."""
    from thinc.api import Adam

    nlp, examples = _pipeline(tiny_bert_dir, combine="scalar_mix", trainable=False)
    mix = nlp.get_pipe("ctxembed_bert").combiner
    gamma, vectors = mix.get_param("gamma").copy(), nlp(" ".join(WORDS))._.ctx_vectors.copy()
    optimizer = Adam(0.01, L2=0.1, L2_is_weight_decay=True, grad_clip=1.0)
    for _ in range(5):
        _train_step(nlp, examples, optimizer)
    assert (mix.get_param("gamma") == gamma).all()
    assert (nlp(" ".join(WORDS))._.ctx_vectors == vectors).all()


def test_loss_scaled_gradients_accumulate_as_unscaled_ones(tiny_bert_dir):
    """fp16 training scales the loss (on GPU); with gradient accumulation each
    batch's gradient is unscaled once, never again with a later batch's."""
    from thinc.api import PyTorchGradScaler

    class CpuScaler(PyTorchGradScaler):  # thinc's scaler, its arithmetic run on CPU too
        def _scale_tensor(self, tensor, scale_per_device, inplace):
            return tensor.mul_(self._scale) if inplace else tensor * self._scale

    nlp, _ = _pipeline(tiny_bert_dir)
    encoder = nlp.get_pipe("ctxembed_bert").encoder
    shim, docs = encoder.shims[0], [nlp.make_doc("I ran to the park ."), nlp.make_doc("She sat .")]
    module = shim._model

    def accumulated(scaler):
        shim._grad_scaler = scaler
        module.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout in both runs
        for doc in docs:
            Y, backprop = encoder.begin_update([doc])
            backprop([numpy.random.default_rng(len(doc)).standard_normal(y.shape).astype("f") for y in Y])
        return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}

    plain = accumulated(PyTorchGradScaler(enabled=False))
    scaled = accumulated(CpuScaler(enabled=True, init_scale=2.0**16))
    assert plain.keys() == scaled.keys() and plain
    for k in plain:
        torch.testing.assert_close(scaled[k], plain[k], rtol=1e-4, atol=1e-6)


def test_fp16_on_the_cpu_of_a_gpu_machine_trains_without_loss_scaling(tiny_bert_dir, monkeypatch):
    """Loss scaling was switched on by whether the machine has a GPU, and thinc's
    scaler takes CUDA tensors only: an fp16 pipeline kept on the CPU of a GPU
    machine failed its first update. It follows where the weights are."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    nlp, examples = _pipeline(tiny_bert_dir, precision="fp16")
    shim = nlp.get_pipe("ctxembed_bert").encoder.shims[0]
    assert not shim._grad_scaler._enabled
    before = {k: v.detach().clone() for k, v in _encoder_params(nlp).items()}
    _train_step(nlp, examples, nlp.resume_training())
    after = _encoder_params(nlp)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(bool(torch.isfinite(v).all()) for v in after.values())


@pytest.mark.parametrize("upstream, before", [("ctxembed_brt", False), ("ctxembed_bert", True)])
def test_a_listener_no_upstream_claims_says_why(tiny_bert_dir, upstream, before):
    """A misspelt upstream, or a listener before its upstream in the pipeline."""
    nlp = spacy.blank("en")
    tagger = {"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": _listener(upstream=upstream)}}
    if before:
        nlp.add_pipe("tagger", config=tagger)
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    if not before:
        nlp.add_pipe("tagger", config=tagger)
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    with pytest.raises(ValueError, match=rf"ContextualListener upstream = '{upstream}': no ctxembed component of "
                                         r"that name comes before this listener's component"):
        nlp.initialize(lambda: examples)


@pytest.mark.parametrize("scale", [0.1, 0.0])
def test_replaced_listener_keeps_the_encoder_lr_scale(tiny_bert_dir, tmp_path, scale):
    """After replace_listeners the tagger steps its own copy of the encoder: at
    the component's encoder_lr_scale, also once saved and loaded."""
    from thinc.api import SGD, Adam

    nlp, examples = _pipeline(tiny_bert_dir, encoder_lr_scale=scale)
    _train_step(nlp, examples, SGD(0.1, L2=0.0, grad_clip=0.0))  # past the tagger's zero softmax
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    assert nlp.config["components"]["tagger"]["model"]["tok2vec"]["encoder_lr_scale"] == scale
    nlp.to_disk(tmp_path / "p")
    for pipeline in (nlp, spacy.load(tmp_path / "p")):
        copy = next(shim for node in pipeline.get_pipe("tagger").model.walk() for shim in node.shims)
        before = {k: v.detach().clone() for k, v in copy._model.named_parameters()}
        learn_rate = 0.01
        pipeline.update(examples, sgd=False)
        pipeline.get_pipe("tagger").finish_update(Adam(learn_rate, L2=0.01, L2_is_weight_decay=True, grad_clip=0.0))
        step = max(float((v.detach() - before[k]).abs().max()) for k, v in copy._model.named_parameters())
        # Adam's first step moves a parameter with a gradient by about lr (plus the decay)
        assert step == pytest.approx(learn_rate * scale, rel=0.05, abs=1e-9)


def test_a_gradient_sent_after_the_backward_pass_says_it_is_lost(tiny_bert_dir):
    """Not one of spaCy's update flows (each listener calls back in its own
    update), but if a listener calls back after the batch's backward pass
    ran, it says so rather than being dropped silently."""
    from thinc.api import SGD

    nlp, examples = _pipeline(tiny_bert_dir)
    nlp.add_pipe("tagger", name="late", config={"model": {"@architectures": "spacy.Tagger.v2",
                                                          "tok2vec": _listener()}})
    nlp.initialize(lambda: examples)
    nlp.update(examples, sgd=False, exclude=["late"])  # "late" has its batch, but does not call back
    nlp.get_pipe("ctxembed_bert").finish_update(SGD(0.1))  # the backward pass of what "tagger" sent
    late = next(node for node in nlp.get_pipe("late").model.walk() if node.name == "ctxembed-listener")
    with pytest.warns(UserWarning, match=r"\[ctxembed_bert\] a listener sent its gradient after this batch's "):
        late.backprop_and_clear([numpy.zeros_like(x) for x in late._outputs])


@pytest.mark.parametrize("version, frozen", [("v2", False), ("v3", True)])
def test_tok2vec_with_grad_factor_zero_runs_frozen_from_v3_on(tiny_bert_dir, version, frozen):
    """v3 runs an encoder that nothing trains as frozen (no dropout, no graph);
    v2, as released, in training mode: two passes differ by their dropout."""
    from spacy.util import registry

    nlp, _ = _pipeline(tiny_bert_dir)
    tok2vec = registry.get("architectures", f"spacy-ctxembed.ContextualTok2Vec.{version}")(
        embedder=nlp.get_pipe("ctxembed_bert").model.copy(), width=8, grad_factor=0.0)
    docs = [nlp.make_doc(" ".join(WORDS))]
    tok2vec.initialize(X=docs)
    first, second = (tok2vec.begin_update(docs)[0][0] for _ in range(2))
    assert numpy.array_equal(first, second) is frozen


def test_a_spacy_tok2vec_listener_naming_this_component_is_warned_of(tiny_bert_dir):
    """spaCy links its Tok2VecListener to spaCy's tok2vec only: one naming a ctxembed
    component reads doc.tensor in training and never trains it, silently."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    with pytest.warns(UserWarning, match=r"^\[ctxembed_bert\] 'tagger' has a spacy.Tok2VecListener with upstream = "
                                         r"'ctxembed_bert', which listens to spaCy's tok2vec only"):
        nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
            "@architectures": "spacy.Tok2VecListener.v1", "width": 32, "upstream": "ctxembed_bert"}}})


def test_a_trainable_int8_encoder_is_refused_at_its_first_update(tiny_bert_dir):
    """int8 weights take no gradient: a trainable int8 encoder fine-tuned in float32
    and predicted in int8, so the tagger was fitted to other vectors than it was
    evaluated with (cosine 0.87 on MiniLM), without a word. A frozen one trains
    on the int8 vectors it predicts, as the error offers."""
    from spacy_ctxembed.errors import SettingError

    nlp, examples = _pipeline(tiny_bert_dir, precision="int8")
    with pytest.raises(SettingError, match=r"^\[ctxembed_bert\] precision = 'int8': a trainable encoder fine-tunes "
                                           r"in float32 but predicts with int8 weights"):
        nlp.update(examples)
    frozen, examples = _pipeline(tiny_bert_dir, precision="int8", trainable=False)
    before = frozen("I ran to the park")._.ctx_vectors.copy()
    losses = frozen.update(examples, sgd=frozen.resume_training())
    assert losses["tagger"] > 0
    numpy.testing.assert_array_equal(frozen("I ran to the park")._.ctx_vectors, before)


def test_a_listener_refuses_a_training_batch_other_than_its_upstreams(tiny_bert_dir):
    """In training the listener hands on the outputs its upstream sent for its batch:
    a component updated on other docs would otherwise learn from another batch's
    features, silently."""
    nlp, examples = _pipeline(tiny_bert_dir)
    nlp.get_pipe("ctxembed_bert").update(examples)  # sends the listener this batch's outputs
    tagger = nlp.get_pipe("tagger").model
    with pytest.raises(ValueError, match=r"mismatched batch .* ran on other docs than this component"):
        tagger.begin_update([nlp.make_doc("Other words")])
    outputs, _ = tagger.begin_update([eg.predicted for eg in examples])  # its own batch: fine
    assert outputs[0].shape[0] == len(WORDS)


def test_a_listener_refuses_its_batch_retokenized_after_a_trained_upstream_embedded_it(tiny_bert_dir):
    """A retokenizer between a trained upstream and its listener (in [training]
    annotating_components): the rows sent are for the tokens the upstream
    embedded. Refused, saying so: also where the edits cancel out in the batch
    id (a merge in one doc, the same split in another), which handed the rows
    on by position ("is" read "York"'s row; found by a review helper); where
    they do not, the error said "ran on other docs"."""
    from spacy.tokens import Doc

    from spacy_ctxembed.models.listener import ContextualListenerNode

    nlp, _ = _pipeline(tiny_bert_dir)
    tagger = nlp.get_pipe("tagger").model
    first = (["New", "York", "is", "bigcity"], [False, True, True, False])
    second = (["NewYork", "is", "big", "city"], [True, True, False, False])
    docs = [Doc(nlp.vocab, words=words, spaces=spaces) for words, spaces in (first, second)]
    before = ContextualListenerNode.get_batch_id(docs)
    nlp.get_pipe("ctxembed_bert").update([Example(doc, doc.copy()) for doc in docs])
    with docs[0].retokenize() as retokenizer:
        retokenizer.merge(docs[0][0:2])
        retokenizer.split(docs[0][3], ["big", "city"], heads=[(docs[0][3], 1), docs[0][2]])
    with docs[1].retokenize() as retokenizer:
        retokenizer.split(docs[1][0], ["New", "York"], heads=[(docs[1][0], 1), docs[1][1]])
        retokenizer.merge(docs[1][2:4])
    assert ContextualListenerNode.get_batch_id(docs) == before  # (the sum of the words: the same)
    message = r"the docs' tokens changed since the upstream 'ctxembed_bert' embedded them in this update"
    with pytest.raises(ValueError, match=message):
        tagger.begin_update(docs)
    # A merge alone (merge_entities): other words, the same texts.
    nlp.get_pipe("ctxembed_bert").update([Example(doc, doc.copy()) for doc in docs])
    with docs[0].retokenize() as retokenizer:
        retokenizer.merge(docs[0][1:3])
    with pytest.raises(ValueError, match=message + r".* Freeze 'ctxembed_bert' and list it in annotating_components"):
        tagger.begin_update(docs)


def test_a_replaced_listeners_copy_sends_its_encoder_the_gradient_scaled_by_grad_factor(tiny_bert_dir, monkeypatch):
    """nlp.replace_listeners gives the tagger a copy of the embedder that
    trains as the listener did: what reaches the copy's encoder is the
    listener's grad_factor times what the head sends into the copy."""
    from spacy_ctxembed.models import grad_scale

    into_copy, to_encoder = [], []
    lifting = grad_scale._lifting

    def recorded_lifting(model, backprop, factor=1.0):
        def into_encoder(d_outputs):
            to_encoder.extend(numpy.array(d, dtype="float64") for d in d_outputs)
            return backprop(d_outputs)
        backward = lifting(model, None if backprop is None else into_encoder, factor)

        def recorded(dY):
            into_copy.extend(numpy.array(d, dtype="float64") for d in dY)
            return backward(dY)
        return recorded

    monkeypatch.setattr(grad_scale, "_lifting", recorded_lifting)
    nlp, examples = _pipeline(tiny_bert_dir, tok2vec=_listener(grad_factor=0.5))
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    _assert_scaled_on_a_second_step(nlp, examples, into_copy, to_encoder, 0.5)


def test_a_listener_gives_zeros_of_its_upstreams_shape_for_the_docs_it_was_initialised_on(tiny_bert_dir):
    """The docs spaCy initialises a listening component on never went through
    the upstream: the listener gives them zeros of the upstream's shape (as
    spaCy's Tok2VecListener does), features from nothing that must not be
    anything but zero. (While it initialises it: afterwards they are docs like
    any other, see test_listener_loading.)"""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    nlp, examples = _pipeline(tiny_bert_dir)
    node = next(n for n in nlp.get_pipe("tagger").model.walk() if isinstance(n, ContextualListenerNode))
    given, forward = [], node._func

    def recorded(model, docs, is_train):
        outputs, backprop = forward(model, docs, is_train)
        given.append((docs, outputs))
        return outputs, backprop

    node._func = recorded
    nlp.initialize(lambda: examples)
    sample = examples[0].predicted  # (the doc the tagger was initialised on)
    assert given and all(docs == [sample] for docs, _ in given)
    for _, (zeros,) in given:
        assert zeros.shape == (3, len(WORDS), 32)  # layers [0, 1, 2] of the tiny BERT
        assert not numpy.asarray(zeros).any()


def test_a_listener_of_concatenated_vectors_is_sized_to_their_width(tiny_bert_dir):
    """A listener of the combined vectors (mix_layers = false) reads the
    combiner's output: with ConcatLayers that is three layers of 32, 96 wide,
    not the encoder's 32. The head is sized and predicts on that width."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    nlp, _ = _pipeline(tiny_bert_dir, combine="concat", tok2vec=_listener(mix_layers=False))
    node = next(n for n in nlp.get_pipe("tagger").model.walk() if isinstance(n, ContextualListenerNode))
    assert node.get_dim("nO") == 3 * 32
    doc = nlp(" ".join(WORDS))
    assert doc._.ctx_vectors.shape == (len(WORDS), 96)
    assert all(token.tag_ in TAGS for token in doc)


# A tagger whose model holds a second tok2vec beside model.tok2vec (spaCy's
# replace_listeners takes any listener paths; it hands the config hook only
# the model.tok2vec block).
@spacy.registry.architectures("spacy-ctxembed-tests.TaggerOfTwo.v1")
def _tagger_of_two(tok2vec, other, nO=None):
    from thinc.api import concatenate

    return spacy.registry.architectures.get("spacy.Tagger.v2")(concatenate(tok2vec, other), nO=nO)


def _tagger_of_two_pipeline(tiny_bert_dir, tok2vec, other, upstreams=("ctxembed_bert",)):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    for name in upstreams:
        nlp.add_pipe("ctxembed_bert", name=name, config=ctx_config(name=tiny_bert_dir, primary=name == upstreams[0]))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy-ctxembed-tests.TaggerOfTwo.v1",
                                             "tok2vec": tok2vec, "other": other}})
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})])
    return nlp


def test_replace_listeners_refuses_the_path_of_another_upstreams_listener(tiny_bert_dir, tmp_path):
    """model.tok2vec holds a's listener, model.other b's. The path check looked
    for b's listener in model.tok2vec only, and filtered by upstream only where
    it found several: a's listener passed for b's. Asked for model.tok2vec, it
    wrote a copy of b (with a's width) over a's listener in the config while the
    model swapped b's: the saved pipeline did not load. (Asked for b's own path,
    model.other, it said "pass 'model.tok2vec'".)"""
    nlp = _tagger_of_two_pipeline(tiny_bert_dir, _listener(8, upstream="a"), _listener(12, upstream="b"),
                                  upstreams=("a", "b"))
    config = nlp.config.to_str()
    with pytest.raises(ValueError, match=r"\): 'model.tok2vec' is not the path of a ContextualListener of 'b' in the "
                                         r"config of 'tagger', which has it at 'model.other': pass that path \("):
        nlp.replace_listeners("b", "tagger", ["model.tok2vec"])
    assert nlp.config.to_str() == config and nlp.get_pipe("b").listening_components == ["tagger"]


def test_replace_listeners_takes_a_listener_outside_model_tok2vec(tiny_bert_dir, tmp_path):
    """Listeners at model.tok2vec and model.other: replace_listeners' own paths.
    The hook refused 'model.other' as "not the path of a ContextualListener" (it
    is one; the hook looked in the model.tok2vec block only)."""
    nlp = _tagger_of_two_pipeline(tiny_bert_dir, _listener(8), _listener(12))
    before = _tagger_scores(nlp)
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec", "model.other"])
    model = nlp.config["components"]["tagger"]["model"]
    assert (model["tok2vec"]["width"], model["other"]["width"]) == (8, 12)
    nlp.to_disk(tmp_path / "p")
    numpy.testing.assert_array_equal(_tagger_scores(spacy.load(tmp_path / "p")), before)


def test_the_replace_listeners_frame_is_found_on_the_installed_spacy(tiny_bert_dir, monkeypatch):
    """The path checks rest on reading spaCy's `replace_listeners` frame (its
    locals `pipe_name`, `listeners`, `listener_path`, `pipe_cfg`); were spaCy to
    rename them, the hook would check nothing. This pins what it reads."""
    from spacy_ctxembed.models import embedder

    seen = []
    read = embedder._replace_listeners_call

    def recording():
        call = read()
        seen.append(None if call is None else call[:3])
        return call

    monkeypatch.setattr(embedder, "_replace_listeners_call", recording)
    nlp = _two_listeners(tiny_bert_dir)
    nlp.replace_listeners("ctxembed_bert", "tagger", ("model.tok2vec.*.b", "model.tok2vec.*.a"))
    paths = ["model.tok2vec.*.b", "model.tok2vec.*.a"]
    assert seen == [("tagger", paths, paths[0]), ("tagger", paths, paths[1])]
