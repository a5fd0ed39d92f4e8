"""`spacy-ctxembed.ConcatLayers.v1`: concatenate a doc's layers, in the order they were selected."""
from typing import Callable, List, Optional, Tuple

from spacy.util import registry
from thinc.api import Model

from ..types import CombinerModel, DocLayers, DocVectors
from .dims import dims_from_sample


@registry.layers("spacy-ctxembed.ConcatLayers.v1")
def ConcatLayers() -> CombinerModel:
    return Model("concat_layers", forward, dims={"nL": None, "nI": None, "nO": None}, init=init)


def forward(model: CombinerModel, X: List[DocLayers], is_train: bool) -> Tuple[List[DocVectors], Callable]:
    # (n_layers, n_tokens, width) -> (n_tokens, n_layers * width)
    xp = model.ops.xp
    # Explicit widths: reshape(0, -1) is ambiguous for empty docs.
    Y = [xp.transpose(x, (1, 0, 2)).reshape((x.shape[1], x.shape[0] * x.shape[2])) for x in X]

    def backprop(dY: List[DocVectors]) -> List[DocLayers]:
        return [
            xp.ascontiguousarray(xp.transpose(dy.reshape((x.shape[1], x.shape[0], x.shape[2])), (1, 0, 2)))
            for dy, x in zip(dY, X)
        ]

    return Y, backprop


def init(model: CombinerModel, X: Optional[List[DocLayers]] = None, Y=None) -> None:
    dims_from_sample(model, X)
    if model.has_dim("nI") and model.has_dim("nL"):
        model.set_dim("nO", model.get_dim("nL") * model.get_dim("nI"), force=True)
