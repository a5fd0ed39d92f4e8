"""Run a PyTorch encoder inside a Thinc forward pass, with or without autograd.

Shared by the BERT and ELMo encoders: the outputs go to the current ops'
arrays without a host copy (numpy shares CPU memory, cupy takes CUDA memory
through DLPack), and in training the backward pass hands the gradients back to
torch's autograd, with the shim's loss scaling for fp16.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, cast

import numpy
import torch
from spacy.tokens import Doc
from thinc.api import Model, PyTorchShim, torch2xp, xp2torch

from ..types import DocLayers

#: Runs the encoder over docs; `grad` says whether to record autograd.
EmbedFn = Callable[[Sequence[Doc], bool], List[torch.Tensor]]


def run_encoder(
    model: Model, shim: PyTorchShim, embed: EmbedFn, docs: List[Doc], *, train_weights: bool
) -> Tuple[List[DocLayers], Callable[[List[DocLayers]], List[Doc]]]:
    """Outputs per doc, and a backprop that updates the encoder's gradients.

    train_weights: False for a frozen encoder (inference only; the gradient
        stops here).
    """
    if not train_weights:
        outputs = embed(docs, False)
        return [cast(DocLayers, torch2xp(t, ops=model.ops)) for t in outputs], _no_gradient

    tensors = embed(docs, True)
    Y = [cast(DocLayers, torch2xp(t.detach(), ops=model.ops)) for t in tensors]

    def backprop(dY: List[DocLayers]) -> List[Doc]:
        pairs = [(t, xp2torch(dy, device=t.device)) for t, dy in zip(tensors, dY) if t.requires_grad]
        if pairs:
            scaler = shim._grad_scaler
            grads = scaler.scale([g for _, g in pairs], inplace=True)
            torch.autograd.backward([t for t, _ in pairs], grad_tensors=grads)
            params = [p.grad for p in shim._model.parameters() if p.grad is not None]
            if scaler.unscale(params):  # overflow: this step is skipped by finish_update
                for grad in params:
                    grad.zero_()
        return []

    return Y, backprop


def _no_gradient(dY: List[DocLayers]) -> List[Doc]:
    return []


ShimT = TypeVar("ShimT", bound=PyTorchShim)


def unpickle_shim(cls: Type[ShimT], settings: Dict[str, Any], data: Optional[bytes]) -> ShimT:
    """Rebuild a pickled encoder shim from its settings and its `to_bytes` (None: no weights yet).

    The shims pickle as what they serialize, not as their attributes: their
    locks, compiled steps and quantized copies are rebuilt, not copied.
    """
    shim = cls(settings)  # type: ignore[call-arg]
    if data is not None:
        shim.from_bytes(data)
    return shim


def staged(array: numpy.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor, pinned when it is bound for a CUDA device, so
    that its `.to(device, non_blocking=True)` need not wait for the device."""
    tensor = torch.from_numpy(array)
    return tensor.pin_memory() if device.type == "cuda" else tensor
