"""Validation of the settings that every embedder component shares."""
from typing import Iterable, Optional, Tuple

from .errors import bad_setting, check_choice
from .types import COMBINE_MODES, POOLING_MODES


def check_component_settings(
    component: str, *, pooling: Optional[str], combine: str, layers: Iterable[int]
) -> None:
    """Checks that need no model: run when the component is created (`add_pipe`).

    pooling: None for models whose vectors are per word already (ELMo).
    """
    if pooling is not None:
        check_choice(component, "pooling", pooling, POOLING_MODES)
    check_choice(component, "combine", combine, COMBINE_MODES)
    layers = list(layers)
    if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
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
                f"index {index} is out of range: the model has {n_available} layers "
                f"(valid: {-n_available} .. {n_available - 1})",
            )
        resolved.append(index % n_available)
    return tuple(resolved)
