"""The combiners against NumPy, and the scalar mix's gradients against finite differences."""
import numpy
import pytest

from spacy_ctxembed.layers import ConcatLayers, MeanLayers, ScalarMix
from spacy_ctxembed.layers.scalar_mix import is_plain_mean

RNG = numpy.random.default_rng(0)


def combiner(combine, n_layers):
    return {"mean": MeanLayers, "concat": ConcatLayers, "scalar_mix": lambda: ScalarMix(n_layers=n_layers)}[combine]()


X = [RNG.normal(size=(3, 5, 4)).astype("float32"), RNG.normal(size=(3, 0, 4)).astype("float32")]


def test_mean_and_concat():
    mean = combiner("mean", 3)
    concat = combiner("concat", 3)
    numpy.testing.assert_allclose(mean.predict(X)[0], X[0].mean(axis=0), rtol=1e-6)
    numpy.testing.assert_array_equal(concat.predict(X)[0], numpy.concatenate(list(X[0]), axis=1))
    assert concat.predict(X)[1].shape == (0, 12)


def test_mean_of_one_layer_is_a_copy_of_it():
    one = [RNG.normal(size=(1, 5, 4)).astype("float32"), numpy.zeros((1, 0, 4), dtype="float32")]
    one[0][0, 0, 0] = -0.0
    got = combiner("mean", 1).predict(one)
    numpy.testing.assert_array_equal(got[0], one[0][0])
    assert numpy.signbit(got[0][0, 0]) and got[0].dtype == numpy.float32 and got[1].shape == (0, 4)
    got[0][1] += 1  # its own memory: the layers stay as they were
    numpy.testing.assert_array_equal(got[0][2:], one[0][0, 2:])
    assert not numpy.array_equal(got[0][1], one[0][0, 1])


def _mix(x, s, gamma):
    w = numpy.exp(s) / numpy.exp(s).sum()
    return gamma * numpy.einsum("l,lnh->nh", w, x)


def test_scalar_mix_starts_as_mean_and_follows_eq1():
    mix = combiner("scalar_mix", 3)
    mix.initialize()
    numpy.testing.assert_allclose(mix.predict(X)[0], X[0].mean(axis=0), rtol=1e-5)
    s, gamma = numpy.array([0.5, -1.0, 2.0], dtype="f"), 1.7
    mix.set_param("s", s)
    mix.set_param("gamma", numpy.array([gamma], dtype="f"))
    numpy.testing.assert_allclose(mix.predict(X)[0], _mix(X[0].astype("f8"), s, gamma), rtol=1e-5)


@pytest.mark.parametrize("combine", ["mean", "concat", "scalar_mix"])
def test_gradients_match_finite_differences(combine):
    model = combiner(combine, 3)
    model.initialize()
    if combine == "scalar_mix":
        model.set_param("s", numpy.array([0.3, -0.2, 0.1], dtype="f"))
        model.set_param("gamma", numpy.array([1.3], dtype="f"))
    x = [X[0].astype("float32")]
    Y, backprop = model.begin_update(x)
    dY = [RNG.normal(size=Y[0].shape).astype("float32")]
    dX = backprop(dY)[0]

    def loss_of_input(x0):
        return float((model.predict([x0.astype("f")])[0].astype("f8") * dY[0]).sum())

    eps = 1e-2
    for idx in [(0, 0, 0), (1, 2, 3), (2, 4, 1)]:
        plus, minus = x[0].copy(), x[0].copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (loss_of_input(plus) - loss_of_input(minus)) / (2 * eps)
        assert dX[idx] == pytest.approx(numeric, rel=1e-2, abs=1e-3)
    if combine == "scalar_mix":
        for name in ("s", "gamma"):
            grad = model.get_grad(name)
            value = model.get_param(name).copy()
            for i in range(len(value)):
                numeric = []
                for sign in (1, -1):
                    shifted = value.copy()
                    shifted[i] += sign * eps
                    model.set_param(name, shifted)
                    numeric.append(loss_of_input(x[0]))
                model.set_param(name, value)
                assert grad[i] == pytest.approx((numeric[0] - numeric[1]) / (2 * eps), rel=1e-2, abs=1e-3)


def test_scalar_mix_of_large_weights_is_finite():
    """Softmax of s = (100, 0, -100), in float64 as written: weights (1, 0, 0) to
    float rounding. exp(100) overflows float32: the mix must not be NaN."""
    x = numpy.random.default_rng(0).normal(size=(3, 5, 4)).astype("float32")
    mix = ScalarMix(n_layers=3)
    mix.initialize()
    s = numpy.array([100.0, 0.0, -100.0], dtype="f")
    mix.set_param("s", s)
    mix.set_param("gamma", numpy.array([0.5], dtype="f"))
    e = numpy.exp(s.astype("f8") - s.max())
    expected = 0.5 * numpy.einsum("l,lnh->nh", e / e.sum(), x.astype("f8"))
    numpy.testing.assert_allclose(mix.predict([x])[0], expected, rtol=1e-6, atol=1e-7)


def test_concat_backprop_gives_each_layer_its_own_columns_of_the_gradient():
    """The finite-difference probes of test_gradients_match_finite_differences
    happen to land where a plain reshape of dY agrees with the right answer: the
    whole gradient, against NumPy slicing, for every element."""
    rng = numpy.random.default_rng(3)
    X = [rng.normal(size=(3, 5, 4)).astype("float32"), numpy.zeros((3, 0, 4), dtype="float32"),
         rng.normal(size=(3, 2, 4)).astype("float32")]
    model = ConcatLayers()
    model.initialize()
    Y, backprop = model.begin_update(X)
    dY = [rng.normal(size=y.shape).astype("float32") for y in Y]
    dX = backprop(dY)
    for x, dy, dx in zip(X, dY, dX):
        expected = numpy.stack([dy[:, j * 4 : (j + 1) * 4] for j in range(3)]) if len(dy) else numpy.zeros(x.shape)
        assert dx.shape == x.shape
        numpy.testing.assert_array_equal(dx, expected.astype("float32"))


def test_scalar_mix_without_n_layers_takes_the_layer_count_of_its_sample():
    """`ScalarMix()` (n_layers None) learns its layer count from the first doc
    of the sample in `initialize`: one weight per layer (axis 0), not per token
    or per unit of width; as initialised, the plain mean of the layers."""
    x = numpy.random.default_rng(5).normal(size=(3, 5, 4)).astype("float32")
    mix = ScalarMix()
    mix.initialize(X=[x])
    assert mix.get_dim("nL") == 3 and mix.get_param("s").shape == (3,)
    numpy.testing.assert_allclose(mix.predict([x])[0], x.astype("f8").mean(axis=0), rtol=1e-5, atol=1e-7)


def test_a_mix_with_a_trained_scale_is_not_a_plain_mean():
    """`is_plain_mean` lets a loaded pipeline skip the checks that hold trained
    mix weights to their features: equal `s` with gamma 1 is the mean, but equal
    `s` with another gamma scales every vector, which is trained."""
    mix = ScalarMix(n_layers=3)
    mix.initialize()
    assert is_plain_mean(mix)
    mix.set_param("s", numpy.array([0.4, 0.4, 0.4], dtype="f"))
    assert is_plain_mean(mix)  # equal weights: still the mean
    mix.set_param("gamma", numpy.array([1.7], dtype="f"))
    assert not is_plain_mean(mix)
    mix.set_param("gamma", numpy.array([1.0], dtype="f"))
    mix.set_param("s", numpy.array([0.4, 0.0, 0.4], dtype="f"))
    assert not is_plain_mean(mix)


def test_concat_initialized_with_its_dims_is_as_wide_as_all_its_layers():
    """ConcatLayers' `nO` is n_layers * width: 3 layers of width 4 give 12 columns."""
    model = ConcatLayers()
    model.set_dim("nL", 3)
    model.set_dim("nI", 4)
    model.initialize()
    assert model.get_dim("nO") == 12
    x = numpy.random.default_rng(6).normal(size=(3, 5, 4)).astype("float32")
    assert model.predict([x])[0].shape == (5, model.get_dim("nO"))


def test_a_combiner_without_a_layer_count_is_left_alone_before_the_upstream_is_seen():
    """`ctxembed_from_trf`'s encoder knows its layer count before its width: the
    count was set on any combiner, and one without an nL dim raised KeyError."""
    from thinc.api import Model

    from spacy_ctxembed.models.embedder import Embedder, pass_dims
    from spacy_ctxembed.models.trf_pooler import TrfEncoder

    custom = Model("custom", lambda model, X, is_train: (X, lambda dY: dY))
    pass_dims(Embedder(encoder=TrfEncoder(layers=[-1]), combiner=custom))
    assert custom.has_dim("nL") is False
    mean = MeanLayers()
    pass_dims(Embedder(encoder=TrfEncoder(layers=[-3, -2, -1]), combiner=mean))
    assert mean.get_dim("nL") == 3


@pytest.mark.parametrize("combiner, width", [(MeanLayers, 8), (ConcatLayers, 16), (ScalarMix, 8)])
def test_a_combiner_initialised_on_a_sample_takes_its_dims_from_it(combiner, width):
    """Thinc layers infer their dims in `init`: the mean and the concatenation
    left nL, nI and nO unset on their own (inside an embedder its encoder sets them)."""
    model = combiner()
    model.initialize(X=[numpy.zeros((2, 4, 8), dtype="f"), numpy.zeros((2, 1, 8), dtype="f")])
    assert (model.get_dim("nL"), model.get_dim("nI"), model.get_dim("nO")) == (2, 8, width)
    Y = model.predict([numpy.ones((2, 3, 8), dtype="f")])
    assert Y[0].shape == (3, width)


def test_scalar_mix_initialised_on_a_sample_takes_its_layer_count_over_the_one_it_was_given():
    """`ScalarMix(n_layers=2)` initialised on a sample of 3 layers mixes 3: the
    layers the mix is trained on decide (its docstring). The tests initialised
    a mix without a count, or with the sample's own, so `init` leaving a given
    count in place (as `dims_from_sample` does) passed: `s` then had 2 weights
    for 3 layers, and the mix could not be computed."""
    x = numpy.random.default_rng(6).normal(size=(3, 5, 4)).astype("float32")
    mix = ScalarMix(n_layers=2)
    mix.initialize(X=[x])
    assert mix.get_dim("nL") == 3 and mix.get_param("s").shape == (3,)
    numpy.testing.assert_allclose(mix.predict([x])[0], x.astype("f8").mean(axis=0), rtol=1e-5, atol=1e-7)
