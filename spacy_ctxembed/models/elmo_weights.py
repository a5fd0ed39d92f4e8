"""Reading and writing ELMo's released files: `*_options.json` + `*_weights.hdf5`.

The layout (TensorFlow convention, y = x @ W) is described in
`docs/elmo-weights-format.md`. Every dataset is checked against the shape the
options imply before anything is built, and each problem is reported by
dataset name with the expected and found shapes.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy

COMPONENT = "ctxembed_elmo"
OPTIONS_FILE = "options.json"
WEIGHTS_FILE = "weights.hdf5"


class ElmoFileError(ValueError):
    """An ELMo options or weight file is missing, unreadable or inconsistent."""


@dataclass
class ElmoOptions:
    lstm_dim: int
    projection_dim: int
    n_layers: int
    cell_clip: float
    proj_clip: float
    use_skip_connections: bool
    activation: str
    char_dim: int
    n_highway: int
    filters: List[Tuple[int, int]]
    max_characters_per_token: int
    raw: Dict[str, Any]

    @property
    def n_filters(self) -> int:
        return sum(n for _, n in self.filters)

    @property
    def output_width(self) -> int:
        return 2 * self.projection_dim


def read_options(path: Path) -> ElmoOptions:
    if not Path(path).is_file():
        raise ElmoFileError(f"[{COMPONENT}] options_file = {str(path)!r}: no such file")
    try:
        raw = json.loads(Path(path).read_text(encoding="utf8"))
        lstm, cnn = raw["lstm"], raw["char_cnn"]
        options = ElmoOptions(
            lstm_dim=int(lstm["dim"]),
            projection_dim=int(lstm["projection_dim"]),
            n_layers=int(lstm["n_layers"]),
            cell_clip=float(lstm["cell_clip"]),
            proj_clip=float(lstm["proj_clip"]),
            use_skip_connections=bool(lstm["use_skip_connections"]),
            activation=str(cnn["activation"]),
            char_dim=int(cnn["embedding"]["dim"]),
            n_highway=int(cnn["n_highway"]),
            filters=[(int(w), int(n)) for w, n in cnn["filters"]],
            max_characters_per_token=int(cnn["max_characters_per_token"]),
            raw=raw,
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ElmoFileError(f"[{COMPONENT}] options_file = {str(path)!r}: not ELMo options ({err!r})") from None
    if options.activation not in ("relu", "tanh"):
        raise ElmoFileError(f"[{COMPONENT}] options_file: char_cnn.activation = {options.activation!r}: "
                            "expected 'relu' or 'tanh'")
    if options.max_characters_per_token != 50:
        raise ElmoFileError(f"[{COMPONENT}] options_file: max_characters_per_token = "
                            f"{options.max_characters_per_token}: the released models use 50")
    return options


def expected_shapes(options: ElmoOptions) -> Dict[str, Tuple[int, ...]]:
    """Every dataset the weight file must hold, with the shape the options imply."""
    P, F, dim = options.projection_dim, options.n_filters, options.lstm_dim
    shapes: Dict[str, Tuple[int, ...]] = {}
    for i, (width, n) in enumerate(options.filters):
        shapes[f"CNN/W_cnn_{i}"] = (1, width, options.char_dim, n)
        shapes[f"CNN/b_cnn_{i}"] = (n,)
    for k in range(options.n_highway):
        for name, shape in (("W_transform", (F, F)), ("b_transform", (F,)), ("W_carry", (F, F)), ("b_carry", (F,))):
            shapes[f"CNN_high_{k}/{name}"] = shape
    shapes["CNN_proj/W_proj"] = (F, P)
    shapes["CNN_proj/b_proj"] = (P,)
    for d in range(2):
        for layer in range(options.n_layers):
            prefix = lstm_prefix(d, layer)
            shapes[f"{prefix}/W_0"] = (P + P, 4 * dim)
            shapes[f"{prefix}/B"] = (4 * dim,)
            shapes[f"{prefix}/W_P_0"] = (dim, P)
    return shapes


def lstm_prefix(direction: int, layer: int) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def read_weights(path: Path, options: ElmoOptions) -> Dict[str, numpy.ndarray]:
    """All datasets as float32 arrays, `char_embed` with its zero padding row prepended."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ElmoFileError(f"[{COMPONENT}] weight_file = {str(path)!r}: no such file")
    try:
        with h5py.File(path, "r") as f:
            if "char_embed" not in f:
                raise ElmoFileError(
                    f"[{COMPONENT}] weight_file = {str(path)!r}: not an ELMo weight file "
                    "(dataset 'char_embed' is missing)"
                )
            weights = {"char_embed": _read(f, "char_embed", None, options.char_dim)}
            for name, shape in expected_shapes(options).items():
                weights[name] = _read(f, name, shape)
    except ElmoFileError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/... for damaged files
        raise ElmoFileError(
            f"[{COMPONENT}] weight_file = {str(path)!r}: cannot be read as HDF5 ({type(err).__name__}: {err})"
        ) from None
    padding_row = numpy.zeros((1, options.char_dim), dtype="float32")
    weights["char_embed"] = numpy.concatenate([padding_row, weights["char_embed"]])
    return weights


def _read(f, name: str, shape, char_dim: int = 0) -> numpy.ndarray:
    if name not in f:
        raise ElmoFileError(f"[{COMPONENT}] weight_file: dataset {name!r} is missing (expected shape {shape})")
    found = tuple(f[name].shape)
    if shape is None:  # char_embed: any number of rows, char_dim columns
        if len(found) != 2 or found[1] != char_dim:
            raise ElmoFileError(f"[{COMPONENT}] weight_file: dataset 'char_embed' has shape {found}, "
                                f"expected (n_chars, {char_dim}) from the options")
    elif found != shape:
        raise ElmoFileError(
            f"[{COMPONENT}] weight_file: dataset {name!r} has shape {found}, expected {shape} from the options"
        )
    return numpy.asarray(f[name][...], dtype="float32")


def write_files(directory: Path, options: ElmoOptions, weights: Dict[str, numpy.ndarray]) -> None:
    """Write options.json + weights.hdf5 in the released layout (for `to_disk`)."""
    import h5py

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / OPTIONS_FILE).write_text(json.dumps(options.raw, indent=2), encoding="utf8")
    with h5py.File(directory / WEIGHTS_FILE, "w") as f:
        f["char_embed"] = weights["char_embed"][1:]  # the released file has no padding row
        for name in expected_shapes(options):
            f[name] = weights[name]
