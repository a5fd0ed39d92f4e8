"""`spacy-ctxembed.MeanLayers.v1`: combine a doc's layers by their plain mean."""
from typing import Callable, List, Optional, Tuple

from spacy.util import registry
from thinc.api import Model

from ..types import CombinerModel, DocLayers, DocVectors
from .dims import dims_from_sample


@registry.layers("spacy-ctxembed.MeanLayers.v1")
def MeanLayers() -> CombinerModel:
    return Model("mean_layers", forward, dims={"nL": None, "nI": None, "nO": None}, init=init)


def forward(model: CombinerModel, X: List[DocLayers], is_train: bool) -> Tuple[List[DocVectors], Callable]:
    xp = model.ops.xp
    # The mean of one layer is a copy of it, exactly: taken as such, without
    # the mean's per-call overhead (a doc's worth of work is small, and there
    # is one call per doc).
    Y = [x[0].copy() if x.shape[0] == 1 else xp.mean(x, axis=0) for x in X]

    def backprop(dY: List[DocVectors]) -> List[DocLayers]:
        return [xp.broadcast_to(dy / x.shape[0], x.shape).copy() for dy, x in zip(dY, X)]

    return Y, backprop


def init(model: CombinerModel, X: Optional[List[DocLayers]] = None, Y=None) -> None:
    dims_from_sample(model, X)
    if model.has_dim("nI"):
        model.set_dim("nO", model.get_dim("nI"), force=True)
