"""Each pooling mode against arrays worked out by hand, and against a plain loop."""
import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spacy_ctxembed.alignment import PieceAlignment
from spacy_ctxembed.pooling import pool_pieces

# 4 pieces, 2 layers, width 2.
STATES = numpy.array(
    [
        [[1.0, 2.0], [10.0, 20.0]],
        [[3.0, -4.0], [30.0, -40.0]],
        [[5.0, 6.0], [50.0, 60.0]],
        [[-7.0, 8.0], [-70.0, 80.0]],
    ],
    dtype="float32",
)
# token 0 <- pieces 0, 1; token 1 <- piece 1; token 2 <- none; token 3 <- pieces 2, 3
ALIGNMENT = PieceAlignment.from_lengths(numpy.array([0, 1, 1, 2, 3]), numpy.array([2, 1, 0, 2]), n_pieces=4)

EXPECTED = {
    "mean": [[[2, -1], [3, -4], [0, 0], [-1, 7]], [[20, -10], [30, -40], [0, 0], [-10, 70]]],
    "first": [[[1, 2], [3, -4], [0, 0], [5, 6]], [[10, 20], [30, -40], [0, 0], [50, 60]]],
    "last": [[[3, -4], [3, -4], [0, 0], [-7, 8]], [[30, -40], [30, -40], [0, 0], [-70, 80]]],
    "max": [[[3, 2], [3, -4], [0, 0], [5, 8]], [[30, 20], [30, -40], [0, 0], [50, 80]]],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_pooling_by_hand(mode):
    pooled = pool_pieces(torch.from_numpy(STATES), ALIGNMENT, mode)
    assert pooled.shape == (2, 4, 2)
    numpy.testing.assert_array_equal(pooled.numpy(), numpy.array(EXPECTED[mode], dtype="float32"))


def test_pooling_of_no_tokens():
    alignment = PieceAlignment.from_lengths(numpy.zeros(0, "int64"), numpy.zeros(0, "int64"), n_pieces=4)
    assert pool_pieces(torch.from_numpy(STATES), alignment, "mean").shape == (2, 0, 2)


def test_max_pooling_of_negative_states_is_not_clipped_at_zero():
    states = torch.full((2, 1, 3), -5.0)
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1]), numpy.array([2]), n_pieces=2)
    assert pool_pieces(states, alignment, "max").flatten().tolist() == [-5.0, -5.0, -5.0]


def _loop_reference(states, token_index, piece_index, n_tokens, mode):
    """Each token's pieces gathered in a plain loop, pooled in float64."""
    out = numpy.zeros((states.shape[1], n_tokens, states.shape[2]))
    for token in range(n_tokens):
        mine = sorted(p for t, p in zip(token_index, piece_index) if t == token)
        if not mine:
            continue
        rows = states[mine].astype("float64")  # (k, n_layers, width)
        pooled = {"mean": rows.mean(0), "max": rows.max(0), "first": rows[0], "last": rows[-1]}[mode]
        out[:, token] = pooled
    return out


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 7), max_size=4), min_size=0, max_size=6), st.sampled_from(sorted(EXPECTED)))
def test_pooling_equals_a_loop(pieces_per_token, mode):
    # Any ragged token -> pieces table: tokens without pieces, pieces feeding several tokens.
    rng = numpy.random.default_rng(len(pieces_per_token))
    states = rng.standard_normal((8, 2, 3)).astype("float32")
    flat = [p for pieces in pieces_per_token for p in sorted(set(pieces))]
    lengths = [len(set(pieces)) for pieces in pieces_per_token]
    alignment = PieceAlignment.from_lengths(numpy.array(flat, dtype="int64"), numpy.array(lengths, dtype="int64"), 8)
    pooled = pool_pieces(torch.from_numpy(states), alignment, mode).numpy()
    expected = _loop_reference(states, alignment.token_index, alignment.piece_index, len(pieces_per_token), mode)
    numpy.testing.assert_allclose(pooled, expected, atol=1e-6)


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_pooling_with_tokens_of_no_piece_at_the_end(mode):
    """Tokens past the last covered one (a doc, or the last doc of a run, that
    ends in whitespace tokens) get zeros, and the others their pooled states.
    Every test's last token had a piece, so mean pooling's counts could leave
    out `minlength=n_tokens`: they then stopped at the last covered token,
    and dividing the (n_tokens, ...) sums by them failed to broadcast."""
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1, 1, 2, 3]), numpy.array([2, 1, 0, 2, 0, 0]), n_pieces=4)
    pooled = pool_pieces(torch.from_numpy(STATES), alignment, mode).numpy()
    expected = _loop_reference(STATES, alignment.token_index, alignment.piece_index, 6, mode)
    numpy.testing.assert_allclose(pooled, expected, atol=1e-6)
    assert not pooled[:, 4:].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_pooling_keeps_the_states_dtype(mode, dtype):
    """Half-precision states pool to half-precision tokens (what the model ran
    in), close to the float64 loop. The tests pooled float32 states only, so
    an output allocated as float32 whatever the states were passed."""
    states = torch.from_numpy(STATES).to(dtype)
    pooled = pool_pieces(states, ALIGNMENT, mode)
    assert pooled.dtype == dtype
    expected = _loop_reference(states.double().numpy(), ALIGNMENT.token_index, ALIGNMENT.piece_index, 4, mode)
    numpy.testing.assert_allclose(pooled.double().numpy(), expected, rtol=1e-2)


def test_mean_of_a_token_of_more_than_2048_pieces_divides_by_its_count():
    """A token of thousands of pieces (a long run of symbols, a URL) divides by
    its piece count exactly: 2049 pieces of 1.0 average to 1.0. Only counts of
    1 and 2 were tested, so dividing float32 states by float16 counts (2049
    rounds to 2048) passed."""
    n = 2049
    states = torch.ones((n, 1, 2))
    alignment = PieceAlignment.from_lengths(numpy.arange(n), numpy.array([n]), n_pieces=n)
    assert pool_pieces(states, alignment, "mean").flatten().tolist() == [1.0, 1.0]


def test_max_pooling_gradient_goes_to_the_maximum_and_is_shared_by_ties():
    # token 0 <- pieces 0, 1, 2; token 1 <- pieces 2, 3. Dimension 0: pieces 0 and 1 tie
    # for token 0's maximum; dimension 1: piece 2 alone is token 0's and token 1's maximum.
    states = torch.tensor([[[4.0, 1.0]], [[4.0, 2.0]], [[1.0, 9.0]], [[3.0, -1.0]]], requires_grad=True)
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1, 2, 2, 3]), numpy.array([3, 2]), n_pieces=4)
    pooled = pool_pieces(states, alignment, "max")
    upstream = torch.tensor([[[10.0, 100.0], [1000.0, 10000.0]]])  # (layers, tokens, width)
    pooled.backward(upstream)
    expected = numpy.zeros((4, 1, 2), dtype="float32")
    expected[0, 0, 0] = expected[1, 0, 0] = 10.0 / 2  # a tie: shared equally
    expected[3, 0, 0] = 1000.0  # token 1's dimension 0: piece 3 (3 > 1)
    expected[2, 0, 1] = 100.0 + 10000.0  # piece 2 is both tokens' dimension 1 maximum
    numpy.testing.assert_array_equal(states.grad.numpy(), expected)
