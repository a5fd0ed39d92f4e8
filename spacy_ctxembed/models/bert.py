"""`spacy-ctxembed.BertEmbedder.v1`: a Hugging Face encoder as a Thinc model.

docs -> wordpieces of each doc's raw text (the model's own fast tokenizer)
     -> overlapping windows, sorted by length and batched by a piece budget
     -> hidden states of the selected layers for the pieces each window owns
     -> pooled to spaCy tokens by character overlap
     -> per doc, an array (n_layers, n_tokens, width) on the current device.

The encoder is frozen: the model only ever runs under `torch.inference_mode`.
"""
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, cast

import numpy
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, PyTorchShim, torch2xp

from ..alignment import PieceAlignment, align_pieces, token_char_spans
from ..batching import batches_by_budget
from ..errors import bad_setting, check_choice, check_positive
from ..pooling import pool_pieces
from ..settings import normalize_layers
from ..types import PRECISIONS, EmbedderModel
from ..windows import Window, plan_windows
from .hf_loading import COMPONENT, HFEncoder, load_encoder, resolve_model_dir

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


_TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"
_set_for_fork = False


def _before_fork() -> None:
    # The tokenizers library disables its threads in a forked child and warns
    # about it in every worker unless this is set when the fork happens.
    global _set_for_fork
    _set_for_fork = _TOKENIZERS_PARALLELISM not in os.environ
    if _set_for_fork:
        os.environ[_TOKENIZERS_PARALLELISM] = "false"


def _after_fork_in_parent() -> None:
    if _set_for_fork:
        del os.environ[_TOKENIZERS_PARALLELISM]


def _after_fork_in_child() -> None:
    # `nlp.pipe(n_process=...)` forks. torch's intra-op (OpenMP) thread pool
    # does not survive a fork, and a child that uses it deadlocks; with one
    # thread no pool is used. The worker processes are the parallelism.
    torch.set_num_threads(1)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


@registry.architectures("spacy-ctxembed.BertEmbedder.v1")
def BertEmbedder(
    *,
    name: Optional[str] = None,
    window: Optional[int] = None,
    stride: Optional[int] = None,
    max_batch_items: int = 4096,
    precision: str = "fp32",
) -> EmbedderModel:
    """Contextual token layers from a Hugging Face encoder.

    name: a local model directory or a hub name already in the local cache;
        None for the embedded all-MiniLM-L6-v2.
    window: wordpieces per window, special tokens excluded; None for the most
        the model takes.
    stride: pieces between window starts; None for 3/4 of the window.
    max_batch_items: padded wordpieces per forward batch.
    precision: "fp32" (exact); "fp16"/"bf16": autocast (mixed precision, for
        GPU); "int8": dynamic quantization of the linear layers (CPU only).
    """
    check_choice(COMPONENT, "precision", precision, PRECISIONS)
    check_positive(COMPONENT, "window", window, "number of wordpieces")
    check_positive(COMPONENT, "stride", stride, "number of wordpieces")
    check_positive(COMPONENT, "max_batch_items", max_batch_items)
    return Model(
        "ctxembed-bert",
        forward,
        init=init,
        dims={"nO": None},
        attrs={
            "name": name,
            "window": window,
            "stride": stride,
            "max_batch_items": max_batch_items,
            "precision": precision,
            # Set by the pipeline component from its own settings.
            "layers": (-1,),
            "pooling": "mean",
            # Set by the component's from_disk: load from the pipeline directory.
            "source_dir": None,
        },
    )


def forward(model: EmbedderModel, docs: List[Doc], is_train: bool):
    outputs = _get_runner(model).embed(docs, pooling=model.attrs["pooling"])
    return [torch2xp(layers, ops=model.ops) for layers in outputs], lambda d_outputs: []


def init(model: EmbedderModel, X: Optional[List[Doc]] = None, Y=None) -> None:
    source_dir = model.attrs["source_dir"]
    if source_dir is not None:
        encoder = load_encoder(Path(source_dir), safetensors_only=True)
    else:
        encoder = load_encoder(resolve_model_dir(model.attrs["name"]))
    layers = normalize_layers(COMPONENT, model.attrs["layers"], encoder.n_hidden_states)
    window, stride = _window_settings(model, encoder)
    shim = EncoderShim(encoder, layers=layers, window=window, stride=stride,
                       max_batch_items=model.attrs["max_batch_items"],
                       precision=model.attrs["precision"])
    model.shims[:] = [shim]
    # force: from_disk may load a different model than the one first initialised.
    model.set_dim("nO", encoder.width, force=True)


def get_encoder(model: EmbedderModel) -> HFEncoder:
    return _get_runner(model).encoder


def _get_runner(model: EmbedderModel) -> "EncoderShim":
    if not model.shims:
        raise ValueError(f"[{COMPONENT}] the model is not loaded: call nlp.initialize() first")
    return cast(EncoderShim, model.shims[0])


@dataclass(frozen=True)
class _DocPlan:
    alignment: PieceAlignment
    piece_ids: List[int]
    windows: List[Window]


class EncoderShim(PyTorchShim):
    """Holds the encoder (moved to the current device) and runs it over docs."""

    def __init__(self, encoder: HFEncoder, *, layers: Tuple[int, ...], window: int,
                 stride: int, max_batch_items: int, precision: str):
        super().__init__(encoder.module)
        self.encoder = encoder
        # The module that runs: the encoder itself, or an int8 copy of it (the
        # fp32 original stays for saving, so a saved pipeline is always exact).
        self.runner: torch.nn.Module = encoder.module
        if precision == "int8":
            if self.device.type != "cpu":
                raise bad_setting(COMPONENT, "precision", precision,
                                  "int8 quantization runs on CPU only; use 'fp16' or 'bf16' on GPU")
            self.runner = _quantized_int8(encoder.module)
        self.layers = layers
        self.window = window
        self.stride = stride
        self.max_batch_items = max_batch_items
        self.precision = precision
        self.prefix_ids, self.suffix_ids = _special_token_frame(encoder.tokenizer)
        pad = encoder.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def save(self, directory: Path) -> None:
        """Write the encoder as a Hugging Face directory (safetensors weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.encoder.save(directory)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.module.parameters()).device

    def embed(self, docs: Sequence[Doc], *, pooling: str) -> List[torch.Tensor]:
        """Per doc, the selected layers pooled to tokens: (n_layers, n_tokens, width)."""
        plans = self.plan(docs)
        states = self.piece_states(plans)
        return [pool_pieces(s, plan.alignment, pooling) for s, plan in zip(states, plans)]

    def plan(self, docs: Sequence[Doc]) -> List[_DocPlan]:
        """Tokenize the raw texts, align pieces to tokens and plan the windows."""
        encodings = self.encoder.tokenizer(
            [doc.text for doc in docs],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long texts are windowed: no ">512 tokens" warning
        )
        plans = []
        for doc, ids, offsets in zip(docs, encodings["input_ids"], encodings["offset_mapping"]):
            spans = numpy.asarray(offsets, dtype="int64").reshape(-1, 2)
            alignment = align_pieces(spans[:, 0], spans[:, 1], *token_char_spans(doc))
            windows = plan_windows(len(ids), self.window, self.stride,
                                   alignment.piece_may_start_segment())
            plans.append(_DocPlan(alignment, ids, windows))
        return plans

    def piece_states(self, plans: Sequence[_DocPlan]) -> List[torch.Tensor]:
        """Run every window of every doc; return (n_pieces, n_layers, width) per doc."""
        device = self.device
        width = self.encoder.width
        states = [
            torch.empty((len(p.piece_ids), len(self.layers), width), device=device)
            for p in plans
        ]
        items = [(d, w) for d, plan in enumerate(plans) for w in plan.windows]
        # Longest first, so each batch holds windows of similar length.
        items.sort(key=lambda item: item[1].end - item[1].start, reverse=True)
        n_prefix = len(self.prefix_ids)
        # hidden_states[i] needs only the first i layers: skip the ones above.
        top = max(self.layers)
        with torch.inference_mode(), self._autocast(device), _only_layers(self.runner, top):
            n_special = n_prefix + len(self.suffix_ids)
            for batch in batches_by_budget(items, self.max_batch_items, lambda it: it[1].end - it[1].start + n_special):
                input_ids, attention_mask = self._pad(
                    [plans[d].piece_ids[w.start : w.end] for d, w in batch], device
                )
                output = self.runner(
                    input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
                )
                hidden = torch.stack([output.hidden_states[i] for i in self.layers], dim=2)
                hidden = hidden.float()
                for row, (d, w) in enumerate(batch):
                    lo = n_prefix + w.own_start - w.start
                    states[d][w.own_start : w.own_end] = hidden[row, lo : lo + w.own_end - w.own_start]
        return states

    def _pad(self, pieces: List[List[int]], device: torch.device):
        rows = [self.prefix_ids + ids + self.suffix_ids for ids in pieces]
        length = max(len(r) for r in rows)
        input_ids = numpy.full((len(rows), length), self.pad_id, dtype="int64")
        mask = numpy.zeros((len(rows), length), dtype="int64")
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)

    def _autocast(self, device: torch.device):
        if self.precision not in _AUTOCAST_DTYPES:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[self.precision])


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


@contextlib.contextmanager
def _only_layers(module: torch.nn.Module, n_layers: int) -> Iterator[None]:
    """Run only the first `n_layers` transformer layers of `module`, where its
    layer stack can be found (`encoder.layer`, `transformer.layer`, ...).

    Temporarily swaps in a shorter ModuleList that shares the same layers;
    other models simply run all their layers.
    """
    found = _layer_stack(module)
    if found is None or n_layers >= len(getattr(*found)):
        yield
        return
    owner, name = found
    full = getattr(owner, name)
    setattr(owner, name, full[:n_layers])
    try:
        yield
    finally:
        setattr(owner, name, full)


def _layer_stack(module: torch.nn.Module) -> Optional[Tuple[torch.nn.Module, str]]:
    for owner_name in ("encoder", "transformer"):
        owner = getattr(module, owner_name, None)
        if not isinstance(owner, torch.nn.Module):
            continue
        for name in ("layer", "layers"):
            if isinstance(getattr(owner, name, None), torch.nn.ModuleList):
                return owner, name
    return None


def _special_token_frame(tokenizer) -> Tuple[List[int], List[int]]:
    """The special tokens the tokenizer puts before and after a single sequence.

    Read off what the tokenizer itself produces, so a window is framed exactly
    as `tokenizer(text)` would frame it, whatever the model family.
    """
    bare = tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"]
    for at in range(len(framed) - len(bare) + 1):
        if framed[at : at + len(bare)] == bare:
            return list(framed[:at]), list(framed[at + len(bare) :])
    raise ValueError(f"[{COMPONENT}] cannot locate the text between the special tokens")


def _window_settings(model: EmbedderModel, encoder: HFEncoder) -> Tuple[int, int]:
    n_special = encoder.tokenizer.num_special_tokens_to_add(pair=False)
    limit = _max_positions(encoder) - n_special
    window = model.attrs["window"] or limit
    if window > limit:
        raise bad_setting(
            COMPONENT, "window", window,
            f"the model takes at most {limit} wordpieces plus {n_special} special tokens",
        )
    stride = model.attrs["stride"] or max(1, (3 * window) // 4)
    if stride > window:
        raise bad_setting(COMPONENT, "stride", stride, f"must not exceed window ({window})")
    return window, stride


def _max_positions(encoder: HFEncoder) -> int:
    candidates: Dict[str, Optional[int]] = {
        "tokenizer": encoder.tokenizer.model_max_length,
        "config": getattr(encoder.config, "max_position_embeddings", None),
    }
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    usable = [int(v) for v in candidates.values() if v is not None and v < 100_000]
    return min(usable) if usable else 512
