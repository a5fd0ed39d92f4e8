"""ELMo options/weight file problems are reported when the files are read, naming the
component instance, the file, the setting or dataset, the value found and what is allowed."""
import copy
import json

import h5py
import numpy
import pytest

from spacy_ctxembed.models.elmo_weights import (
    ElmoFileError,
    expected_shapes,
    read_options,
    read_weights,
    write_files,
)

from .elmo_fixture import SMALL, write_elmo_fixture

COMPONENT = "elmo_a"
LSTM_W0 = "RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"


@pytest.fixture
def files(tmp_path):
    return write_elmo_fixture(tmp_path / "elmo")


def _options(**changes):
    """SMALL with `changes` applied: {"lstm.dim": "16"}; the value `...` deletes the key."""
    options = copy.deepcopy(SMALL)
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = options
        for part in parents:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return options


def _read(options_path, weights_path):
    options = read_options(options_path, component=COMPONENT)
    return read_weights(weights_path, options, component=COMPONENT)


def _assert_message(err, path, *parts):
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert message.startswith(f"[{COMPONENT}] ")
    assert str(path) in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def _edit_hdf5(path, name, value):
    """Replace dataset `name` with `value`; None deletes it."""
    with h5py.File(path, "a") as f:
        del f[name]
        if value is not None:
            f[name] = value


def test_default_fixture_reads_exactly(files):
    options_path, weights_path = files
    options = read_options(options_path, component=COMPONENT)
    weights = read_weights(weights_path, options, component=COMPONENT)
    assert options.n_layers == 2 and options.n_highway == 2 and options.filters == [(1, 4), (2, 4), (3, 8)]
    assert options.raw == SMALL
    with h5py.File(weights_path, "r") as f:
        stored = {name: f[name][...] for name in ["char_embed", *expected_shapes(options)]}
    assert set(weights) == set(stored)
    padded = numpy.concatenate([numpy.zeros((1, 4), dtype="float32"), stored["char_embed"]])
    assert weights["char_embed"].shape == (262, 4)
    numpy.testing.assert_array_equal(weights["char_embed"], padded)
    for name, array in stored.items():
        if name != "char_embed":
            assert weights[name].dtype == numpy.float32
            numpy.testing.assert_array_equal(weights[name], array)


def test_write_files_round_trip(files, tmp_path):
    weights = _read(*files)
    options = read_options(files[0], component=COMPONENT)
    write_files(tmp_path / "copy", options, weights)
    again = _read(tmp_path / "copy" / "options.json", tmp_path / "copy" / "weights.hdf5")
    assert set(again) == set(weights)
    for name in weights:
        numpy.testing.assert_array_equal(again[name], weights[name])


def test_component_is_required_keyword(files):
    with pytest.raises(TypeError):
        read_options(files[0])  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        read_options(files[0], COMPONENT)  # type: ignore[misc]


@pytest.mark.parametrize("n_characters", [..., 261, 262])
def test_extra_dataset_and_n_characters_left_out_or_either_bilm_value_are_fine(tmp_path, n_characters):
    options_path, weights_path = write_elmo_fixture(tmp_path,
                                                    options=_options(**{"char_cnn.n_characters": n_characters}))
    with h5py.File(weights_path, "a") as f:
        f["extra/something"] = numpy.zeros(3, dtype="float32")
    weights = _read(options_path, weights_path)
    assert "extra/something" not in weights


@pytest.mark.parametrize(
    "changes, parts",
    [
        ({"lstm.n_layers": 0}, ["lstm.n_layers = 0: expected an integer >= 1"]),
        ({"lstm.n_layers": -1}, ["lstm.n_layers = -1: expected an integer >= 1"]),
        ({"char_cnn.n_highway": -1}, ["char_cnn.n_highway = -1: expected an integer >= 0"]),
        ({"lstm.cell_clip": -1}, ["lstm.cell_clip = -1: expected a finite number > 0"]),
        ({"lstm.proj_clip": -1}, ["lstm.proj_clip = -1: expected a finite number > 0"]),
        # 0: no clipping to AllenNLP, every state clipped to 0 (all-zero vectors) to bilm-tf.
        ({"lstm.cell_clip": 0}, ["lstm.cell_clip = 0: expected a finite number > 0 (0 means no clipping"]),
        ({"lstm.proj_clip": 0.0}, ["lstm.proj_clip = 0.0: expected a finite number > 0", "bilm-tf"]),
        ({"lstm.cell_clip": float("nan")}, ["lstm.cell_clip = nan: expected a finite number > 0"]),
        ({"lstm.proj_clip": "3"}, ["lstm.proj_clip = '3': expected a finite number > 0, found a string"]),
        ({"lstm.dim": "16"}, ["lstm.dim = '16': expected an integer >= 1, found a string"]),
        ({"lstm.dim": 0}, ["lstm.dim = 0: expected an integer >= 1"]),
        ({"lstm.dim": None}, ["lstm.dim = None: expected an integer >= 1, found null"]),
        ({"lstm.projection_dim": 8.0}, ["lstm.projection_dim = 8.0: expected an integer >= 1, found a number"]),
        ({"lstm.n_layers": True}, ["lstm.n_layers = True: expected an integer >= 1, found a boolean"]),
        ({"char_cnn.embedding.dim": False}, ["char_cnn.embedding.dim = False", "found a boolean"]),
        ({"lstm.use_skip_connections": "yes"}, ["lstm.use_skip_connections = 'yes': expected true or false"]),
        ({"lstm.dim": ...}, ["lstm.dim is missing: expected an integer >= 1"]),
        ({"char_cnn.embedding": 4}, ["char_cnn.embedding = 4: expected a JSON object"]),
        ({"char_cnn.filters": []}, ["char_cnn.filters = []: expected a non-empty list of [width, n] pairs"]),
        ({"char_cnn.filters": [[1, 4], [0, 4]]}, ["char_cnn.filters[1] = [0, 4]", "1 <= width <= 50 and n >= 1"]),
        ({"char_cnn.filters": [[51, 4]]}, ["char_cnn.filters[0] = [51, 4]", "1 <= width <= 50"]),
        ({"char_cnn.filters": [[2, 0]]}, ["char_cnn.filters[0] = [2, 0]", "n >= 1"]),
        ({"char_cnn.filters": [[2, "4"]]}, ["char_cnn.filters[0] = [2, '4']", "pair of integers"]),
        ({"char_cnn.activation": "sigmoid"}, ["char_cnn.activation = 'sigmoid': expected one of 'relu', 'tanh'"]),
        ({"char_cnn.max_characters_per_token": 40},
         ["char_cnn.max_characters_per_token = 40: expected 50, the value of the released models"]),
        ({"char_cnn.n_characters": 100},
         ["char_cnn.n_characters = 100: expected 262, the value of the released models, or 261", "261 rows"]),
        ({"char_cnn.n_characters": "262"}, ["char_cnn.n_characters = '262': expected 262"]),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else None,
)
def test_bad_options(tmp_path, files, changes, parts):
    options_path = tmp_path / "options.json"
    options_path.write_text(json.dumps(_options(**changes)))
    with pytest.raises(ElmoFileError) as err:
        _read(options_path, files[1])
    _assert_message(err, options_path, "options_file = ", *parts)


@pytest.mark.parametrize(
    "text, parts",
    [
        ("{not json", ["not ELMo options (not valid JSON"]),
        ("", ["not ELMo options (not valid JSON"]),
        ("[1, 2]", ["not ELMo options (found a list"]),
    ],
    ids=["not-json", "empty", "list"],
)
def test_options_not_json(tmp_path, files, text, parts):
    options_path = tmp_path / "options.json"
    options_path.write_text(text)
    with pytest.raises(ElmoFileError) as err:
        read_options(options_path, component=COMPONENT)
    _assert_message(err, options_path, "options_file = ", *parts)


def test_options_not_utf8(tmp_path, files):
    # A Latin-1 file (or a weight file given as the options) fails to decode: named as
    # not ELMo options, not as a UnicodeDecodeError without the component or the file.
    options_path = tmp_path / "options.json"
    options_path.write_bytes('{"lstm": {"dim": "caf\u00e9"}}'.encode("latin-1"))
    with pytest.raises(ElmoFileError) as err:
        read_options(options_path, component=COMPONENT)
    _assert_message(err, options_path, "options_file = ", "not ELMo options (not UTF-8 text")


def test_options_with_a_byte_order_mark_are_read(tmp_path):
    """An options file saved by an editor that writes a UTF-8 BOM was refused as
    not valid JSON ("Unexpected UTF-8 BOM")."""
    options_path = tmp_path / "options.json"
    options_path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SMALL).encode("utf8"))
    options = read_options(options_path, component=COMPONENT)
    assert options.raw == SMALL
    assert (options.lstm_dim, options.projection_dim, options.filters) == (16, 8, [(1, 4), (2, 4), (3, 8)])


def test_options_with_a_byte_order_mark_given_as_the_weights_are_named_as_swapped(files):
    """Options that `read_options` reads (a byte order mark before the JSON)
    given as the weight file: named as swapped, as without the mark, not as
    a bare HDF5 signature error."""
    options_path, weights_path = files
    options = read_options(options_path, component=COMPONENT)
    weights_path.write_bytes(b"\xef\xbb\xbf" + options_path.read_bytes())
    with pytest.raises(ElmoFileError) as err:
        read_weights(weights_path, options, component=COMPONENT)
    _assert_message(err, weights_path, "weight_file = ", "not an ELMo weight file but JSON text",
                    "were the two swapped?")


def test_missing_files(tmp_path, files):
    options = read_options(files[0], component=COMPONENT)
    with pytest.raises(ElmoFileError) as err:
        read_options(tmp_path / "nope.json", component=COMPONENT)
    _assert_message(err, tmp_path / "nope.json", "options_file = ", "no such file")
    with pytest.raises(ElmoFileError) as err:
        read_weights(tmp_path / "nope.hdf5", options, component=COMPONENT)
    _assert_message(err, tmp_path / "nope.hdf5", "weight_file = ", "no such file")
    with pytest.raises(ElmoFileError) as err:
        read_weights(tmp_path, options, component=COMPONENT)
    _assert_message(err, tmp_path, "weight_file = ", "not a file")


@pytest.mark.parametrize(
    "name, value, parts",
    [
        ("char_embed", numpy.zeros((100, 4), dtype="float32"),
         ["dataset 'char_embed' has shape (100, 4), expected (261, 4)", "n_characters - 1"]),
        ("char_embed", numpy.zeros((262, 4), dtype="float32"),
         ["dataset 'char_embed' has shape (262, 4), expected (261, 4)"]),
        ("char_embed", numpy.zeros((261, 5), dtype="float32"),
         ["dataset 'char_embed' has shape (261, 5), expected (261, 4)"]),
        ("char_embed", None, ["not an ELMo weight file (dataset 'char_embed' is missing)"]),
        ("CNN_proj/W_proj", None, ["dataset 'CNN_proj/W_proj' is missing (expected shape (16, 8))"]),
        (LSTM_W0, numpy.zeros((16, 32), dtype="float32"),
         [f"dataset '{LSTM_W0}' has shape (16, 32), expected (16, 64) from the options"]),
        ("CNN/b_cnn_1", numpy.array([b"a", b"b", b"c", b"d"]),
         ["dataset 'CNN/b_cnn_1' has dtype |S1, expected floating-point numbers"]),
        ("CNN_proj/W_proj", numpy.ones((16, 8), dtype="int8"),
         ["dataset 'CNN_proj/W_proj' has dtype int8, expected floating-point numbers"]),
    ],
    ids=["char-embed-100", "char-embed-262", "char-embed-width", "no-char-embed", "missing", "wrong-shape",
         "strings", "integers"],
)
def test_bad_datasets(files, name, value, parts):
    _edit_hdf5(files[1], name, value)
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], "weight_file = ", *parts)


def test_group_instead_of_dataset(files):
    _edit_hdf5(files[1], "CNN_proj/b_proj", None)
    with h5py.File(files[1], "a") as f:
        f.create_group("CNN_proj/b_proj")
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], "'CNN_proj/b_proj' is a Group, expected a dataset of shape (8,)")


def test_nan_in_lstm_weight(files):
    with h5py.File(files[1], "a") as f:
        array = f[LSTM_W0][...]
        array[3, 5] = numpy.nan
        array[7, 1] = numpy.nan
        f[LSTM_W0][...] = array
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], f"dataset '{LSTM_W0}' holds 2 non-finite value(s), the first nan at index (3, 5)",
                    "expected finite numbers")


def test_inf_in_char_embed_is_named_first(files):
    with h5py.File(files[1], "a") as f:
        f["char_embed"][10, 2] = -numpy.inf
        f[LSTM_W0][0, 0] = numpy.nan
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], "dataset 'char_embed' holds 1 non-finite value(s), the first -inf at index (10, 2)")


def test_float64_overflow_is_non_finite(files):
    _edit_hdf5(files[1], "CNN_proj/b_proj", numpy.full(8, 1e300, dtype="float64"))
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], "dataset 'CNN_proj/b_proj' holds 8 non-finite value(s)", "does not fit in float32")


def test_truncated_hdf5(files):
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], "weight_file = ", "cannot be read as HDF5")


def test_a_damaged_chunk_is_named_with_its_dataset(files):
    """A file whose structure reads but one dataset's compressed data is damaged
    (a bad sector, a partial copy): named with the dataset, not as a bare OSError
    of h5py's filter pipeline."""
    name = "CNN_proj/W_proj"
    with h5py.File(files[1], "a") as f:
        value = f[name][...]
        del f[name]
        f.create_dataset(name, data=value, chunks=value.shape, compression="gzip")
        chunk = f[name].id.get_chunk_info(0)
    data = bytearray(files[1].read_bytes())
    data[chunk.byte_offset:chunk.byte_offset + chunk.size] = bytes(chunk.size)
    files[1].write_bytes(bytes(data))
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], "weight_file = ", f"dataset {name!r} cannot be read as HDF5, the file may be "
                    "truncated or damaged (OSError: ")


def test_text_file_as_hdf5(files):
    files[1].write_text("this is not an HDF5 file\n")
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    _assert_message(err, files[1], "weight_file = ", "cannot be read as HDF5")


@pytest.mark.parametrize("changes, part", [
    ({"lstm.n_layers": 3}, "holds 2 LSTM layers (RNN_0/RNN/MultiRNNCell/Cell*), but the options file asks for 3"),
    # Fewer than the file holds loaded its first layers silently: another model (every vector changed).
    ({"lstm.n_layers": 1}, "holds 2 LSTM layers (RNN_0/RNN/MultiRNNCell/Cell*), but the options file asks for 1"),
    ({"char_cnn.n_highway": 1}, "holds 2 highway layers (CNN_high_*), but the options file asks for 1"),
    ({"char_cnn.n_highway": 0}, "holds 2 highway layers (CNN_high_*), but the options file asks for 0"),
    ({"char_cnn.filters": [[1, 4], [2, 4]]},
     "holds 3 convolution filters (CNN/W_cnn_*), but the options file asks for 2"),
    # A mistyped huge count is refused at once (it used to build a name per layer first: 30 s, 1 GB at 10**6).
    ({"char_cnn.n_highway": 10**5}, "holds 2 highway layers (CNN_high_*), but the options file asks for 100000"),
], ids=["layers-3", "layers-1", "highway-1", "highway-0", "filters-2", "highway-huge"])
def test_options_disagree_with_weights(tmp_path, files, changes, part):
    options_path = tmp_path / "options.json"
    options_path.write_text(json.dumps(_options(**changes)))
    with pytest.raises(ElmoFileError) as err:
        _read(options_path, files[1])
    _assert_message(err, files[1], "weight_file = ", part, "of different models")


@pytest.mark.parametrize("edit", ["extra", "missing"])
def test_a_backward_lstm_of_another_depth_is_refused(files, edit):
    """Only the forward LM's layers were counted: a backward one with a layer
    more than the options ask for loaded, that layer unused, without a word."""
    prefix = "RNN_1/RNN/MultiRNNCell/Cell"
    with h5py.File(files[1], "a") as f:
        if edit == "extra":
            f.copy(f[f"{prefix}1"], f"{prefix}2")
        else:
            del f[f"{prefix}1"]
    with pytest.raises(ElmoFileError) as err:
        _read(*files)
    held = 3 if edit == "extra" else 1
    _assert_message(err, files[1], f"holds {held} LSTM layers (RNN_1/RNN/MultiRNNCell/Cell*), but the options file "
                                   "asks for 2 (lstm.n_layers)", "of different models")


def test_the_smallest_counts_and_the_widest_filter_are_a_valid_model(tmp_path):
    """Not seen before: a valid file at each setting's lower bound (one LSTM layer, no
    highway layer) and a filter as wide as the 50 character positions (one output per
    filter). Shapes are the documented ones, computed here."""
    options = _options(**{"lstm.n_layers": 1, "char_cnn.n_highway": 0,
                          "char_cnn.filters": [[1, 2], [50, 3]]})
    options_path, weights_path = write_elmo_fixture(tmp_path, options=options)
    read = read_options(options_path, component=COMPONENT)
    assert (read.n_layers, read.n_highway, read.filters) == (1, 0, [(1, 2), (50, 3)])
    weights = read_weights(weights_path, read, component=COMPONENT)
    assert weights["CNN/W_cnn_1"].shape == (1, 50, 4, 3)
    assert weights["CNN_proj/W_proj"].shape == (5, 8)
    assert not any(name.startswith("CNN_high_") for name in weights)
    assert sorted(n for n in weights if n.startswith("RNN_")) == sorted(
        f"RNN_{d}/RNN/MultiRNNCell/Cell0/LSTMCell/{name}" for d in (0, 1) for name in ("W_0", "B", "W_P_0"))


@pytest.mark.parametrize("key", ["lstm.cell_clip", "lstm.proj_clip"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf")], ids=["inf", "-inf"])
def test_an_infinite_clip_is_refused(tmp_path, files, key, value):
    """Not seen before: JSON's `Infinity` (which json.loads reads) as a clip value;
    only nan was tried. "A finite number > 0" refuses it."""
    options_path = tmp_path / "options.json"
    options_path.write_text(json.dumps(_options(**{key: value})))  # writes Infinity / -Infinity
    assert "Infinity" in options_path.read_text()
    with pytest.raises(ElmoFileError) as err:
        read_options(options_path, component=COMPONENT)
    _assert_message(err, options_path, f"{key} = {value!r}: expected a finite number > 0")


def test_n_characters_must_be_an_integer_not_a_float_of_the_same_value(tmp_path, files):
    """Not seen before: 262.0 compares equal to 262; an integer setting given as a
    number is refused like the other integer settings (`lstm.projection_dim = 8.0`)."""
    options_path = tmp_path / "options.json"
    options_path.write_text(json.dumps(_options(**{"char_cnn.n_characters": 262.0})))
    with pytest.raises(ElmoFileError) as err:
        read_options(options_path, component=COMPONENT)
    _assert_message(err, options_path, "char_cnn.n_characters = 262.0: expected 262")


def test_the_options_digest_is_by_content_not_by_key_order(tmp_path):
    """Not seen before: the digest (the outputs' signature) of the same options written
    with their keys in another order. The same model must give the same digest; a
    changed value another."""
    def reorder(node):
        return {k: reorder(node[k]) for k in reversed(list(node))} if isinstance(node, dict) else node

    plain, reordered, changed = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    plain.write_text(json.dumps(SMALL))
    reordered.write_text(json.dumps(reorder(SMALL)))
    changed.write_text(json.dumps(_options(**{"lstm.cell_clip": 2})))
    assert plain.read_text() != reordered.read_text()
    assert json.loads(plain.read_text()) == json.loads(reordered.read_text())
    digest = [read_options(p, component=COMPONENT).digest for p in (plain, reordered, changed)]
    assert digest[0] == digest[1] != digest[2]
