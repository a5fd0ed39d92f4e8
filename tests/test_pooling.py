"""Each pooling mode against arrays worked out by hand."""
import numpy
import pytest
import torch

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
