"""Validation of the settings that every embedder shares, and settings kept from the config."""
from typing import Any, Iterable, List, Optional, Tuple

import srsly
from thinc.api import Model
from thinc.model import deserialize_attr, serialize_attr

from .errors import bad_setting


def check_layers(component: str, layers: Any) -> None:
    """`layers` must be a non-empty list of integers (negative = from the top)."""
    if not isinstance(layers, (list, tuple)) or not layers or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in layers
    ):
        raise bad_setting(component, "layers", layers, "expected a non-empty list of integers")


def normalize_layers(component: str, layers: Iterable[int], n_available: int) -> Tuple[int, ...]:
    """Turn layer indices (negative = from the top) into non-negative indices.

    n_available: how many layers the model outputs; valid indices are
        -n_available .. n_available - 1.
    """
    layers = list(layers)
    resolved = []
    for index in layers:
        if not -n_available <= index < n_available:
            raise bad_setting(
                component,
                "layers",
                layers,
                f"index {index} is out of range: the model has {n_available} layers, counting its embedding "
                f"(token) layer as 0 (valid: {-n_available} .. {n_available - 1})",
            )
        resolved.append(index % n_available)
    return tuple(resolved)


class FromConfig:
    """A setting from the config, kept in `Model.attrs`, that saved bytes never override.

    Thinc writes a model's attrs into its bytes and by default puts the saved
    values back in `from_bytes`, over the ones the config just built the model
    with: an edited config (`grad_factor = 0`, `pooling = "first"`) would be
    silently ignored, while a load from disk followed it. These are written as
    the plain value (the layout earlier versions wrote and read), and on
    loading the config's value stays (`_keep_config_value`), also for bytes
    written by earlier versions. Read them with `config_value`.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"FromConfig({self.value!r})"


@serialize_attr.register(FromConfig)
def _write_config_value(setting: FromConfig, value: FromConfig, name: str, model: Model) -> bytes:
    return srsly.msgpack_dumps(setting.value)


@deserialize_attr.register(FromConfig)
def _keep_config_value(current: FromConfig, saved: bytes, name: str, model: Model) -> FromConfig:
    return current


def config_value(value: Any) -> Any:
    """The value of a `Model.attrs` entry, unwrapped where it is a `FromConfig`."""
    return value.value if isinstance(value, FromConfig) else value


def selected_layers(encoder: Model) -> Optional[List[int]]:
    """The encoder layers the component combines; None where that is not known
    (weights not loaded). BERT and ELMo give non-negative indices, resolved
    against the loaded model. An upstream transformer's depth is known only
    from its outputs, so `ctxembed_from_trf` gives its setting as written:
    `[-1]` and `[12]` then count as different layers (a load is refused
    where they would be the same), but `[-1]` edited to `[-2]` is never
    taken for it."""
    for shim in encoder.shims:  # (BERT, ELMo: resolved against the loaded model)
        layers = getattr(shim, "layers", None)
        return [int(i) for i in layers] if layers else None
    settings = config_value(encoder.attrs.get("settings"))
    layers = settings.get("layers") if isinstance(settings, dict) else None
    if isinstance(layers, list) and layers and all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        return list(layers)
    return None
