"""The PyTorch side of `BertEncoder.v2`: a loaded encoder prepared to run over docs.

docs -> wordpieces of each doc's raw text (the model's own fast tokenizer)
     -> overlapping windows, sorted by length and batched by a piece budget
     -> hidden states of the selected layers for the pieces each window owns
     -> pooled to spaCy tokens by character overlap
     -> per doc, a tensor (n_layers, n_tokens, width) on the model's device.

A `BertRunner` is built once when the weights load and is not changed by a
call but for what is made to be shared (the chunk cache, added to and given
up on: `Wordpieces.of_docs`; the int8 copy, made once under a lock), so one
pipeline can serve several threads. The shim that holds it (`bert.BertShim`)
is what Thinc sees.
"""
import contextlib
import copy
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc

from ..alignment import PieceAlignment, TokenTable, align_run, doc_alignment, text_length
from ..batching import budget_bounds, concat_ranges, prefetched, runs_by_size
from ..errors import bad_setting, check_bool, check_choice, check_int, warn
from ..pooling import pool_indexed, pooling_index
from ..settings import check_layers, normalize_layers, warn_repeated_layers
from ..types import POOLING_MODES, PRECISIONS
from ..windows import plan_run_windows
from .hf_loading import HFEncoder
from .process_settings import cudnn_attention_off, tf32_matmuls
from .torch_bridge import (
    autograd_on,
    callers_autocast_off,
    checked_as,
    staged,
)
from .wordpieces import Wordpieces

COMPONENT = "ctxembed_bert"
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_settings(settings: dict) -> None:
    """The checks that need no model; the component runs them when it is created (`BertShim.check_settings`)."""
    check_layers(COMPONENT, settings["layers"])
    check_choice(COMPONENT, "pooling", settings["pooling"], POOLING_MODES)
    check_choice(COMPONENT, "precision", settings["precision"], PRECISIONS)
    check_int(COMPONENT, "window", settings["window"], optional=True, unit="an integer number of wordpieces")
    check_int(COMPONENT, "stride", settings["stride"], optional=True, unit="an integer number of wordpieces")
    check_int(COMPONENT, "max_batch_items", settings["max_batch_items"], optional=True)
    if settings["window"] is not None and settings["stride"] is not None:
        _check_stride(settings["stride"], settings["window"])
    check_bool(COMPONENT, "trainable", settings["trainable"])
    if settings["name"] is not None and not isinstance(settings["name"], str):
        check_choice(COMPONENT, "name", settings["name"], ["a model directory or hub name (a string)", "null"])


@dataclass(frozen=True)
class _RunPlan:
    """A run of docs laid end to end: their pieces, the pieces' alignment to
    their tokens (both numbered across the run), and each doc's windows."""

    piece_ids: numpy.ndarray
    alignment: PieceAlignment
    #: Where each doc's pieces and tokens start in the run, and (last) the totals.
    piece_offsets: numpy.ndarray
    token_offsets: numpy.ndarray
    #: Each doc's windows over its pieces (`plan_run_windows`): rows (doc,
    #: start, end, own_start, own_end), in doc order.
    windows: numpy.ndarray


@dataclass(frozen=True)
class _Batch:
    """One forward batch, staged on the host (in pinned memory for a CUDA model)."""

    input_ids: torch.Tensor
    #: (batch, length); (batch, 1, length) where the batch has padding and the
    #: model takes that form (`BertRunner.broadcast_mask`); None where it has
    #: none and the model needs no mask then (`BertRunner.unpadded_without_mask`).
    attention_mask: Optional[torch.Tensor]
    #: The pieces the batch's windows own: their rows in the run's piece
    #: states, and their positions in the output flattened to (rows * length).
    targets: torch.Tensor
    sources: torch.Tensor


@dataclass(frozen=True)
class _Prepared:
    """Everything the host does for a run of docs before the device can start."""

    batches: List[_Batch]
    #: The pooling index of the run's docs laid end to end, staged like the
    #: batches, so that one pooling serves the whole run.
    pooling: Dict[str, torch.Tensor]
    #: Where each doc's tokens start in the run, and (last) the run's total.
    token_offsets: List[int]
    n_pieces: int


#: Docs are prepared in runs of about this many forward batches: enough for
#: sorting by length to keep padding low, few enough that the next run is
#: prepared while the device computes this one.
BATCHES_PER_RUN = 4
#: Characters per wordpiece, to size a run of docs before tokenizing it.
CHARS_PER_PIECE = 4


def check_precision_device(precision: str, device_type: str) -> None:
    """Refuse a precision that cannot run on the device: int8 quantization is CPU only."""
    if precision == "int8" and device_type != "cpu":
        raise bad_setting(COMPONENT, "precision", "int8",
                          "int8 quantization runs on CPU only; use 'fp16' or 'bf16' on GPU")


class BertRunner:
    """An encoder prepared for one set of settings.

    settings: the `BertEncoder.v2` settings (layers, pooling, window, stride,
        max_batch_items, precision).
    """

    def __init__(self, encoder: HFEncoder, settings: Dict[str, Any]) -> None:
        self.encoder = encoder
        self.layers = normalize_layers(COMPONENT, settings["layers"], encoder.n_hidden_states)
        name, block = checked_as(COMPONENT, settings)
        warn_repeated_layers(name, settings["layers"], self.layers, encoder.n_hidden_states, block=block)
        self.pooling: str = settings["pooling"]
        self.window, self.stride = _window_settings(settings, encoder)
        self.precision: str = settings["precision"]
        self.wordpieces = Wordpieces(encoder.tokenizer)
        #: The tokenizer and the model's config by content (`BertShim.identity_fields`, `cache_identity`).
        self.tokenizer_digest = _tokenizer_digest(encoder.tokenizer)
        self.config_digest = _config_digest(encoder.config)
        self.prefix_ids, self.suffix_ids = _special_token_frame(encoder.tokenizer)
        self.n_special = len(self.prefix_ids) + len(self.suffix_ids)
        pad = encoder.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        check_precision_device(self.precision, self.device.type)
        if self.precision == "fp16" and self.device.type == "cpu":
            # (Measured with MiniLM, 2 threads: about 3.9x the time of "fp32", for vectors
            # within 0.003 of its; bf16 ran there as fast as fp32 or faster, and is not warned of.)
            warn(f"[{name}] {block}precision = 'fp16': the encoder is on the CPU, where float16 autocast runs "
                 "several times slower than 'fp32' and is not exact; it is meant for GPU. Use 'fp32' on CPU "
                 "(or 'int8' for speed)")
        self.max_batch_items: int = settings["max_batch_items"] or self.default_budget()
        probe = self.probe_batch()
        # hidden_states[i] needs only the first i layers: the runner is a
        # shallow copy that runs those and shares their weights with the full
        # model (which is what is saved and trained), where that gives the
        # full model's states (see `_cut_keeps_states`).
        # The probes below compare other ways to run the model with its padded
        # pass over the probe batch, run here once per module.
        cut = _first_layers(encoder.module, max(self.layers))
        try:
            cut_output = _padded_pass(cut, *probe)
        except Exception:
            if cut is encoder.module or max(self.layers) > 0:
                raise
            # `layers = [0]` (the embedding output): DeBERTa-v2's encoder cannot
            # run an empty layer stack (an UnboundLocalError in `transformers`),
            # so such a model runs its first layer.
            cut = _first_layers(encoder.module, 1)
            cut_output = _padded_pass(cut, *probe)
        full_output = cut_output if cut is encoder.module else _padded_pass(encoder.module, *probe)
        keeps = _cut_keeps_states(cut, encoder.module, *probe, self.layers, outputs=(cut_output, full_output))
        self.runner: torch.nn.Module = cut if keeps else encoder.module
        output = cut_output if keeps else full_output
        #: Whether padding leaves the real pieces' states alone. Where it does
        #: not (ConvBERT's span convolutions read it), a batch holds windows
        #: of one length only, so that no window is padded (see `_padding_is_neutral`).
        self.pads = _padding_is_neutral(self.runner, *probe, expected=output)
        #: Padded batches go in with a (batch, 1, length) mask (see `_takes_broadcast_mask`).
        self.broadcast_mask = _takes_broadcast_mask(self.runner, *probe, expected=output)
        #: Unpadded batches go in without a mask (see `_needs_no_mask`).
        self.unpadded_without_mask = _needs_no_mask(self.runner, *probe)
        #: One layer selected: the forward pass returns that layer's states
        #: only, instead of keeping every layer's until it ends (see `_top_state_is_last`).
        self.top_state_only = len(self.layers) == 1 and _top_state_is_last(
            self.runner, *probe, self.layers[0], expected=output)
        # Fine-tuning runs with the model's dropout, as Hugging Face and
        # spacy-transformers train it; prediction must stay deterministic,
        # even in another thread at the same time. So training uses its own
        # copy of the module tree, switched to training mode once, sharing
        # every parameter and buffer with the one that predicts. It is made
        # after the probes, so that a model whose first call changes it (BigBird
        # switches to full attention on short inputs) trains as it predicts.
        self.train_runner = training_copy(self.runner)
        self._int8: Optional[torch.nn.Module] = None
        self._int8_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.encoder.module.parameters()).device

    @property
    def width(self) -> int:
        return self.encoder.width

    def weights_changed(self) -> None:
        """Called after an optimizer step: the int8 copy must be made again."""
        with self._int8_lock:
            self._int8 = None

    def embed(self, docs: Sequence[Doc], *, grad: bool = False) -> List[torch.Tensor]:
        """Per doc, the selected layers pooled to tokens: (n_layers, n_tokens, width).

        grad: run under autograd (fine-tuning) instead of inference mode.

        The docs go in runs (`BATCHES_PER_RUN`); while the device computes one
        run, a worker thread tokenizes, aligns, plans and stages the next.
        The device is never waited for here: outputs are handed over as they
        are, on the model's device.
        """
        if grad and self.precision == "int8":
            # (Quantized weights take no gradient: it would fine-tune in float32 and
            # predict in int8, what listens to it trained on other vectors than it is served.)
            raise bad_setting(
                COMPONENT, "precision", "int8",
                "a trainable encoder fine-tunes in float32 but predicts with int8 weights (mean cosine 0.925 to "
                "float32 on MiniLM), so what listens to it would be trained on other vectors than it is evaluated and "
                "served with: train with 'fp32' (and set 'int8' in the trained pipeline's config to serve it), "
                "or set trainable = false to train on the int8 vectors")
        module = self.train_runner if grad else self.runner if self.precision != "int8" else self._quantized()
        context = autograd_on() if grad else torch.inference_mode()
        runs = self.runs(docs)
        outputs: List[torch.Tensor] = []
        device = self.device
        non_blocking = device.type == "cuda"
        with context:
            for prepared in prefetched(self.prepare, runs):
                states = self.piece_states(prepared, module)
                index = {k: t.to(device, non_blocking=non_blocking) for k, t in prepared.pooling.items()}
                offsets = prepared.token_offsets
                pooled = pool_indexed(states, index, offsets[-1], self.pooling).permute(1, 0, 2)
                del states  # the run's piece states: the per-doc copies below may reuse their memory
                # A copy per doc: a view would keep the whole run's memory alive
                # for as long as any one of its docs is kept.
                outputs.extend(
                    pooled[:, start:end].clone(memory_format=torch.contiguous_format)
                    for start, end in zip(offsets[:-1], offsets[1:])
                )
        return outputs

    def runs(self, docs: Sequence[Doc]) -> List[List[Doc]]:
        """The docs, in order, cut into runs of about `BATCHES_PER_RUN` forward batches."""
        return list(runs_by_size(docs, self.max_batch_items * BATCHES_PER_RUN * CHARS_PER_PIECE, text_length))

    def prepare(self, docs: Sequence[Doc]) -> _Prepared:
        """The host's part for a run of docs: the plan, forward batches and the
        pooling's indices, staged for the device."""
        plan = self.plan(docs)
        n_tokens = int(plan.token_offsets[-1])
        index = pooling_index(plan.alignment.token_index, plan.alignment.piece_index, n_tokens, self.pooling)
        return _Prepared(
            self.batches(plan), {k: staged(a, self.device) for k, a in index.items()},
            plan.token_offsets.tolist(), int(plan.piece_offsets[-1]),
        )

    def plan(self, docs: Sequence[Doc]) -> _RunPlan:
        """Tokenize the raw texts, align pieces to tokens and plan the windows."""
        tokens = TokenTable.of_docs(docs)
        ids, spans, piece_counts = self.wordpieces.of_docs(docs, tokens)
        try:
            alignment = align_run(spans, piece_counts, tokens)
        except ValueError as err:  # (named as the component's errors are: `named_errors` renames it)
            tokenizer = type(self.encoder.tokenizer).__name__
            raise ValueError(f"[{COMPONENT}] {err}: its tokenizer ({tokenizer}) gives offsets that do not fit "
                             "the text, so no piece can be placed on the tokens; use another tokenizer") from None
        piece_offsets = numpy.concatenate(([0], numpy.cumsum(piece_counts)))
        token_offsets = tokens.offsets
        # Only a doc longer than one window needs to know where tokens allow a cut.
        windows = plan_run_windows(piece_counts, self.window, self.stride, lambda d: doc_alignment(
            alignment, token_offsets, piece_offsets, d).piece_may_start_segment())
        return _RunPlan(ids, alignment, piece_offsets, token_offsets, windows)

    def batches(self, plan: _RunPlan) -> List[_Batch]:
        """Every window of every doc, longest first, cut by the piece budget and padded."""
        # Longest first (stable: equal lengths keep doc order), so each batch holds windows of similar length.
        lengths = plan.windows[:, 2] - plan.windows[:, 1]
        order = numpy.argsort(-lengths, kind="stable")
        windows = plan.windows[order]
        n_prefix = len(self.prefix_ids)
        device = self.device
        batches = []
        # A batch is as wide as its first (longest) window, framed.
        widths = lengths[order] + self.n_special
        for a, b in budget_bounds(widths, self.max_batch_items, same_length=not self.pads):
            docs, start, end, own_start, own_end = windows[a:b].T
            first = plan.piece_offsets[docs] + start
            input_ids, mask = self.pad(plan.piece_ids, first, end - start)
            padded_rows = not mask.all()
            attention_mask: Optional[numpy.ndarray] = mask
            if padded_rows and self.broadcast_mask:
                attention_mask = mask[:, None, :]
            elif not padded_rows and self.unpadded_without_mask:
                attention_mask = None
            owned = own_end - own_start
            targets = concat_ranges(plan.piece_offsets[docs] + own_start, owned)
            # Row r's piece p sits at column n_prefix + p - start of the padded input.
            rows = numpy.arange(b - a, dtype="int64")
            sources = concat_ranges(rows * input_ids.shape[1] + n_prefix + own_start - start, owned)
            batches.append(_Batch(staged(input_ids, device), None if attention_mask is None else
                                  staged(attention_mask, device), staged(targets, device), staged(sources, device)))
        return batches

    def piece_states(self, prepared: _Prepared, module: torch.nn.Module) -> torch.Tensor:
        """Run the prepared batches; return the run's (n_pieces, n_layers, width)."""
        device = self.device
        non_blocking = device.type == "cuda"
        # Every piece is owned by exactly one window, so every row gets written.
        # float32 whatever torch's default dtype (`torch.set_default_dtype`):
        # the states are written as float32 below, and the vectors are float32.
        states = torch.empty((prepared.n_pieces, len(self.layers), self.width), dtype=torch.float32, device=device)
        with self._precision_context(device):
            for batch in prepared.batches:
                input_ids, targets, sources = (
                    t.to(device, non_blocking=non_blocking) for t in (batch.input_ids, batch.targets, batch.sources)
                )
                attention_mask = None if batch.attention_mask is None else \
                    batch.attention_mask.to(device, non_blocking=non_blocking)
                selected = self.selected_states(module, input_ids, attention_mask)
                # The owned pieces of each selected layer, without the padding,
                # written layer by layer (no stacked copy of them all first).
                for layer, h in enumerate(selected):
                    states[:, layer].index_copy_(0, targets, h.reshape(-1, self.width).index_select(0, sources).float())
        return states

    def default_budget(self) -> int:
        """The padded-piece budget of a batch where `max_batch_items` is null, on the
        model's device now (`default_batch_items`)."""
        return default_batch_items(self.device, self.encoder, self.window + self.n_special)

    def probe_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """A small padded batch (input_ids, 2-D mask) on the model's device, to
        try out what forms of input and output the model takes: two rows of
        real wordpieces, 3 and 1 long (fewer with a tinier window)."""
        pieces, _, _ = self.wordpieces.flat(["Contextual vectors for every token, probed."])
        longer = min(3, self.window, len(pieces))
        input_ids, mask = self.pad(pieces, numpy.zeros(2, dtype="int64"), numpy.array([longer, min(longer, 1)]))
        return torch.from_numpy(input_ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def selected_states(self, module: torch.nn.Module, input_ids: torch.Tensor,
                        attention_mask: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """The forward pass: the selected layers' hidden states, (batch, length, width) each."""
        if self.top_state_only:  # (explicitly: a model's config may turn hidden states on)
            output = module(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=False)
            return [output.last_hidden_state]
        output = module(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return [output.hidden_states[i] for i in self.layers]

    def pad(self, piece_ids: numpy.ndarray, starts: numpy.ndarray,
            lengths: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """(input_ids, attention_mask) for windows piece_ids[start : start + length]:
        framed by the special tokens, padded to the longest."""
        lengths = numpy.asarray(lengths, dtype="int64")
        n = len(lengths)
        framed = lengths + self.n_special
        width = int(framed.max())
        input_ids = numpy.full((n, width), self.pad_id, dtype="int64")
        n_prefix = len(self.prefix_ids)
        input_ids[:, :n_prefix] = self.prefix_ids
        # All rows' pieces at once: row r's pieces go to columns n_prefix.. .
        rows = numpy.repeat(numpy.arange(n), lengths)
        cols = concat_ranges(numpy.full(n, n_prefix), lengths)
        input_ids[rows, cols] = piece_ids[concat_ranges(starts, lengths)]
        for k, suffix_id in enumerate(self.suffix_ids):
            input_ids[numpy.arange(n), n_prefix + lengths + k] = suffix_id
        mask = (numpy.arange(width)[None, :] < framed[:, None]).astype("int64")
        return input_ids, mask

    @contextlib.contextmanager
    def _precision_context(self, device: torch.device) -> Iterator[None]:
        """What the forward passes run under for `precision` on `device`."""
        with contextlib.ExitStack() as stack:
            if self.precision == "tf32" and device.type == "cuda":
                stack.enter_context(tf32_matmuls())
            if self.precision in _AUTOCAST_DTYPES:
                if device.type == "cuda":
                    # The windows' varying shapes would make cuDNN plan its
                    # attention anew for each (see `CUDNN_ATTENTION_OFF`).
                    stack.enter_context(cudnn_attention_off())
                stack.enter_context(torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[self.precision]))
            else:  # (tf32 too: fp32 with TF32 matmuls, which the caller's bf16 autocast would override)
                stack.enter_context(callers_autocast_off(device.type))
            yield

    def _quantized(self) -> torch.nn.Module:
        with self._int8_lock:
            if self._int8 is None:
                self._int8 = _quantized_int8(self.runner)
            return self._int8


def training_copy(module: torch.nn.Module) -> torch.nn.Module:
    """`module`'s structure in training mode (dropout on), sharing its tensors.

    Deep-copying with every parameter and buffer already in the memo copies
    the modules (and their `training` flags) but not one weight: an optimizer
    step on either is a step on both.
    """
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, shared).train()


def _first_layers(module: torch.nn.Module, n_layers: int) -> torch.nn.Module:
    """A shallow copy of `module` that runs only its first `n_layers` transformer
    layers, where its layer stack can be found (`encoder.layer`,
    `transformer.layer`, ...). The layers themselves are shared, not copied.
    Other models run all their layers.
    """
    for owner_name in ("encoder", "transformer"):
        owner = getattr(module, owner_name, None)
        if not isinstance(owner, torch.nn.Module):
            continue
        for name in ("layer", "layers"):
            stack = getattr(owner, name, None)
            if isinstance(stack, torch.nn.ModuleList):
                if n_layers >= len(stack):
                    return module
                owner_copy = copy.copy(owner)
                owner_copy._modules = dict(owner._modules)
                setattr(owner_copy, name, torch.nn.ModuleList(list(stack)[:n_layers]))
                module_copy = copy.copy(module)
                module_copy._modules = dict(module._modules)
                setattr(module_copy, owner_name, owner_copy)
                return module_copy
    return module


def _padded_pass(module: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
    """`module`'s output, every hidden state included, on a padded probe (input_ids, mask):
    what the probes below compare other ways of running it with."""
    with torch.inference_mode():
        return module(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)


def _cut_keeps_states(cut: torch.nn.Module, full: torch.nn.Module, input_ids: torch.Tensor,
                      mask: torch.Tensor, layers: Sequence[int], *, outputs: Optional[Tuple[Any, Any]] = None) -> bool:
    """Whether `cut` (`_first_layers` of `full`) gives the selected layers'
    hidden states as `full` does, on a padded probe (input_ids, mask).

    Most encoders return each layer's output as it is, so running fewer
    layers changes nothing below them. Some normalize after their last layer
    (Megatron-BERT, XLM-RoBERTa-XL, ModernBERT: a final norm that transformers
    applies to the top state only); cut, they would normalize the state of the
    layer they were cut at, a silently different vector. Those run whole.
    Compared on the unpadded positions, to float rounding (rtol 1e-4, atol 1e-5).
    outputs: the two modules' `_padded_pass`, where already run.
    """
    if cut is full:
        return True
    real = mask.bool()
    cut_output, full_output = outputs if outputs is not None else (
        _padded_pass(cut, input_ids, mask), _padded_pass(full, input_ids, mask))
    got, expected = cut_output.hidden_states, full_output.hidden_states
    return all(
        i < len(got) and got[i].shape == expected[i].shape
        and torch.allclose(got[i][real], expected[i][real], rtol=1e-4, atol=1e-5)
        for i in layers
    )


def _padding_is_neutral(module: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, *,
                        expected: Any = None) -> bool:
    """Whether the padded rows of a probe (input_ids, mask) get the states
    each row gets alone, unpadded.

    Attention masks padding out, and in most encoders nothing else reads it.
    Some layers do: ConvBERT's span-based convolutions run over the padded
    positions too, so a window's states would depend on the other windows in
    its batch. Compared on the real positions, to float rounding (rtol 1e-4,
    atol 1e-5). expected: the module's `_padded_pass`, where already run.
    """
    lengths = mask.sum(dim=1).tolist()
    batched = (expected if expected is not None else _padded_pass(module, input_ids, mask)).hidden_states
    with torch.inference_mode():
        for row, n in enumerate(lengths):
            if n == input_ids.shape[1]:
                continue
            alone_ids = input_ids[row : row + 1, :n]
            alone = module(input_ids=alone_ids, attention_mask=torch.ones_like(alone_ids),
                           output_hidden_states=True).hidden_states
            if not all(torch.allclose(b[row, :n], a[0], rtol=1e-4, atol=1e-5) for b, a in zip(batched, alone)):
                return False
    return True


def _takes_broadcast_mask(module: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, *,
                          expected: Any = None) -> bool:
    """Whether `module` masks padding from a (batch, 1, length) attention mask
    as it does from its usual (batch, length) one.

    With SDPA attention (their default), Hugging Face's BERT and RoBERTa turn
    a 2-D mask into a (batch, 1, length, length) float tensor before each
    forward pass; over windows of 512 pieces that cost more than a small
    model's layers (the CPU proxy's forward pass ran 1.7x faster without it).
    A 3-D mask is used as it is and broadcast by attention. (On CUDA,
    PyTorch's memory-efficient kernel makes either form contiguous per head
    before it runs, so there only transformers' own expansion is saved.)

    Not every model (or transformers version) accepts a 3-D mask, so it is
    tried once, on a padded probe (input_ids, mask), and used only where
    every hidden state of the unpadded positions agrees with the 2-D mask's
    (to float rounding: rtol 1e-4, atol 1e-5). expected: the module's
    `_padded_pass`, where already run.
    """
    real = mask.bool()
    states = (expected if expected is not None else _padded_pass(module, input_ids, mask)).hidden_states
    with torch.inference_mode():
        try:
            got = module(input_ids=input_ids, attention_mask=mask[:, None, :], output_hidden_states=True).hidden_states
        except Exception:  # a model that does not take the form fails in its own way: use the 2-D mask
            return False
    return _same_states(got, states, real)


def _needs_no_mask(module: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether `module` gives an unpadded batch the same states without an attention
    mask as with an all-ones one.

    With SDPA attention, transformers drops an all-ones mask so that SDPA can
    run its mask-free kernels, but it finds out with `torch.all(mask == 1)` on
    the host: on a GPU, a wait for all the queued work, once per forward
    batch. Without a mask there is nothing to check. Tried once, on the
    probe's longer (unpadded) row, and used only where every hidden state
    agrees (to float rounding: rtol 1e-4, atol 1e-5).
    """
    row = input_ids[:1, : int(mask[0].sum())]
    with torch.inference_mode():
        expected = module(input_ids=row, attention_mask=torch.ones_like(row), output_hidden_states=True).hidden_states
        try:
            got = module(input_ids=row, attention_mask=None, output_hidden_states=True).hidden_states
        except Exception:  # a model that needs its mask fails in its own way: always give one
            return False
    return _same_states(got, expected)


def _same_states(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor],
                 where: Optional[torch.Tensor] = None) -> bool:
    """Whether two runs' hidden states agree, every layer, on the positions
    `where` is true (all where None), to float rounding (rtol 1e-4, atol 1e-5)."""
    return len(got) == len(expected) and all(
        g.shape == e.shape and torch.allclose(g if where is None else g[where], e if where is None else e[where],
                                              rtol=1e-4, atol=1e-5)
        for g, e in zip(got, expected)
    )


def _top_state_is_last(module: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, layer: int, *,
                       expected: Any = None) -> bool:
    """Whether `module`'s `last_hidden_state` is `hidden_states[layer]`.

    With `output_hidden_states` every layer's output is kept until the forward
    pass ends: for BERT-base at a GPU budget of 65,536 pieces that is 13
    states of 200 MB where one is used. Where one layer is selected and the
    runner could be cut there (`_first_layers`), the top state is the one
    wanted; not where the stack could not be cut (ALBERT's layer groups), nor
    where the model returns something else as `last_hidden_state`.
    expected: the module's `_padded_pass`, where already run.
    """
    output = expected if expected is not None else _padded_pass(module, input_ids, mask)
    top = getattr(output, "last_hidden_state", None)
    states = output.hidden_states
    return top is not None and len(states) == layer + 1 and torch.equal(top, states[layer])


def _quantized_int8(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose linear layers run in int8 (dynamic quantization)."""
    try:
        # Deprecated by PyTorch in favour of torchao, but present in torch 2.x;
        # an opt-in mode does not justify another dependency.
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise bad_setting(COMPONENT, "precision", "int8",
                          "this torch has no torch.ao.quantization.quantize_dynamic") from None
    return quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)


def _special_token_frame(tokenizer) -> Tuple[List[int], List[int]]:
    """The special tokens the tokenizer puts before and after a single sequence.

    Read off what the tokenizer itself produces, so a window is framed exactly
    as `tokenizer(text)` would frame it, whatever the model family. The text
    read is "a" or, where that gives no piece (a vocabulary without "a" and
    without an unknown token drops it), the first of the vocabulary's tokens
    that gives one: around no piece at all, every special would read as a suffix.
    """
    special = set(tokenizer.all_special_ids)
    vocabulary = (tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in special)
    for text in itertools.islice(itertools.chain(["a"], vocabulary), 1000):
        bare = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if bare:
            framed = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
            for at in range(len(framed) - len(bare) + 1):
                if framed[at : at + len(bare)] == bare:
                    return list(framed[:at]), list(framed[at + len(bare) :])
            break
    raise ValueError(f"[{COMPONENT}] cannot locate the text between the special tokens")


def _tokenizer_digest(tokenizer: Any) -> str:
    """A digest of what the tokenizer does: its whole definition (vocabulary,
    normalizer, special tokens) where it is a fast one, and whether special
    tokens' text in a doc is split like other text (transformers'
    `split_special_tokens`, which the definition does not hold)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(tokenizer)
    text += f"\nsplit_special_tokens={bool(getattr(tokenizer, 'split_special_tokens', False))}"
    return hashlib.blake2b(text.encode("utf8"), digest_size=8).hexdigest()


#: Config fields that do not change what a model computes when it predicts:
#: where it came from, how transformers runs or returns it, dropout.
_CONFIG_NOT_COMPUTED = {"transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype",
                        "_attn_implementation_autoset", "attn_implementation", "output_hidden_states",
                        "output_attentions", "return_dict", "use_cache", "torchscript"}


def _config_digest(config: Any) -> str:
    """A digest of the model's config.json fields that shape its outputs (another
    activation, number of heads or position embedding is another model, with the
    same weights): those that differ from the class's defaults, dropout and
    the fields of `_CONFIG_NOT_COMPUTED` left out."""
    fields = config.to_diff_dict() if hasattr(config, "to_diff_dict") else {}
    kept = {k: v for k, v in fields.items() if k not in _CONFIG_NOT_COMPUTED and "dropout" not in k}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf8"), digest_size=8).hexdigest()


def _window_settings(settings: Dict[str, Any], encoder: HFEncoder) -> Tuple[int, int]:
    n_special = encoder.tokenizer.num_special_tokens_to_add(pair=False)
    limit = _max_positions(encoder) - n_special
    window = settings["window"] or limit
    if window > limit:
        raise bad_setting(
            COMPONENT, "window", window, f"the model takes at most {limit} wordpieces plus {n_special} special tokens"
        )
    stride = settings["stride"] or max(1, (3 * window) // 4)
    _check_stride(stride, window)
    return window, stride


def _check_stride(stride: int, window: int) -> None:
    if stride > window:
        raise bad_setting(COMPONENT, "stride", stride, f"must not exceed window ({window})")


def _max_positions(encoder: HFEncoder) -> int:
    candidates: Dict[str, Optional[int]] = {
        "tokenizer": encoder.tokenizer.model_max_length,
        "config": config_positions(encoder),
    }
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    usable = [int(v) for v in candidates.values() if v is not None and v < 100_000]
    return min(usable) if usable else 512


def config_positions(encoder: HFEncoder) -> Optional[int]:
    """How many pieces the model's position table takes (None: its config does not say)."""
    positions = getattr(encoder.config, "max_position_embeddings", None)
    return None if positions is None else int(positions) - _skipped_positions(encoder.module)


def _skipped_positions(module: torch.nn.Module) -> int:
    """How many rows of the position table a model never uses for a piece.

    RoBERTa-style models (RoBERTa, XLM-R, CamemBERT, MPNet, Longformer, ...)
    number positions from `padding_idx + 1`, the padding row of their position
    embeddings, so they take `max_position_embeddings - padding_idx - 1`
    pieces, not `max_position_embeddings`. Their released tokenizers say so
    in `model_max_length`; a tokenizer saved without a limit does not. (Any
    table with a padding row: I-BERT's is its own `QuantEmbedding`.)
    """
    table = getattr(getattr(module, "embeddings", None), "position_embeddings", None)
    padding = getattr(table, "padding_idx", None) if isinstance(table, torch.nn.Module) else None
    return padding + 1 if isinstance(padding, int) and padding >= 0 else 0


def default_batch_items(device: torch.device, encoder: HFEncoder, max_length: int) -> int:
    """The padded-piece budget when `max_batch_items` is null.

    CPU: 4096. CUDA: a quarter of the free device memory, divided by what one
    padded piece of a full-length window costs in the forward pass (every
    hidden state kept for output, the attention scores of every head, the
    feed-forward activations, in fp32), bounded to [4096, 65536].
    """
    if device.type != "cuda":
        return 4096
    free, _ = torch.cuda.mem_get_info(device)
    return batch_items_for_memory(free, encoder.config, max_length)


def batch_items_for_memory(free_bytes: int, config: Any, max_length: int) -> int:
    width = int(getattr(config, "hidden_size", 768))
    heads = int(getattr(config, "num_attention_heads", 12))
    layers = int(getattr(config, "num_hidden_layers", 12))
    inner = int(getattr(config, "intermediate_size", 4 * width))
    per_piece = 4 * ((layers + 1) * width + heads * max_length + inner + 4 * width)
    return int(min(max(free_bytes // 4 // per_piece, 4096), 65536))
