"""Thinc layers that turn per-doc layer stacks (n_layers, n_tokens, width) into vectors."""
from ..errors import check_choice
from ..types import COMBINE_MODES, CombinerModel
from .concat_layers import ConcatLayers
from .mean_layers import MeanLayers
from .scalar_mix import ScalarMix


def build_combiner(component: str, combine: str, n_layers: int) -> CombinerModel:
    """The combiner for a v1 `combine` setting."""
    check_choice(component, "combine", combine, COMBINE_MODES)
    if combine == "mean":
        return MeanLayers()
    if combine == "concat":
        return ConcatLayers()
    return ScalarMix(n_layers=n_layers)


__all__ = ["ConcatLayers", "MeanLayers", "ScalarMix", "build_combiner"]
