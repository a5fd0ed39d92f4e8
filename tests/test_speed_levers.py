"""The throughput levers keep their promises: skipped layers are not run, int8 and
tf32 stay opt-in, and tf32's process-wide switch is put back."""
import threading

import numpy
import pytest
import spacy
import torch

from spacy_ctxembed.models.process_settings import tf32_matmuls

from .conftest import bert_module, make_nlp
from .reference import hf_hidden_states, pool, token_pieces

TEXT = "Yesterday afternoon I ran some more significance tests on the new data."


def _count_layer_calls(nlp):
    module = bert_module(nlp.get_pipe("ctxembed_bert").model)
    calls = []
    for i, layer in enumerate(module.encoder.layer):
        layer.register_forward_hook(lambda mod, args, out, i=i: calls.append(i))
    return calls


def test_layers_above_the_highest_selected_are_not_run(minilm_dir, hf_reference):
    nlp = make_nlp(minilm_dir, layers=[1, 3], store_layers=True)
    calls = _count_layer_calls(nlp)
    doc = nlp(TEXT)
    assert sorted(set(calls)) == [0, 1, 2]  # layers 4..6 skipped
    tokenizer, model = hf_reference
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    pieces = token_pieces(doc, offsets)
    expected = numpy.stack([pool(states[1], pieces, "mean"), pool(states[3], pieces, "mean")])
    numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-4)
    # The full stack is back in place afterwards: the top layer still works.
    top = make_nlp(minilm_dir)
    top_calls = _count_layer_calls(top)
    top(TEXT)
    assert sorted(set(top_calls)) == list(range(6))


def test_int8_is_close_and_saves_exact_weights(minilm_dir, hf_reference, tmp_path):
    exact = make_nlp(minilm_dir)(TEXT)._.ctx_vectors
    nlp = make_nlp(minilm_dir, precision="int8")
    approx = nlp(TEXT)._.ctx_vectors
    assert approx.shape == exact.shape
    cosine = (approx * exact).sum(1) / numpy.linalg.norm(approx, axis=1) / numpy.linalg.norm(exact, axis=1)
    # A sanity bound only: the measured accuracy cost is in docs/benchmarks.md.
    assert cosine.mean() > 0.9 and cosine.min() > 0.8
    assert numpy.abs(approx - exact).max() > 1e-4  # it really is quantized
    # A saved int8 pipeline holds the fp32 weights: loaded as fp32 it is exact.
    nlp.to_disk(tmp_path / "pipeline")
    fp32_config = {"components": {"ctxembed_bert": {"model": {"encoder": {"precision": "fp32"}}}}}
    fp32 = spacy.load(tmp_path / "pipeline", config=fp32_config)
    numpy.testing.assert_allclose(fp32(TEXT)._.ctx_vectors, exact, atol=1e-5)


def test_int8_follows_weights_swapped_by_use_params(tiny_bert_dir):
    """The int8 copy is made from the weights once and again after each update;
    under `nlp.use_params(averages)` (spaCy's evaluation of a fine-tuned model)
    it kept quantizing the weights from before the block."""
    from thinc.api import torch2xp

    def swapped(nlp):
        shim = nlp.get_pipe("ctxembed_bert").encoder.shims[0]
        return {f"pytorch_{shim.id}_{name}": torch2xp(value * 1.5) for name, value in shim._model.state_dict().items()}

    int8, fp32 = make_nlp(tiny_bert_dir, precision="int8"), make_nlp(tiny_bert_dir)
    before = int8(TEXT)._.ctx_vectors
    with int8.use_params(swapped(int8)), fp32.use_params(swapped(fp32)):
        inside, exact = int8(TEXT)._.ctx_vectors, fp32(TEXT)._.ctx_vectors
    assert numpy.abs(exact - before).max() > 0.1  # the premise: the swapped weights give other vectors
    assert numpy.abs(inside - exact).max() < 0.05  # int8's usual error, not the old weights'
    numpy.testing.assert_array_equal(int8(TEXT)._.ctx_vectors, before)  # quantized from the weights put back


def test_an_int8_encoder_moved_to_a_gpu_is_refused_before_anything_moves(tiny_bert_dir):
    """Refused at load on a GPU, but `to_gpu()` after a load on the CPU went on into
    torch's quantized modules, which have no CUDA kernels."""
    nlp = make_nlp(tiny_bert_dir, precision="int8")
    before = nlp(TEXT)._.ctx_vectors
    shim = nlp.get_pipe("ctxembed_bert").encoder.shims[0]
    with pytest.raises(ValueError, match=r"precision = 'int8'.*int8 quantization runs on CPU only"):
        shim.to_device("gpu", 0)
    assert {p.device.type for p in shim._model.parameters()} == {"cpu"}
    numpy.testing.assert_array_equal(nlp(TEXT)._.ctx_vectors, before)


def test_tf32_on_cpu_is_exact_fp32(minilm_dir):
    exact = make_nlp(minilm_dir)(TEXT)._.ctx_vectors
    numpy.testing.assert_array_equal(make_nlp(minilm_dir, precision="tf32")(TEXT)._.ctx_vectors, exact)


def test_tf32_runs_on_a_torch_without_matmul_fp32_precision(tiny_bert_dir, monkeypatch):
    """setup.cfg allows torch >= 2.1, which has `torch.set_float32_matmul_precision`
    (what `tf32_matmuls` sets) but not `torch.backends.cuda.matmul.fp32_precision`
    (torch 2.9's). The runner refused "tf32" there, after the switch no longer
    used that attribute: on CPU it must be exact fp32, as with a newer torch."""
    matmul = torch.backends.cuda.matmul

    class Torch28Matmul:
        def __getattr__(self, name):
            if name == "fp32_precision":
                raise AttributeError(name)
            return getattr(matmul, name)

    exact = make_nlp(tiny_bert_dir)(TEXT)._.ctx_vectors
    monkeypatch.setattr(torch.backends.cuda, "matmul", Torch28Matmul())
    assert not hasattr(torch.backends.cuda.matmul, "fp32_precision")  # the premise
    numpy.testing.assert_array_equal(make_nlp(tiny_bert_dir, precision="tf32")(TEXT)._.ctx_vectors, exact)


def test_tf32_switch_is_restored_after_the_last_of_overlapping_users():
    """Set and put back through torch's generic API, so that both of torch's APIs
    read consistently meanwhile (setting only `matmul.fp32_precision` made every
    read of `allow_tf32` or `get_float32_matmul_precision()` raise, in any thread)."""
    matmul = torch.backends.cuda.matmul
    before = torch.get_float32_matmul_precision()
    first_in, second_out = threading.Event(), threading.Event()
    seen = []

    def state():
        return torch.get_float32_matmul_precision(), matmul.allow_tf32, matmul.fp32_precision

    def first():
        with tf32_matmuls():
            first_in.set()
            second_out.wait(5)
            seen.append(("first, after second left", state()))

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with tf32_matmuls():
        seen.append(("second", state()))
    second_out.set()
    thread.join()
    assert seen == [("second", ("high", True, "tf32")), ("first, after second left", ("high", True, "tf32"))]
    assert torch.get_float32_matmul_precision() == before and matmul.allow_tf32 is False
    with pytest.raises(RuntimeError):
        with tf32_matmuls():
            raise RuntimeError("the forward pass failed")
    assert torch.get_float32_matmul_precision() == before and matmul.allow_tf32 is False


def test_moving_the_model_takes_the_new_devices_default_budget(tiny_bert_dir, monkeypatch):
    """The default budget (`max_batch_items = null`) was taken once, on the device the
    model loaded on: moved to a GPU after (`model.to_gpu`), a pipeline kept the CPU's
    4,096 pieces a batch. A move takes the default again (a stand-in for the GPU's
    free-memory budget here); a budget the config sets stays."""
    import spacy_ctxembed.models.bert_runner as bert_runner
    from spacy_ctxembed.models.bert import get_runner

    from .conftest import make_nlp

    for setting, expected in ((None, 12345), (777, 777)):
        nlp = make_nlp(tiny_bert_dir, max_batch_items=setting)
        component = nlp.get_pipe("ctxembed_bert")
        with monkeypatch.context() as patch:
            patch.setattr(bert_runner, "default_batch_items", lambda device, encoder, max_length: 12345)
            component.model.to_cpu()
        assert get_runner(component.encoder).max_batch_items == expected


def test_a_torch_without_cudnn_attention_has_nothing_to_turn_off(monkeypatch):
    """setup.cfg allows torch releases older than cuDNN attention: importing the
    switches must not fail there, and half precision runs without the switch."""
    import importlib

    from spacy_ctxembed.models import process_settings

    monkeypatch.delattr(torch.backends.cuda, "enable_cudnn_sdp")
    try:
        older = importlib.reload(process_settings)
        assert older.CUDNN_ATTENTION_OFF is None
        with older.cudnn_attention_off():
            pass
    finally:
        monkeypatch.undo()
        importlib.reload(process_settings)
    assert process_settings.CUDNN_ATTENTION_OFF is not None


def test_cudnn_attention_is_off_inside_the_block_and_put_back_after():
    from spacy_ctxembed.models.process_settings import CUDNN_ATTENTION_OFF, cudnn_attention_off

    if CUDNN_ATTENTION_OFF is None:
        pytest.skip("this torch has no cuDNN attention")
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        with cudnn_attention_off():
            assert torch.backends.cuda.cudnn_sdp_enabled() is False
            with cudnn_attention_off():
                assert torch.backends.cuda.cudnn_sdp_enabled() is False
            assert torch.backends.cuda.cudnn_sdp_enabled() is False
        assert torch.backends.cuda.cudnn_sdp_enabled() is True
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_a_thread_entering_while_another_saves_the_setting_waits_for_it():
    """Not seen before: two threads entering at once (the existing tests enter one after
    the other). The value before is read once, by the first to enter; a second thread
    that came meanwhile waits for it instead of reading and setting the switch itself,
    and the value before is put back at the end. (A plain dict stands for torch's flag;
    the wait below only bounds how long the second thread is given to break in.)"""
    from spacy_ctxembed.models.process_settings import ProcessWideSetting

    state = {"value": "before"}
    reads, inside, threads = [], [], []
    second_read = threading.Event()

    def read():
        reads.append(threading.current_thread().name)
        if len(reads) == 1:
            threads.append(threading.Thread(target=second, name="second"))
            threads[0].start()
            second_read.wait(0.5)  # set only if the second thread reads the flag meanwhile
        else:
            second_read.set()
        return state["value"]

    setting = ProcessWideSetting(read, lambda value: state.update(value=value), "held")

    def second():
        with setting.held():
            inside.append(state["value"])

    with setting.held():
        threads[0].join(10)
        assert state["value"] == "held"
    assert reads == ["MainThread"] and inside == ["held"] and state["value"] == "before"
