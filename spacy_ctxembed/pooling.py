"""Pooling of wordpiece states into one state per token, on any torch device.

The pooling runs in torch so that on GPU the states never leave the device;
each mode is a handful of scatter/gather operations over all tokens at once,
of one doc (`pool_pieces`) or of many docs laid end to end (`pool_indexed`).
"""
import torch

from .alignment import PieceAlignment
from .types import POOLING_MODES


def pool_pieces(states: torch.Tensor, alignment: PieceAlignment, mode: str) -> torch.Tensor:
    """Pool piece states into token states.

    states: (n_pieces, n_layers, width) on any device.
    RETURNS: (n_layers, n_tokens, width), zero for tokens that no piece feeds.
    """
    tokens = torch.as_tensor(alignment.token_index, device=states.device)
    pieces = torch.as_tensor(alignment.piece_index, device=states.device)
    return pool_indexed(states, tokens, pieces, alignment.n_tokens, mode).permute(1, 0, 2).contiguous()


def pool_indexed(
    states: torch.Tensor, tokens: torch.Tensor, pieces: torch.Tensor, n_tokens: int, mode: str
) -> torch.Tensor:
    """Pool piece states into token states, given the (token, piece) pairs.

    states: (n_pieces, n_layers, width).
    tokens, pieces: the pairs of a `PieceAlignment` (sorted by token, then
        piece), as int64 tensors on the states' device.
    RETURNS: (n_tokens, n_layers, width), zero for tokens that no piece feeds.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling = {mode!r}: expected one of {POOLING_MODES}")
    n_layers, width = states.shape[1], states.shape[2]
    out = states.new_zeros((n_tokens, n_layers, width))
    if len(tokens) == 0:
        return out
    if mode in ("first", "last"):
        # Pairs are sorted by (token, piece): runs of equal tokens are the
        # pieces of one token, so its first/last piece is a run boundary.
        run_tokens, run_lengths = torch.unique_consecutive(tokens, return_counts=True)
        run_ends = torch.cumsum(run_lengths, 0)
        picks = run_ends - run_lengths if mode == "first" else run_ends - 1
        out[run_tokens] = states[pieces[picks]]
    elif mode == "mean":
        out.index_add_(0, tokens, states[pieces])
        counts = torch.bincount(tokens, minlength=n_tokens).clamp_(min=1)
        out /= counts.to(states.dtype).view(-1, 1, 1)
    else:  # max
        flat = out.view(n_tokens, -1)
        index = tokens.view(-1, 1).expand(-1, flat.shape[1])
        flat.scatter_reduce_(0, index, states[pieces].reshape(len(tokens), -1), "amax", include_self=False)
    return out
