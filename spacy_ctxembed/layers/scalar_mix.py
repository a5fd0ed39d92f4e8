"""The ELMo scalar mix (Peters et al. 2018, eq. 1).

    mix = gamma * sum_j softmax(s)_j * layer_j

With s = 0 and gamma = 1, as initialised, the mix is the plain mean of the
layers, so an untrained mix changes nothing; training moves s and gamma.
"""
from typing import Callable, List, Optional, Tuple

from spacy.util import registry
from thinc.api import Model

from ..types import CombinerModel, DocLayers, DocVectors
from .dims import dims_from_sample


@registry.layers("spacy-ctxembed.ScalarMix.v1")
def ScalarMix(*, n_layers: Optional[int] = None) -> CombinerModel:
    """Learned softmax-normalised layer weights `s` and scale `gamma`.

    n_layers: the number of layers mixed; `init` takes it from the sample's
        first doc where one is given (the layers the mix is trained on decide),
        and None leaves it to that or to the embedder (`embedder.pass_dims`).
    """
    return Model(
        "scalar_mix",
        forward,
        init=init,
        dims={"nL": n_layers, "nI": None, "nO": None},
        params={"s": None, "gamma": None},
    )


def forward(model: CombinerModel, X: List[DocLayers], is_train: bool) -> Tuple[List[DocVectors], Callable]:
    xp = model.ops.xp
    s = model.get_param("s")
    gamma = model.get_param("gamma")[0]
    weights = _softmax(xp, s)
    mixes = [xp.tensordot(weights, x, axes=(0, 0)) for x in X]
    Y = [gamma * mix for mix in mixes]

    def backprop(dY: List[DocVectors]) -> List[DocLayers]:
        d_gamma = xp.zeros((1,), dtype="f")
        d_weights = xp.zeros_like(weights)
        dX = []
        for dy, x, mix in zip(dY, X, mixes):
            d_gamma += (dy * mix).sum()
            # d(loss)/d(weight_j) = gamma * <dy, layer_j>
            d_weights += gamma * xp.tensordot(x, dy, axes=([1, 2], [0, 1]))
            dX.append(gamma * xp.reshape(weights, (-1, 1, 1)) * xp.expand_dims(dy, 0))
        # Jacobian of softmax: d s_i = w_i * (g_i - sum_j w_j g_j)
        d_s = weights * (d_weights - (weights * d_weights).sum())
        model.inc_grad("gamma", d_gamma.astype("f"))
        model.inc_grad("s", d_s.astype("f"))
        return dX

    return Y, backprop


def init(model: CombinerModel, X: Optional[List[DocLayers]] = None, Y=None) -> None:
    if X:
        model.set_dim("nL", X[0].shape[0], force=True)
    dims_from_sample(model, X)
    n_layers = model.get_dim("nL")
    if model.has_dim("nI"):
        model.set_dim("nO", model.get_dim("nI"), force=True)
    model.set_param("s", model.ops.alloc1f(n_layers))
    model.set_param("gamma", model.ops.asarray1f([1.0]))


def is_plain_mean(model: Model) -> bool:
    """Whether a ScalarMix gives the plain mean of its layers, as initialised
    (all `s` equal, `gamma` 1): nothing trained it, whatever the vectors were."""
    if model._func is not forward or not (model.has_param("s") and model.has_param("gamma")):
        return False
    s, gamma = model.ops.to_numpy(model.get_param("s")).ravel(), model.ops.to_numpy(model.get_param("gamma"))
    return bool(s.size and (s == s[0]).all() and (gamma == 1.0).all())


def _softmax(xp, s):
    e = xp.exp(s - s.max())
    return e / e.sum()
