"""The caller's torch state (grad mode, inference mode, default dtype and device)
changes no vector and no training step: each call gives what it gives under
torch's defaults, and the caller's state is left as it was."""
import contextlib
import copy
import itertools

import numpy
import pytest
import spacy
import torch
from spacy.training import Example

from .conftest import ctx_config
from .elmo_fixture import write_elmo_fixture
from .test_training import _train_step

WORDS = ["I", "ran", "to", "the", "park"]
TAGS = ["PRON", "VERB", "ADP", "DET", "NOUN"]
TEXTS = ["It was nice out this morning when I ran to the park .", "Short", ""]


@pytest.fixture(scope="module")
def elmo_files(tmp_path_factory):
    return write_elmo_fixture(tmp_path_factory.mktemp("elmo"))


def _embedder(kind, tiny_bert_dir, elmo_files):
    if kind == "bert":
        return "ctxembed_bert", ctx_config(name=tiny_bert_dir, layers=[0, 1, 2])
    return "ctxembed_elmo", ctx_config(options_file=str(elmo_files[0]), weight_file=str(elmo_files[1]), trainable=True)


def _pipeline(kind, tiny_bert_dir, elmo_files, *, initialize=True):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    factory, config = _embedder(kind, tiny_bert_dir, elmo_files)
    nlp.add_pipe(factory, config=config)
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}}})
    examples = [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]
    if initialize:
        nlp.initialize(lambda: examples)
    return nlp, examples


def _encoder_weights(nlp):
    module = nlp.get_pipe(nlp.pipe_names[0]).encoder.shims[0]._model
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _trained_weights(nlp, examples, steps=2):
    optimizer = nlp.resume_training()
    for _ in range(steps):
        _train_step(nlp, examples, optimizer)
    return _encoder_weights(nlp)


@pytest.fixture(scope="module")
def default_training(tiny_bert_dir, elmo_files):
    """Per encoder kind: (its weights before training, after two steps under torch's defaults)."""
    results = {}
    for kind in ("bert", "elmo"):
        nlp, examples = _pipeline(kind, tiny_bert_dir, elmo_files)
        results[kind] = (_encoder_weights(nlp), _trained_weights(nlp, examples))
    return results


@contextlib.contextmanager
def _grad_disabled_globally():
    torch.set_grad_enabled(False)
    try:
        yield
    finally:
        torch.set_grad_enabled(True)


@pytest.mark.parametrize("kind", ["bert", "elmo"])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode, _grad_disabled_globally])
def test_the_encoder_trains_under_the_caller_s_no_grad_as_without_it(
        tiny_bert_dir, elmo_files, default_training, kind, mode):
    """A fine-tuned encoder's update does not depend on the caller's autograd
    mode: under it, BERT's (and under inference mode ELMo's) forward pass
    recorded no graph and the encoder silently stayed as it was while the
    tagger above it trained."""
    initial, expected = default_training[kind]
    assert any(not torch.equal(initial[name], weight) for name, weight in expected.items())  # (it does train)
    nlp, examples = _pipeline(kind, tiny_bert_dir, elmo_files)
    with mode():
        got = _trained_weights(nlp, examples)
        grad_enabled = torch.is_grad_enabled()
    assert not grad_enabled  # (the caller's mode is left as it was)
    for name, weight in expected.items():
        assert torch.equal(got[name], weight), name


@pytest.mark.parametrize("kind", ["bert", "elmo"])
def test_a_step_under_the_caller_s_inference_mode_then_one_outside_it(
        tiny_bert_dir, elmo_files, default_training, kind):
    """The encoder's `.grad`s made by a backward pass inside the caller's
    `torch.inference_mode()` were inference tensors: the next update outside
    it failed in torch ("Inplace update to inference tensor outside
    InferenceMode"), adding to them. The two steps are the default's two."""
    nlp, examples = _pipeline(kind, tiny_bert_dir, elmo_files)
    with torch.inference_mode():
        _trained_weights(nlp, examples, steps=1)
    got = _trained_weights(nlp, examples, steps=1)
    for name, weight in default_training[kind][1].items():
        assert torch.equal(got[name], weight), name


@pytest.mark.parametrize("kind", ["bert", "elmo"])
def test_weights_loaded_under_inference_mode_train(tiny_bert_dir, elmo_files, default_training, kind):
    """Weights first loaded inside the caller's `torch.inference_mode()` (a
    first `nlp(text)` there loads them) train later as any: made there, they
    were inference tensors, and `nlp.update` failed in torch, naming neither
    the component nor the cause."""
    _, expected = default_training[kind]
    nlp, examples = _pipeline(kind, tiny_bert_dir, elmo_files, initialize=False)
    with torch.inference_mode():
        nlp.initialize(lambda: examples)
        nlp(TEXTS[0])
    got = _trained_weights(nlp, examples)
    for name, weight in expected.items():
        assert torch.equal(got[name], weight), name


def _copied(nlp, how):
    if how == "deepcopy":  # (the encoder's own `__deepcopy__`: `replace_listeners` copies it so)
        return copy.deepcopy(nlp)
    loaded = spacy.util.load_model_from_config(nlp.config)
    return loaded.from_bytes(nlp.to_bytes())


@pytest.mark.parametrize("kind", ["bert", "elmo"])
@pytest.mark.parametrize("how", ["deepcopy", "from_bytes"])
def test_weights_copied_or_loaded_under_inference_mode_train(tiny_bert_dir, elmo_files, kind, how):
    """Not `initialize` only: a copy or a load of the pipeline made inside the
    caller's `torch.inference_mode()` trains as one made outside it (made
    there, the encoder's weights were inference tensors, and `nlp.update`
    failed in torch)."""
    nlp, examples = _pipeline(kind, tiny_bert_dir, elmo_files)
    trained = []
    for mode in (contextlib.nullcontext, torch.inference_mode):
        with mode():
            copied = _copied(nlp, how)
        spacy.util.fix_random_seed(1)  # (the steps' dropout alike)
        trained.append(_trained_weights(copied, examples))
    expected, got = trained
    assert any(not torch.equal(weight, _encoder_weights(nlp)[name]) for name, weight in expected.items())
    for name, weight in expected.items():
        assert torch.equal(got[name], weight), name


def _vectors(nlp):
    return [doc._.ctx_vectors for doc in nlp.pipe(TEXTS)]


@pytest.mark.parametrize("kind", ["bert", "elmo"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_the_default_dtype_changes_no_vector(tiny_bert_dir, elmo_files, kind, dtype):
    """`torch.set_default_dtype` before the weights load or between load and
    use: float32 weights and vectors, the default ones. (BERT's weights were
    built in the default dtype, fp16 ones under float16, and both encoders'
    output buffers too: every call failed in torch's index_copy_.)"""
    nlp, _ = _pipeline(kind, tiny_bert_dir, elmo_files)
    expected = _vectors(nlp)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        used = _vectors(nlp)  # set between load and use
        built, _ = _pipeline(kind, tiny_bert_dir, elmo_files)  # set before the load
        module = built.get_pipe(built.pipe_names[0]).encoder.shims[0]._model
        weights = {t.dtype for t in itertools.chain(module.parameters(), module.buffers()) if t.is_floating_point()}
        loaded = _vectors(built)
    finally:
        torch.set_default_dtype(before)
    assert weights == {torch.float32}
    for got in (used, loaded):
        for vectors, want in zip(got, expected):
            assert vectors.dtype == numpy.float32
            numpy.testing.assert_array_equal(vectors, want)


@pytest.mark.parametrize("kind", ["bert", "elmo"])
def test_the_default_device_changes_no_vector(tiny_bert_dir, elmo_files, kind):
    """`torch.set_default_device` between load and use (a caller's own torch
    code on a GPU): the pipeline's tensors stay where its weights are. ("meta"
    stands in for another device here; ELMo made a tensor there and failed.)"""
    nlp, _ = _pipeline(kind, tiny_bert_dir, elmo_files)
    expected = _vectors(nlp)
    torch.set_default_device("meta")
    try:
        got = _vectors(nlp)
    finally:
        torch.set_default_device(None)
    for vectors, want in zip(got, expected):
        numpy.testing.assert_array_equal(vectors, want)


@pytest.mark.parametrize("kind", ["bert", "elmo"])
def test_the_caller_s_autocast_changes_no_vector_and_no_step(tiny_bert_dir, elmo_files, default_training, kind):
    """`precision` is the one switch: a caller's `torch.autocast` around the
    pipeline ran `"fp32"` (and ELMo) in bf16, under the fp32 output signature,
    on CPU only (autocast is per thread, and run-ahead predicts in another);
    fine-tuning too. With `cache_mb`, those vectors were served after the
    caller's block had ended."""
    factory, config = _embedder(kind, tiny_bert_dir, elmo_files)
    cached = spacy.blank("en")
    cached.add_pipe(factory, config={**config, "cache_mb": 8})
    cached.initialize()
    nlp, examples = _pipeline(kind, tiny_bert_dir, elmo_files)  # (seeded: the steps' dropout as the default's)
    expected = _vectors(nlp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _vectors(nlp)
        first = _vectors(cached)
        still_on = torch.is_autocast_enabled("cpu")
        trained = _trained_weights(nlp, examples)
    assert still_on  # (the caller's autocast is left as it was)
    after = _vectors(cached)  # from the cache
    for got in (under, first, after):
        for vectors, want in zip(got, expected):
            numpy.testing.assert_array_equal(vectors, want)
    for name, weight in default_training[kind][1].items():
        assert torch.equal(trained[name], weight), name


@pytest.mark.parametrize("kind", ["bert", "elmo"])
def test_the_caller_s_autocast_is_turned_off_on_torch_before_2_4(tiny_bert_dir, elmo_files, monkeypatch, kind):
    """`setup.cfg` allows torch 2.1: before 2.4 torch has no
    `torch.amp.is_autocast_available`, and `torch.is_autocast_enabled` takes no
    device type (it asks CUDA's; `is_autocast_cpu_enabled` the CPU's). Every
    forward pass failed there with an AttributeError; here those calls are
    taken away as such a torch lacks them, and the caller's CPU autocast must
    still change no vector."""
    nlp, _ = _pipeline(kind, tiny_bert_dir, elmo_files)
    expected = _vectors(nlp)
    enabled = torch.is_autocast_enabled
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.delattr(torch.amp, "is_autocast_available")
        # (No argument: CUDA's, as before 2.4; this torch's own autocast passes one.)
        monkeypatch.setattr(torch, "is_autocast_enabled", lambda *device: enabled(*device or ("cuda",)))
        monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: enabled("cpu"))
        got = _vectors(nlp)
        monkeypatch.undo()
    for vectors, want in zip(got, expected):
        numpy.testing.assert_array_equal(vectors, want)
