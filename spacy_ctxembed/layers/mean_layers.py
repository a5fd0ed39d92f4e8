"""Combine a doc's layers by their plain mean."""
from typing import Callable, List, Tuple

from thinc.api import Model

from ..types import CombinerModel, DocLayers, DocVectors


def mean_layers() -> CombinerModel:
    return Model("mean_layers", forward)


def forward(model: CombinerModel, X: List[DocLayers], is_train: bool) -> Tuple[List[DocVectors], Callable]:
    xp = model.ops.xp
    Y = [xp.mean(x, axis=0) for x in X]

    def backprop(dY: List[DocVectors]) -> List[DocLayers]:
        return [xp.broadcast_to(dy / x.shape[0], x.shape).copy() for dy, x in zip(dY, X)]

    return Y, backprop
