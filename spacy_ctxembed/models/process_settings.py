"""torch settings that exist only process-wide, held for the blocks that need them.

torch has no per-call switch for TF32 matmuls or for which kernels
`scaled_dot_product_attention` may pick, only process-wide flags. A block
that needs one sets it on entry, and it is put back when the last such block
(of any thread) leaves, so that concurrent forward passes (the run-ahead
worker and the caller, two pipelines in a server) do not restore it under
each other's feet. What another thread runs meanwhile sees it too: each
setting says below why that is acceptable for what it changes. (A process
forked while a block runs in another thread inherits the count and the
lock as they were; CUDA does not survive a fork, so nothing there holds
these settings.)
"""
import contextlib
import threading
from typing import Callable, Generic, Iterator, Optional, TypeVar, cast

import torch

T = TypeVar("T")


class ProcessWideSetting(Generic[T]):
    """A process-wide setting, read and written through torch's functions for
    it, held at `value` while any `held()` block runs."""

    def __init__(self, read: Callable[[], T], write: Callable[[T], None], value: T) -> None:
        self._read, self._write, self._value = read, write, value
        self._lock = threading.Lock()
        self._depth = 0
        self._before: Optional[T] = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._before = self._read()
                self._write(self._value)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    before, self._before = self._before, None
                    self._write(cast(T, before))


#: CUDA fp32 matmuls on TF32 tensor cores (`precision = "tf32"`). An fp32
#: matmul that another thread runs meanwhile also gets TF32: that is why it
#: is opt-in. It goes through `torch.set_float32_matmul_precision`, which
#: keeps torch's two APIs for it consistent: setting only
#: `torch.backends.cuda.matmul.fp32_precision` made every read of
#: `allow_tf32` or `get_float32_matmul_precision()` (dynamo's, a trainer's,
#: in any thread) raise while the block ran.
TF32_MATMULS = ProcessWideSetting(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "high")

#: No cuDNN kernel for `scaled_dot_product_attention` (fp16/bf16 forward
#: passes on CUDA). Recent torch releases may pick cuDNN's fused attention
#: first on Hopper and Blackwell GPUs, and cuDNN builds an execution plan for
#: every new (batch, length) shape: on the H100 of issue 10's measurements
#: (BERT-base, torch 2.11; docs/benchmarks.md), bf16 ran 2.0M pieces/s at one
#: fixed shape and 141k over a corpus's varying windows. Padding the lengths
#: to a few buckets leaves the batch sizes varying (budget // width rows,
#: and any number in the last batch of a run); flash and memory-efficient
#: attention need no plan at all. Another thread's attention meanwhile gets
#: those kernels too: the same results within rounding, never another
#: precision.
#: (None with a torch that has no cuDNN attention, and so nothing to turn off.)
CUDNN_ATTENTION_OFF: Optional[ProcessWideSetting[bool]] = (
    ProcessWideSetting(torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.enable_cudnn_sdp, False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp") else None
)


def tf32_matmuls() -> "contextlib.AbstractContextManager[None]":
    """CUDA fp32 matmuls on TF32 tensor cores while the block runs (`TF32_MATMULS`)."""
    return TF32_MATMULS.held()


def cudnn_attention_off() -> "contextlib.AbstractContextManager[None]":
    """No cuDNN attention kernels while the block runs (`CUDNN_ATTENTION_OFF`)."""
    return contextlib.nullcontext() if CUDNN_ATTENTION_OFF is None else CUDNN_ATTENTION_OFF.held()
