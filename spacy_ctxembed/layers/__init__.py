"""Thinc layers that turn per-doc layer stacks (n_layers, n_tokens, width) into vectors."""
from ..errors import check_choice
from ..types import COMBINE_MODES, CombinerModel
from .concat_layers import concat_layers
from .mean_layers import mean_layers
from .scalar_mix import ScalarMix


def build_combiner(component: str, combine: str, n_layers: int) -> CombinerModel:
    """The combiner for the `combine` setting."""
    check_choice(component, "combine", combine, COMBINE_MODES)
    if combine == "mean":
        return mean_layers()
    if combine == "concat":
        return concat_layers()
    return ScalarMix(n_layers=n_layers)


__all__ = ["ScalarMix", "build_combiner", "concat_layers", "mean_layers"]
