"""Thinc layers that turn per-doc layer stacks (n_layers, n_tokens, width) into vectors, and
the one that reads those stacks off docs for `ContextualListener.v1` (`read_ctx_layers`)."""
from typing import Optional

from thinc.api import Model

from . import concat_layers, mean_layers, scalar_mix
from .concat_layers import ConcatLayers
from .mean_layers import MeanLayers
from .scalar_mix import ScalarMix

#: The node name each combiner's constructor gives, by its forward pass.
_BUILT_NAMES = {scalar_mix.forward: "scalar_mix", mean_layers.forward: "mean_layers",
                concat_layers.forward: "concat_layers"}


def built_as(node: Model) -> Optional[str]:
    """The name of the combiner that `node` runs (None: not one of ours).

    Not `node.name`: thinc's `from_bytes` gives every node the name it was
    saved under, and loads the saved weights into whatever the config built
    there, so after a saved config.cfg was edited to another combiner the
    name is the saved one's and the forward pass the config's."""
    return _BUILT_NAMES.get(node._func)


__all__ = ["ConcatLayers", "MeanLayers", "ScalarMix", "built_as"]
