"""What stays in memory after a training step: nothing of the step's own arrays."""
import gc
import weakref

import pytest
import torch
from thinc.api import Adam, PyTorchShim

from spacy_ctxembed.models import torch_bridge
from spacy_ctxembed.models.torch_bridge import EncoderShim

from .test_training import _encoder_params, _train_step
from .test_training_steps import _bert_pipeline, _elmo_pipeline


class _Recording:
    """An optimizer that records (weakly) the weight arrays it is handed."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.seen = []

    def __call__(self, key, weights, gradient, **kwargs):
        self.seen.append(weakref.ref(weights))
        return self.optimizer(key, weights, gradient, **kwargs)


@pytest.mark.parametrize("encoder", ["bert", "elmo"])
def test_a_training_step_keeps_none_of_the_arrays_it_stepped_with(tiny_bert_dir, tmp_path, encoder):
    """thinc's PyTorchShim.finish_update sets `weight.data` to a tensor over the
    optimizer's array, a view of the tensor before it: each step chained one
    more tensor and array per weight (about 840 bytes), never freed while the
    model lived (about 1.7 GB over 20,000 steps of MiniLM-L6). The encoder's step
    writes the weights in place, to the same values."""
    nlp, examples, name = _bert_pipeline(tiny_bert_dir) if encoder == "bert" else _elmo_pipeline(tmp_path)
    recording = _Recording(Adam(0.01, L2=0.0, grad_clip=0.0))
    shim = nlp.get_pipe(name).encoder.shims[0]
    for _ in range(3):
        nlp.update(examples, sgd=False)
        for proc_name, proc in nlp.pipeline:
            proc.finish_update(recording if proc_name == name else Adam(0.01))
    assert len(recording.seen) > len(list(shim._model.parameters()))  # (the premise: the encoder was stepped)
    gc.collect()
    assert sum(ref() is not None for ref in recording.seen) == 0


@pytest.mark.parametrize("optimizer, copied", [
    (lambda: Adam(0.01, L2=0.0, grad_clip=0.0), False),
    (lambda: Adam(0.01, L2=0.01, L2_is_weight_decay=True, grad_clip=1.0, use_averages=True), False),
    # thinc hands the optimizer a copy of a weight on a device that is neither the CPU
    # nor CUDA (MPS): stepped in place, the copy must still reach the weight.
    (lambda: Adam(0.01, L2=0.0, grad_clip=0.0), True),
])
def test_the_in_place_step_is_thincs_step(tiny_bert_dir, monkeypatch, optimizer, copied):
    """The encoder's weights after steps written in place are exactly those of thinc's own step."""
    if copied:
        monkeypatch.setattr(torch_bridge, "torch2xp", lambda tensor, **kwargs: tensor.detach().numpy().copy())
    def trained(nlp, examples):
        sgd = optimizer()
        for _ in range(3):
            _train_step(nlp, examples, sgd)
        return _encoder_params(nlp)

    start = _encoder_params(_bert_pipeline(tiny_bert_dir)[0])
    ours = trained(*_bert_pipeline(tiny_bert_dir)[:2])
    monkeypatch.setattr(EncoderShim, "finish_update", PyTorchShim.finish_update)
    thincs = trained(*_bert_pipeline(tiny_bert_dir)[:2])
    assert ours.keys() == thincs.keys()
    for key in ours:
        assert torch.equal(ours[key], thincs[key]), key
    assert any(not torch.equal(start[k], ours[k]) for k in ours)  # (the premise: the steps moved the weights)
