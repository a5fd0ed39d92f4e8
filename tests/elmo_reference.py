"""ELMo in float64 NumPy, written plainly from the format description.

The yardstick for the package's PyTorch biLM: it reads the hdf5 file itself
and does every step with explicit loops. It imports nothing from spacy_ctxembed.
"""
import json

import h5py
import numpy


def char_ids(word):
    """The 50 character ids of one token (step 1-3 of the description)."""
    if word == "<S>":
        ids = [258, 256, 259]
    elif word == "</S>":
        ids = [258, 257, 259]
    else:
        ids = [258] + list(word.encode("utf-8", "ignore")[:48]) + [259]
    ids = ids + [260] * (50 - len(ids))
    return [i + 1 for i in ids]


def sigmoid(x):
    return 1.0 / (1.0 + numpy.exp(-x))


class ReferenceElmo:
    def __init__(self, options_path, weights_path):
        self.options = json.loads(open(options_path).read())
        with h5py.File(weights_path, "r") as f:
            self.w = {}
            f.visititems(lambda name, obj: self.w.__setitem__(name, obj[...].astype("float64"))
                         if isinstance(obj, h5py.Dataset) else None)
        # id 0 is the padding token: an all-zero row in front.
        self.w["char_embed"] = numpy.vstack([numpy.zeros((1, self.w["char_embed"].shape[1])), self.w["char_embed"]])
        self.clipped = {"cell": 0, "proj": 0}

    def token_layer(self, word):
        cnn = self.options["char_cnn"]
        e = self.w["char_embed"][char_ids(word)]  # (50, char_dim)
        features = []
        for i, (width, _) in enumerate(cnn["filters"]):
            kernel, bias = self.w[f"CNN/W_cnn_{i}"][0], self.w[f"CNN/b_cnn_{i}"]  # (width, char_dim, n)
            conv = numpy.array([
                sum(e[p + k] @ kernel[k] for k in range(width)) + bias for p in range(50 - width + 1)
            ])
            best = conv.max(axis=0)
            features.append(numpy.maximum(best, 0) if cnn["activation"] == "relu" else numpy.tanh(best))
        x = numpy.concatenate(features)
        for k in range(cnn["n_highway"]):
            w = {name: self.w[f"CNN_high_{k}/{name}"] for name in ("W_transform", "b_transform", "W_carry", "b_carry")}
            g = sigmoid(x @ w["W_carry"] + w["b_carry"])
            x = g * numpy.maximum(x @ w["W_transform"] + w["b_transform"], 0) + (1 - g) * x
        return x @ self.w["CNN_proj/W_proj"] + self.w["CNN_proj/b_proj"]

    def lstm(self, direction, layer, xs):
        lstm = self.options["lstm"]
        prefix = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
        W, B, WP = self.w[f"{prefix}/W_0"], self.w[f"{prefix}/B"], self.w[f"{prefix}/W_P_0"]
        dim, P = lstm["dim"], lstm["projection_dim"]
        h, c = numpy.zeros(P), numpy.zeros(dim)
        outputs = []
        for x in xs:
            z = numpy.concatenate([x, h]) @ W + B
            i, j, f, o = z[:dim], z[dim:2 * dim], z[2 * dim:3 * dim], z[3 * dim:]
            c = sigmoid(f + 1.0) * c + sigmoid(i) * numpy.tanh(j)
            self.clipped["cell"] += int((numpy.abs(c) > lstm["cell_clip"]).sum())
            c = numpy.clip(c, -lstm["cell_clip"], lstm["cell_clip"])
            h = (sigmoid(o) * numpy.tanh(c)) @ WP
            self.clipped["proj"] += int((numpy.abs(h) > lstm["proj_clip"]).sum())
            h = numpy.clip(h, -lstm["proj_clip"], lstm["proj_clip"])
            out = h + x if layer > 0 and lstm["use_skip_connections"] else h
            outputs.append(out)
        return outputs

    def __call__(self, words):
        """(3, n_words, 2P) for one sentence: [token, token], then each biLSTM layer."""
        tokens = [self.token_layer(w) for w in ["<S>", *words, "</S>"]]
        layers = [[numpy.concatenate([t, t]) for t in tokens]]
        forward, backward = tokens, tokens[::-1]
        for layer in range(self.options["lstm"]["n_layers"]):
            forward = self.lstm(0, layer, forward)
            backward = self.lstm(1, layer, backward)
            layers.append([numpy.concatenate([f, b]) for f, b in zip(forward, backward[::-1])])
        return numpy.array(layers)[:, 1:-1]


class TorchReferenceElmo:
    """The same biLM in float64 PyTorch, for autograd: `w` maps the weights
    file's dataset names (as `ReferenceElmo.w`, without the padding row) to
    tensors, which may require grad. Written from the format description, as
    above; nothing from spacy_ctxembed."""

    def __init__(self, options_path, w):
        import torch

        self.torch = torch
        self.options = json.loads(open(options_path).read())
        self.w = w

    @staticmethod
    def weights(weights_path):
        import torch

        with h5py.File(weights_path, "r") as f:
            out = {}
            f.visititems(lambda name, obj: out.__setitem__(name, torch.tensor(obj[...].astype("float64")))
                         if isinstance(obj, h5py.Dataset) else None)
        return out

    def token_layer(self, words):
        torch, cnn, w = self.torch, self.options["char_cnn"], self.w
        e = w["char_embed"][torch.tensor([[i - 1 for i in char_ids(x)] for x in words])]  # (n, 50, char_dim)
        features = []
        for i, (width, _) in enumerate(cnn["filters"]):
            kernel, bias = w[f"CNN/W_cnn_{i}"][0], w[f"CNN/b_cnn_{i}"]  # (width, char_dim, n)
            conv = sum(e[:, k:50 - width + 1 + k] @ kernel[k] for k in range(width)) + bias
            best = conv.max(dim=1).values
            features.append(torch.relu(best) if cnn["activation"] == "relu" else torch.tanh(best))
        x = torch.cat(features, dim=1)
        for k in range(cnn["n_highway"]):
            g = torch.sigmoid(x @ w[f"CNN_high_{k}/W_carry"] + w[f"CNN_high_{k}/b_carry"])
            x = g * torch.relu(x @ w[f"CNN_high_{k}/W_transform"] + w[f"CNN_high_{k}/b_transform"]) + (1 - g) * x
        return x @ w["CNN_proj/W_proj"] + w["CNN_proj/b_proj"]

    def lstm(self, direction, layer, xs):
        torch, lstm = self.torch, self.options["lstm"]
        prefix = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
        W, B, WP = self.w[f"{prefix}/W_0"], self.w[f"{prefix}/B"], self.w[f"{prefix}/W_P_0"]
        dim = lstm["dim"]
        h, c = torch.zeros(lstm["projection_dim"], dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
        outputs = []
        for x in xs:
            z = torch.cat([x, h]) @ W + B
            i, j, f, o = z[:dim], z[dim:2 * dim], z[2 * dim:3 * dim], z[3 * dim:]
            c = torch.clamp(torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(j),
                            -lstm["cell_clip"], lstm["cell_clip"])
            h = torch.clamp((torch.sigmoid(o) * torch.tanh(c)) @ WP, -lstm["proj_clip"], lstm["proj_clip"])
            outputs.append(h + x if layer > 0 and lstm["use_skip_connections"] else h)
        return outputs

    def __call__(self, words):
        """(1 + n_layers, n_words, 2P) for one sentence, as `ReferenceElmo`."""
        torch = self.torch
        tokens = list(self.token_layer(["<S>", *words, "</S>"]))
        layers = [torch.stack([torch.cat([t, t]) for t in tokens])]
        forward, backward = tokens, tokens[::-1]
        for layer in range(self.options["lstm"]["n_layers"]):
            forward = self.lstm(0, layer, forward)
            backward = self.lstm(1, layer, backward)
            layers.append(torch.stack([torch.cat([f, b]) for f, b in zip(forward, backward[::-1])]))
        return torch.stack(layers)[:, 1:-1]
