"""models.torch_bridge: running an encoder inside thinc, its weights swapped, its saved layers checked."""
import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from thinc.api import SGD, Model, PyTorchShim

from spacy_ctxembed.errors import SettingError
from spacy_ctxembed.models import torch_bridge as tb

from .conftest import ctx_config


# --- evenly_sampled ---------------------------------------------------------
def test_evenly_sampled_takes_first_and_last_and_even_steps_as_float64():
    """k values over the flattened tensor, first and last included, integer-spaced, float64."""
    t = torch.arange(11, dtype=torch.float32).reshape(1, 11)
    got = tb.evenly_sampled(t, 3)
    assert got.dtype == numpy.float64
    numpy.testing.assert_array_equal(got, numpy.array([0.0, 5.0, 10.0]))
    got = tb.evenly_sampled(torch.arange(10, dtype=torch.float32), 4)
    # positions i * 9 // 3 for i in 0..3
    numpy.testing.assert_array_equal(got, numpy.array([0.0, 3.0, 6.0, 9.0]))


def test_evenly_sampled_gives_all_values_of_a_small_tensor_and_none_of_an_empty_one():
    """Fewer values than k: all of them, in order; an empty tensor: an empty float64 array."""
    t = torch.tensor([[1.5, -2.0], [3.0, 4.0]])
    numpy.testing.assert_array_equal(tb.evenly_sampled(t, 10), numpy.array([1.5, -2.0, 3.0, 4.0]))
    numpy.testing.assert_array_equal(tb.evenly_sampled(torch.tensor([7.0]), 5), numpy.array([7.0]))
    empty = tb.evenly_sampled(torch.zeros(0, 3), 4)
    assert empty.shape == (0,) and empty.dtype == numpy.float64


# --- scaled_optimizer / trains_weights ---------------------------------------
def test_scaled_optimizer_passes_the_shims_lr_scale_to_the_optimizer():
    """A shim's lr_scale reaches the optimizer as `lr_scale`; without one (or at 1.0) the optimizer is used as is."""
    calls = []

    def optimizer(key, param, grad, lr_scale=1.0):
        calls.append(lr_scale)
        return param, grad

    assert tb.scaled_optimizer(optimizer, {}) is optimizer
    assert tb.scaled_optimizer(optimizer, {"lr_scale": 1.0}) is optimizer
    tb.scaled_optimizer(optimizer, {"lr_scale": 0.25})(("k",), None, None)
    assert calls == [0.25]


@pytest.mark.parametrize("settings,is_train,expected", [
    ({"trainable": True}, True, True),
    ({"trainable": True}, False, False),
    ({"trainable": False}, True, False),
    ({"trainable": True, "lr_scale": 0.0}, True, False),
    ({"trainable": True, "lr_scale": 0.5}, True, True),
])
def test_trains_weights_only_in_training_when_trainable_and_not_at_scale_zero(settings, is_train, expected):
    """The encoder trains only in training, when trainable, and not at a learning-rate scale of 0."""
    assert tb.trains_weights(settings, is_train) is expected


# --- averaged_weights ---------------------------------------------------------
def _linear_shim():
    torch.manual_seed(0)
    return PyTorchShim(torch.nn.Linear(3, 2))


@pytest.mark.parametrize("key_style", ["thinc_optimizer", "pytorch_prefix"])
def test_averaged_weights_are_used_inside_and_the_weights_restored_after(key_style):
    """Values keyed (shim.id, name) or "pytorch_{id}_{name}" replace the weights inside the block;
    the weights are exactly as before after it, and the given arrays are not written to."""
    shim = _linear_shim()
    before = {k: v.detach().clone() for k, v in shim._model.state_dict().items()}
    new_w = numpy.arange(6, dtype="float32").reshape(2, 3)
    key = (shim.id, "weight") if key_style == "thinc_optimizer" else f"pytorch_{shim.id}_weight"
    params = {key: new_w}
    assert tb.swaps_weights(shim, params)
    with tb.averaged_weights(shim, params):
        numpy.testing.assert_array_equal(shim._model.weight.detach().numpy(), new_w)
        assert torch.equal(shim._model.bias, before["bias"])  # not in params: untouched
        shim._model.weight.data.add_(100.0)  # a write inside the block must not reach params
    numpy.testing.assert_array_equal(new_w, numpy.arange(6, dtype="float32").reshape(2, 3))
    for k, v in shim._model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_averaged_weights_of_another_shape_are_refused_by_name():
    """A value of another shape than its weight raises a ValueError naming the weight and both shapes."""
    shim = _linear_shim()
    params = {(shim.id, "weight"): numpy.zeros((3, 2), dtype="float32")}
    with pytest.raises(ValueError, match=r"use_params: the value for weight 'weight' has shape \(3, 2\), "
                                         r"the weight \(2, 3\)"):
        with tb.averaged_weights(shim, params):
            pass


def test_averaged_weights_of_another_shim_are_not_used():
    """Values keyed for another shim's id leave this shim's weights alone."""
    shim = _linear_shim()
    assert not tb.swaps_weights(shim, {(shim.id + 1, "weight"): numpy.zeros((2, 3), dtype="float32")})
    assert not tb.swaps_weights(shim, {})


# --- run_encoder ------------------------------------------------------------
def _passthrough(**attrs):
    """A thinc Model with no shim of its own, which passes its input through."""
    return Model("m", lambda m, X, is_train: (X, None), attrs=attrs)


def test_run_encoder_backprop_sends_gradients_to_the_tensors_that_need_them():
    """In training the outputs' gradients reach autograd (for outputs that require grad only);
    frozen, the backprop gives nothing and records no graph."""
    w = torch.nn.Parameter(torch.tensor([2.0, 3.0]))
    model = _passthrough()
    shim = PyTorchShim(torch.nn.Linear(1, 1))

    def embed(docs, grad):
        with torch.set_grad_enabled(grad):
            return [(w * 1.0).reshape(1, 2), torch.ones(1, 2)]  # the second needs no gradient

    Y, backprop = tb.run_encoder(model, shim, embed, ["a", "b"], train_weights=True)
    numpy.testing.assert_array_equal(Y[0], [[2.0, 3.0]])
    assert backprop([numpy.array([[1.0, 10.0]], dtype="f"), numpy.array([[5.0, 5.0]], dtype="f")]) == []
    numpy.testing.assert_array_equal(w.grad.numpy(), [1.0, 10.0])
    w.grad = None
    Y, backprop = tb.run_encoder(model, shim, embed, ["a", "b"], train_weights=False)
    assert backprop([numpy.ones((1, 2), "f"), numpy.ones((1, 2), "f")]) == [] and w.grad is None


def test_run_encoder_runs_a_frozen_encoder_without_autograd():
    """Frozen (train_weights False), the encoder is asked for outputs without a graph."""
    asked = []
    model = _passthrough()

    def embed(docs, grad):
        asked.append(grad)
        return [torch.zeros(1, 2)]

    tb.run_encoder(model, PyTorchShim(torch.nn.Linear(1, 1)), embed, ["a"], train_weights=False)
    tb.run_encoder(model, PyTorchShim(torch.nn.Linear(1, 1)), embed, ["a"], train_weights=True)
    assert asked == [False, True]


def test_a_training_batch_of_whitespace_alone_sends_the_encoder_nothing(tiny_bert_dir):
    """Whitespace tokens have no vector, so a batch of whitespace-only docs gives
    a trainable encoder outputs that no gradient can reach (none requires one).
    `nlp.update` on it must train the tagger and leave the encoder's weights as they
    were, without a gradient, rather than run a backward pass over nothing."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[1], trainable=True))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 8}}})
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc("I ran"), {"tags": ["A", "B"]})])
    docs = [nlp.make_doc(text) for text in ("  ", "\n\t", " \u3000 ")]
    assert all(len(doc) and all(token.is_space for token in doc) for doc in docs)  # the premise
    module = nlp.get_pipe("ctxembed_bert").encoder.shims[0]._model
    before = {name: weight.detach().clone() for name, weight in module.named_parameters()}
    losses = nlp.update([Example.from_dict(doc, {"tags": ["A"] * len(doc)}) for doc in docs],
                        sgd=SGD(0.1, L2=0.0, grad_clip=0.0))
    assert losses["tagger"] > 0
    for name, weight in module.named_parameters():
        assert weight.grad is None or not weight.grad.any(), name
        torch.testing.assert_close(weight.detach(), before[name], rtol=0, atol=0, msg=name)


# --- check_saved_layers ---------------------------------------------------------
def test_check_saved_layers_refuses_other_layers_naming_the_component_or_the_copy():
    """Saved layers other than the current ones are refused: a component's `layers`, a copy's
    `[ContextualTok2Vec] embedder.encoder.layers`; the same layers (ints of any kind) and no record load."""
    tb.check_saved_layers("ctxembed_bert", {"layers": [-1]}, None, [2])
    tb.check_saved_layers("ctxembed_bert", {"layers": [-1]}, [2], [numpy.int64(2)])
    with pytest.raises(SettingError) as err:
        tb.check_saved_layers("ctxembed_bert", {"layers": [-2, -1]}, [2, 1], [1, 2])
    assert str(err.value).startswith("[ctxembed_bert] layers = [-2, -1]: the encoder was saved for layers [2, 1]")
    assert "the config's layers select [1, 2]" in str(err.value)
    with pytest.raises(SettingError, match=r"^\[ContextualTok2Vec\] embedder\.encoder\.layers = \[0\]: "
                                           r"the encoder was saved for layers \[1\]"):
        tb.check_saved_layers("ctxembed_bert", {"layers": [0], "lr_scale": 1.0}, [1], [0])


# --- selected_layers / encoder_features for an encoder without a shim -------------
def test_selected_layers_and_features_of_a_shimless_encoder_come_from_its_settings():
    """An encoder without a shim (ctxembed_from_trf's): its layers as written (ints only) and its pooling."""
    model = _passthrough(settings={"layers": [-1, 3], "pooling": "first"})
    assert tb.selected_layers(model) == [-1, 3]
    assert tb.encoder_features(model) == {"pooling": "first"}
    for layers in ([True], [], "x", [1.0]):
        other = _passthrough(settings={"layers": layers})
        assert tb.selected_layers(other) is None
        assert tb.encoder_features(other) == {}


def test_check_saved_layers_compares_values_not_the_sequence_type():
    """ELMo's shim gives its layers as a tuple: the same layers saved as a list load."""
    tb.check_saved_layers("ctxembed_elmo", {"layers": [1, 2]}, [1, 2], (1, 2))
