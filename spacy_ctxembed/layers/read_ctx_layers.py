"""Read the per-layer outputs an upstream ctxembed component stored on each doc."""
from typing import Callable, List, Tuple

from spacy.tokens import Doc
from thinc.api import Model

from ..types import DocLayers

MISSING = (
    "doc._.ctx_layers is missing: the upstream ctxembed component must run with "
    "store_layers = true, before this component (in training: list it in "
    "[training] frozen_components and annotating_components)"
)


def read_ctx_layers(n_layers: int, width: int) -> Model[List[Doc], List[DocLayers]]:
    return Model("read_ctx_layers", forward, dims={"nL": n_layers, "nO": width})


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[List[DocLayers], Callable]:
    layers = []
    for doc in docs:
        x = doc._.ctx_layers
        if x is None:
            if is_train:
                raise ValueError(MISSING)
            # Outside training, as spaCy's own Tok2VecListener does: zeros. This
            # is what spaCy's initialisation sees, since it sizes the downstream
            # model on docs that the upstream has not annotated.
            x = model.ops.alloc3f(model.get_dim("nL"), len(doc), model.get_dim("nO"))
        layers.append(model.ops.asarray3f(x))
    # Frozen upstream: the gradient stops here.
    return layers, lambda d_layers: []
