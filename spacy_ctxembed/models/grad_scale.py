"""Gradient and learning-rate scaling for a copy of an upstream's embedder.

`nlp.replace_listeners` puts a copy of what a listener listened to in its
place (`heads.replacement`); these make the copy train as its component
would train it: the encoder at the component's learning-rate scale
(`with_lr_scale`), the gradient scaled by the listener's `grad_factor`, and
run frozen where nothing would move it (`scale_gradient`). Where the
listener's checks refused its head, the copy refuses to predict until the
head trains on it (`COPY_REFUSED`). Not in `layers/`: they reach into the
encoder's torch shim (`torch_bridge`) and word their errors for the
listening component's copy.
"""
from typing import Any, Callable, List, Optional

from spacy.tokens import Doc
from thinc.api import Model

from ..finite import FiniteCheck, refuse_non_finite
from ..settings import FromConfig, config_value
from .torch_bridge import LR_SCALE, encoder_shim

#: The attr of a replace_listeners copy that holds why it refuses to predict
#: (`listener_copy`; None: it does not), saved with it.
COPY_REFUSED = "refused_until_trained"


def with_lr_scale(layer: Model, scale: float) -> Model:
    """`layer`, with the learning rate of the encoder weights in it scaled by
    `scale` wherever it is trained (see `torch_bridge.scaled_optimizer`)."""
    shim = encoder_shim(layer)
    if shim is not None:
        # A new dict: a copied shim shares its original's.
        shim.settings = {**shim.settings, LR_SCALE: scale}
    return layer


def scale_gradient(layer: Model, factor: float, *, frozen: bool = False) -> Model:
    """`layer`, with the gradient it passes back scaled by `factor`.

    frozen: run `layer` as the component runs a frozen encoder (no graph, no
        dropout), so that no gradient is recorded at all: a zero one would
        still let an optimizer with weight decay move the weights. (v2, as
        released, always runs `layer` as asked; with `factor` 0 it sends
        nothing back, for the same reason.)

    The forward pass reads its layer and settings off the model (not a
    closure), so that a copied, pickled or node-replaced model runs its own
    layer. The settings are the config's (`FromConfig`): a saved pipeline
    whose config was edited (say to `grad_factor = 0`) runs as edited.
    """
    return Model("ctxembed-grad-factor", _scaled_forward, init=_scaled_init, layers=[layer],
                 attrs={"grad_factor": FromConfig(factor), "frozen": FromConfig(frozen), COPY_REFUSED: None})


def _setting(model: Model, name: str, default: Any) -> Any:
    return config_value(model.attrs.get(name, default))


def _scaled_forward(model: Model, X, is_train: bool):
    if model.attrs.get(COPY_REFUSED) and not is_train:
        raise ValueError(model.attrs[COPY_REFUSED])
    factor = _setting(model, "grad_factor", 1.0)
    if _setting(model, "frozen", False):
        Y = model.layers[0].predict(X)
        _refuse_non_finite(model, X, Y, is_train)
        return Y, _lifting(model, None)
    Y, backprop = model.layers[0](X, is_train)
    _refuse_non_finite(model, X, Y, is_train)
    if factor == 0:
        # (v2: run in training mode, as released.) No backward pass: a zero
        # gradient would still let an optimizer with weight decay move the weights.
        return Y, _lifting(model, None)
    return Y, _lifting(model, backprop, factor)


def _lifting(model: Model, backprop: Optional[Callable], factor: float = 1.0) -> Callable:
    """The backward pass, scaled by `factor` (None: nothing sent back), that
    lifts a copy's refusal (`listener_copy`): the head's gradient reaching
    the copy is the head training on it. (A training forward alone is not:
    an update may fail before it.)"""

    def backward(dY):
        model.attrs[COPY_REFUSED] = None
        if backprop is None:
            return []
        return backprop([d * factor for d in dY] if factor != 1.0 else dY)

    return backward


def _refuse_non_finite(model: Model, docs: List[Doc], Y: List[Any], is_train: bool) -> None:
    """A copy of an embedder inside the listening component (`replace_listeners`)
    predicts for it, and writes nothing a ctxembed component would check: nan
    or inf there would be the downstream component's features (a tagger's
    every tag the same), or in training its gradients, so they are refused
    as the component refuses them."""
    refuse_non_finite("ContextualTok2Vec", docs, FiniteCheck(model.ops, Y), model,
                      encoder_block="[components.<listening component>.model.tok2vec.embedder.encoder]",
                      training=is_train)


def _scaled_init(model: Model, X=None, Y=None) -> None:
    model.attrs[COPY_REFUSED] = None  # (the head starts afresh with it)
    model.layers[0].initialize(X=X)
