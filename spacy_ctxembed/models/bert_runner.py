"""The PyTorch side of `BertEncoder.v2`: a loaded encoder prepared to run over docs.

docs -> wordpieces of each doc's raw text (the model's own fast tokenizer)
     -> overlapping windows, sorted by length and batched by a piece budget
     -> hidden states of the selected layers for the pieces each window owns
     -> pooled to spaCy tokens by character overlap
     -> per doc, a tensor (n_layers, n_tokens, width) on the model's device.

A `BertRunner` is built once when the weights load and is not changed by a
call, so one pipeline can serve several threads. The shim that holds it
(`BertShim`) is what Thinc sees: it saves and loads the weights as a Hugging
Face directory (safetensors, no pickles) and applies optimizer updates.
"""
import contextlib
import copy
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy
import srsly
import torch
from spacy.tokens import Doc
from thinc.api import PyTorchGradScaler, PyTorchShim, get_torch_default_device

from ..alignment import PieceAlignment, align_pieces, token_char_spans
from ..batching import batches_by_budget
from ..errors import bad_setting
from ..pooling import pool_pieces
from ..settings import normalize_layers
from ..windows import Window, plan_windows
from .hf_loading import HFEncoder, load_encoder

COMPONENT = "ctxembed_bert"
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class _DocPlan:
    alignment: PieceAlignment
    piece_ids: List[int]
    windows: List[Window]


class BertRunner:
    """An encoder prepared for one set of settings.

    settings: the `BertEncoder.v2` settings (layers, pooling, window, stride,
        max_batch_items, precision).
    """

    def __init__(self, encoder: HFEncoder, settings: Dict[str, Any]) -> None:
        self.encoder = encoder
        self.layers = normalize_layers(COMPONENT, settings["layers"], encoder.n_hidden_states)
        self.pooling: str = settings["pooling"]
        self.window, self.stride = _window_settings(settings, encoder)
        self.max_batch_items: int = settings["max_batch_items"]
        self.precision: str = settings["precision"]
        self.prefix_ids, self.suffix_ids = _special_token_frame(encoder.tokenizer)
        pad = encoder.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        # hidden_states[i] needs only the first i layers: the runner is a
        # shallow copy that runs those and shares their weights with the full
        # model (which is what is saved and trained).
        self.runner = _first_layers(encoder.module, max(self.layers))
        if self.precision == "int8" and self.device.type != "cpu":
            raise bad_setting(COMPONENT, "precision", "int8",
                              "int8 quantization runs on CPU only; use 'fp16' or 'bf16' on GPU")
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
        """
        plans = self.plan(docs)
        module = self.runner if grad or self.precision != "int8" else self._quantized()
        context = contextlib.nullcontext() if grad else torch.inference_mode()
        with context:
            states = self.piece_states(plans, module)
            return [pool_pieces(s, plan.alignment, self.pooling) for s, plan in zip(states, plans)]

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
            windows = plan_windows(len(ids), self.window, self.stride, alignment.piece_may_start_segment())
            plans.append(_DocPlan(alignment, ids, windows))
        return plans

    def piece_states(self, plans: Sequence[_DocPlan], module: torch.nn.Module) -> List[torch.Tensor]:
        """Run every window of every doc; return (n_pieces, n_layers, width) per doc."""
        device = self.device
        # Every piece is owned by exactly one window, so every row gets written.
        states = [torch.empty((len(p.piece_ids), len(self.layers), self.width), device=device) for p in plans]
        items = [(d, w) for d, plan in enumerate(plans) for w in plan.windows]
        # Longest first, so each batch holds windows of similar length.
        items.sort(key=lambda item: item[1].end - item[1].start, reverse=True)
        n_prefix = len(self.prefix_ids)
        n_special = n_prefix + len(self.suffix_ids)
        with self._autocast(device):
            for batch in batches_by_budget(items, self.max_batch_items, lambda it: it[1].end - it[1].start + n_special):
                input_ids, attention_mask = self._pad([plans[d].piece_ids[w.start : w.end] for d, w in batch], device)
                output = module(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
                hidden = torch.stack([output.hidden_states[i] for i in self.layers], dim=2).float()
                for row, (d, w) in enumerate(batch):
                    lo = n_prefix + w.own_start - w.start
                    states[d][w.own_start : w.own_end] = hidden[row, lo : lo + w.own_end - w.own_start]
        return states

    def _pad(self, pieces: List[List[int]], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
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

    def _quantized(self) -> torch.nn.Module:
        with self._int8_lock:
            if self._int8 is None:
                self._int8 = _quantized_int8(self.runner)
            return self._int8


class BertShim(PyTorchShim):
    """Holds a `BertRunner` for Thinc: weights in and out, optimizer updates.

    It exists before any weights are loaded (Thinc deserializes into the
    shims a model already has), and loads them in `initialize`, `from_bytes`
    or `load_dir`, never from a remembered path.
    """

    def __init__(self, settings: Dict[str, Any]) -> None:
        # Loss scaling for fp16 training on GPU; bf16 and fp32 need none.
        scaler = PyTorchGradScaler(enabled=settings["precision"] == "fp16" and torch.cuda.is_available())
        super().__init__(None, grad_scaler=scaler)
        self.settings = settings
        self.runner: Optional[BertRunner] = None

    @property
    def device(self):
        return self.runner.device if self.runner is not None else get_torch_default_device()

    @property
    def loaded(self) -> bool:
        return self.runner is not None

    def load(self, encoder: HFEncoder) -> None:
        encoder.module.to(get_torch_default_device())
        runner = BertRunner(encoder, self.settings)
        self._model = encoder.module
        self.runner = runner

    def get_runner(self) -> BertRunner:
        if self.runner is None:
            raise ValueError(f"[{COMPONENT}] the encoder has no weights yet: call nlp.initialize() first")
        return self.runner

    def save_dir(self, directory: Path) -> None:
        """Write the encoder as a Hugging Face directory (safetensors weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.get_runner().encoder.save(directory)

    def load_dir(self, directory: Path) -> None:
        self.load(load_encoder(Path(directory), component=COMPONENT, setting="model"))

    def to_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            self.save_dir(Path(tmp))
            files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
        return srsly.msgpack_dumps({"hf_files": files})

    def from_bytes(self, bytes_data: bytes) -> "BertShim":
        msg = srsly.msgpack_loads(bytes_data)
        files = msg.get("hf_files") if isinstance(msg, dict) else None
        if not isinstance(files, dict) or not files:
            raise ValueError(f"[{COMPONENT}] model: the serialized encoder holds no model files")
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                if Path(name).name != name or name in (".", ".."):
                    raise ValueError(f"[{COMPONENT}] model: refusing to unpack {name!r}")
                (Path(tmp) / name).write_bytes(data)
            self.load_dir(Path(tmp))
        return self

    def finish_update(self, optimizer) -> None:
        super().finish_update(optimizer)
        if self.runner is not None:
            self.runner.weights_changed()

    def __deepcopy__(self, memo: Dict[int, Any]) -> "BertShim":
        # Model.copy() (spaCy's replace_listeners) deep-copies shims. The int8
        # lock cannot be copied; the runner is rebuilt around the copied encoder.
        copied = BertShim(self.settings)
        if self.runner is not None:
            encoder = self.runner.encoder
            copied.load(HFEncoder(module=copy.deepcopy(encoder.module, memo), tokenizer=encoder.tokenizer,
                                  config=encoder.config))
        return copied


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
    as `tokenizer(text)` would frame it, whatever the model family.
    """
    bare = tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"]
    for at in range(len(framed) - len(bare) + 1):
        if framed[at : at + len(bare)] == bare:
            return list(framed[:at]), list(framed[at + len(bare) :])
    raise ValueError(f"[{COMPONENT}] cannot locate the text between the special tokens")


def _window_settings(settings: Dict[str, Any], encoder: HFEncoder) -> Tuple[int, int]:
    n_special = encoder.tokenizer.num_special_tokens_to_add(pair=False)
    limit = _max_positions(encoder) - n_special
    window = settings["window"] or limit
    if window > limit:
        raise bad_setting(
            COMPONENT, "window", window, f"the model takes at most {limit} wordpieces plus {n_special} special tokens"
        )
    stride = settings["stride"] or max(1, (3 * window) // 4)
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
