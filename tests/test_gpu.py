"""GPU path: the model on CUDA, outputs as cupy arrays with no host round trip."""
import numpy
import pytest
import spacy

from spacy_ctxembed.models.bert import get_runner

from .reference import hf_hidden_states, pool, token_pieces

pytestmark = pytest.mark.gpu
TEXT = "It was nice out this morning when I ran to the park."


@pytest.fixture
def gpu_nlp():
    cupy = pytest.importorskip("cupy")
    spacy.require_gpu()
    try:
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [0, -1]}}, "store_layers": True})
        nlp.initialize()
        yield nlp, cupy
    finally:
        from thinc.api import NumpyOps, set_current_ops

        set_current_ops(NumpyOps())


def test_outputs_stay_on_device(gpu_nlp, hf_reference):
    nlp, cupy = gpu_nlp
    doc = nlp(TEXT)
    assert isinstance(doc._.ctx_vectors, cupy.ndarray)
    assert isinstance(doc.tensor, cupy.ndarray)
    assert isinstance(doc._.ctx_layers, cupy.ndarray)
    assert isinstance(doc[8].vector, cupy.ndarray)
    tokenizer, model = hf_reference
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    pieces = token_pieces(doc, offsets)
    expected = numpy.stack([pool(states[0], pieces, "mean"), pool(states[-1], pieces, "mean")])
    numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_layers), expected, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_is_close(gpu_nlp, precision):
    nlp, cupy = gpu_nlp
    exact = cupy.asnumpy(nlp(TEXT)._.ctx_vectors)
    half = spacy.blank("en")
    # Like with like: the same layers as gpu_nlp, only the precision differs.
    half.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [0, -1], "precision": precision}}})
    half.initialize()
    approx = cupy.asnumpy(half(TEXT)._.ctx_vectors)
    assert _min_cosine(approx, exact) > 0.999 and numpy.abs(approx - exact).max() < 5e-2


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_padded_half_precision_batches_are_close_to_fp32_single_docs(gpu_nlp, precision):
    """Texts of different lengths share a padded batch (the broadcast mask)."""
    nlp, cupy = gpu_nlp
    half = spacy.blank("en")
    half.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [0, -1], "precision": precision}}})
    half.initialize()
    texts = [TEXT, "I ran significance tests.", "A much longer text " * 30]
    runner = get_runner(half.get_pipe("ctxembed_bert").encoder)
    assert runner.broadcast_mask
    assert all(batch.attention_mask.dim() == 3 for batch in runner.prepare([half.make_doc(t) for t in texts]).batches)
    for text, doc in zip(texts, half.pipe(texts)):
        exact = cupy.asnumpy(nlp(text)._.ctx_vectors)
        approx = cupy.asnumpy(doc._.ctx_vectors)
        assert _min_cosine(approx, exact) > 0.999 and numpy.abs(approx - exact).max() < 5e-2


def test_one_layer_on_device_reads_the_top_state_only(hf_reference):
    cupy = pytest.importorskip("cupy")
    spacy.require_gpu()
    try:
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [-2]}}})
        nlp.initialize()
        assert get_runner(nlp.get_pipe("ctxembed_bert").encoder).top_state_only
        texts = [TEXT, "I ran significance tests."]
        tokenizer, model = hf_reference
        for text, doc in zip(texts, nlp.pipe(texts)):
            states, offsets = hf_hidden_states(tokenizer, model, text)
            expected = pool(states[-2], token_pieces(doc, offsets), "mean")
            numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_vectors), expected, atol=1e-4)
    finally:
        from thinc.api import NumpyOps, set_current_ops

        set_current_ops(NumpyOps())


def _min_cosine(a, b):
    return ((a * b).sum(1) / numpy.linalg.norm(a, axis=1) / numpy.linalg.norm(b, axis=1)).min()


def test_tf32_is_close_and_leaves_the_process_setting_alone(gpu_nlp):
    import torch

    nlp, cupy = gpu_nlp
    exact = cupy.asnumpy(nlp(TEXT)._.ctx_vectors)
    before = torch.backends.cuda.matmul.fp32_precision
    tf32 = spacy.blank("en")
    tf32.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [0, -1], "precision": "tf32"}}})
    tf32.initialize()
    approx = cupy.asnumpy(tf32(TEXT)._.ctx_vectors)
    assert torch.backends.cuda.matmul.fp32_precision == before
    assert _min_cosine(approx, exact) > 0.9999 and numpy.abs(approx - exact).max() < 1e-2


def test_run_ahead_pipe_equals_single_docs_on_device(gpu_nlp):
    nlp, cupy = gpu_nlp
    assert nlp.get_pipe("ctxembed_bert").run_ahead is None  # on by default on GPU
    texts = [TEXT, "I ran significance tests.", "", "A much longer text " * 30] * 4
    piped = [cupy.asnumpy(doc._.ctx_vectors) for doc in nlp.pipe(texts, batch_size=3)]
    for text, vectors in zip(texts, piped):
        numpy.testing.assert_allclose(cupy.asnumpy(nlp(text)._.ctx_vectors), vectors, atol=1e-4)


def test_mixed_precision_fine_tuning_step(gpu_nlp):
    from spacy.training import Example

    _, cupy = gpu_nlp
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [-1], "precision": "fp16"}}})
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}}})
    words, tags = ["I", "ran"], ["PRON", "VERB"]
    examples = [Example.from_dict(nlp.make_doc("I ran"), {"words": words, "tags": tags})]
    nlp.initialize(lambda: examples)
    optimizer = nlp.resume_training()
    losses = {}
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, losses=losses)
    assert numpy.isfinite(losses["tagger"])


def test_elmo_on_device(gpu_nlp, tmp_path):
    _, cupy = gpu_nlp
    from .elmo_fixture import write_elmo_fixture
    from .elmo_reference import ReferenceElmo

    options, weights = write_elmo_fixture(tmp_path)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config={"store_layers": True, "model": {"encoder": {
        "options_file": str(options), "weight_file": str(weights)}}})
    nlp.initialize()
    doc = nlp("The cat sat on the mat")
    assert isinstance(doc._.ctx_layers, cupy.ndarray) and isinstance(doc.tensor, cupy.ndarray)
    expected = ReferenceElmo(options, weights)([t.text for t in doc])
    numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_layers), expected, atol=1e-4)


def test_pooling_runs_on_device(gpu_nlp):
    torch = pytest.importorskip("torch")
    from spacy_ctxembed.alignment import PieceAlignment
    from spacy_ctxembed.pooling import pool_pieces

    states = torch.arange(24, dtype=torch.float32, device="cuda").reshape(4, 2, 3)
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1, 3]), numpy.array([2, 1]), n_pieces=4)
    for mode in ("mean", "first", "last", "max"):
        out = pool_pieces(states, alignment, mode)
        assert out.device.type == "cuda"
        reference = pool_pieces(states.cpu(), alignment, mode)
        numpy.testing.assert_allclose(out.cpu().numpy(), reference.numpy())


def test_device_memory_returns_to_its_baseline_after_pipe(gpu_nlp):
    import gc

    import torch

    nlp, cupy = gpu_nlp
    texts = [TEXT * n for n in range(1, 40)]
    list(nlp.pipe(texts[:2]))  # warm: kernels, the allocator's first blocks
    gc.collect()
    baseline = torch.cuda.memory_allocated()
    docs = list(nlp.pipe(texts, batch_size=8))
    assert torch.cuda.memory_allocated() > baseline  # the docs hold their vectors on the device
    del docs
    gc.collect()
    assert torch.cuda.memory_allocated() == baseline


def test_gpu_budget_comes_from_free_memory(gpu_nlp):
    import torch

    from spacy_ctxembed.models.bert import get_runner
    from spacy_ctxembed.models.bert_runner import batch_items_for_memory

    nlp, _ = gpu_nlp
    auto = spacy.blank("en")
    auto.add_pipe("ctxembed_bert", config={"model": {"encoder": {"max_batch_items": None}}})
    auto.initialize()
    runner = get_runner(auto.get_pipe("ctxembed_bert").encoder)
    free, _ = torch.cuda.mem_get_info()
    expected = batch_items_for_memory(free, runner.encoder.config, runner.window + runner.n_special)
    assert 4096 <= runner.max_batch_items <= 65536
    assert abs(runner.max_batch_items - expected) <= expected // 10  # free memory moves a little
