"""Validation of the settings that every embedder shares, and settings kept from the config."""
import warnings
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import srsly
from thinc.api import Model
from thinc.model import deserialize_attr, serialize_attr

from .errors import bad_setting, is_int, warn


def layers_as_given(layers: Any) -> Any:
    """`layers` as a list where it is a sequence of them (a list, a tuple, a
    range); a string, a mapping or a number as given, for `check_layers` to
    name: `layers = "12"` in a config passes confection (each character is an
    int) and was named as ['1', '2']."""
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
        return layers
    return list(layers)


def layer_count(layers: Any) -> Optional[int]:
    """How many layers `layers` (as `layers_as_given` keeps them) selects; None
    where it is not a list (the component's check names it)."""
    return len(layers) if isinstance(layers, list) else None


def check_layers(component: str, layers: Any) -> None:
    """`layers` must be a non-empty list of integers (negative = from the top)."""
    if not isinstance(layers, (list, tuple)) or not layers or not all(is_int(i) for i in layers):
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


def warn_repeated_layers(name: str, layers: Sequence[int], resolved: Sequence[int],
                         n_available: Optional[int] = None, *, block: str = "") -> None:
    """Warn where `layers` selects a layer more than once (`resolved`: the
    model's indices; `[-1, 6]` of a 7-state model is layer 6 twice): that
    layer's vector then counts more than once, concatenated again or weighted
    more in a mean or a mix. A warning, not an error: pipelines saved so keep
    loading. `name`, `block`: who the warning speaks for (`checked_as`)."""
    for j, layer in enumerate(resolved):
        if layer in resolved[:j]:
            first = layers[list(resolved).index(layer)]
            named = (f"{first} and {layers[j]} both select layer {layer} (the model has {n_available} layers, "
                     "counting its embedding (token) layer as 0)" if first != layers[j]
                     else f"{layers[j]} is given more than once")
            warn(f"[{name}] {block}layers = {list(layers)}: {named}, so its vector counts more than once "
                 "(concatenated again, or weighted more in a mean or a mix); select each layer once")
            return


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

    __slots__ = ("value", "saved")

    def __init__(self, value: Any, saved: Any = None) -> None:
        self.value = value
        #: What loaded bytes held for it (None: not loaded, or not readable), for
        #: the checks that need it: a copied encoder's layers and pooling.
        self.saved = saved

    def __repr__(self) -> str:
        return f"FromConfig({self.value!r})"


@serialize_attr.register(FromConfig)
def _write_config_value(setting: FromConfig, value: FromConfig, name: str, model: Model) -> bytes:
    return srsly.msgpack_dumps(setting.value)


@deserialize_attr.register(FromConfig)
def _keep_config_value(current: FromConfig, saved: bytes, name: str, model: Model) -> FromConfig:
    try:
        value = srsly.msgpack_loads(saved)
    except Exception:  # (bytes of another layout: nothing to compare with)
        value = None
    return FromConfig(current.value, saved=value)


def config_value(value: Any) -> Any:
    """The value of a `Model.attrs` entry, unwrapped where it is a `FromConfig`."""
    return value.value if isinstance(value, FromConfig) else value


def check_saved_features(component: str, saved: Any, current: Dict[str, Any], *, trained: str,
                         on_purpose: str = "", setting_prefix: str = "") -> None:
    """After a load, where weights trained on the vectors read them: the
    features the encoder was saved with (`encoder_features`) against the
    config's. Another `pooling` gives other vectors for every token, under
    weights trained on the saved ones: refused, as other layers are. Other
    windows change only the tokens of docs longer than the smaller window, and
    are a speed setting a user may mean to change: said in a warning.

    trained: what was trained on the vectors, for the messages.
    on_purpose: how to load it with the config's pooling all the same, where there is a way.
    setting_prefix: where the settings are in the component's model, for the messages.
    Saves that record nothing (earlier versions, ELMo) are not checked.
    """
    if not isinstance(saved, dict) or not current:
        return
    if "pooling" in saved and "pooling" in current and saved["pooling"] != current["pooling"]:
        raise bad_setting(component, f"{setting_prefix}pooling", current["pooling"],
                          f"the encoder was saved with pooling = {saved['pooling']!r}, and what was trained on those "
                          f"vectors ({trained}) reads them: put back pooling = {saved['pooling']!r}, or train again"
                          + (f"; {on_purpose}" if on_purpose else ""))
    changed = [name for name in ("window", "stride") if name in saved and name in current
               and saved[name] != current[name]]
    if changed:
        now = ", ".join(f"{setting_prefix}{name} = {current[name]}" for name in changed)
        was = ", ".join(f"{name} = {saved[name]}" for name in changed)
        shortest = min(current.get("window", 0), saved.get("window", 0)) or "the window"
        warnings.warn(f"[{component}] {now}: the encoder was saved with {was} (resolved), and what was trained "
                      f"on its vectors ({trained}) saw those; docs longer than {shortest} wordpieces get other "
                      "vectors now", stacklevel=3)
