"""The gradient scaler on its own (`models/grad_scale`): what the listener's
`grad_factor`, a frozen copy and a refused `replace_listeners` copy send back."""
import numpy
import pytest
import spacy
from thinc.api import Linear, with_array

from spacy_ctxembed.models.grad_scale import scale_gradient


def test_a_gradient_scaler_with_factor_zero_sends_nothing_back():
    """With grad_factor 0 and not frozen (ContextualTok2Vec.v2 as released) the
    backward pass sends nothing to the layer: not even a zero gradient, which
    an optimizer with weight decay would still apply. Before, only frozen
    copies (replace_listeners) were tried with factor 0, which take another
    path."""
    X = [numpy.ones((3, 4), dtype="float32")]
    model = scale_gradient(with_array(Linear(2, 4)), 0.0)
    model.initialize(X=X)
    linear = model.layers[0].layers[0]
    _, backprop = model.begin_update(X)
    assert backprop([numpy.ones((3, 2), dtype="float32")]) == []
    assert not linear.has_grad("W") and not linear.has_grad("b")


def test_a_refused_copy_predicts_only_once_a_gradient_reached_it():
    """A replace_listeners copy refused by its listener's checks (the
    COPY_REFUSED attr holds why) refuses to predict, but not to run in
    training; a training forward alone does not lift it, the backward pass
    does, and initialize starts it afresh. Before, this was only seen
    through whole pipelines, and not each step."""
    from spacy_ctxembed.models.grad_scale import COPY_REFUSED

    X = [numpy.ones((3, 4), dtype="float32")]
    model = scale_gradient(with_array(Linear(2, 4)), 0.5)
    model.initialize(X=X)
    model.attrs[COPY_REFUSED] = "refused: train me first"
    with pytest.raises(ValueError, match="^refused: train me first$"):
        model.predict(X)
    _, backprop = model.begin_update(X)  # training runs
    with pytest.raises(ValueError, match="^refused: train me first$"):
        model.predict(X)  # a forward pass alone lifts nothing
    backprop([numpy.ones((3, 2), dtype="float32")])
    assert model.attrs[COPY_REFUSED] is None
    assert model.predict(X)[0].shape == (3, 2)
    model.attrs[COPY_REFUSED] = "refused again"
    model.initialize(X=X)
    assert model.attrs[COPY_REFUSED] is None


def test_the_learning_rate_scale_of_a_copy_leaves_its_original_alone():
    """A copied model's encoder shim shares its original's settings dict;
    with_lr_scale marks only the copy (the settings key it adds also says
    "this encoder is a replace_listeners copy"). Not seen before: no test
    looked at the original after its copy was scaled."""
    from spacy_ctxembed.models.grad_scale import with_lr_scale
    from spacy_ctxembed.models.torch_bridge import LR_SCALE, encoder_shim

    nlp = spacy.blank("en")
    original = nlp.add_pipe("ctxembed_bert").model  # no weights loaded: settings only
    copy = original.copy()
    assert with_lr_scale(copy, 0.5) is copy
    assert encoder_shim(copy).settings[LR_SCALE] == 0.5
    assert LR_SCALE not in encoder_shim(original).settings


def test_a_frozen_gradient_scaler_records_no_gradient():
    """frozen = True runs the layer as a frozen encoder: its output is the
    layer's prediction and the backward pass sends nothing back, whatever
    the factor (not even a scaled gradient). Before, frozen copies were only
    seen inside whole pipelines whose encoder was also frozen there."""
    X = [numpy.ones((3, 4), dtype="float32")]
    model = scale_gradient(with_array(Linear(2, 4)), 0.5, frozen=True)
    model.initialize(X=X)
    linear = model.layers[0].layers[0]
    Y, backprop = model.begin_update(X)
    numpy.testing.assert_allclose(Y[0], model.layers[0].predict(X)[0])
    assert backprop([numpy.ones((3, 2), dtype="float32")]) == []
    assert not linear.has_grad("W") and not linear.has_grad("b")
