"""Pipelines pickle, as spaCy's own do: weights, settings, listeners and all.

`nlp.pipe(n_process=...)` pickles the pipeline where worker processes are
spawned (macOS, Windows); copies and pickles must run their own layers.
"""
import pickle
import subprocess
import sys
import textwrap

import numpy
import pytest
import spacy
from spacy.training import Example
from thinc.api import Linear, with_array

from spacy_ctxembed.models.elmo_net import lstm_step
from spacy_ctxembed.models.grad_scale import scale_gradient

from .conftest import ctx_config
from .elmo_fixture import write_elmo_fixture

TEXTS = ["I ran to the park.", "She ran significance tests on the data.", "", "A much longer text " * 20]
WORDS, TAGS = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]


def _round_trip(nlp):
    return pickle.loads(pickle.dumps(nlp))


def test_bert_pipeline_pickles_with_its_weights_and_settings(tiny_bert_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 2], pooling="max",
                                                    store_layers=True, cache_mb=4))
    nlp.initialize()
    expected = [nlp(t) for t in TEXTS]
    copy = _round_trip(nlp)
    component = copy.get_pipe("ctxembed_bert")
    assert component.cfg == nlp.get_pipe("ctxembed_bert").cfg
    assert component.cache is not None and len(component.cache) == 0  # a fresh cache, not the entries
    for text, doc in zip(TEXTS, expected):
        got = copy(text)
        numpy.testing.assert_array_equal(got._.ctx_layers, doc._.ctx_layers)
        numpy.testing.assert_array_equal(got.tensor, doc.tensor)


def test_pipeline_pickled_before_initialize_initializes_later(tiny_bert_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    copy = _round_trip(nlp)
    nlp.initialize()
    copy.initialize()
    numpy.testing.assert_array_equal(copy(TEXTS[1]).tensor, nlp(TEXTS[1]).tensor)


def test_elmo_pipeline_pickles_and_keeps_its_step(tmp_path):
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights)))
    nlp.initialize()
    numpy.testing.assert_array_equal(_round_trip(nlp)(TEXTS[1]).tensor, nlp(TEXTS[1]).tensor)
    compiled = spacy.blank("en")
    compiled.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights),
                                                         compile=True))
    compiled.initialize()
    step = _round_trip(compiled).get_pipe("ctxembed_elmo").encoder.shims[0].step
    assert step is not lstm_step and callable(step)  # compiled again, lazily


@pytest.mark.parametrize("kind", ["bert", "elmo"])
def test_copies_keep_the_lineage_and_a_load_past_the_component_renews_it(tiny_bert_dir, tmp_path, kind):
    """A pickled or deep-copied component is the same weights (its shim's count of
    loads starts again in the copy, and is not read as a load past it); weights
    loaded into its model with thinc's `from_bytes` (spaCy's init_tok2vec) are
    other weights: a new lineage, and outputs signed anew."""
    import copy as copying

    if kind == "bert":
        config, name = ctx_config(name=tiny_bert_dir), "ctxembed_bert"
    else:
        options, weights = write_elmo_fixture(tmp_path / "elmo")
        config, name = ctx_config(options_file=str(options), weight_file=str(weights)), "ctxembed_elmo"
    nlp = spacy.blank("en")
    nlp.add_pipe(name, config=config)
    nlp.initialize()
    component = nlp.get_pipe(name)
    lineage, signature = component.lineage, component.signature
    for copied in (_round_trip(nlp).get_pipe(name), copying.deepcopy(component), pickle.loads(pickle.dumps(component))):
        copied(nlp.make_doc(TEXTS[1]))
        assert (copied.lineage, copied.signature) == (lineage, signature)
    data = component.model.to_bytes()
    for tensor in component.encoder.shims[0]._model.state_dict().values():
        if tensor.is_floating_point():
            tensor.mul_(0.5)  # (weights of its own shapes, elsewhere; ELMo's frozen ones are buffers)
    other = component.model.to_bytes()
    component.model.from_bytes(data)  # the same weights again: still a load past it
    assert component.lineage not in (None, lineage) and component.signature == signature
    moved = component.lineage
    component.model.from_bytes(other)
    assert component.lineage not in (None, lineage, moved) and component.signature != signature


def test_elmo_model_copies_in_memory(tmp_path, monkeypatch):
    from spacy_ctxembed.models.elmo import ElmoShim

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights)))
    nlp.initialize()
    model = nlp.get_pipe("ctxembed_elmo").model

    def no_files(self):
        raise AssertionError("Model.copy() went through the weight files")

    monkeypatch.setattr(ElmoShim, "to_bytes", no_files)
    copy = model.copy()
    docs = [nlp.make_doc(TEXTS[1])]
    numpy.testing.assert_array_equal(copy.predict(docs)[0], model.predict(docs)[0])
    assert copy.layers[0].shims[0]._model is not model.layers[0].shims[0]._model


def test_unpickled_in_a_fresh_process_it_registers_its_extensions(tiny_bert_dir, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    nlp.initialize()
    (tmp_path / "nlp.pkl").write_bytes(pickle.dumps(nlp))
    numpy.save(tmp_path / "expected.npy", nlp(TEXTS[1])._.ctx_vectors)
    script = textwrap.dedent(f"""
        import pickle, numpy
        nlp = pickle.loads(open({str(tmp_path / "nlp.pkl")!r}, "rb").read())
        got = nlp({TEXTS[1]!r})._.ctx_vectors
        # (another process: BLAS may round differently, hence not bit for bit)
        numpy.testing.assert_allclose(got, numpy.load({str(tmp_path / "expected.npy")!r}), atol=1e-5)
        print("FRESH OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "FRESH OK" in result.stdout, result.stderr[-3000:]


def _trained_tagger(tiny_bert_dir, steps):
    """A tagger listening to a tiny BERT, after `steps` updates, and its examples."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[1, 2]))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}}})
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    nlp.initialize(lambda: examples)
    optimizer = nlp.resume_training()
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp, examples


def test_listening_tagger_pickles_in_the_middle_of_training(tiny_bert_dir):
    nlp, examples = _trained_tagger(tiny_bert_dir, 20)
    nlp.update(examples, sgd=False)  # a batch left in flight: the listeners hold outputs and callbacks
    copy = _round_trip(nlp)
    listener = copy.get_pipe("ctxembed_bert").listeners[0]
    assert listener.source_name() == "ctxembed_bert"  # the upstream is claimed again
    text = " ".join(WORDS)
    assert [t.tag_ for t in copy(text)] == [t.tag_ for t in nlp(text)]
    copy.update(examples, sgd=copy.resume_training())  # and it trains on


def test_a_listener_pickled_by_an_earlier_version_unpickles(tiny_bert_dir, monkeypatch):
    """A listener pickled by an earlier version (3e76642, 2026-12-04) has no
    `_listening_component` of its own: unpickling its pipeline claims it, which
    reads that attribute, and failed with an AttributeError naming it."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    nlp, examples = _trained_tagger(tiny_bert_dir, 10)
    getstate = ContextualListenerNode.__getstate__

    def as_earlier_versions_wrote(self):
        own, slots = getstate(self)
        own.pop("_listening_component")
        return own, slots

    monkeypatch.setattr(ContextualListenerNode, "__getstate__", as_earlier_versions_wrote)
    data = pickle.dumps(nlp)
    monkeypatch.undo()
    copy = pickle.loads(data)
    text = " ".join(WORDS)
    assert [t.tag_ for t in copy(text)] == [t.tag_ for t in nlp(text)]
    copy.update(examples, sgd=copy.resume_training())  # and it trains on


def test_a_pipeline_pickled_before_the_heads_moved_unpickles(tiny_bert_dir, monkeypatch):
    """A pipeline pickled by an earlier version names its heads' class,
    forward and inits, and their saved setting's class, as `models.listener`'s.
    They stay there when the architectures that build the heads moved to
    `models.heads`; moved too, unpickling failed ("Can't get attribute
    'ListenerHead' on <module 'spacy_ctxembed.models.listener'>"). Pickled
    here with each named as `models.listener`'s, wherever it lives now, v2
    and v1 heads."""
    from spacy_ctxembed.models import heads, listener

    nlp, examples = _trained_tagger(tiny_bert_dir, 10)
    nlp.get_pipe("ctxembed_bert").cfg["store_layers"] = True  # (for the v1 head, which reads doc._.ctx_layers)
    nlp.add_pipe("tagger", name="tagger_v1", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v1", "width": 16, "n_layers": 2,
        "upstream_width": 32}}})
    nlp.get_pipe("tagger_v1").initialize(lambda: examples, nlp=nlp)
    for name in ("ListenerHead", "SavedSetting", "_delegate", "_init_inner", "_init_v1"):
        moved = getattr(heads, name)
        monkeypatch.setattr(moved, "__module__", listener.__name__)
        monkeypatch.setattr(listener, name, moved, raising=False)
    data = pickle.dumps(nlp)
    monkeypatch.undo()
    assert b"ListenerHead" in data and b"spacy_ctxembed.models.heads" not in data  # (as the old layout names them)
    copy = pickle.loads(data)
    text = " ".join(WORDS)
    for name in ("tagger", "tagger_v1"):  # (each head's scores, on the docs each pipeline annotated)
        got, want = copy.get_pipe(name).model.predict([copy(text)]), nlp.get_pipe(name).model.predict([nlp(text)])
        numpy.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    copy.update(examples, sgd=copy.resume_training(), exclude=["tagger_v1"])  # and it trains on


def test_a_copied_gradient_scaler_runs_its_own_layer():
    X = [numpy.ones((3, 4), dtype="float32")]
    model = scale_gradient(with_array(Linear(2, 4)), 0.5)
    model.initialize(X=X)
    copy = model.copy()
    linear = copy.layers[0].layers[0]
    linear.set_param("W", linear.get_param("W") * 0)
    assert model.predict(X)[0].any()  # the original's own layer
    assert not copy.predict(X)[0].any()  # the copy's zeroed one
    # And the gradient it passes back is the layer's own, scaled.
    _, backprop = model.begin_update(X)
    _, plain_backprop = model.layers[0].begin_update(X)
    dY = [numpy.ones((3, 2), dtype="float32")]
    numpy.testing.assert_allclose(backprop(dY)[0], 0.5 * plain_backprop(dY)[0])


def test_multiprocess_pipe_with_spawned_workers(tiny_bert_dir, tmp_path):
    # Spawned workers (macOS and Windows start them so) get the pipeline pickled.
    script = textwrap.dedent(f"""
        import multiprocessing, numpy, spacy
        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn", force=True)
            nlp = spacy.blank("en")
            nlp.add_pipe("ctxembed_bert", config={{"model": {{"encoder": {{"name": {str(tiny_bert_dir)!r}}}}}}})
            nlp.initialize()
            texts = {TEXTS!r}
            serial = [d._.ctx_vectors for d in nlp.pipe(texts)]
            spawned = [d._.ctx_vectors for d in nlp.pipe(texts, n_process=2, batch_size=1)]
            assert len(spawned) == len(texts)
            for a, b in zip(serial, spawned):
                numpy.testing.assert_allclose(a, b, atol=1e-5)
            print("SPAWNED OK")
    """)
    path = tmp_path / "spawn_pipe.py"
    path.write_text(script)
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert "SPAWNED OK" in result.stdout, result.stderr[-3000:]
