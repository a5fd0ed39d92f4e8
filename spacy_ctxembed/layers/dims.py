"""A combiner's dims from a sample, as thinc layers infer theirs in `init`."""
from typing import List, Optional

from ..types import CombinerModel, DocLayers


def dims_from_sample(model: CombinerModel, X: Optional[List[DocLayers]]) -> None:
    """Set the layer count and width (`nL`, `nI`) that are not set yet from
    the sample's first doc, (n_layers, n_tokens, width). Inside a ctxembed
    embedder they are set before, from its encoder (`embedder.pass_dims`);
    this is for a combiner initialised on its own."""
    if not isinstance(X, (list, tuple)) or not X or getattr(X[0], "ndim", None) != 3:
        return  # (no sample, or not one of layer stacks: the dims stay for the embedder to set)
    n_layers, _, width = X[0].shape
    for dim, value in (("nL", n_layers), ("nI", width)):
        if model.has_dim(dim) is None:
            model.set_dim(dim, int(value))
