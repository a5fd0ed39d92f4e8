"""One pipeline from several threads; fork handling only where it is needed."""
import json
import os
import subprocess
import sys
import threading

import numpy
import pytest
import spacy

from .conftest import PredictedAhead, ctx_config, run_in_threads

TEXTS = ["I ran to the park .", "Yesterday I ran some significance tests on the data .", "Short", ""] * 4


def _nlp(model_dir, initialize=True, **settings):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[1], store_layers=True, **settings))
    if initialize:
        nlp.initialize()
    return nlp


def test_two_threads_give_the_single_thread_vectors(tiny_bert_dir):
    nlp = _nlp(tiny_bert_dir)
    expected = [d._.ctx_layers.copy() for d in nlp.pipe(TEXTS)]
    results = run_in_threads(4, lambda: [d._.ctx_layers.copy() for d in nlp.pipe(TEXTS, batch_size=3)])
    for result in results:
        for got, want in zip(result, expected):
            numpy.testing.assert_allclose(got, want, atol=1e-6)


def test_eight_threads_making_the_first_call_load_once(tiny_bert_dir):
    nlp = _nlp(tiny_bert_dir, initialize=False)
    loads = []
    pipe = nlp.get_pipe("ctxembed_bert")
    original = pipe.initialize

    def counting_initialize(*args, **kwargs):
        loads.append(1)
        return original(*args, **kwargs)

    pipe.initialize = counting_initialize
    results = run_in_threads(8, lambda: nlp(TEXTS[1])._.ctx_vectors.copy())
    assert len(loads) == 1
    module = pipe.encoder.shims[0]._model
    assert not any(p.is_meta for p in module.parameters())
    reference = _nlp(tiny_bert_dir)(TEXTS[1])._.ctx_vectors
    for result in results:
        numpy.testing.assert_array_equal(result, reference)


def test_blank_pipeline_then_fork_leaves_torch_alone():
    code = (
        "import os, torch, spacy\n"
        "torch.set_num_threads(2)\n"
        "nlp = spacy.blank('en')\n"  # imports spacy_ctxembed through the entry points
        "assert nlp.has_factory('ctxembed_bert')\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(w, f\"{torch.get_num_threads()} {os.environ.get('TOKENIZERS_PARALLELISM')}\".encode())\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(os.read(r, 100).decode())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["2", "None"]


# Every case in one process, each on a pipeline of its own: the process's
# start (spaCy imports every installed plugin) is most of a case's time.
_FORK_WITH_A_HELD_LOCK = """
import contextlib, json, os, sys, threading, time, numpy, spacy
from concurrent.futures import Future
from spacy_ctxembed.outputs import views
from spacy_ctxembed.models import hf_loading

@contextlib.contextmanager
def batch_in_flight(component):
    # A batch that `pipe` predicts ahead, done once the block ends: at the fork,
    # its worker thread is the parent's only.
    future = Future()
    component._in_flight.add(future)
    try:
        yield
    finally:
        future.set_result(None)

def run_case(held, first_call):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"cache_mb": 8, "model": {"encoder": {"name": sys.argv[1]}}})
    nlp.initialize()
    component = nlp.get_pipe("ctxembed_bert")
    scope = {"nlp": nlp, "component": component, "views": views, "hf_loading": hf_loading,
             "batch_in_flight": batch_in_flight, "contextlib": contextlib}
    reference = nlp("A doc to embed.")._.ctx_vectors.copy()
    scope["data"] = component.to_bytes()
    holding, release = threading.Event(), threading.Event()

    def hold():
        with eval(held, scope):
            holding.set()
            release.wait(timeout=60)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(timeout=60)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            exec(first_call, scope)
            same = numpy.array_equal(nlp("A doc to embed.")._.ctx_vectors, reference)
            os.write(w, ("same" if same else "different").encode())
        except Exception as err:
            os.write(w, str(err).encode())
        os._exit(0)
    release.set()
    holder.join()
    os.close(w)
    for _ in range(600):
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "the child hung"
    with os.fdopen(r, "rb") as reader:
        return reader.read().decode()

print(json.dumps([run_case(held, first_call) for held, first_call in json.loads(sys.argv[2])]))
"""

FORK_CASES = [  # (the lock another thread holds at the fork, the child's first call, what the child says)
    # another thread's prediction, caching its layers; the child predicts first
    ("component.cache._lock", "pass", "same"),
    # another thread's prediction (a run-ahead worker, say); the child loads first
    ("component._gate.predicting()", "component.from_bytes(data)", "same"),
    # another thread changing the weights; the child predicts, or loads, first
    ("component._gate.loading()", "pass", "[ctxembed_bert] this process was forked while another thread"),
    ("component._gate.loading()", "component.to_bytes()", "[ctxembed_bert] this process was forked while"),
    # module-level locks: another thread reading a vector (the views' memo), or loading a model
    ("views._VIEWS.get()[0]", "pass", "same"),
    ("hf_loading._LOAD_LOCK.get()", "component.from_bytes(data)", "same"),
    # another thread taking a load past the component; the child makes one too (thinc's from_bytes on the model)
    ("component._notice_lock", "component.model.from_bytes(component.model.to_bytes())", "same"),
    # nothing held; the child's first torch work is thinc's from_bytes on the model, past the component
    ("contextlib.nullcontext()", "component.model.from_bytes(component.model.to_bytes())", "same"),
    # a batch that a run-ahead worker of the parent predicts: the end of the child's
    # memory zone waits for the child's own batches, not for that one
    ("batch_in_flight(component)", "with nlp.memory_zone(): pass", "same"),
]


def test_a_fork_while_a_lock_is_held_neither_hangs_nor_runs_half_changed_weights(tiny_bert_dir):
    """A fork copies the component's locks as other threads held them: the child
    waited for them for ever. Held to change the weights, the child's copy may be
    half changed: it says so instead of running."""
    cases = json.dumps([[held, first_call] for held, first_call, _ in FORK_CASES])
    out = subprocess.run([sys.executable, "-c", _FORK_WITH_A_HELD_LOCK, str(tiny_bert_dir), cases], check=True,
                         capture_output=True, text=True, timeout=900)
    said = json.loads(out.stdout.strip().splitlines()[-1])
    wrong = [(held, first_call, got) for (held, first_call, expected), got in zip(FORK_CASES, said)
             if not got.strip().startswith(expected)]
    assert len(said) == len(FORK_CASES) and not wrong, (wrong, out.stderr[-3000:])


_REPLACED_LISTENER_IN_FORKED_WORKERS = """
import multiprocessing, os, signal, sys, torch, spacy

def threads(doc):
    doc.user_data["threads"] = torch.get_num_threads()
    return doc

spacy.Language.component("torch_threads", func=threads)

if __name__ == "__main__":
    multiprocessing.set_start_method("fork", force=True)
    # A hung run ends, its workers with it.
    signal.signal(signal.SIGALRM, lambda *_: [p.kill() for p in multiprocessing.active_children()] or os._exit(3))
    signal.alarm(240)
    torch.set_num_threads(2)
    nlp = spacy.load(sys.argv[1])
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    nlp.remove_pipe("ctxembed_bert")  # (the tagger's copy of the encoder is all that runs torch)
    nlp.add_pipe("torch_threads")
    texts = ["I ran to the park .", "She ran some tests on the data ."] * 4
    # Run here first, as a program does before it fans out: torch's thread pool is started.
    single = [[t.tag_ for t in doc] for doc in nlp.pipe(texts)]
    docs = list(nlp.pipe(texts, n_process=2, batch_size=2))
    print("TAGS", [[t.tag_ for t in doc] for doc in docs] == single)
    print("THREADS", sorted({doc.user_data["threads"] for doc in docs}))
"""


def test_a_replaced_listeners_encoder_runs_in_forked_workers_with_one_thread(tiny_bert_dir, tmp_path):
    # The copy of the encoder that replace_listeners puts in a component runs
    # with no ctxembed component before it: in a pipeline without the embedder,
    # its forward pass was torch's first in each forked worker, with the
    # parent's thread pool, and the workers hung for ever.
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[-1]))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": "ctxembed_bert"}}})
    examples = [Example.from_dict(nlp.make_doc("I ran to the park"), {"tags": ["PRP", "VBD", "IN", "DT", "NN"]})]
    nlp.initialize(lambda: examples)
    nlp.to_disk(tmp_path / "pipeline")
    script = tmp_path / "replaced_listener_fork.py"
    script.write_text(_REPLACED_LISTENER_IN_FORKED_WORKERS)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "pipeline")], capture_output=True, text=True,
                         timeout=600, env=env)
    assert "TAGS True" in out.stdout and "THREADS [1]" in out.stdout, (out.returncode, out.stdout, out.stderr[-3000:])


def _scalar_mix_nlp(model_dir, **settings):
    """A pipeline whose combiner is a 'trained' scalar mix (not the initial mean),
    so that a combiner initialised again would show in the vectors."""
    nlp = _nlp(model_dir, combine="scalar_mix", **settings)
    combiner = nlp.get_pipe("ctxembed_bert").combiner
    combiner.set_param("s", numpy.asarray([3.0], dtype="f"))
    combiner.set_param("gamma", numpy.asarray([2.0], dtype="f"))
    return nlp


def test_loads_in_one_thread_while_others_predict(tiny_bert_dir):
    # A server that reloads the component while serving: predictions wait
    # for the load (no "refused" error, no mix of two models), the component
    # is never initialised again on top of the weights just loaded, and the
    # load gets its turn although the threads' calls overlap without a pause
    # (predictions that start after it asked wait for it: test_load_gate).
    # The cache widens the window in which the re-initialisation struck.

    nlp = _scalar_mix_nlp(tiny_bert_dir, cache_mb=16)
    component = nlp.get_pipe("ctxembed_bert")
    data = component.to_bytes()
    text = " ".join([TEXTS[1]] * 4)
    reference = nlp(text)._.ctx_vectors.copy()
    stop, failures, calls = threading.Event(), [], []

    def predict_until_stopped():
        while not stop.is_set():
            try:
                vectors = nlp(text)._.ctx_vectors
                calls.append(1)
                if not numpy.allclose(vectors, reference, atol=1e-6):
                    failures.append("other vectors")
            except Exception as err:  # noqa: BLE001 - collected for the assertion
                failures.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=predict_until_stopped) for _ in range(4)]
    for thread in threads:
        thread.start()
    loader = threading.Thread(target=lambda: [component.from_bytes(data) for _ in range(8)])
    try:
        loader.start()
        loader.join(timeout=60)
        assert not loader.is_alive(), "the loads never got the gate from the predicting threads"
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        loader.join()
    assert calls and not failures, failures[:3]
    numpy.testing.assert_allclose(component.combiner.get_param("s"), [3.0])
    numpy.testing.assert_allclose(nlp(text)._.ctx_vectors, reference, atol=1e-6)


def test_run_ahead_batches_predicted_before_a_load_are_predicted_again(tiny_bert_dir, tmp_path, monkeypatch):
    # The worker predicts batch k+1 while the caller's loop works on batch k;
    # if the caller loads other weights meanwhile, batch k+1 holds the old
    # model's vectors and must be predicted again.
    import torch
    from transformers import BertModel

    other_dir = tmp_path / "other"
    torch.manual_seed(1)
    model = BertModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.save_pretrained(other_dir, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_bert_dir / name).exists():
            (other_dir / name).write_bytes((tiny_bert_dir / name).read_bytes())
    texts = [f"Document number {i} is here ." for i in range(12)]
    nlp_b = _nlp(other_dir)
    expected_b = [d._.ctx_vectors.copy() for d in nlp_b.pipe(texts)]
    nlp = _nlp(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    component.run_ahead = True
    data_b = nlp_b.get_pipe("ctxembed_bert").to_bytes()
    predicted_ahead = PredictedAhead(component, monkeypatch)
    got = []
    for i, doc in enumerate(nlp.pipe(texts, batch_size=2)):
        got.append(doc._.ctx_vectors.copy())
        if i == 3:  # once the worker has predicted batch 3 (docs 4-5) with the first model
            assert predicted_ahead.wait(3)
            component.from_bytes(data_b)
    assert predicted_ahead.generations[2] != component._generation  # (so it was one to predict again)
    for i in range(4, len(texts)):
        numpy.testing.assert_allclose(got[i], expected_b[i], atol=1e-6, err_msg=f"doc {i}")


def test_an_unpickled_component_leaves_torch_threads_alone(tiny_bert_dir):
    # Unpickled in a process (spawned n_process workers, Ray, joblib) is not
    # forked: torch's threads are the user's to set. (Forked n_process workers
    # still get one thread: test_serialization's n_process test runs them.)
    import pickle

    import torch

    nlp = _nlp(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    component._pid = -1  # as pickled in another process
    copy = pickle.loads(pickle.dumps(component))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        copy.predict([nlp.make_doc(TEXTS[0])])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_outputs_say_which_weights_made_them_when_a_load_comes_between(tiny_bert_dir, tmp_path):
    # predict, then another thread loads other weights, then set_annotations:
    # the vectors are the first model's, and so must their signature be.
    nlp = _scalar_mix_nlp(tiny_bert_dir)
    other = _scalar_mix_nlp(tiny_bert_dir)
    other.get_pipe("ctxembed_bert").combiner.set_param("s", numpy.asarray([-3.0], dtype="f"))
    other.get_pipe("ctxembed_bert").combiner.set_param("gamma", numpy.asarray([0.5], dtype="f"))
    other_data = other.get_pipe("ctxembed_bert").to_bytes()
    first = nlp(TEXTS[0])  # made before the load, by the first weights
    component = nlp.get_pipe("ctxembed_bert")
    doc = nlp.make_doc(TEXTS[1])
    predictions = component.predict([doc])
    component.from_bytes(other_data)
    component.set_annotations([doc], predictions)
    numpy.testing.assert_allclose(doc._.ctx_vectors, predictions[1][0])
    assert first[0].similarity(doc[0]) == pytest.approx(
        float(first[0].vector @ doc[0].vector / numpy.linalg.norm(first[0].vector) / numpy.linalg.norm(doc[0].vector)),
        abs=1e-6)
    with pytest.raises(ValueError, match="different ctxembed models"):
        nlp(TEXTS[1])[0].similarity(doc[0])


def _tuned_pipeline(model_dir):
    """A trainable tiny BERT with a tagger listening, a few steps in, and an
    optimizer whose next step and averages differ from the weights it holds."""
    from spacy.training import Example
    from thinc.api import Adam

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[-1], trainable=True))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": "ctxembed_bert"}}})
    examples = [Example.from_dict(nlp.make_doc(text), {"tags": tags}) for text, tags in (
        ("I ran to the park", ["PRP", "VBD", "IN", "DT", "NN"]), ("She ran some tests", ["PRP", "VBD", "DT", "NNS"]))]
    optimizer = Adam(0.01)
    optimizer.averages = {}
    nlp.initialize(lambda: examples, sgd=optimizer)
    for _ in range(2):
        nlp.update(examples, sgd=optimizer)
    nlp.update(examples, sgd=False)  # (a gradient waiting for its step, as with accumulate_gradient)
    return nlp, optimizer


@pytest.mark.parametrize("change", ["step", "averages"])
def test_a_prediction_reads_one_set_of_weights_while_another_thread_trains(tiny_bert_dir, change):
    """A training step (`finish_update`) or `use_params` in one thread while another
    predicts: the step rewrote the weights between the prediction's first layer
    and its second, which then matched neither weights and was stamped as the
    new ones'. They wait for the prediction under way, as a load does."""

    nlp, optimizer = _tuned_pipeline(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    text = "The committee met in Reykjavik yesterday ."
    before, signature_before = nlp(text)._.ctx_vectors.copy(), component._current_signature()
    reached, go = threading.Event(), threading.Event()

    def pause(module, inputs, output):
        if threading.current_thread().name == "predicting" and not reached.is_set():
            reached.set()
            go.wait(30)

    runner = component.encoder.shims[0].runner.runner
    hook = runner.encoder.layer[0].register_forward_hook(pause)
    result = {}

    predicted = threading.Event()

    def predict():
        try:
            predictions = component.predict([nlp.make_doc(text)])
            result["vectors"], result["signature"] = numpy.asarray(predictions[1][0]), predictions.signature
        finally:
            predicted.set()

    def train():
        if change == "step":
            component.finish_update(optimizer)
        else:
            with nlp.use_params(optimizer.averages):
                result["in_block"] = nlp(text)._.ctx_vectors.copy()
                predicted.wait(30)  # (the averages stay in while the prediction goes on)

    predicting = threading.Thread(target=predict, name="predicting")
    predicting.start()
    assert reached.wait(30)
    training = threading.Thread(target=train)
    training.start()
    training.join(2)  # (long enough for the step to run, where nothing holds it back)
    go.set()
    predicting.join(30)
    training.join(30)
    hook.remove()
    numpy.testing.assert_array_equal(result["vectors"], before)
    assert result["signature"] == signature_before
    after = nlp(text)._.ctx_vectors
    if change == "step":
        assert not numpy.allclose(after, before, atol=1e-4)  # (the premise: the step moved them)
    else:
        assert not numpy.allclose(result["in_block"], before, atol=1e-4)
        numpy.testing.assert_array_equal(after, before)


def test_a_training_step_cut_short_still_says_the_weights_moved(tiny_bert_dir):
    """Ctrl-C in the optimizer after some parameters were stepped: the feature cache
    kept serving the old weights' layers, and outputs kept the old signature."""
    from spacy_ctxembed.pipeline.feature_cache import FeatureCache

    nlp, optimizer = _tuned_pipeline(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    component.cache = FeatureCache(8 * 2**20)  # (as cache_mb = 8 gives)
    text = "The committee met in Reykjavik yesterday ."
    before, signature = nlp(text)._.ctx_vectors.copy(), component._current_signature()
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return optimizer(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        component.finish_update(interrupted)
    served = nlp(text)._.ctx_vectors
    component.cache.clear()
    recomputed = nlp(text)._.ctx_vectors
    assert not numpy.allclose(recomputed, before, atol=1e-6)  # (the premise: two parameters were stepped)
    numpy.testing.assert_array_equal(served, recomputed)
    assert component._current_signature() != signature


def test_a_pickle_taken_during_a_training_step_has_its_weights_signature(tiny_bert_dir, monkeypatch):
    """Pickled while another thread's step had written the weights but not yet
    said so: the copy kept the old signature for good with the new weights, so
    its outputs claimed a model it did not have. It takes it from its weights."""
    import pickle

    from spacy_ctxembed.pipeline.signature import output_signature

    nlp, optimizer = _tuned_pipeline(tiny_bert_dir)
    component = nlp.get_pipe("ctxembed_bert")
    text = "The committee met in Reykjavik yesterday ."
    before, signature = nlp(text)._.ctx_vectors.copy(), component._current_signature()
    inside, go = threading.Event(), threading.Event()
    moved = type(component)._weights_moved

    def paused(self):  # (the step has written the weights; its bookkeeping waits)
        inside.set()
        go.wait(60)
        moved(self)

    monkeypatch.setattr(type(component), "_weights_moved", paused)  # (on the class: an instance's is pickled)
    step = threading.Thread(target=component.finish_update, args=(optimizer,))
    step.start()
    assert inside.wait(60)
    try:
        copy = pickle.loads(pickle.dumps(nlp))
    finally:
        go.set()
        step.join()
    after = nlp(text)._.ctx_vectors
    assert not numpy.allclose(before, after, atol=1e-4)
    copied = copy.get_pipe("ctxembed_bert")
    numpy.testing.assert_allclose(copy(text)._.ctx_vectors, after, atol=1e-6)
    assert copied._current_signature() == output_signature(copied.model) == component._current_signature() != signature


def test_a_load_of_its_own_under_way_in_another_thread_is_not_taken_for_a_load_past_it(tiny_bert_dir):
    """A load of the component's own counts on its encoder's shim before it is
    done: a thread asking for the lineage meanwhile must not take it for a load
    past the component (and run `_model_loaded` on a half-loaded model)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    nlp.initialize()
    component = nlp.get_pipe("ctxembed_bert")
    lineage = component.lineage
    entered, release = threading.Event(), threading.Event()

    def loading():
        with component._gate.loading():
            component.encoder.shims[0].weights_loaded()  # (its count moves before the load is done)
            entered.set()
            release.wait(30)
            component._model_loaded(lineage)

    thread = threading.Thread(target=loading)
    thread.start()
    try:
        assert entered.wait(30)
        assert component.lineage == lineage and component._shim_loads != component.encoder.shims[0].loads
    finally:
        release.set()
        thread.join()
    assert component.lineage == lineage and component._shim_loads == component.encoder.shims[0].loads


@pytest.mark.parametrize("save", ["to_bytes", "to_disk"])
def test_a_save_in_another_thread_leaves_the_training_threads_backward_pass_alone(tiny_bert_dir, tmp_path, save):
    """A checkpoint or snapshot taken in another thread between the embedder's
    update and its listener's (`nlp.update` runs them one after the other): the
    save ran the training thread's waiting backward pass, before the listener
    had sent its gradient, which then never reached the encoder (a warning, and
    a step that left the encoder as it was). It is the training thread's to run."""
    import warnings

    from spacy.training import Example

    results = []
    for snapshot in (False, True):
        spacy.util.fix_random_seed(0)
        nlp, optimizer = _tuned_pipeline(tiny_bert_dir)
        component, tagger = nlp.get_pipe("ctxembed_bert"), nlp.get_pipe("tagger")
        examples = [Example.from_dict(nlp.make_doc("I ran to the park"), {"tags": ["PRP", "VBD", "IN", "DT", "NN"]})]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (the gradient sent too late is warned of)
            component.update(examples)
            if snapshot:
                saving = threading.Thread(target=getattr(component, save),
                                          args=() if save == "to_bytes" else (tmp_path / "checkpoint",))
                saving.start()
                saving.join(60)
                assert not saving.is_alive()
            tagger.update(examples)
            for _, proc in nlp.pipeline:
                proc.finish_update(optimizer)
        results.append({k: v.detach().clone() for k, v in component.encoder.shims[0]._model.named_parameters()})
    without, with_snapshot = results
    for name, value in without.items():
        numpy.testing.assert_array_equal(with_snapshot[name].numpy(), value.numpy(), err_msg=name)


def test_a_signature_asked_for_outside_a_prediction_never_stamps_new_weights_as_old(tiny_bert_dir, monkeypatch):
    """A listener's check in a serving thread asks its upstream's signature outside
    the load gate (`component.signature`) while the training thread steps. The
    signature and the generation of weights it is of were written one after the
    other: a thread that took the signature before a step and wrote it after a
    prediction had signed the step's weights, but before it wrote the generation,
    left those weights' predictions stamped as the old ones' (until the next change)."""
    from spacy.training import Example

    import spacy_ctxembed.pipeline.component as component_module

    nlp, optimizer = _tuned_pipeline(tiny_bert_dir)
    component, tagger = nlp.get_pipe("ctxembed_bert"), nlp.get_pipe("tagger")
    component.finish_update(optimizer)  # (the weights of a generation not signed yet)
    computed, go, at_made, go_on = (threading.Event() for _ in range(4))
    original = component_module.output_signature

    def paused_signature(model):
        signature = original(model)
        if threading.current_thread().name == "asking":  # (taken; written once the step has been signed)
            computed.set()
            go.wait(60)
        return signature

    def set_made(self, value):  # (between the signature's write and its generation's, before the fix)
        if threading.current_thread().name == "asking" and not at_made.is_set():
            at_made.set()
            go_on.wait(60)
        self.__dict__["_made"] = value

    monkeypatch.setattr(component_module, "output_signature", paused_signature)
    monkeypatch.setattr(type(component), "_made", property(lambda self: self.__dict__.get("_made", ()), set_made))
    asked = []
    asking = threading.Thread(target=lambda: asked.append(component.signature), name="asking")
    asking.start()
    try:
        assert computed.wait(60)
        examples = [Example.from_dict(nlp.make_doc("I ran to the park"), {"tags": ["PRP", "VBD", "IN", "DT", "NN"]})]
        component.update(examples)
        tagger.update(examples)
        component.finish_update(optimizer)  # another step, while the thread asking holds the first one's
        text = "The committee met in Reykjavik yesterday ."
        first = component.predict([nlp.make_doc(text)]).signature
        go.set()
        assert at_made.wait(60)
        second = component.predict([nlp.make_doc(text)]).signature
    finally:
        go.set()
        go_on.set()
        asking.join(60)
    assert not asking.is_alive()
    assert first == second == original(component.model) != asked[0]  # (the premise: it took the first step's)
