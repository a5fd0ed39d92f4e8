"""ELMo's biLM in plain PyTorch: character CNN token layer + biLSTM (2 layers in the released files).

Stateless: every sentence starts from zero states, so a sentence's vectors
never depend on the batch or on what ran before. Frozen by default: the
weights are buffers; with `trainable=True` they are parameters, and the
forward pass is written without in-place updates so autograd can run through
it. Built from the options alone, with empty weights (on torch's meta
device); `build_bilm` loads the released arrays into them, converted to the
modules' names and layouts by `elmo_weights.torch_layout` (the checkpoint
conversion is kept apart from the modules, as `released_layout` is, the way
back for a save).

Speed, compared with a per-timestep loop over everything:
- each layer's input projection for a chunk of timesteps is one matmul;
- both directions run in the same batched step (bmm over a direction axis);
- only one step (`lstm_step`: `h @ W_h`, the gates, clipping, the projection)
  stays in the Python loop. It is passed in as `step`, so that a compiled
  copy (`torch.compile`, which fuses the gates' elementwise kernels) can stand
  in for it without changing the module.

Precision: on CUDA the character convolutions run as matmuls over unfolded
windows (`conv1d_unfolded`), not through cuDNN (see there why); on CPU they
stay `F.conv1d`, whose outputs saved pipelines record.
"""
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import torch
import torch.nn.functional as F
from torch import nn

from .elmo_weights import CHAR_EMBED_ROWS, HIGHWAY_NAMES, ElmoOptions, torch_layout

#: (batch x time) rows whose input projections are computed in one matmul:
#: bounds the projection buffer (rows x 4 dim floats per direction) whatever
#: the batch size or sentence length.
PROJECTION_ROWS = 512
#: Distinct words per character-CNN call: bounds the convolution outputs.
CNN_WORDS = 1024


#: One LSTM step: (projected inputs, h, c, w_h, w_p, cell_clip, proj_clip) -> (h, c).
LstmStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float],
                    Tuple[torch.Tensor, torch.Tensor]]


def lstm_step(
    projected: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_h: torch.Tensor, w_p: torch.Tensor,
    cell_clip: float, proj_clip: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of both directions for the n rows still running.

    projected: (2, n, 4 * dim), the step's input projections with the bias;
    h: (2, >= n, P) and c: (2, >= n, dim), the previous step's states, of
    which the first n rows are carried on. Returns the new (h, c) of n rows.
    """
    n = projected.shape[1]
    z = projected + torch.bmm(h[:, :n], w_h)
    i, j, f, o = z.chunk(4, dim=-1)
    c = torch.clamp(torch.sigmoid(f + 1.0) * c[:, :n] + torch.sigmoid(i) * torch.tanh(j), -cell_clip, cell_clip)
    h = torch.clamp(torch.bmm(torch.sigmoid(o) * torch.tanh(c), w_p), -proj_clip, proj_clip)
    return h, c


def conv1d_unfolded(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`F.conv1d(inputs, weight, bias)` (stride 1, no padding) as one matmul over unfolded windows.

    Why: torch lets cuDNN run fp32 convolutions on TF32 tensor cores by
    default (`torch.backends.cudnn.allow_tf32`), unlike fp32 matmuls (full fp32
    unless `torch.set_float32_matmul_precision` says otherwise). With F.conv1d
    the token layer on an Ampere or newer GPU would be ~1e-3 (relative) off the
    CPU path's; as a matmul it is fp32 like the rest of the biLM, and no
    process-wide flag is touched.

    inputs: (n, channels, length); weight: (filters, channels, width);
    bias: (filters,). RETURNS: (n, filters, length - width + 1), as F.conv1d
    (a transposed view of an (n, positions, filters) array).
    """
    n, channels, _ = inputs.shape
    filters, _, width = weight.shape
    windows = inputs.unfold(2, width, 1)  # (n, channels, positions, width)
    positions = windows.shape[2]
    # Row (word, position) holds the window's (channel, offset) values, in the
    # order of weight.reshape(filters, channels * width)'s columns.
    columns = windows.permute(0, 2, 1, 3).reshape(n * positions, channels * width)
    out = torch.addmm(bias, columns, weight.reshape(filters, channels * width).t())
    return out.view(n, positions, filters).transpose(1, 2)


def _tensor(array: numpy.ndarray) -> torch.Tensor:
    return torch.from_numpy(numpy.ascontiguousarray(array, dtype="float32"))


class _WeightsModule(nn.Module):
    """A module whose weights are buffers (frozen) or parameters (trainable)."""

    def __init__(self, trainable: bool) -> None:
        super().__init__()
        self.trainable = trainable

    def add_weight(self, name: str, *shape: int) -> None:
        """An empty weight of `shape`, on the meta device: `ElmoBiLm.load_arrays` gives it its values."""
        tensor = torch.empty(shape, device="meta")
        if self.trainable:
            self.register_parameter(name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)


class CharCNN(_WeightsModule):
    """Token layer: character embeddings -> convolutions -> highway -> projection."""

    char_embed: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor

    def __init__(self, options: ElmoOptions, trainable: bool = False):
        super().__init__(trainable)
        self.activation = torch.tanh if options.activation == "tanh" else torch.relu
        cnn_out, P = options.n_filters, options.projection_dim  # (every filter's output, concatenated)
        self.add_weight("char_embed", CHAR_EMBED_ROWS + 1, options.char_dim)  # (the padding row first)
        for i, (width, n) in enumerate(options.filters):
            self.add_weight(f"conv_w_{i}", n, options.char_dim, width)
            self.add_weight(f"conv_b_{i}", n)
        for k in range(options.n_highway):
            for name in HIGHWAY_NAMES:
                self.add_weight(f"high_{k}_{name}", *((cnn_out, cnn_out) if name.startswith("W") else (cnn_out,)))
        self.add_weight("proj_w", cnn_out, P)
        self.add_weight("proj_b", P)
        self.n_filters = len(options.filters)
        self.n_highway = options.n_highway

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """(n_words, 50) character ids -> (n_words, projection_dim)."""
        embedded = F.embedding(char_ids, self.char_embed).transpose(1, 2)  # (n, char_dim, 50)
        # CUDA: not cuDNN, which may use TF32 (see `conv1d_unfolded`). CPU:
        # F.conv1d, whose outputs saved pipelines record (tests/test_v1_compat.py).
        convolve = conv1d_unfolded if embedded.is_cuda else F.conv1d
        pooled = []
        for i in range(self.n_filters):
            conv = convolve(embedded, getattr(self, f"conv_w_{i}"), getattr(self, f"conv_b_{i}"))
            # The activation comes after the max over positions, as in the reference.
            pooled.append(self.activation(conv.max(dim=2).values))
        x = torch.cat(pooled, dim=1)
        for k in range(self.n_highway):
            gate = torch.sigmoid(x @ getattr(self, f"high_{k}_W_carry") + getattr(self, f"high_{k}_b_carry"))
            transform = torch.relu(x @ getattr(self, f"high_{k}_W_transform") + getattr(self, f"high_{k}_b_transform"))
            # The file's "carry" gate multiplies the transform branch.
            x = gate * transform + (1 - gate) * x
        return x @ self.proj_w + self.proj_b


class BiLstm(_WeightsModule):
    """The forward and backward LSTM stacks with cell/projection clipping and skips."""

    def __init__(self, options: ElmoOptions, trainable: bool = False):
        super().__init__(trainable)
        P, dim = options.projection_dim, options.lstm_dim
        self.n_layers = options.n_layers
        self.cell_clip = options.cell_clip
        self.proj_clip = options.proj_clip
        self.skip = options.use_skip_connections
        for layer in range(self.n_layers):
            # Both directions stacked on a leading axis, so one bmm serves both.
            self.add_weight(f"w_x_{layer}", 2, P, 4 * dim)
            self.add_weight(f"w_h_{layer}", 2, P, 4 * dim)
            self.add_weight(f"b_{layer}", 2, 1, 4 * dim)
            self.add_weight(f"w_p_{layer}", 2, dim, P)

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor, step: LstmStep = lstm_step, depth: Optional[int] = None
    ) -> List[torch.Tensor]:
        """tokens: (batch, time, P), each sequence padded at the end.
        lengths: (batch,) on the host: the loop's bounds are read from them,
            not from a device tensor (which would wait for the device).
        step: the LSTM step, `lstm_step` or a compiled copy of it.
        depth: how many layers to run (all when None): a layer depends only on
            those below it, so the ones above the deepest wanted are not run.

        RETURNS: per LSTM layer run, (batch, time, 2P) = [forward; backward]
        outputs; padded positions are left unspecified.
        """
        # Longest first, so the rows still running at step t are a prefix:
        # finished sequences drop out instead of computing padding.
        lengths = lengths.cpu()
        # (On the host with `lengths`, whatever torch's default device.)
        active = (lengths[:, None] > torch.arange(tokens.shape[1], device=lengths.device)).sum(dim=0).tolist()
        if tokens.is_cuda:  # pinned, so that the copy need not wait
            lengths = lengths.pin_memory().to(tokens.device, non_blocking=True)
        order = torch.argsort(lengths, descending=True)
        tokens, lengths = tokens[order], lengths[order]
        batch, time, _ = tokens.shape
        # The backward LM reads each sequence from its own last word: reverse
        # within each length, leaving the padding at the end.
        steps = torch.arange(time, device=tokens.device).expand(batch, time)
        reverse = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
        gather = reverse[:, :, None].expand(-1, -1, tokens.shape[2])
        inputs = torch.stack([tokens, tokens.gather(1, gather)])  # (2, batch, time, P)
        outputs = []
        for layer in range(self.n_layers if depth is None else depth):
            states = self._run_layer(layer, inputs, active, step)
            if layer > 0 and self.skip:
                states = states + inputs
            outputs.append(torch.cat([states[0], states[1].gather(1, gather)], dim=-1))
            inputs = states
        unsort = torch.argsort(order)
        return [output[unsort] for output in outputs]

    def _run_layer(self, layer: int, inputs: torch.Tensor, active: List[int], step: LstmStep) -> torch.Tensor:
        """One LSTM layer, both directions; `active[t]` rows are still running at step t.

        Rows are sorted longest first, so the rows running at step t+1 are a
        prefix of those at step t: the states of finished rows are simply
        dropped. `h` and `c` are replaced, never updated in place, so autograd
        can run through the loop.
        """
        w_x, w_h = getattr(self, f"w_x_{layer}"), getattr(self, f"w_h_{layer}")
        bias, w_p = getattr(self, f"b_{layer}"), getattr(self, f"w_p_{layer}")
        _, batch, time, P = inputs.shape
        dim = w_p.shape[1]
        h = inputs.new_zeros((2, batch, P))
        c = inputs.new_zeros((2, batch, dim))
        # Only written, never read back: in-place writes here are autograd-safe.
        out = inputs.new_zeros((2, batch, time, P))
        time_chunk = max(1, PROJECTION_ROWS // batch)
        # A compiled step gets contiguous inputs of exactly its n rows. Views
        # (a time step of `projected`, the first n of a longer `h`) have
        # strides and offsets that change from step to step and chunk to
        # chunk, and dynamo specialises on them: it compiled a new graph for
        # them until it reached its recompile limit (8), then ran the step
        # uncompiled. The eager step takes the views as they are: a copy per
        # step would cost it more than the graph it does not have.
        compiled = step is not lstm_step
        for start in range(0, time, time_chunk):
            rows = active[start]
            chunk = inputs[:, :rows, start : start + time_chunk]
            steps = chunk.shape[2]
            # Input projections of the whole chunk, both directions, one bmm
            # over (rows x time); a broadcast matmul would copy w_x per row.
            projected = torch.baddbmm(bias, chunk.reshape(2, rows * steps, P), w_x).view(2, rows, steps, -1)
            for t in range(steps):
                n = active[start + t]
                x = projected[:, :n, t]
                if compiled:
                    x, h, c = x.contiguous(), h[:, :n].contiguous(), c[:, :n].contiguous()
                h, c = step(x, h, c, w_h, w_p, self.cell_clip, self.proj_clip)
                out[:, :n, start + t] = h
        return out


class ElmoBiLm(nn.Module):
    """Character ids of `<S> words </S>` -> ELMo's layers, boundaries included."""

    def __init__(self, options: ElmoOptions, trainable: bool = False):
        """Empty weights (on the meta device) until `load_arrays`; see `build_bilm`."""
        super().__init__()
        self.char_cnn = CharCNN(options, trainable)
        self.bilstm = BiLstm(options, trainable)

    def load_arrays(self, state: Dict[str, numpy.ndarray]) -> None:
        """Take the weights, as `elmo_weights.torch_layout` gives them, in place of
        the empty ones (shared with the arrays where they are float32 and contiguous)."""
        self.load_state_dict({name: _tensor(array) for name, array in state.items()}, strict=True, assign=True)

    def arrays(self) -> Dict[str, numpy.ndarray]:
        """The weights as numpy arrays, by state-dict name (`elmo_weights.released_layout` takes them)."""
        return {name: tensor.detach().cpu().numpy() for name, tensor in self.state_dict().items()}

    def forward(
        self,
        words: torch.Tensor,
        positions: torch.Tensor,
        lengths: torch.Tensor,
        step: LstmStep = lstm_step,
        depth: Optional[int] = None,
    ) -> List[torch.Tensor]:
        """A padded batch of sentences, as `elmo_chars.distinct_words` gives it:
        words: (n_words, 50), the char ids of each distinct word (the padding's
        all-zero row among them); positions: (batch, time), each position's row
        in `words`; lengths (on the host) include `<S>`/`</S>`.
        step, depth: the LSTM step and how many biLSTM layers to run (see `BiLstm.forward`).

        RETURNS: 1 + depth tensors (batch, time, 2P): [token, token], then each biLSTM layer run.
        """
        # The token layer depends only on the word: the CNN runs once per
        # distinct word, in chunks (its outputs are words x filters x 50 floats).
        embedded = torch.cat([self.char_cnn(words[i : i + CNN_WORDS]) for i in range(0, len(words), CNN_WORDS)])
        tokens = embedded[positions]
        token_layer = torch.cat([tokens, tokens], dim=-1)
        if depth == 0:  # the token layer alone: no biLSTM
            return [token_layer]
        return [token_layer, *self.bilstm(tokens, lengths, step, depth)]


def build_bilm(options: ElmoOptions, weights: Dict[str, numpy.ndarray], *, trainable: bool = False) -> ElmoBiLm:
    """The biLM of `options` with the released arrays (`read_weights`), which it
    takes over (and empties `weights`): the weights are held once."""
    net = ElmoBiLm(options, trainable)
    net.load_arrays(torch_layout(options, weights))
    return net
