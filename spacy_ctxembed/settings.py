"""Validation of the settings that every embedder shares."""
from typing import Any, Iterable, Tuple

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
                f"index {index} is out of range: the model has {n_available} layers "
                f"(valid: {-n_available} .. {n_available - 1})",
            )
        resolved.append(index % n_available)
    return tuple(resolved)
