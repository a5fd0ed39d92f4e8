"""That no vector a component writes holds nan or inf.

An overflow in reduced precision (fp16), weights that diverged in training or
under `use_params`, or a transformer upstream that overflowed would otherwise
give nan vectors that are written and read as any others. Every combiner
takes every layer it is given into each vector (concatenated, or in a sum:
nan * 0 is nan), so the vectors show a bad value in any stored layer too.

The sums are taken where the vectors are computed (`predict`) and read where
they are handed over (`set_annotations`). On GPU the read is a copy queued
right after the sums, on the same (CuPy's current) stream, into pinned
memory, and an event after it: waiting for the event waits for this batch's
work only. A plain read there would wait for everything queued by then, the
next batch's forward passes included, which the worker thread predicting
ahead (`ContextualEmbedder.pipe`) queues meanwhile; and a read in `predict`
would leave the device idle while the next batch is planned. (The copy is
CUDA's own asynchronous one, whatever CuPy version: `ndarray.get` copies
asynchronously only in some.)
"""
from typing import Any, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from thinc.api import Model, Ops

from .errors import NonFiniteOutputs
from .types import DocVectors


class FiniteCheck:
    """Per-doc sums of a batch's vectors, taken now, read by `bad_docs`."""

    def __init__(self, ops: Ops, vectors: Sequence[DocVectors]) -> None:
        self.ops, self.vectors = ops, vectors
        self._ready: Optional[Any] = None  # on GPU: a CUDA event after the copy of the sums
        self._on_device: Optional[Any] = None
        if not vectors:
            self._sums: Any = numpy.zeros((0,), dtype="float32")
            return
        xp = ops.xp
        sums = xp.stack([xp.sum(v) for v in vectors])
        if xp is numpy:
            self._sums = sums
            return
        import cupy
        import cupyx

        stream = cupy.cuda.get_current_stream()
        self._on_device = xp.ascontiguousarray(sums)  # (kept until the copy has landed)
        self._sums = cupyx.empty_pinned(sums.shape, dtype=sums.dtype)
        cupy.cuda.runtime.memcpyAsync(self._sums.ctypes.data, self._on_device.data.ptr, self._on_device.nbytes,
                                      cupy.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        self._ready = cupy.cuda.Event(disable_timing=True)
        self._ready.record(stream)

    def bad_docs(self) -> List[Tuple[int, int]]:
        """(doc index, number of nan or inf values) for each doc that has any.

        A doc's sum is not finite if it has one; finite values whose sum
        overflows are counted exactly, and pass."""
        if self._ready is not None:
            self._ready.synchronize()
            self._ready = self._on_device = None
        sums = self._sums
        bad = []
        for i in numpy.flatnonzero(~numpy.isfinite(sums)):
            vectors = self.vectors[int(i)]
            count = int(vectors.size - self.ops.xp.isfinite(vectors).sum())
            if count:
                bad.append((int(i), count))
        return bad


def refuse_non_finite(component: str, docs: Sequence[Doc], check: FiniteCheck, encoder: Model,
                      encoder_block: Optional[str] = None, *, training: bool = False) -> None:
    """Raise `NonFiniteOutputs` if a doc of the batch has a vector with nan or inf.

    encoder: the model whose encoder made them, for the advice: its
        `precision` setting; without a shim, it pools another component's
        outputs (`ctxembed_from_trf`);
    encoder_block: where the encoder's settings are, as the error should say
        (default: the component's `[components.<name>.model.encoder]`);
    training: the vectors are a training batch's, about to be sent to the
        listening components (`update`): refused there, a nan loss does not
        reach every weight that trains on them, and the run stops at the
        step that went wrong rather than at the next evaluation."""
    bad = check.bad_docs()
    if not bad:
        return
    from .models.torch_bridge import encoder_shim  # (the models import this module)

    shim = encoder_shim(encoder)
    precision, upstream = (None, True) if shim is None else (shim.settings.get("precision"), False)
    i, count = bad[0]
    # Only float16's range (65504) is reduced: bf16's is float32's, so a nan
    # there is no overflow that fp32 would avoid, and advising fp32 hid the
    # learning rate of weights that diverged.
    if precision == "fp16":
        block = encoder_block or f"[components.{component}.model.encoder]"
        advice = (f"with precision = {precision!r} this is most likely an overflow of the reduced "
                  f"precision: set {block} precision = 'fp32' (or 'bf16', whose range is float32's)")
    elif upstream:
        advice = ("the transformer component's outputs hold nan or inf (with its mixed_precision "
                  "on, most likely a float16 overflow)")
    else:
        advice = "the model's weights may hold nan or inf, or its activations overflow float32"
        if training:
            advice += " (weights that diverged in training: lower [training.optimizer] learn_rate)"
    refused = ("this training batch is refused (no listening component is updated on it)" if training
               else "this batch is refused (nothing of it is written)")
    raise NonFiniteOutputs(
        f"[{component}] the model gave nan or inf for {len(bad)} of the {len(docs)} docs of this batch "
        f"(first: doc {i}, {count} values, text {docs[i].text[:40]!r}); vectors with them would be "
        f"wrong, so {refused}: {advice}"
    )
