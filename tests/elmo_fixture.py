"""Writes ELMo `options.json` + `weights.hdf5` in the released layout, with random weights.

Written from the format description (docs/elmo-weights-format.md) with h5py
directly, not with the package's writer. The small default configuration keeps
the tests fast; its weights are scaled so that cell and projection clipping
really happen. The full-size configuration is for benchmarks.

    python -m tests.elmo_fixture OUT_DIR [--full-size]
"""
import argparse
import json
from pathlib import Path

import h5py
import numpy

SMALL = {
    "lstm": {"dim": 16, "projection_dim": 8, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
             "use_skip_connections": True},
    "char_cnn": {"activation": "relu", "embedding": {"dim": 4}, "n_highway": 2,
                 "filters": [[1, 4], [2, 4], [3, 8]], "max_characters_per_token": 50, "n_characters": 262},
}
FULL_SIZE = {
    "lstm": {"dim": 4096, "projection_dim": 512, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
             "use_skip_connections": True},
    "char_cnn": {"activation": "relu", "embedding": {"dim": 16}, "n_highway": 2,
                 "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
                 "max_characters_per_token": 50, "n_characters": 262},
}


def write_elmo_fixture(directory, options=None, seed=0, lstm_scale=1.0):
    """Write the pair into `directory`; return (options_path, weights_path)."""
    options = SMALL if options is None else options
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = numpy.random.default_rng(seed)
    lstm, cnn = options["lstm"], options["char_cnn"]
    char_dim, P, dim = cnn["embedding"]["dim"], lstm["projection_dim"], lstm["dim"]
    n_filters = sum(n for _, n in cnn["filters"])

    def normal(shape, scale):
        return (rng.standard_normal(shape) * scale).astype("float32")

    with h5py.File(directory / "weights.hdf5", "w") as f:
        f["char_embed"] = normal((261, char_dim), 1.0)
        for i, (width, n) in enumerate(cnn["filters"]):
            f[f"CNN/W_cnn_{i}"] = normal((1, width, char_dim, n), 1.0 / numpy.sqrt(width * char_dim))
            f[f"CNN/b_cnn_{i}"] = normal((n,), 0.1)
        for k in range(cnn["n_highway"]):
            group = f.create_group(f"CNN_high_{k}")
            group["W_transform"] = normal((n_filters, n_filters), 1.0 / numpy.sqrt(n_filters))
            group["b_transform"] = normal((n_filters,), 0.1)
            group["W_carry"] = normal((n_filters, n_filters), 1.0 / numpy.sqrt(n_filters))
            group["b_carry"] = normal((n_filters,), 0.1)
        f["CNN_proj/W_proj"] = normal((n_filters, P), 2.0 / numpy.sqrt(n_filters))
        f["CNN_proj/b_proj"] = normal((P,), 0.1)
        for d in range(2):
            for layer in range(lstm["n_layers"]):
                cell = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
                # Large enough that |c| > cell_clip and |h| > proj_clip happen.
                f[f"{cell}/W_0"] = normal((2 * P, 4 * dim), lstm_scale * 2.0 / numpy.sqrt(2 * P))
                f[f"{cell}/B"] = normal((4 * dim,), lstm_scale * 0.5)
                f[f"{cell}/W_P_0"] = normal((dim, P), lstm_scale * 3.0 / numpy.sqrt(dim))
    (directory / "options.json").write_text(json.dumps(options))
    return directory / "options.json", directory / "weights.hdf5"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--full-size", action="store_true")
    args = parser.parse_args()
    print(*write_elmo_fixture(args.directory, FULL_SIZE if args.full_size else SMALL), sep="\n")
