"""A trained ctxembed_elmo over sequences of `nlp.update` calls and pipeline
edits, against plain SGD on the gradients of a float64 PyTorch reference of
the whole pipeline (`elmo_reference.TorchReferenceElmo`, the scalar mixes, the
taggers' projection, softmax and cross-entropy written out here)."""
import functools

import numpy
import pytest
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import SGD

from .elmo_fixture import write_elmo_fixture
from .elmo_reference import TorchReferenceElmo
from .test_elmo import _in_released_layout

LEARN_RATE = 0.05
LABELS = ["A", "B", "C"]
#: The taggers: whether each mixes the layers itself (else it reads the vectors), and its grad_factor.
TAGGERS = {"tagger_a": (True, 0.5), "tagger_b": (False, 1.0)}
BATCHES = [
    [(["The", "cat", "sat", "on", "mats"], [True, False, False, True, False]), (["naïve", "café", "!"], None)],
    [(["A", "dog", "  ", "runs", "quickly"], None), (["3.5kg", ",", "sat"], [True, False, True])],
    [(["Runs", "the", "dog"], None)],
]


@pytest.fixture(scope="module")
def elmo_files(tmp_path_factory):
    return write_elmo_fixture(tmp_path_factory.mktemp("elmo"))


def _examples(nlp, batch, rng):
    examples = []
    for words, starts in batch:
        doc = Doc(nlp.vocab, words=words, spaces=[w != "  " for w in words], sent_starts=starts)
        examples.append(Example.from_dict(doc, {"tags": [str(rng.choice(LABELS)) for _ in words]}))
    return examples


def _heads(model):
    """A tagger's (own scalar mix or None, projection, softmax)."""
    nodes = {node.name: node for node in model.walk() if node.name in ("scalar_mix", "linear", "softmax")}
    return nodes.get("scalar_mix"), nodes["linear"], nodes["softmax"]


def _pipeline(elmo_files):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config={"model": {
        "encoder": {"options_file": str(elmo_files[0]), "weight_file": str(elmo_files[1]), "trainable": True},
        "combiner": {"@layers": "spacy-ctxembed.ScalarMix.v1"}}})
    for name, (mix_layers, factor) in TAGGERS.items():
        tok2vec = {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 8, "mix_layers": mix_layers,
                   "grad_factor": factor}
        nlp.add_pipe("tagger", name=name, config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": tok2vec}})
    rng = numpy.random.default_rng(0)
    nlp.initialize(lambda: _examples(nlp, BATCHES[0], rng) + [
        Example.from_dict(Doc(nlp.vocab, words=["x", "y", "z"]), {"tags": LABELS})])
    component = nlp.get_pipe("ctxembed_elmo")
    component.combiner.set_param("s", numpy.array([-0.5, 0.2, 0.8], dtype="f"))  # not the plain mean
    component.combiner.set_param("gamma", numpy.array([1.3], dtype="f"))
    for name in TAGGERS:  # (zero-initialised, it would send no gradient to the first update)
        softmax = _heads(nlp.get_pipe(name).model)[2]
        softmax.set_param("W", rng.standard_normal(softmax.get_param("W").shape).astype("f") * 0.5)
    return nlp


def _params(nlp):
    """The pipeline's weights as float64 tensors: the biLM's by dataset name, in the file's layout."""
    component = nlp.get_pipe("ctxembed_elmo")
    shim = component.encoder.shims[0]
    state = {k: v.detach().double().numpy() for k, v in shim._model.state_dict().items()}
    params = {f"elmo/{k}": v for k, v in _in_released_layout(state, shim.get_options()).items()}
    params["elmo/char_embed"] = params["elmo/char_embed"][1:]  # (the padding row: not in the file)
    params.update({"mix/s": component.combiner.get_param("s"), "mix/gamma": component.combiner.get_param("gamma")})
    for name in TAGGERS:
        mix, linear, softmax = _heads(nlp.get_pipe(name).model)
        if mix is not None:
            params.update({f"{name}/s": mix.get_param("s"), f"{name}/gamma": mix.get_param("gamma")})
        params.update({f"{name}/W": linear.get_param("W"), f"{name}/b": linear.get_param("b"),
                       f"{name}/sW": softmax.get_param("W"), f"{name}/sb": softmax.get_param("b")})
    return {k: torch.tensor(numpy.asarray(v, dtype="float64")) for k, v in params.items()}


def _reference_gradients(elmo_files, params, batches, labels, taggers=tuple(TAGGERS)):
    """The gradient of the taggers' summed cross-entropy over `batches`, all at `params`."""
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    elmo = TorchReferenceElmo(elmo_files[0], {k[5:]: v for k, v in params.items() if k.startswith("elmo/")})
    loss = torch.zeros((), dtype=torch.float64)
    for examples in batches:
        for eg in examples:
            doc = eg.predicted
            layers = torch.zeros((3, len(doc), 16), dtype=torch.float64)
            for sentence in (doc.sents if doc.has_annotation("SENT_START") else [doc[:]]):
                words = [t for t in sentence if not t.is_space]
                layers[:, [t.i for t in words]] = elmo([t.text for t in words])
            for name in taggers:
                mix_layers, factor = TAGGERS[name]
                s, gamma = (params[f"{name}/s"], params[f"{name}/gamma"]) if mix_layers else (
                    params["mix/s"], params["mix/gamma"])
                # The listener scales the gradient it sends upstream by its grad_factor.
                source = layers if mix_layers else gamma * torch.tensordot(torch.softmax(s, 0), layers, dims=1)
                x = factor * source + (1 - factor) * source.detach()
                if mix_layers:
                    x = gamma * torch.tensordot(torch.softmax(s, 0), x, dims=1)
                hidden = x @ params[f"{name}/W"].T + params[f"{name}/b"]
                scores = hidden @ params[f"{name}/sW"].T + params[f"{name}/sb"]
                gold = torch.tensor([labels.index(t.tag_) for t in eg.reference])
                loss = loss - torch.log_softmax(scores, 1)[torch.arange(len(gold)), gold].sum()
    loss.backward()
    return {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in params.items()}


def _assert_params(got, want, keys=None):
    for key in keys or want:
        scale = max(1.0, float(want[key].abs().max()))
        assert float((got[key] - want[key]).abs().max()) / scale < 2e-5, key


@pytest.mark.parametrize("language_update", ["spacy", "wrapped"])
def test_gradients_accumulated_with_sgd_false_take_one_step_with_the_next_update(elmo_files, monkeypatch,
                                                                                   language_update):
    """`nlp.update(batch, sgd=False)` then `nlp.update(batch, sgd=optimizer)`: one
    step of both batches' gradients, at the weights both were computed at. The
    embedder took the first batch's step at its finish_update, which
    `nlp.update` asks for before the listeners run: in place, under the second
    batch's graph, whose backward pass then read the moved weights (its
    gradient silently wrong: the biLM off by 0.5 of its largest weight).
    "wrapped": `Language.update` decorated (`functools.wraps`, as a profiler or
    a logging plugin does) runs spaCy's update all the same."""
    if language_update == "wrapped":
        spacy_update = Language.update

        @functools.wraps(spacy_update)
        def logged_update(self, *args, **kwargs):
            return spacy_update(self, *args, **kwargs)

        monkeypatch.setattr(Language, "update", logged_update)
    nlp = _pipeline(elmo_files)
    rng = numpy.random.default_rng(1)
    batches = [_examples(nlp, batch, rng) for batch in BATCHES[1:]]
    start = _params(nlp)
    optimizer = SGD(LEARN_RATE, L2=0.0, grad_clip=0.0, use_averages=False)
    nlp.update(batches[0], sgd=False)
    nlp.update(batches[1], sgd=optimizer)
    grads = _reference_gradients(elmo_files, start, batches, list(nlp.get_pipe("tagger_a").labels))
    want = {k: v - LEARN_RATE * grads[k] for k, v in start.items()}
    got = _params(nlp)
    # The premise: the step moves the biLM far more than the tolerance.
    assert max(float((want[k] - start[k]).abs().max()) for k in want if k.startswith("elmo/")) > 1e-2
    _assert_params(got, want)


def test_replace_listeners_copies_the_upstream_with_the_step_waiting_for_a_backward_pass(elmo_files):
    """`nlp.update(sgd=...)` with one listening component excluded leaves the
    embedder's step waiting for that backward pass (docs/training.md). A copy
    made by `nlp.replace_listeners` then must hold the weights with the step,
    as a save does: the copy of `tagger_a`, whose own gradient made it, lacked
    it (the upstream took it later, the copy never)."""
    nlp = _pipeline(elmo_files)
    rng = numpy.random.default_rng(2)
    batch = _examples(nlp, BATCHES[1], rng)
    start = _params(nlp)
    optimizer = SGD(LEARN_RATE, L2=0.0, grad_clip=0.0, use_averages=False)
    nlp.update(batch, sgd=optimizer, exclude=["tagger_b"])
    nlp.replace_listeners("ctxembed_elmo", "tagger_a", ["model.tok2vec"])
    grads = _reference_gradients(elmo_files, start, [batch], list(nlp.get_pipe("tagger_a").labels),
                                 taggers=["tagger_a"])
    want = {k: v - LEARN_RATE * grads[k] for k, v in start.items() if k.startswith("elmo/")}
    (shim,) = [shim for node in nlp.get_pipe("tagger_a").model.walk() for shim in node.shims]
    state = {k: v.detach().double().numpy() for k, v in shim._model.state_dict().items()}
    copied = {f"elmo/{k}": torch.tensor(v) for k, v in _in_released_layout(state, shim.get_options()).items()}
    copied["elmo/char_embed"] = copied["elmo/char_embed"][1:]
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-2
    _assert_params(copied, want)
    _assert_params(_params(nlp), want)  # the upstream took it once


def test_a_copy_made_by_replace_listeners_starts_without_the_upstreams_gradient(elmo_files):
    """Gradients accumulated with `sgd=False` stay the upstream's, which steps
    them: the copy of a listener of the vectors held the combiner's too
    (thinc's copy keeps gradients, the biLM's copy none), and its first step
    applied them a second time."""
    nlp = _pipeline(elmo_files)
    rng = numpy.random.default_rng(3)
    batches = [_examples(nlp, batch, rng) for batch in BATCHES[1:]]
    start = _params(nlp)
    optimizer = SGD(LEARN_RATE, L2=0.0, grad_clip=0.0, use_averages=False)
    labels = list(nlp.get_pipe("tagger_a").labels)
    nlp.update(batches[0], sgd=False)
    nlp.replace_listeners("ctxembed_elmo", "tagger_b", ["model.tok2vec"])
    nlp.update(batches[1], sgd=optimizer, exclude=["ctxembed_elmo", "tagger_a"])
    # tagger_b: its head from both batches, its copy of the mix from the second only.
    first = _reference_gradients(elmo_files, start, batches[:1], labels, taggers=["tagger_b"])
    second = _reference_gradients(elmo_files, start, batches[1:], labels, taggers=["tagger_b"])
    model = nlp.get_pipe("tagger_b").model
    mix = next(node for node in model.walk() if node.name == "scalar_mix")
    got = {"mix/s": torch.tensor(mix.get_param("s").astype("float64")),
           "mix/gamma": torch.tensor(mix.get_param("gamma").astype("float64"))}
    want = {k: start[k] - LEARN_RATE * second[k] for k in got}
    assert float((first["mix/gamma"]).abs().max()) * LEARN_RATE > 1e-3  # (what a second step would add)
    _assert_params(got, want)
