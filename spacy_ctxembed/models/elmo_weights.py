"""Reading and writing ELMo's released files: `*_options.json` + `*_weights.hdf5`.

The layout (TensorFlow convention, y = x @ W) is described in
`docs/elmo-weights-format.md`. Everything is checked when the files are read
(at initialize/load), never later: every options setting for presence, type and
range, then the weight file's counts of layers against the options', every dataset
for presence and the shape the options imply, then every dataset's values for
finiteness. Each problem is an `ElmoFileError` of the
form ``[component] options_file = '/p/options.json': lstm.n_layers = 0: expected
an integer >= 1``, naming the component instance, the file, the setting or
dataset, the value found and what is allowed.
"""
import codecs
import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Union

import numpy

from ..errors import is_int, is_number, shortened
from .elmo_chars import BOW, EOW, MAX_CHARS, PAD

OPTIONS_FILE = "options.json"
WEIGHTS_FILE = "weights.hdf5"

# Character ids run from 1 to max(BOW, EOW, PAD) + 1 = 261 after the +1 shift (elmo_chars.py),
# and 0 is the padding token: 262 rows in all, the value of `n_characters` in the released files.
N_CHARACTERS = max(BOW, EOW, PAD) + 2
# The released `char_embed` has no row for the padding id 0; `read_weights` prepends it.
CHAR_EMBED_ROWS = N_CHARACTERS - 1
#: Why a clip of 0 is refused: AllenNLP reads it as "no clipping", bilm-tf would clip every
#: state to 0 (and every vector above the character layer with it); which one a file meant
#: cannot be told.
CLIP_ZERO = "0 means no clipping to AllenNLP and clipping every state to 0 to bilm-tf; give the model's clip value"
ACTIVATIONS = ("relu", "tanh")
#: Said when the options file is an HDF5 file or the weight file JSON text: the two
#: settings side by side in a config are easily swapped, and the bare decoding or
#: HDF5 signature error did not say so.
SWAPPED = ("the options are the JSON file (*_options.json), the weights the HDF5 file (*_weights.hdf5): "
           "were the two swapped?")

PathLike = Union[str, Path]


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

    @cached_property
    def digest(self) -> str:
        """The options by content (the outputs' signature): not by the file's
        path, since a copy elsewhere is the same model. Taken once."""
        options = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.blake2b(options.encode("utf8"), digest_size=8).hexdigest()

    @property
    def n_filters(self) -> int:
        return sum(n for _, n in self.filters)

    @property
    def output_width(self) -> int:
        return 2 * self.projection_dim


class _Source:
    """One file of one component instance: builds errors that name both."""

    def __init__(self, component: str, setting: str, path: Path):
        self.component, self.setting, self.path = component, setting, path

    def error(self, detail: str) -> ElmoFileError:
        return ElmoFileError(f"[{self.component}] {self.setting} = {str(self.path)!r}: {detail}")

    def check_is_file(self) -> None:
        if not self.path.exists():
            raise self.error("no such file")
        if not self.path.is_file():
            raise self.error("not a file (expected the path of the released ELMo file)")


def _show(value: Any, limit: int = 80) -> str:
    return shortened(repr(value), limit)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


class _Options:
    """Typed, range-checked access to the parsed JSON of one options file."""

    def __init__(self, source: _Source, raw: Any):
        self.source, self.raw = source, raw
        if not isinstance(raw, dict):
            raise source.error(f"not ELMo options (found {_type_name(raw)}, "
                               "expected a JSON object with 'lstm' and 'char_cnn')")

    def lookup(self, key: str, expected: str) -> Any:
        node: Any = self.raw
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                parent = ".".join(parts[:i])
                raise self.source.error(f"{parent} = {_show(node)}: expected a JSON object, "
                                        f"found {_type_name(node)}")
            if part not in node:
                raise self.source.error(f"{key} is missing: expected {expected}")
            node = node[part]
        return node

    def bad(self, key: str, value: Any, expected: str) -> ElmoFileError:
        return self.source.error(f"{key} = {_show(value)}: expected {expected}")

    def integer(self, key: str, minimum: int) -> int:
        expected = f"an integer >= {minimum}"
        value = self.lookup(key, expected)
        if not is_int(value):
            raise self.bad(key, value, f"{expected}, found {_type_name(value)}")
        if value < minimum:
            raise self.bad(key, value, expected)
        return int(value)

    def number(self, key: str, minimum: float, *, above: bool = False, why: str = "") -> float:
        """A finite number >= minimum (> minimum where `above`); `why` is said when it is not."""
        expected = f"a finite number {'>' if above else '>='} {minimum:g}"
        value = self.lookup(key, expected)
        if not is_number(value):
            raise self.bad(key, value, f"{expected}, found {_type_name(value)}")
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise self.bad(key, value, expected + (f" ({why})" if why else ""))
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.lookup(key, "true or false")
        if not isinstance(value, bool):
            raise self.bad(key, value, f"true or false, found {_type_name(value)}")
        return value

    def choice(self, key: str, choices: Tuple[str, ...]) -> str:
        expected = "one of " + ", ".join(repr(c) for c in choices)
        value = self.lookup(key, expected)
        if not isinstance(value, str) or value not in choices:
            raise self.bad(key, value, expected)
        return value

    def released(self, key: str, required: int, why: str) -> int:
        """An integer setting that must have the one value the released models use."""
        expected = f"{required}, the value of the released models ({why})"
        value = self.lookup(key, expected)
        if not is_int(value) or value != required:
            raise self.bad(key, value, expected)
        return int(value)

    def filters(self, key: str, max_width: int) -> List[Tuple[int, int]]:
        pair = f"a [width, n] pair of integers with 1 <= width <= {max_width} and n >= 1"
        expected = f"a non-empty list of [width, n] pairs, each {pair}"
        value = self.lookup(key, expected)
        if not isinstance(value, list) or not value:
            raise self.bad(key, value, expected)
        filters = []
        for i, spec in enumerate(value):
            ok = (isinstance(spec, list) and len(spec) == 2 and all(is_int(v) for v in spec)
                  and 1 <= spec[0] <= max_width and spec[1] >= 1)
            if not ok:
                raise self.bad(f"{key}[{i}]", spec, pair)
            filters.append((int(spec[0]), int(spec[1])))
        return filters


def read_options(path: PathLike, *, component: str, setting: str = "options_file") -> ElmoOptions:
    """Parse and check an ELMo options file; every error names `component`, the
    setting it came from (a saved pipeline's files: "model") and the file."""
    path = Path(path)
    source = _Source(component, setting, path)
    source.check_is_file()
    try:
        # utf-8-sig: an options file saved by an editor that writes a byte order mark
        # (json.loads refuses one) is the same options.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        import h5py

        if h5py.is_hdf5(path):
            raise source.error(f"not ELMo options but an HDF5 file: {SWAPPED}") from None
        raise source.error(f"not ELMo options (not UTF-8 text: {err})") from None
    except OSError as err:
        raise source.error(f"cannot be read ({type(err).__name__}: {err})") from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise source.error(f"not ELMo options (not valid JSON: {err})") from None
    opts = _Options(source, raw)
    options = ElmoOptions(
        lstm_dim=opts.integer("lstm.dim", 1),
        projection_dim=opts.integer("lstm.projection_dim", 1),
        n_layers=opts.integer("lstm.n_layers", 1),
        cell_clip=opts.number("lstm.cell_clip", 0, above=True, why=CLIP_ZERO),
        proj_clip=opts.number("lstm.proj_clip", 0, above=True, why=CLIP_ZERO),
        use_skip_connections=opts.boolean("lstm.use_skip_connections"),
        activation=opts.choice("char_cnn.activation", ACTIVATIONS),
        char_dim=opts.integer("char_cnn.embedding.dim", 1),
        n_highway=opts.integer("char_cnn.n_highway", 0),
        # A "valid" convolution over the MAX_CHARS positions: wider filters have no output.
        filters=opts.filters("char_cnn.filters", MAX_CHARS),
        max_characters_per_token=opts.released("char_cnn.max_characters_per_token", MAX_CHARS,
                                               "character ids are always 50 long"),
        raw=raw,
    )
    # `n_characters` is optional (informational in the released files); when given it must be
    # one of the values bilm-tf writes for the one character table: 262 (inference, the
    # released files) or 261 (its training options). The table's size comes from the weight file.
    n_characters = raw["char_cnn"].get("n_characters", N_CHARACTERS)
    if not is_int(n_characters) or n_characters not in (N_CHARACTERS, N_CHARACTERS - 1):
        raise opts.bad("char_cnn.n_characters", n_characters,
                       f"{N_CHARACTERS}, the value of the released models, or {N_CHARACTERS - 1}, bilm-tf's "
                       f"training value (character ids 1..{N_CHARACTERS - 1} plus the padding id 0; "
                       f"the weight file's char_embed has n_characters - 1 = {CHAR_EMBED_ROWS} rows)")
    return options


def expected_shapes(options: ElmoOptions) -> Dict[str, Tuple[int, ...]]:
    """Every dataset the weight file must hold (but `char_embed`), with the shape the options imply."""
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


#: The names of a highway layer's arrays, in the released file and in the module.
HIGHWAY_NAMES = ("W_transform", "b_transform", "W_carry", "b_carry")


def torch_layout(options: ElmoOptions, weights: Dict[str, numpy.ndarray]) -> Dict[str, numpy.ndarray]:
    """The released arrays (as `read_weights` gives them) under the names and in
    the layouts of the biLM module's state dict (`elmo_net.ElmoBiLm`).

    Takes the arrays over: each is dropped from `weights` once converted, so
    that a full-size model's weights are held once. `released_layout` is the
    way back."""
    P = options.projection_dim
    state = {"char_cnn.char_embed": weights.pop("char_embed")}
    for i in range(len(options.filters)):
        # TF conv kernel (1, width, char_dim, n) -> torch Conv1d (n, char_dim, width)
        state[f"char_cnn.conv_w_{i}"] = weights.pop(f"CNN/W_cnn_{i}")[0].transpose(2, 1, 0)
        state[f"char_cnn.conv_b_{i}"] = weights.pop(f"CNN/b_cnn_{i}")
    for k in range(options.n_highway):
        for name in HIGHWAY_NAMES:
            state[f"char_cnn.high_{k}_{name}"] = weights.pop(f"CNN_high_{k}/{name}")
    state["char_cnn.proj_w"] = weights.pop("CNN_proj/W_proj")
    state["char_cnn.proj_b"] = weights.pop("CNN_proj/b_proj")
    for layer in range(options.n_layers):
        # Both directions stacked on a leading axis, so that one bmm serves both.
        # W_0 rows are [layer input; previous projected output].
        w = [weights.pop(f"{lstm_prefix(d, layer)}/W_0") for d in range(2)]
        state[f"bilstm.w_x_{layer}"] = numpy.stack([m[:P] for m in w])
        state[f"bilstm.w_h_{layer}"] = numpy.stack([m[P:] for m in w])
        del w
        state[f"bilstm.b_{layer}"] = numpy.stack([weights.pop(f"{lstm_prefix(d, layer)}/B") for d in range(2)])[:, None]
        state[f"bilstm.w_p_{layer}"] = numpy.stack([weights.pop(f"{lstm_prefix(d, layer)}/W_P_0") for d in range(2)])
    return state


def released_layout(options: ElmoOptions, state: Dict[str, numpy.ndarray]) -> Dict[str, numpy.ndarray]:
    """The biLM's state dict (as numpy arrays) in the released layout, as
    `read_weights` returns it (`char_embed` with its padding row): for `write_files`."""
    weights = {"char_embed": state["char_cnn.char_embed"]}
    for i in range(len(options.filters)):
        weights[f"CNN/W_cnn_{i}"] = state[f"char_cnn.conv_w_{i}"].transpose(2, 1, 0)[None]
        weights[f"CNN/b_cnn_{i}"] = state[f"char_cnn.conv_b_{i}"]
    for k in range(options.n_highway):
        for name in HIGHWAY_NAMES:
            weights[f"CNN_high_{k}/{name}"] = state[f"char_cnn.high_{k}_{name}"]
    weights["CNN_proj/W_proj"] = state["char_cnn.proj_w"]
    weights["CNN_proj/b_proj"] = state["char_cnn.proj_b"]
    for layer in range(options.n_layers):
        w_x, w_h = state[f"bilstm.w_x_{layer}"], state[f"bilstm.w_h_{layer}"]
        for d in range(2):
            prefix = lstm_prefix(d, layer)
            weights[f"{prefix}/W_0"] = numpy.concatenate([w_x[d], w_h[d]])
            weights[f"{prefix}/B"] = state[f"bilstm.b_{layer}"][d, 0]
            weights[f"{prefix}/W_P_0"] = state[f"bilstm.w_p_{layer}"][d]
    return weights


def read_weights(
    path: PathLike, options: ElmoOptions, *, component: str, setting: str = "weight_file"
) -> Dict[str, numpy.ndarray]:
    """All datasets as float32 arrays, `char_embed` with its zero padding row prepended.

    Checks, in this order, reporting the first problem: the file opens as HDF5; it holds as
    many filters, highway and LSTM layers as the options ask for (`_check_counts`); every dataset
    is present with the shape the options imply (`char_embed`: exactly
    (n_characters - 1, char_dim)) and a real numeric type; every value is finite (in float32).
    Datasets the options do not ask for are ignored: released files may carry extras.
    """
    import h5py

    path = Path(path)
    source = _Source(component, setting, path)
    source.check_is_file()
    shapes: Dict[str, Tuple[int, ...]] = {"char_embed": (CHAR_EMBED_ROWS, options.char_dim)}
    shapes.update(expected_shapes(options))
    weights: Dict[str, numpy.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            if "char_embed" not in f:
                raise source.error("not an ELMo weight file (dataset 'char_embed' is missing)")
            _check_counts(source, options, f)
            # Structure first (metadata only, cheap), then the values.
            for name, shape in shapes.items():
                _check_dataset(source, f, name, shape)
            for name in shapes:
                weights[name] = _read_finite(source, f[name], name)
    except ElmoFileError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/... for damaged files
        if _starts_as_json_object(path):
            raise source.error(f"not an ELMo weight file but JSON text: {SWAPPED}") from None
        raise source.error(f"cannot be read as HDF5 ({type(err).__name__}: {err})") from None
    padding_row = numpy.zeros((1, options.char_dim), dtype="float32")
    weights["char_embed"] = numpy.concatenate([padding_row, weights["char_embed"]])
    return weights


def _starts_as_json_object(path: Path) -> bool:
    """Whether the file's first non-blank byte opens a JSON object (an options file's)."""
    try:
        with path.open("rb") as f:
            # Past a byte order mark too: `read_options` reads such options (utf-8-sig).
            return f.read(256).removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{")
    except OSError:
        return False  # unreadable: the caller's error says so


def _check_counts(source: _Source, options: ElmoOptions, f: Any) -> None:
    """The options must ask for as many filters, highway layers and LSTM layers as
    the weight file holds. Fewer would load the file's first layers and leave the
    rest unused: another model, silently (a 2-highway file read with n_highway 1
    changed every vector). Counted first, so that a mistyped huge count fails at
    once, not after building a name for every layer it asks for."""
    for setting, asked, held, what in (
        ("char_cnn.filters", len(options.filters), _held(f, lambda k: f"CNN/W_cnn_{k}"),
         "convolution filters (CNN/W_cnn_*)"),
        ("char_cnn.n_highway", options.n_highway, _held(f, lambda k: f"CNN_high_{k}"), "highway layers (CNN_high_*)"),
        *(("lstm.n_layers", options.n_layers, _held(f, partial(lstm_prefix, direction)),
           f"LSTM layers (RNN_{direction}/RNN/MultiRNNCell/Cell*)") for direction in (0, 1)),
    ):
        if asked != held:
            raise source.error(f"holds {held} {what}, but the options file asks for {asked} ({setting}): "
                               "the options and the weight file are of different models")


def _held(f: Any, name: Callable[[int], str]) -> int:
    """How many of name(0), name(1), ... the file holds, in a row."""
    k = 0
    while name(k) in f:
        k += 1
    return k


def _check_dataset(source: _Source, f: Any, name: str, shape: Tuple[int, ...]) -> None:
    import h5py

    if name not in f:
        raise source.error(f"dataset {name!r} is missing (expected shape {shape})")
    item = f[name]
    if not isinstance(item, h5py.Dataset):
        raise source.error(f"{name!r} is a {type(item).__name__}, expected a dataset of shape {shape}")
    found = tuple(item.shape) if item.shape is not None else None
    if found != shape:
        detail = f"dataset {name!r} has shape {found}, expected {shape} from the options"
        if name == "char_embed":
            detail += (f" ({CHAR_EMBED_ROWS} = n_characters - 1 rows, one per character id 1..{CHAR_EMBED_ROWS}; "
                       "the padding row 0 is added on load; char_cnn.embedding.dim columns)")
        raise source.error(detail)
    if item.dtype.kind != "f":  # (integers would be quantised weights, whose scales are not in the file)
        raise source.error(f"dataset {name!r} has dtype {item.dtype}, "
                           "expected floating-point numbers (float32 in the released files)")


def _read_finite(source: _Source, dataset: Any, name: str) -> numpy.ndarray:
    try:
        stored = dataset[...]
    except Exception as err:
        raise source.error(f"dataset {name!r} cannot be read as HDF5, the file may be truncated or damaged "
                           f"({type(err).__name__}: {err})") from None
    with numpy.errstate(over="ignore"):  # float64 values beyond float32 become inf: reported below
        array = numpy.asarray(stored, dtype="float32")
    bad = ~numpy.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in numpy.argwhere(bad)[0])
        value = stored[first]
        overflow = " (does not fit in float32)" if numpy.isfinite(value) else ""
        raise source.error(f"dataset {name!r} holds {int(bad.sum())} non-finite value(s), the first "
                           f"{float(value)!r}{overflow} at index {first}: expected finite numbers")
    return array


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
