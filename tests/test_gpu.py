"""GPU path: the model on CUDA, outputs as cupy arrays with no host round trip."""
import numpy
import pytest
import spacy

from spacy_ctxembed.models.bert import get_runner

from .reference import hf_hidden_states, pool, token_pieces

pytestmark = pytest.mark.gpu
TEXT = "It was nice out this morning when I ran to the park."


@pytest.fixture
def on_gpu():
    """spaCy's ops (and with them torch's default device) on the GPU, back on the CPU after."""
    cupy = pytest.importorskip("cupy")
    spacy.require_gpu()
    try:
        yield cupy
    finally:
        from thinc.api import NumpyOps, set_current_ops

        set_current_ops(NumpyOps())


@pytest.fixture
def gpu_nlp(on_gpu):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [0, -1]}}, "store_layers": True})
    nlp.initialize()
    yield nlp, on_gpu


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
    assert not numpy.array_equal(approx, exact)  # autocast ran: half precision is not exact


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
    masks = [batch.attention_mask for batch in runner.prepare([half.make_doc(t) for t in texts]).batches]
    assert any(m is not None for m in masks) and all(m is None or m.dim() == 3 for m in masks)  # None: unpadded
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

    from spacy_ctxembed.models.process_settings import tf32_matmuls

    nlp, cupy = gpu_nlp
    exact = cupy.asnumpy(nlp(TEXT)._.ctx_vectors)
    before = torch.get_float32_matmul_precision()
    tf32 = spacy.blank("en")
    tf32.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [0, -1], "precision": "tf32"}}})
    tf32.initialize()
    approx = cupy.asnumpy(tf32(TEXT)._.ctx_vectors)
    assert torch.get_float32_matmul_precision() == before
    assert _min_cosine(approx, exact) > 0.9999 and numpy.abs(approx - exact).max() < 1e-2
    if torch.cuda.get_device_capability() >= (8, 0):  # TF32 tensor cores (Ampere and newer)
        assert not numpy.array_equal(approx, exact)  # the switch took effect
    with tf32_matmuls():
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before


def test_run_ahead_pipe_equals_single_docs_on_device(gpu_nlp):
    nlp, cupy = gpu_nlp
    assert nlp.get_pipe("ctxembed_bert").run_ahead is None  # on by default on GPU
    texts = [TEXT, "I ran significance tests.", "", "A much longer text " * 30] * 4
    piped = [cupy.asnumpy(doc._.ctx_vectors) for doc in nlp.pipe(texts, batch_size=3)]
    for text, vectors in zip(texts, piped):
        numpy.testing.assert_allclose(cupy.asnumpy(nlp(text)._.ctx_vectors), vectors, atol=1e-4)


def test_run_ahead_on_the_callers_stream(gpu_nlp):
    """A caller on a stream of its own: the worker predicts on that stream too,
    so the caller's reads wait for the worker's writes in stream order."""
    import torch

    nlp, cupy = gpu_nlp
    texts = [TEXT, "I ran significance tests.", "A much longer text " * 30] * 3
    alone = [cupy.asnumpy(nlp(text)._.ctx_vectors) for text in texts]
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    seen = []
    hook = runner.runner.register_forward_pre_hook(lambda *_: seen.append(torch.cuda.current_stream()))
    side = torch.cuda.Stream()
    try:
        with torch.cuda.stream(side), cupy.cuda.ExternalStream(side.cuda_stream):
            piped = [doc._.ctx_vectors.copy() for doc in nlp.pipe(texts, batch_size=2)]
            side.synchronize()
    finally:
        hook.remove()
    assert seen and all(stream == side for stream in seen)
    for expected, vectors in zip(alone, piped):
        numpy.testing.assert_allclose(cupy.asnumpy(vectors), expected, atol=1e-4)


def test_mixed_precision_fine_tuning_step(gpu_nlp):
    import torch
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
    encoder = get_runner(nlp.get_pipe("ctxembed_bert").encoder).encoder.module
    before = {name: param.detach().clone() for name, param in encoder.named_parameters()}

    def changed():
        return [name for name, param in encoder.named_parameters() if not torch.equal(param.detach(), before[name])]

    losses = {}
    # A step whose scaled gradients overflow fp16 is skipped and the scale
    # halved (it starts at 2**16): a few may be; if all were, nothing trains.
    for _ in range(12):
        nlp.update(examples, sgd=optimizer, losses=losses)
        if changed():
            break
    assert numpy.isfinite(losses["tagger"])
    assert changed(), "no step moved the encoder"
    assert all(bool(torch.isfinite(param).all()) for param in encoder.parameters())


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


def _allocated_bytes():
    """torch's allocated device memory, less cuBLAS's workspaces: kept per
    (thread's handle, stream), so a run-ahead worker that got another handle
    than the last one would leave one allocated without any fault of ours."""
    import torch

    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # (a private helper of torch's CUDA builds)
    if clear is not None:
        clear()
    return torch.cuda.memory_allocated()


def _memory_returns_to_its_baseline_after_pipe(nlp, cupy, texts, *, pool_grows):
    """Two allocators: torch's holds the encoder's outputs (doc._.ctx_layers),
    cupy's pool the combiner's vectors (doc._.ctx_vectors, doc.tensor)."""
    import gc

    import torch

    pool = cupy.get_default_memory_pool()
    list(nlp.pipe(texts[:2]))  # warm: kernels, the allocator's first blocks
    gc.collect()
    baseline, pool_baseline = _allocated_bytes(), pool.used_bytes()
    docs = list(nlp.pipe(texts, batch_size=8))
    assert torch.cuda.memory_allocated() > baseline  # the docs hold their outputs on the device
    if pool_grows:
        assert pool.used_bytes() > pool_baseline
    del docs
    gc.collect()
    assert _allocated_bytes() == baseline
    assert pool.used_bytes() == pool_baseline


def test_device_memory_returns_to_its_baseline_after_pipe(gpu_nlp):
    nlp, cupy = gpu_nlp
    _memory_returns_to_its_baseline_after_pipe(nlp, cupy, [TEXT * n for n in range(1, 40)], pool_grows=True)


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


def test_gpu_budget_below_the_clamp_follows_free_memory(gpu_nlp, monkeypatch):
    """On a big GPU both the budget and the formula clamp to 65536, which shows
    nothing: a small free amount (a busy or small GPU) is reported instead."""
    import torch

    from spacy_ctxembed.models.bert_runner import batch_items_for_memory

    nlp, _ = gpu_nlp
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    config, max_length = runner.encoder.config, runner.window + runner.n_special
    free = 2**20
    while batch_items_for_memory(free, config, max_length) < 8192:
        free *= 2
    budgets = []
    for reported in (free, 2 * free):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args, _free=reported, **kwargs: (_free, 2**37))
        auto = spacy.blank("en")
        auto.add_pipe("ctxembed_bert", config={"model": {"encoder": {"max_batch_items": None}}})
        auto.initialize()
        budgets.append(get_runner(auto.get_pipe("ctxembed_bert").encoder).max_batch_items)
    assert budgets[0] == batch_items_for_memory(free, config, max_length)
    assert 4096 < budgets[0] and budgets[1] < 65536  # neither clamped
    assert budgets[1] in (2 * budgets[0], 2 * budgets[0] + 1)  # in proportion to the free memory


def test_elmo_token_layer_on_device_equals_the_cpu_path(tmp_path):
    """The character convolutions must not run on TF32 (cuDNN's default for fp32
    convolutions on Ampere and newer), which would be ~1e-3 off the CPU path."""
    import copy

    import torch

    from spacy_ctxembed.models.elmo_chars import sentence_char_ids
    from spacy_ctxembed.models.elmo_net import build_bilm
    from spacy_ctxembed.models.elmo_weights import read_options, read_weights

    from .elmo_fixture import FULL_SIZE, SMALL, write_elmo_fixture

    # The full-size character CNN (char_dim 16, widths 1..7, 2048 filters, 2
    # highway layers); a small LSTM keeps the weight file small.
    config = {"lstm": SMALL["lstm"], "char_cnn": FULL_SIZE["char_cnn"]}
    options_path, weights_path = write_elmo_fixture(tmp_path, config)
    options = read_options(options_path, component="test")
    cpu_net = build_bilm(options, read_weights(weights_path, options, component="test")).eval()
    gpu_net = copy.deepcopy(cpu_net).to("cuda")
    rng = numpy.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-'.,äöüéß中😀")
    words = TEXT.split() + ["".join(rng.choice(letters, size=int(rng.integers(1, 40)))) for _ in range(600)]
    char_ids = torch.from_numpy(sentence_char_ids(words))
    with torch.inference_mode():
        expected = cpu_net.char_cnn(char_ids).numpy()
        on_device = gpu_net.char_cnn(char_ids.to("cuda")).cpu().numpy()
    # To 1e-5 of the layer's scale (|x| up to ~5): the fp32 CPU path itself is
    # 9e-6 off float64 here, and the device's fp32 sums run in another order.
    # TF32 convolutions are 1.4e-3 off (emulated on CPU).
    scale = float(numpy.abs(expected).max())
    numpy.testing.assert_allclose(on_device, expected, atol=1e-5 * scale, rtol=0)


def test_retokenized_outputs_stay_on_device(gpu_nlp):
    """A merge averages the merged tokens' rows, a split repeats its token's row
    (outputs/placement.py's cupyx branch), against float64 numpy on the rows before."""
    nlp, cupy = gpu_nlp
    doc = nlp(TEXT)
    layers = cupy.asnumpy(doc._.ctx_layers).astype("float64")
    vectors = cupy.asnumpy(doc._.ctx_vectors).astype("float64")
    assert [t.text for t in doc[2:6]] == ["nice", "out", "this", "morning"]
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[4:6])  # "this morning"
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[2], ["ni", "ce"], heads=[(doc[2], 1), doc[1]])
    assert [t.text for t in doc[2:6]] == ["ni", "ce", "out", "this morning"]

    def expected(rows, axis):
        columns = [numpy.take(rows, [0], axis), numpy.take(rows, [1, 2, 2, 3], axis),
                   numpy.take(rows, [4, 5], axis).mean(axis=axis, keepdims=True), numpy.take(rows, range(6, 13), axis)]
        return numpy.concatenate(columns, axis=axis)

    assert isinstance(doc._.ctx_layers, cupy.ndarray) and isinstance(doc._.ctx_vectors, cupy.ndarray)
    numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_layers), expected(layers, 1), atol=1e-6, rtol=1e-6)
    numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_vectors), expected(vectors, 0), atol=1e-6, rtol=1e-6)
    assert isinstance(doc[5].vector, cupy.ndarray)


def _device_arrays(value):
    """The GPU arrays anywhere in `value` (dicts, lists, tuples)."""
    if isinstance(value, dict):
        return [a for item in value.values() for a in _device_arrays(item)]
    if isinstance(value, (list, tuple)):
        return [a for item in value for a in _device_arrays(item)]
    return [value] if hasattr(value, "__cuda_array_interface__") else []


def test_cli_writers_move_device_arrays_to_the_host(gpu_nlp):
    import torch
    from spacy.tokens import DocBin

    from spacy_ctxembed import restore_vectors
    from spacy_ctxembed.cli.output import doc_to_host, to_host

    nlp, cupy = gpu_nlp
    nested = {"a": [cupy.arange(3), (cupy.ones(2), "x")], "t": torch.arange(4, device="cuda"), "n": numpy.zeros(2)}
    moved = to_host(nested)
    assert not _device_arrays(moved) and len(_device_arrays(nested)) == 3  # rebuilt, not changed in place
    numpy.testing.assert_array_equal(moved["a"][0], numpy.arange(3))
    numpy.testing.assert_array_equal(moved["a"][1][0], numpy.ones(2))
    assert moved["a"][1][1] == "x" and moved["n"] is nested["n"]
    numpy.testing.assert_array_equal(moved["t"], numpy.arange(4))

    doc = nlp(TEXT)
    vectors, layers = cupy.asnumpy(doc._.ctx_vectors), cupy.asnumpy(doc._.ctx_layers)
    assert _device_arrays(doc.user_data)
    doc_to_host(doc)
    assert not _device_arrays(doc.user_data) and isinstance(doc.tensor, numpy.ndarray)
    data = DocBin(docs=[doc], store_user_data=True).to_bytes()
    back = restore_vectors(next(DocBin().from_bytes(data).get_docs(nlp.vocab)))
    numpy.testing.assert_array_equal(back._.ctx_vectors, vectors)
    numpy.testing.assert_array_equal(back._.ctx_layers, layers)


def _cosine(u, v):
    u, v = numpy.asarray(u, dtype="float64"), numpy.asarray(v, dtype="float64")
    return float(u @ v / numpy.linalg.norm(u) / numpy.linalg.norm(v))


def test_host_and_device_docs_compare_and_join(gpu_nlp):
    """A doc read back from a DocBin (numpy) with a GPU doc (cupy): similarity
    and Doc.from_docs work on the host."""
    from spacy.tokens import Doc, DocBin

    from spacy_ctxembed import restore_vectors
    from spacy_ctxembed.cli.output import doc_to_host

    nlp, cupy = gpu_nlp
    device = nlp(TEXT)
    stored = nlp("I ran significance tests.")
    doc_to_host(stored)  # as the CLI writes docs
    data = DocBin(docs=[stored], store_user_data=True).to_bytes()
    host = restore_vectors(next(DocBin().from_bytes(data).get_docs(nlp.vocab)))
    assert isinstance(host._.ctx_vectors, numpy.ndarray) and isinstance(device._.ctx_vectors, cupy.ndarray)
    expected = _cosine(host.vector, cupy.asnumpy(device.vector))
    assert host.similarity(device) == pytest.approx(expected, abs=1e-5)
    assert device.similarity(host) == pytest.approx(expected, abs=1e-5)
    assert host[1].similarity(device[8]) == pytest.approx(
        _cosine(host._.ctx_vectors[1], cupy.asnumpy(device._.ctx_vectors[8])), abs=1e-5)
    for docs in ([host, device], [device, host]):
        joined = restore_vectors(Doc.from_docs(docs, exclude=["tensor"]))
        parts = [d._.ctx_layers if isinstance(d._.ctx_layers, numpy.ndarray) else cupy.asnumpy(d._.ctx_layers)
                 for d in docs]
        numpy.testing.assert_array_equal(joined._.ctx_layers, numpy.concatenate(parts, axis=1))
        assert len(joined._.ctx_vectors) == len(joined)


def test_a_pipeline_moved_to_the_gpu_takes_the_gpus_budget(gpu_nlp, monkeypatch):
    """Initialized on the CPU (4,096 pieces a batch), then moved with to_gpu: the budget
    stayed the CPU's; it is the GPU's free memory's, as for one initialized there."""
    import torch
    from thinc.api import use_ops

    from spacy_ctxembed.models.bert_runner import batch_items_for_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args, **kwargs: (2**33, 2**37))
    with use_ops("numpy"):  # (thinc's use_ops takes a backend's name, not an Ops)
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"max_batch_items": None}}})
        nlp.initialize()
    runner = get_runner(nlp.get_pipe("ctxembed_bert").encoder)
    assert runner.max_batch_items == 4096 and runner.device.type == "cpu"
    nlp.get_pipe("ctxembed_bert").model.to_gpu(0)
    assert runner.device.type == "cuda"
    assert runner.max_batch_items == batch_items_for_memory(2**33, runner.encoder.config,
                                                            runner.window + runner.n_special)


def test_half_precision_attention_runs_without_cudnn(on_gpu):
    """bf16 over windows of many shapes: cuDNN's fused attention (an execution
    plan per (batch, length) shape) is off while the forward passes run,
    in the run-ahead worker too, and as it was after."""
    import torch

    half = spacy.blank("en")
    half.add_pipe("ctxembed_bert", config={"model": {"encoder": {"precision": "bf16"}}})
    half.initialize()
    runner = get_runner(half.get_pipe("ctxembed_bert").encoder)
    seen = []
    hook = runner.runner.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        docs = list(half.pipe([TEXT, "I ran significance tests.", "A much longer text " * 30] * 3, batch_size=2))
    finally:
        hook.remove()
    assert len(docs) == 9 and len(seen) >= 5 and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled() is before


def _elmo_files(tmp_path):
    from .elmo_fixture import write_elmo_fixture

    return write_elmo_fixture(tmp_path)


def _elmo_on_device(options, weights, **encoder):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config={"store_layers": True, "model": {"encoder": {
        "options_file": str(options), "weight_file": str(weights), **encoder}}})
    nlp.initialize()
    return nlp


def test_elmo_pipe_on_device_equals_the_reference_across_batches(on_gpu, tmp_path):
    """Sentences of mixed lengths over several batches, the next predicted in
    the run-ahead worker (on by default on GPU), against the float64 reference
    and against each doc alone."""
    from .elmo_reference import ReferenceElmo

    cupy = on_gpu
    options, weights = _elmo_files(tmp_path)
    nlp = _elmo_on_device(options, weights)
    assert nlp.get_pipe("ctxembed_elmo")._runs_ahead()
    reference = ReferenceElmo(options, weights)
    texts = ["a fairly long sentence so that the cell state has time to grow past its clip",
             "short one", "x", "medium length sentence here with a few more words"] * 3
    for text, doc in zip(texts, nlp.pipe(texts, batch_size=2)):
        layers = cupy.asnumpy(doc._.ctx_layers)
        numpy.testing.assert_allclose(layers, reference([t.text for t in doc]), atol=1e-4, rtol=0)
        # (each is within about 1e-5 of float64: two such, in batches of other shapes)
        numpy.testing.assert_allclose(layers, cupy.asnumpy(nlp(text)._.ctx_layers), atol=2e-5, rtol=0)


def test_elmo_device_memory_returns_to_its_baseline_after_pipe(on_gpu, tmp_path):
    nlp = _elmo_on_device(*_elmo_files(tmp_path))
    texts = ["The cat sat on the mat " * n for n in range(1, 30)]
    _memory_returns_to_its_baseline_after_pipe(nlp, on_gpu, texts, pool_grows=False)


def test_a_float16_overflow_is_refused_on_device(on_gpu, tiny_bert_dir, tmp_path):
    """The check of the vectors for nan and inf on GPU (sums copied to pinned
    memory after each batch, read behind an event where the outputs are
    handed over): a float16 overflow is refused, fp32 is finite."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from spacy_ctxembed.errors import NonFiniteOutputs

    cupy = on_gpu
    model = BertModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():  # feed-forward activations of about 1e5
        model.encoder.layer[0].intermediate.dense.weight.mul_(1e6)
    model.save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    for precision in ("fp32", "fp16"):
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {
            "name": str(tmp_path), "layers": [-1], "precision": precision}}})
        nlp.initialize()
        if precision == "fp16":
            with pytest.raises(NonFiniteOutputs, match=r"precision = 'fp16'"):
                nlp(TEXT)
        else:
            assert numpy.isfinite(cupy.asnumpy(nlp(TEXT)._.ctx_vectors)).all()


def test_only_the_batch_with_nan_is_refused_on_device(gpu_nlp):
    """Batches predicted ahead on the device, one doc of one batch nan (its
    embedding rows under `use_params`): only that batch is reported and
    dropped; every other doc is written, equal to a clean run."""
    from thinc.api import torch2xp

    from spacy_ctxembed.errors import NonFiniteOutputs

    nlp, cupy = gpu_nlp
    texts = [TEXT, "three four", "A much longer text " * 30, "I ran significance tests."] * 2
    clean = [cupy.asnumpy(doc._.ctx_vectors) for doc in nlp.pipe(texts, batch_size=2)]
    shim = nlp.get_pipe("ctxembed_bert").encoder.shims[0]
    tokenizer = get_runner(nlp.get_pipe("ctxembed_bert").encoder).encoder.tokenizer
    (three,) = tokenizer("three", add_special_tokens=False)["input_ids"]
    table = shim._model.state_dict()["embeddings.word_embeddings.weight"].clone()
    table[three] = float("nan")
    reported = []
    nlp.set_error_handler(lambda name, pipe, docs, err: reported.append(([d.text for d in docs], err)))
    with nlp.use_params({f"pytorch_{shim.id}_embeddings.word_embeddings.weight": torch2xp(table)}):
        kept = list(nlp.pipe(texts, batch_size=2))
    assert [batch for batch, _ in reported] == [texts[:2], texts[4:6]]
    assert all(isinstance(err, NonFiniteOutputs) for _, err in reported)
    expected = [v for i, v in enumerate(clean) if i % 4 >= 2]
    assert [doc.text for doc in kept] == [t for i, t in enumerate(texts) if i % 4 >= 2]
    for doc, vectors in zip(kept, expected):
        numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_vectors), vectors, atol=1e-4)


def test_weights_moved_to_the_gpu_under_the_caller_s_inference_mode_can_train():
    """`to_gpu()` inside the caller's `torch.inference_mode()` remakes the
    weights on the device: made there, they would be inference tensors, which
    no update can train (torch fails naming neither component nor cause)."""
    import torch

    pytest.importorskip("cupy")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"layers": [-1], "trainable": True}}})
    nlp.initialize()  # on the CPU
    encoder = nlp.get_pipe("ctxembed_bert").encoder
    with torch.inference_mode():
        encoder.to_gpu(0)
    module = get_runner(encoder).encoder.module
    assert {p.device.type for p in module.parameters()} == {"cuda"}
    assert not any(t.is_inference() for t in (*module.parameters(), *module.buffers()))


def test_compiled_elmo_on_device_matches_eager_and_repeats(on_gpu, tmp_path):
    # Last in this file: its first torch.compile on the device (inductor,
    # Triton) is the slowest test here, and a run cut short for time then
    # loses only it.
    from .elmo_reference import ReferenceElmo

    cupy = on_gpu
    options, weights = _elmo_files(tmp_path)

    def elmo(compile):
        return _elmo_on_device(options, weights, compile=compile)

    # Long enough for clipping to happen (tests/test_elmo.py). The two longest
    # have one length, so that the rows still running never drop to one, a
    # size torch.compile specialises on (on CPU that is one graph).
    texts = ["a fairly long sentence so that the cell state has time to grow past its clip",
             "and here is one more sentence with sixteen words in it so two rows stay on",
             "short one", "x y"]
    assert len(texts[0].split()) == len(texts[1].split())
    eager = [cupy.asnumpy(doc._.ctx_layers) for doc in elmo(False).pipe(texts, batch_size=len(texts))]
    compiled = elmo(True)
    docs = list(compiled.pipe(texts, batch_size=len(texts)))
    again = list(compiled.pipe(texts, batch_size=len(texts)))
    reference = ReferenceElmo(options, weights)
    for doc, repeat, expected in zip(docs, again, eager):
        assert isinstance(doc._.ctx_layers, cupy.ndarray)
        numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_layers), expected, atol=1e-5, rtol=0)
        numpy.testing.assert_array_equal(cupy.asnumpy(repeat._.ctx_layers), cupy.asnumpy(doc._.ctx_layers))
        # (and not only like eager: a fault both share would pass that)
        numpy.testing.assert_allclose(cupy.asnumpy(doc._.ctx_layers), reference([t.text for t in doc]), atol=1e-4)
