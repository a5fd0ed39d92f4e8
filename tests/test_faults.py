"""Every hostile case in one place: odd text, empty docs, damaged files, edits, interruptions, bad settings.

Each test asserts either exact vectors against an independent reference (a run
on clean input or on a fresh pipeline, `transformers` or the float64 NumPy ELMo
run directly, or the vectors from before an edit looked up by character
offsets), or a clear error whose message starts with ``[<component>]`` and
names the file or the setting.

Sections:
  1. hostile texts (BERT and ELMo)
  2. empty docs inside batches (all three factories)
  3. corrupt saved pipelines (weights, config, tokenizer, combiner, model folder; ELMo files)
  4. retokenization and as_doc (BERT and ELMo)
  5. an interrupted `embed`, then --resume
  6. nlp.pipe(n_process=2)
  7. settings of the wrong kind in a config string
  8. a model that gives nan or inf (a float16 overflow, diverged weights)

Everything runs on the tiny random BERT (`tiny_bert_dir`, hidden size 32, the
real MiniLM tokenizer) and the small ELMo fixture.
"""
import json
import shutil

import numpy
import pytest
import spacy
import srsly
from spacy.util import load_config_from_str, load_model_from_config

from spacy_ctxembed import restore_vectors
from spacy_ctxembed.cli.output import Run
from spacy_ctxembed.embedded import read_manifest
from spacy_ctxembed.errors import NonFiniteOutputs, SettingError
from spacy_ctxembed.models.elmo_weights import ElmoFileError
from spacy_ctxembed.pipeline import ContextualEmbedder

from .conftest import ctx_config, make_nlp
from .elmo_fixture import write_elmo_fixture
from .elmo_reference import ReferenceElmo
from .reference import hf_hidden_states, pool, token_pieces
from .test_cli_support import invoke, last_line, manifest_of, read_output, tiny_pipeline

NAME = "emb"
BERT_LAYERS = [0, 2]
FACTORIES = ["ctxembed_bert", "ctxembed_elmo"]


def _url_of_6000_pieces():
    # "seg{i}" is ~5 wordpieces with its "/": 1200 segments give ~6,100 pieces.
    return "https://example.com/" + "/".join(f"seg{i}" for i in range(1200))


HOSTILE = {
    "nul-and-controls": "a\x00b c\x01\x07 \x1b[31mred\x7f \x00 end\x08",
    "rtl-override": "abc \u202eolleh\u202c def \u202e \u202d\u202c x",
    "zwj-emoji": "👩\u200d👩\u200d👧\u200d👦 👨🏽\u200d💻 🏳️\u200d🌈 x\u200dy \u200d",
    "combining-alone": "\u0301 \u0308\u0301 a \u0327\u0327\u0327 \u20dd",
    "word-100000-chars": "x" * 100_000,
    "cjk-30000-no-spaces": "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(30_000)),
    "url-6000-pieces": _url_of_6000_pieces(),
    "whitespace-only": " \t\n  \u3000 \u2028 \r\n",
    "empty": "",
    "mixed-line-breaks": "one\r\ntwo\tthree\u2028four\r\n\r\n\tfive\u2029 six\x85seven\u000bend ",
}
#: Short enough for one window of the tiny model: compared with `transformers` / the NumPy ELMo.
SHORT_HOSTILE = "a\x00b \u202eolleh\u202c 👩\u200d🔬 e\u0301 \u0301 中文\r\n\t\u2028x\u200dy \x07"


@pytest.fixture(scope="module")
def elmo_files(tmp_path_factory):
    return write_elmo_fixture(tmp_path_factory.mktemp("elmo-faults"))


def _config(factory, tiny_bert_dir, elmo_files, **settings):
    if factory == "ctxembed_bert":
        return ctx_config(name=tiny_bert_dir, layers=BERT_LAYERS, store_layers=True, **settings)
    if factory == "ctxembed_elmo":
        options, weights = elmo_files
        return ctx_config(options_file=str(options), weight_file=str(weights), store_layers=True, **settings)
    return ctx_config(store_layers=True, **settings)


def _build(factory, tiny_bert_dir, elmo_files, name=NAME, **settings):
    nlp = spacy.blank("en")
    nlp.add_pipe(factory, name=name, config=_config(factory, tiny_bert_dir, elmo_files, **settings))
    nlp.initialize()
    return nlp


def _trf_nlp(tiny_bert_dir, layers, hidden_states):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}, "transformer_config": {"output_hidden_states": hidden_states}}})
    nlp.add_pipe("ctxembed_from_trf", name=NAME, config=ctx_config(layers=layers, store_layers=True))
    nlp.initialize()
    return nlp


def _assert_error(excinfo, component, *parts):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError), type(excinfo.value)
    assert message.startswith(f"[{component}] "), message
    for part in parts:
        assert str(part) in message, f"{part!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------
# 1. Hostile texts


@pytest.fixture(scope="module", params=FACTORIES)
def hostile_nlps(request, tiny_bert_dir, elmo_files):
    """(factory, pipeline, a second pipeline built from scratch, the BERT tokenizer or None)."""
    factory = request.param
    tokenizer = None
    if factory == "ctxembed_bert":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    return (factory, _build(factory, tiny_bert_dir, elmo_files), _build(factory, tiny_bert_dir, elmo_files),
            tokenizer)


def _covered(doc, tokenizer):
    """Which tokens should have a vector: BERT, overlapped by a wordpiece; ELMo, not whitespace."""
    if tokenizer is None:
        return [not t.is_space for t in doc]
    encoding = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [bool(p) for p in token_pieces(doc, encoding["offset_mapping"])]


def test_hostile_inputs_are_what_they_claim(tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    n_pieces = len(tokenizer(HOSTILE["url-6000-pieces"], add_special_tokens=False, verbose=False)["input_ids"])
    assert 6000 <= n_pieces < 6500
    doc = spacy.blank("en")(HOSTILE["cjk-30000-no-spaces"])
    assert len(HOSTILE["cjk-30000-no-spaces"]) == 30_000 and len(doc) == 1
    assert len(spacy.blank("en")(HOSTILE["word-100000-chars"])) == 1


@pytest.mark.parametrize("label", list(HOSTILE))
def test_hostile_text(hostile_nlps, label):
    factory, nlp, fresh, tokenizer = hostile_nlps
    text = HOSTILE[label]
    doc = nlp(text)
    n_layers, width = (2, 32) if factory == "ctxembed_bert" else (3, 16)
    vectors, layers = doc._.ctx_outputs[NAME]["vectors"], doc._.ctx_outputs[NAME]["layers"]
    assert doc.text == text
    assert vectors.shape == (len(doc), width) and vectors.dtype == numpy.float32
    assert layers.shape == (n_layers, len(doc), width)
    assert doc._.ctx_vectors.shape == vectors.shape and doc._.ctx_layers.shape == layers.shape
    assert doc.tensor.shape == vectors.shape
    assert numpy.isfinite(vectors).all() and numpy.isfinite(layers).all()
    covered = _covered(doc, tokenizer)
    assert [t.has_vector for t in doc] == covered
    for token in doc:
        numpy.testing.assert_array_equal(token.vector, vectors[token.i])
        if not token.has_vector:
            assert not vectors[token.i].any() and not layers[:, token.i].any(), repr(token.text)
    assert doc.vector.shape == (width,) and numpy.isfinite(doc.vector).all()
    # Determinism: a pipeline built from scratch gives the same rows, bit for bit.
    again = fresh(text)
    assert [t.text for t in again] == [t.text for t in doc]
    for token in doc:
        if covered[token.i] and not token.is_space:
            numpy.testing.assert_array_equal(again._.ctx_layers[:, token.i], layers[:, token.i])
            numpy.testing.assert_array_equal(again._.ctx_vectors[token.i], vectors[token.i])


def test_hostile_texts_in_one_batch_equal_each_alone(hostile_nlps):
    _, nlp, _, _ = hostile_nlps
    texts = list(HOSTILE.values())
    batched = list(nlp.pipe(texts, batch_size=len(texts)))
    for text, doc in zip(texts, batched):
        alone = nlp(text)._.ctx_layers
        assert doc._.ctx_layers.shape == alone.shape
        # Only padding differs between the two runs (float rounding).
        numpy.testing.assert_allclose(doc._.ctx_layers, alone, atol=1e-5, rtol=0)


def test_short_hostile_text_equals_transformers(tiny_bert_dir, elmo_files):
    from transformers import AutoModel, AutoTokenizer

    nlp = _build("ctxembed_bert", tiny_bert_dir, elmo_files)
    doc = nlp(SHORT_HOSTILE)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    states, offsets = hf_hidden_states(tokenizer, AutoModel.from_pretrained(tiny_bert_dir).eval(), SHORT_HOSTILE)
    assert states.shape[1] <= 62  # one window
    pieces = token_pieces(doc, offsets)
    assert not all(pieces) and any(pieces)  # some tokens are dropped by the tokenizer, some are not
    expected = numpy.stack([pool(states[i], pieces, "mean") for i in BERT_LAYERS])
    numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-5, rtol=0)
    numpy.testing.assert_allclose(doc._.ctx_vectors, expected.mean(axis=0), atol=1e-5, rtol=0)


def test_short_hostile_text_equals_numpy_elmo(tiny_bert_dir, elmo_files):
    nlp = _build("ctxembed_elmo", tiny_bert_dir, elmo_files)
    doc = nlp(SHORT_HOSTILE)
    words = [t for t in doc if not t.is_space]
    expected = ReferenceElmo(*elmo_files)([t.text for t in words])
    index = [t.i for t in words]
    numpy.testing.assert_allclose(doc._.ctx_layers[:, index], expected, atol=1e-5, rtol=0)
    assert not doc._.ctx_layers[:, [t.i for t in doc if t.is_space]].any()


def test_fuzzed_text_equals_transformers(tiny_bert_dir, elmo_files):
    """Random strings over a hostile alphabet: every token equals pooling over `transformers`."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from transformers import AutoModel, AutoTokenizer

    nlp = _build("ctxembed_bert", tiny_bert_dir, elmo_files)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    alphabet = ["a", "Zz", " ", "  ", "\n", "\r\n", "\t", "\x00", "\x07", "\u202e", "\u200d", "\u200b", "\ufeff",
                "\u0301", "é", "😀", "👩\u200d🔬", "🇺🇸", "中", "-", ".", "U.K.", "can't", "\u2028", "\x85", "\u3000",
                "\ufffd", "ﬁ", "İ", "$1"]

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(alphabet), max_size=20).map("".join))
    def check(text):
        doc = nlp(text)
        states, offsets = hf_hidden_states(tokenizer, model, text)
        pieces = token_pieces(doc, offsets)
        expected = numpy.stack([pool(states[i], pieces, "mean") for i in BERT_LAYERS])
        numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-5, rtol=0)
        assert [t.has_vector for t in doc] == [bool(p) for p in pieces]

    check()


# ---------------------------------------------------------------------------
# 2. Empty docs inside batches

EMPTY_BATCH = ["a b", "", "c", "", ""]


@pytest.fixture(scope="module", params=["ctxembed_bert", "ctxembed_elmo", "from_trf[-1]", "from_trf[-2,-1]"])
def any_nlp(request, tiny_bert_dir, elmo_files):
    if request.param == "from_trf[-1]":
        return request.param, _trf_nlp(tiny_bert_dir, [-1], hidden_states=False), 1, 32
    if request.param == "from_trf[-2,-1]":
        return request.param, _trf_nlp(tiny_bert_dir, [-2, -1], hidden_states=True), 2, 32
    n_layers, width = (2, 32) if request.param == "ctxembed_bert" else (3, 16)
    return request.param, _build(request.param, tiny_bert_dir, elmo_files), n_layers, width


def test_empty_docs_inside_a_batch(any_nlp):
    _, nlp, n_layers, width = any_nlp
    docs = list(nlp.pipe(EMPTY_BATCH, batch_size=5))
    without_empty = list(nlp.pipe([t for t in EMPTY_BATCH if t], batch_size=5))
    for text, doc in zip(EMPTY_BATCH, docs):
        out = doc._.ctx_outputs[NAME]
        assert out["vectors"].shape == (len(doc), width) and out["layers"].shape == (n_layers, len(doc), width)
        assert doc._.ctx_vectors.shape == (len(doc), width) and doc.tensor.shape == (len(doc), width)
        if not text:
            assert len(doc) == 0 and not doc.has_vector
            assert doc.vector.shape == (width,) and not doc.vector.any()
            continue
        # The empty docs change nothing: bit for bit the batch without them ...
        same = without_empty[[t for t in EMPTY_BATCH if t].index(text)]
        numpy.testing.assert_array_equal(out["layers"], same._.ctx_outputs[NAME]["layers"])
        # ... and the doc run alone (up to padding rounding).
        alone = nlp(text)._.ctx_outputs[NAME]
        numpy.testing.assert_allclose(out["layers"], alone["layers"], atol=1e-6, rtol=0)
        numpy.testing.assert_allclose(out["vectors"], alone["vectors"], atol=1e-6, rtol=0)


def test_a_batch_of_only_empty_docs(any_nlp):
    _, nlp, n_layers, width = any_nlp
    for batch in (["", "", ""], [""]):
        for doc in nlp.pipe(batch, batch_size=len(batch)):
            assert doc._.ctx_outputs[NAME]["vectors"].shape == (0, width)
            assert doc._.ctx_outputs[NAME]["layers"].shape == (n_layers, 0, width)
            assert doc.tensor.shape == (0, width)
    assert nlp("")._.ctx_vectors.shape == (0, width)


def test_from_trf_loaded_from_disk_gives_empty_docs_their_width(tiny_bert_dir, tmp_path):
    _trf_nlp(tiny_bert_dir, [-2, -1], hidden_states=True).to_disk(tmp_path / "trf")
    nlp = spacy.load(tmp_path / "trf")
    shapes = [(d._.ctx_outputs[NAME]["vectors"].shape, d._.ctx_outputs[NAME]["layers"].shape, d.tensor.shape)
              for d in nlp.pipe(["", ""], batch_size=2)]
    assert shapes == [((0, 32), (2, 0, 32), (0, 32))] * 2


# ---------------------------------------------------------------------------
# 3. Corrupt files in saved pipelines


@pytest.fixture(scope="module")
def saved_bert(tiny_bert_dir, elmo_files, tmp_path_factory):
    """A saved pipeline with a trained-style combiner file (ScalarMix has weights)."""
    path = tmp_path_factory.mktemp("saved-bert")
    _build("ctxembed_bert", tiny_bert_dir, elmo_files, name="bert_a", combine="scalar_mix").to_disk(path)
    return path


@pytest.fixture(scope="module")
def saved_elmo(tiny_bert_dir, elmo_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved-elmo")
    _build("ctxembed_elmo", tiny_bert_dir, elmo_files, name="elmo_a").to_disk(path)
    return path


def _damaged(saved, tmp_path, edit):
    target = tmp_path / "pipeline"
    shutil.copytree(saved, target)
    edit(target)
    return target


def _load_error(path):
    with pytest.raises(ValueError) as excinfo:
        spacy.load(path)
    assert isinstance(excinfo.value, SettingError), excinfo.value
    return excinfo


def _rewrite_safetensors(path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def test_saved_pipeline_loads_whole(saved_bert, saved_elmo):
    for path, component in ((saved_bert, "bert_a"), (saved_elmo, "elmo_a")):
        doc = spacy.load(path)("A clean control sentence.")
        assert doc._.ctx_outputs[component]["vectors"].shape[0] == len(doc)


@pytest.mark.parametrize("cut", ["empty", "8-bytes", "half", "last-byte"])
def test_truncated_safetensors(saved_bert, tmp_path, cut):
    def truncate(d):
        f = d / "bert_a" / "model" / "model.safetensors"
        data = f.read_bytes()
        f.write_bytes(data[: {"empty": 0, "8-bytes": 8, "half": len(data) // 2, "last-byte": len(data) - 1}[cut]])

    path = _damaged(saved_bert, tmp_path, truncate)
    excinfo = _load_error(path)
    _assert_error(excinfo, "bert_a", path / "bert_a" / "model", "model.safetensors could not be read as safetensors")


def test_renamed_tensor_key(saved_bert, tmp_path):
    old, new = "encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.qry.weight"
    path = _damaged(saved_bert, tmp_path, lambda d: _rewrite_safetensors(
        d / "bert_a" / "model" / "model.safetensors", lambda t: t.__setitem__(new, t.pop(old))))
    _assert_error(_load_error(path), "bert_a", path / "bert_a" / "model", "model.safetensors",
                  f"'{old}' is missing", f"'{new}' is not a tensor", "Nothing was loaded")


def test_wrong_shape_tensor(saved_bert, tmp_path):
    import torch

    key = "encoder.layer.0.intermediate.dense.weight"
    path = _damaged(saved_bert, tmp_path, lambda d: _rewrite_safetensors(
        d / "bert_a" / "model" / "model.safetensors", lambda t: t.__setitem__(key, torch.zeros(63, 32))))
    _assert_error(_load_error(path), "bert_a", path / "bert_a" / "model", "model.safetensors",
                  f"'{key}' has shape [63, 32], expected [64, 32]")


def test_oversized_config_json_fails_fast(saved_bert, tmp_path, monkeypatch):
    from transformers import AutoModel

    def enlarge(d):
        f = d / "bert_a" / "model" / "config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "hidden_size": 65536}))

    def must_not_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called before the shapes were checked")

    path = _damaged(saved_bert, tmp_path, enlarge)
    # Refused from the file header: nothing of 17 GB built or allocated.
    monkeypatch.setattr(AutoModel, "from_pretrained", must_not_load)
    excinfo = _load_error(path)
    _assert_error(excinfo, "bert_a", path / "bert_a" / "model", "model.safetensors",
                  "config.json", "hidden_size=65536", "[30522, 65536]")


def test_truncated_tokenizer_json(saved_bert, tmp_path):
    def truncate(d):
        f = d / "bert_a" / "model" / "tokenizer.json"
        f.write_text(f.read_text()[:1000])

    path = _damaged(saved_bert, tmp_path, truncate)
    _assert_error(_load_error(path), "bert_a", path / "bert_a" / "model",
                  "tokenizer.json is not valid JSON")


@pytest.mark.parametrize("garbage", ["text", "empty", "truncated", "msgpack-int", "msgpack-dict"])
def test_garbage_combiner_file(saved_bert, tmp_path, garbage):
    def spoil(d):
        f = d / "bert_a" / "combiner"
        data = f.read_bytes()
        f.write_bytes({"text": b"this is not a combiner\n", "empty": b"", "truncated": data[: len(data) // 2],
                       "msgpack-int": srsly.msgpack_dumps(3),
                       "msgpack-dict": srsly.msgpack_dumps({"weights": [1, 2]})}[garbage])

    path = _damaged(saved_bert, tmp_path, spoil)
    _assert_error(_load_error(path), "bert_a", f"combiner = '{path / 'bert_a' / 'combiner'}'",
                  "not a combiner saved by spacy-ctxembed")


def test_missing_combiner_file(saved_bert, tmp_path):
    path = _damaged(saved_bert, tmp_path, lambda d: (d / "bert_a" / "combiner").unlink())
    _assert_error(_load_error(path), "bert_a", path / "bert_a" / "combiner",
                  "the combiner's weights are missing")


def _spoil_scalar_mix(d, edit):
    f = d / "bert_a" / "combiner"
    msg = srsly.msgpack_loads(f.read_bytes())
    assert msg["nodes"][0]["name"] == "scalar_mix"
    edit(msg["params"][0])
    f.write_bytes(srsly.msgpack_dumps(msg))


@pytest.mark.parametrize("edit", [
    pytest.param(lambda p: p.__setitem__("s", numpy.zeros(3, dtype="float32")), id="s-for-3-layers"),
    pytest.param(lambda p: p.__setitem__("s", numpy.zeros((2, 2), dtype="float32")), id="s-of-shape-2x2"),
    pytest.param(lambda p: p.__setitem__("gamma", numpy.array([numpy.nan], dtype="float32")), id="gamma-nan"),
])
def test_combiner_file_with_damaged_weights(saved_bert, tmp_path, edit):
    path = _damaged(saved_bert, tmp_path, lambda d: _spoil_scalar_mix(d, edit))
    with pytest.raises(SettingError) as excinfo:
        doc = spacy.load(path)("a short sentence")
        # If it loads at all, its outputs must still keep the contract.
        assert doc._.ctx_vectors.shape == (len(doc), 32) and numpy.isfinite(doc._.ctx_vectors).all()
    _assert_error(excinfo, "bert_a", path / "bert_a" / "combiner")


def test_config_edited_to_other_layers_than_the_combiner_was_saved_for(saved_bert, tmp_path):
    def edit(d):
        config = (d / "config.cfg").read_text()
        saved = f"layers = {BERT_LAYERS}".replace(" ", "")
        assert config.replace(" ", "").count(saved) == 1
        lines = [("layers = [0, 1, 2]" if line.replace(" ", "") == saved else line) for line in config.splitlines()]
        (d / "config.cfg").write_text("\n".join(lines) + "\n")

    path = _damaged(saved_bert, tmp_path, edit)
    _assert_error(_load_error(path), "bert_a", f"combiner = '{path / 'bert_a' / 'combiner'}'",
                  f"it was saved for {len(BERT_LAYERS)} layer(s), but the config's layers select 3")


@pytest.mark.parametrize("saved, component", [("saved_bert", "bert_a"), ("saved_elmo", "elmo_a")])
def test_deleted_model_folder_never_falls_back_to_the_config(request, saved, component, tmp_path, tiny_bert_dir,
                                                              elmo_files):
    path = _damaged(request.getfixturevalue(saved), tmp_path, lambda d: shutil.rmtree(d / component / "model"))
    # The files named in config.cfg still exist: a fallback would load them, silently.
    config = (path / "config.cfg").read_text()
    assert (str(tiny_bert_dir) in config and tiny_bert_dir.is_dir()) or (
        str(elmo_files[1]) in config and elmo_files[1].is_file())
    _assert_error(_load_error(path), component, f"model = '{path / component / 'model'}'",
                  "no model folder")


@pytest.mark.parametrize("cut", ["empty", "1-kb", "half", "last-byte"])
def test_truncated_elmo_weights(saved_elmo, tmp_path, cut):
    def truncate(d):
        f = d / "elmo_a" / "model" / "weights.hdf5"
        data = f.read_bytes()
        f.write_bytes(data[: {"empty": 0, "1-kb": 1024, "half": len(data) // 2, "last-byte": len(data) - 1}[cut]])

    path = _damaged(saved_elmo, tmp_path, truncate)
    with pytest.raises(ElmoFileError) as excinfo:
        spacy.load(path)
    _assert_error(excinfo, "elmo_a", f"model = '{path / 'elmo_a' / 'model' / 'weights.hdf5'}'",
                  "cannot be read as HDF5")


@pytest.mark.parametrize("broken, parts", [
    ('{"lstm": {"dim": 16,', ["not ELMo options (not valid JSON"]),
    ("", ["not ELMo options (not valid JSON"]),
    ("[1, 2, 3]", ["not ELMo options (found a list"]),
    ("lstm.dim=string", ["lstm.dim = '16': expected an integer >= 1, found a string"]),
    ("no-lstm", ["lstm.dim is missing: expected an integer >= 1"]),
], ids=["truncated", "empty", "a-list", "wrong-type", "missing-section"])
def test_broken_elmo_options(saved_elmo, tmp_path, broken, parts):
    def spoil(d):
        f = d / "elmo_a" / "model" / "options.json"
        options = json.loads(f.read_text())
        if broken == "lstm.dim=string":
            options["lstm"]["dim"] = "16"
            f.write_text(json.dumps(options))
        elif broken == "no-lstm":
            del options["lstm"]
            f.write_text(json.dumps(options))
        else:
            f.write_text(broken)

    path = _damaged(saved_elmo, tmp_path, spoil)
    with pytest.raises(ElmoFileError) as excinfo:
        spacy.load(path)
    _assert_error(excinfo, "elmo_a", f"model = '{path / 'elmo_a' / 'model' / 'options.json'}'", *parts)


# ---------------------------------------------------------------------------
# 4. Retokenization and as_doc

EDIT_TEXT = "Apple Inc. \x00 is \u202elooking\u202c  at 👩\u200d🔬 in New York City \u2028 today ."


@pytest.fixture(scope="module", params=FACTORIES)
def edit_nlp(request, tiny_bert_dir, elmo_files):
    return _build(request.param, tiny_bert_dir, elmo_files)


def _rows_by_offsets(doc):
    out = doc._.ctx_outputs[NAME]
    return {(t.idx, t.idx + len(t)): (out["vectors"][t.i].copy(), out["layers"][:, t.i].copy()) for t in doc}


def _assert_follows(doc, before, shift=0):
    """Each token's rows, from the rows before the edit, by character offsets."""
    out = doc._.ctx_outputs[NAME]
    assert out["vectors"].shape[0] == len(doc) and out["layers"].shape[1] == len(doc)
    for token in doc:
        start, end = token.idx + shift, token.idx + shift + len(token)
        if (start, end) in before:  # untouched: exactly its own row
            numpy.testing.assert_array_equal(out["vectors"][token.i], before[(start, end)][0])
            numpy.testing.assert_array_equal(out["layers"][:, token.i], before[(start, end)][1])
        else:  # merged (or a piece of a split): the mean of the parts it overlaps that have a vector
            parts = [rows for (s, e), rows in before.items() if s < end and start < e and rows[0].any()]
            if not parts:
                assert not out["vectors"][token.i].any() and not token.has_vector
                continue
            numpy.testing.assert_allclose(out["vectors"][token.i], numpy.mean([p[0] for p in parts], axis=0),
                                          rtol=1e-6, atol=1e-7)
            numpy.testing.assert_allclose(out["layers"][:, token.i], numpy.mean([p[1] for p in parts], axis=0),
                                          rtol=1e-6, atol=1e-7)
        numpy.testing.assert_array_equal(token.vector, out["vectors"][token.i])
        assert token.has_vector == bool(out["vectors"][token.i].any())


def test_merge_multi_token_spans(edit_nlp):
    doc = edit_nlp(EDIT_TEXT)
    before = _rows_by_offsets(doc)
    city = EDIT_TEXT.index("New York City")
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])  # "Apple Inc."
        retokenizer.merge(doc.char_span(11, EDIT_TEXT.index("looking") - 1, alignment_mode="expand"))  # "\x00 is"
        retokenizer.merge(doc.char_span(city, city + 13))  # "New York City"
    assert doc[0].text == "Apple Inc." and "New York City" in [t.text for t in doc]
    _assert_follows(doc, before)
    merged = next(t for t in doc if t.text == "New York City")
    parts = [before[k][0] for k in before if city <= k[0] < city + 13]
    assert len(parts) == 3
    numpy.testing.assert_allclose(merged.vector, numpy.mean(parts, axis=0), rtol=1e-6, atol=1e-7)


def test_merge_everything_into_one_token(edit_nlp):
    doc = edit_nlp(EDIT_TEXT)
    before = _rows_by_offsets(doc)
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[:])
    assert len(doc) == 1
    _assert_follows(doc, before)


def test_split_a_token(edit_nlp):
    doc = edit_nlp(EDIT_TEXT)
    before = _rows_by_offsets(doc)
    token = next(t for t in doc if t.text == "today")
    with doc.retokenize() as retokenizer:
        retokenizer.split(token, ["to", "day"], heads=[(token, 1), token.head])
    _assert_follows(doc, before)
    to, day = (t for t in doc if t.text in ("to", "day"))
    original = before[(token.idx, token.idx + 5)][0]
    numpy.testing.assert_array_equal(to.vector, original)
    numpy.testing.assert_array_equal(day.vector, original)


@pytest.mark.parametrize("copy_user_data", [False, True])
def test_as_doc(edit_nlp, copy_user_data):
    doc = edit_nlp(EDIT_TEXT)
    before = _rows_by_offsets(doc)
    span = doc[3:12]
    assert EDIT_TEXT.count(span.text) == 1
    sub = span.as_doc(copy_user_data=copy_user_data)
    assert sub.text == span.text_with_ws
    _assert_follows(sub, before, shift=span.start_char)


# ---------------------------------------------------------------------------
# 5. An interrupted `embed`, then --resume

CORPUS = [
    "a\x00b c",
    "\u202eolleh\u202c world",
    "",
    "👩\u200d👩\u200d👧\u200d👦 family \u200d",
    "中文" * 200,
    "   ",
    "x" * 3000,
    "tab\there\u2028and\u0301",
    "The last line.",
]
POISON = CORPUS[4]  # the third doc: in the second shard with --shard-size 2


@pytest.fixture(scope="module")
def cli_pipeline(tiny_bert_dir, tmp_path_factory):
    return tiny_pipeline(tiny_bert_dir, tmp_path_factory)


def _fail_at_second_commit(monkeypatch):
    commit = Run.commit

    def interrupted(self, shard):
        if self.committed.shards:
            raise KeyboardInterrupt
        commit(self, shard)

    monkeypatch.setattr(Run, "commit", interrupted)


def _fail_on_the_poisoned_doc(monkeypatch):
    predict = ContextualEmbedder.predict

    def failing(self, docs):
        docs = list(docs)
        if any(doc.text == POISON for doc in docs):
            raise RuntimeError("simulated failure in the model")
        return predict(self, docs)

    monkeypatch.setattr(ContextualEmbedder, "predict", failing)


def _disk_full_on_the_poisoned_doc(monkeypatch):
    """A full disk: the write of the poisoned doc's rows fails, and so does
    every flush after it (the writer's close), as a real one does."""
    from spacy_ctxembed.cli.output import NpyWriter

    add, full = NpyWriter.add, []

    def failing_add(self, doc, line):
        if doc.text == POISON:
            full.append(True)
        if full:
            raise OSError(28, "No space left on device")
        add(self, doc, line)

    def failing_close(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(NpyWriter, "add", failing_add)
    monkeypatch.setattr(NpyWriter, "close", failing_close)


@pytest.mark.parametrize("fmt, failure", [
    (fmt, failure) for fmt in ("docbin", "npy")
    for failure in ("interrupt-at-second-commit", "model-error-in-second-shard")
] + [("npy", "disk-full-in-second-shard")])
def test_interrupted_embed_then_resume(tmp_path, cli_pipeline, monkeypatch, fmt, failure):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes("\r\n".join(CORPUS).encode("utf8") + b"\r\n")
    args = ["embed", corpus, "-m", cli_pipeline, "-f", fmt, "-s", "2", "-b", "1"]
    reference = invoke(*args, "-o", tmp_path / "ref")
    assert reference.exit_code == 0, reference.stderr
    out, partial = tmp_path / "out", tmp_path / ".out.partial"

    with monkeypatch.context() as patch:
        if failure == "interrupt-at-second-commit":
            _fail_at_second_commit(patch)
        elif failure == "disk-full-in-second-shard":
            _disk_full_on_the_poisoned_doc(patch)
        else:
            _fail_on_the_poisoned_doc(patch)
        failed = invoke(*args, "-o", out)
    if failure == "interrupt-at-second-commit":
        assert failed.exit_code == 130 and last_line(failed.stderr) == "error: interrupted"
    elif failure == "disk-full-in-second-shard":
        # (The writer's close failed too: that did not hide the error, nor skip the note.)
        assert failed.exit_code == 1
        assert last_line(failed.stderr).startswith("error: OSError: [Errno 28] No space left on device")
    else:
        assert failed.exit_code == 1
        assert last_line(failed.stderr).startswith("error: RuntimeError: simulated failure in the model")
    assert f"2 docs (input lines 1-2) are kept in {partial}" in failed.stderr
    # No complete output anywhere.
    assert not out.exists()
    assert partial.is_dir() and read_manifest(partial) is None

    resumed = invoke(*args, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 2 docs kept from the interrupted run; wrote 7 docs")
    assert not partial.exists()
    got, want = read_output(out), read_output(tmp_path / "ref")
    assert [(line, text) for line, text, _ in got] == [(line, text) for line, text, _ in want]
    assert [line for line, _, _ in got] == [1, 2, 4, 5, 7, 8, 9]
    for (line, _, a), (_, _, b) in zip(got, want):
        numpy.testing.assert_array_equal(a, b, err_msg=f"line {line}")  # exactly (one doc per batch)
    got_manifest, want_manifest = manifest_of(out), manifest_of(tmp_path / "ref")
    for key in ("created", "run"):
        got_manifest.pop(key), want_manifest.pop(key)
    assert got_manifest == want_manifest


# ---------------------------------------------------------------------------
# 6. nlp.pipe(n_process=2)


def test_multiprocess_pipe_equals_single_process(tiny_bert_dir, elmo_files):
    nlp = _build("ctxembed_bert", tiny_bert_dir, elmo_files)
    texts = ["The cat sat on the mat.", "", HOSTILE["nul-and-controls"], " \t ", HOSTILE["zwj-emoji"],
             "x" * 2000, HOSTILE["rtl-override"], "The last one ran."] * 2
    single = list(nlp.pipe(texts, batch_size=2))
    multi = list(nlp.pipe(texts, n_process=2, batch_size=2))
    assert [d.text for d in multi] == texts
    for doc, ref in zip(multi, single):
        # The outputs travel in user data; the hooks do not (spaCy drops every user hook).
        assert not doc.user_token_hooks
        restore_vectors(doc)
        numpy.testing.assert_allclose(doc._.ctx_vectors, ref._.ctx_vectors, atol=1e-5, rtol=0)
        numpy.testing.assert_allclose(doc._.ctx_layers, ref._.ctx_layers, atol=1e-5, rtol=0)
        numpy.testing.assert_allclose(doc.tensor, ref.tensor, atol=1e-5, rtol=0)
        for token, ref_token in zip(doc, ref):
            numpy.testing.assert_array_equal(token.vector, doc._.ctx_vectors[token.i])
            numpy.testing.assert_allclose(token.vector, ref_token.vector, atol=1e-5, rtol=0)
            assert token.has_vector == ref_token.has_vector
        if len(doc) > 1:
            assert doc[0].similarity(doc[-1]) == pytest.approx(ref[0].similarity(ref[-1]), abs=1e-5)
        numpy.testing.assert_allclose(doc.vector, ref.vector, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------
# 7. Settings of the wrong kind, through a config string

CONFIG_TEMPLATE = """
[nlp]
lang = "en"
pipeline = ["{name}"]

[components]

[components.{name}]
factory = "{factory}"
{component}

[components.{name}.model]
@architectures = "spacy-ctxembed.Embedder.v2"

[components.{name}.model.encoder]
@architectures = "{encoder}"
{encoder_settings}

[components.{name}.model.combiner]
@layers = "spacy-ctxembed.MeanLayers.v1"
"""
ENCODERS = {"ctxembed_bert": "spacy-ctxembed.BertEncoder.v2", "ctxembed_elmo": "spacy-ctxembed.ElmoEncoder.v2",
            "ctxembed_from_trf": "spacy-ctxembed.TrfEncoder.v2"}
COMPONENT_SETTINGS = {"cache_mb", "store_layers"}


@pytest.mark.parametrize("factory, setting, literal, value, expected", [
    ("ctxembed_bert", "cache_mb", '"10"', "10", "expected an integer number of megabytes"),
    ("ctxembed_bert", "max_batch_items", '"4096"', "4096", "expected an integer >= 1 or null, got str"),
    ("ctxembed_bert", "window", "0", 0, "expected an integer number of wordpieces >= 1"),
    ("ctxembed_bert", "window", '"128"', "128", "expected an integer number of wordpieces >= 1 or null, got str"),
    ("ctxembed_bert", "stride", '"8"', "8", "expected an integer number of wordpieces >= 1 or null, got str"),
    ("ctxembed_bert", "layers", "[]", [], "expected a non-empty list of integers"),
    ("ctxembed_bert", "layers", '["-1"]', ["-1"], "expected a non-empty list of integers"),
    # (confection lets each character of "12" through as an int: it was named as ['1', '2'])
    ("ctxembed_bert", "layers", '"12"', "12", "expected a non-empty list of integers"),
    ("ctxembed_elmo", "layers", '"12"', "12", "expected a non-empty list of integers"),
    ("ctxembed_from_trf", "layers", '"12"', "12", "expected a non-empty list of integers"),
    ("ctxembed_bert", "pooling", '"avg"', "avg", "expected one of 'mean'"),
    ("ctxembed_elmo", "cache_mb", '"10"', "10", "expected an integer number of megabytes"),
    ("ctxembed_elmo", "max_batch_items", '"4096"', "4096", "expected an integer >= 1, got str"),
    ("ctxembed_elmo", "layers", "[]", [], "expected a non-empty list of integers"),
    ("ctxembed_from_trf", "layers", "[]", [], "expected a non-empty list of integers"),
])
def test_wrong_kind_of_setting_in_a_config_string(tiny_bert_dir, elmo_files, factory, setting, literal, value,
                                                  expected):
    name = f"{factory.split('_')[-1]}_cfg"
    encoder = {"ctxembed_bert": {"name": json.dumps(str(tiny_bert_dir))},
               "ctxembed_elmo": {"options_file": json.dumps(str(elmo_files[0])),
                                 "weight_file": json.dumps(str(elmo_files[1]))},
               "ctxembed_from_trf": {}}[factory]
    component = {}
    (component if setting in COMPONENT_SETTINGS else encoder)[setting] = literal
    text = CONFIG_TEMPLATE.format(
        name=name, factory=factory, encoder=ENCODERS[factory],
        component="\n".join(f"{k} = {v}" for k, v in component.items()),
        encoder_settings="\n".join(f"{k} = {v}" for k, v in encoder.items()),
    )
    with pytest.raises(SettingError) as excinfo:
        nlp = load_model_from_config(load_config_from_str(text), auto_fill=True, validate=True)
        nlp.initialize()
    _assert_error(excinfo, name, f"[{name}] {setting} = {value!r}: {expected}")


def test_config_string_control_builds(tiny_bert_dir):
    """The template itself is sound: with good values it builds and runs."""
    name = "bert_cfg"
    text = CONFIG_TEMPLATE.format(name=name, factory="ctxembed_bert", encoder=ENCODERS["ctxembed_bert"],
                                  component="cache_mb = 10",
                                  encoder_settings=f"name = {json.dumps(str(tiny_bert_dir))}\nmax_batch_items = 64")
    nlp = load_model_from_config(load_config_from_str(text), auto_fill=True, validate=True)
    nlp.initialize()
    assert nlp("a b")._.ctx_vectors.shape == (2, 32)


# ---------------------------------------------------------------------------
# 8. A model that gives nan or inf


def test_a_float16_overflow_is_refused_and_float32_is_not(tiny_bert_dir, tmp_path):
    """A model whose activations pass float16's range (65504): with precision
    'fp16' autocast gave inf in the feed-forward layer and nan vectors were
    written as any others. The same model in fp32 and bf16 (float32's range)
    is finite, and fp32 equals `transformers` run on it."""
    import torch
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():  # feed-forward activations of about 1e5
        model.encoder.layer[0].intermediate.dense.weight.mul_(1e6)
    model.save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    text = "The quick brown fox jumps over the lazy dog."
    docs = {}
    for precision in ("fp32", "bf16", "fp16"):
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert", name="bert_a", config=ctx_config(name=tmp_path, layers=[-1],
                                                                      precision=precision))
        nlp.initialize()
        if precision == "fp16":
            with pytest.raises(NonFiniteOutputs) as excinfo:
                nlp(text)
            _assert_error(excinfo, "bert_a", "gave nan or inf for 1 of the 1 docs", repr(text[:40]),
                          "precision = 'fp16'", "[components.bert_a.model.encoder] precision = 'fp32'")
        else:
            docs[precision] = nlp(text)
    states, offsets = hf_hidden_states(AutoTokenizer.from_pretrained(tmp_path), model.eval(), text)
    expected = pool(states[-1], token_pieces(docs["fp32"], offsets), "mean")
    numpy.testing.assert_allclose(docs["fp32"]._.ctx_vectors, expected, atol=1e-5, rtol=0)
    assert numpy.isfinite(docs["bf16"]._.ctx_vectors).all()


@pytest.mark.parametrize("factory", ["ctxembed_bert", "ctxembed_elmo"])
def test_diverged_weights_under_use_params_are_refused_then_put_back(tiny_bert_dir, elmo_files, factory):
    """spaCy evaluates under `nlp.use_params(averages)`: the averages of a run
    that diverged hold nan. Inside the block the component raises (and writes
    nothing); after it, the vectors are those from before."""
    from thinc.api import torch2xp

    nlp = _build(factory, tiny_bert_dir, elmo_files, cache_mb=0)
    text = "A run that diverged."
    before = nlp(text)._.ctx_vectors.copy()
    shim = nlp.get_pipe(NAME).encoder.shims[0]
    name, value = next((k, v) for k, v in shim._model.state_dict().items() if v.is_floating_point())
    diverged = {f"pytorch_{shim.id}_{name}": torch2xp(value * float("nan"))}
    with nlp.use_params(diverged):
        with pytest.raises(NonFiniteOutputs) as excinfo:
            nlp(text)
    _assert_error(excinfo, NAME, "gave nan or inf for 1 of the 1 docs", "weights may hold nan or inf")
    numpy.testing.assert_array_equal(nlp(text)._.ctx_vectors, before)


def test_from_trf_refuses_nan_from_the_transformer(tiny_bert_dir):
    """`ctxembed_from_trf` pools spacy-transformers' outputs: nan there (its
    weights under `use_params`) is refused in its name, pointing upstream."""
    from thinc.api import torch2xp

    nlp = _trf_nlp(tiny_bert_dir, [-1], True)
    shim = next(s for node in nlp.get_pipe("transformer").model.walk() for s in node.shims)
    weights = dict(shim._model.state_dict())  # (thinc's PyTorchShim swaps whole state dicts)
    weights["embeddings.word_embeddings.weight"] = weights["embeddings.word_embeddings.weight"] * float("nan")
    with nlp.use_params({f"pytorch_{shim.id}_{key}": torch2xp(value) for key, value in weights.items()}):
        with pytest.raises(NonFiniteOutputs) as excinfo:
            nlp("Upstream went wrong.")
    _assert_error(excinfo, NAME, "gave nan or inf for 1 of the 1 docs", "transformer component's outputs")
    assert numpy.isfinite(nlp("Upstream went wrong.")._.ctx_vectors).all()


@pytest.mark.parametrize("run_ahead", [False, True])
def test_only_the_batch_with_a_bad_doc_is_refused(tiny_bert_dir, elmo_files, run_ahead):
    """With an error handler that skips (`nlp.set_error_handler`), a batch with a
    nan doc is reported and dropped; the batches around it are written, and
    equal a clean run. Also with batches predicted ahead (as on GPU)."""
    from thinc.api import torch2xp

    nlp = _build("ctxembed_bert", tiny_bert_dir, elmo_files, cache_mb=0)
    nlp.get_pipe(NAME).run_ahead = run_ahead
    clean = [doc._.ctx_vectors.copy() for doc in nlp.pipe(["one two", "three four", "five six"])]
    shim = nlp.get_pipe(NAME).encoder.shims[0]
    # The rows of the pieces of "three" only: the doc with it, and no other, goes nan.
    (three,) = AutoTokenizerPieces(tiny_bert_dir)("three")
    table = shim._model.state_dict()["embeddings.word_embeddings.weight"].clone()
    table[three] = float("nan")
    reported = []
    nlp.set_error_handler(lambda name, pipe, docs, err: reported.append((name, [d.text for d in docs], err)))
    with nlp.use_params({f"pytorch_{shim.id}_embeddings.word_embeddings.weight": torch2xp(table)}):
        kept = list(nlp.pipe(["one two", "three four", "five six"], batch_size=1))
    assert [(name, texts) for name, texts, _ in reported] == [(NAME, ["three four"])]
    assert isinstance(reported[0][2], NonFiniteOutputs)
    assert [doc.text for doc in kept] == ["one two", "five six"]
    for doc, expected in zip(kept, (clean[0], clean[2])):
        numpy.testing.assert_array_equal(doc._.ctx_vectors, expected)


def test_predictions_handed_over_without_their_check_are_checked(tiny_bert_dir, elmo_files):
    """`set_annotations` checks predictions that come without the check `predict`
    took (a pickled copy, a plain tuple): nan is refused, and nothing written."""
    import copy
    import pickle

    nlp = _build("ctxembed_bert", tiny_bert_dir, elmo_files, cache_mb=0)
    component = nlp.get_pipe(NAME)
    docs = [nlp.make_doc("one two"), nlp.make_doc("three")]
    predictions = component.predict(docs)
    # A copy leaves the check behind (on GPU it holds a CUDA event, which neither pickles nor copies).
    for copied in (pickle.loads(pickle.dumps(predictions)), copy.deepcopy(predictions), copy.copy(predictions)):
        assert copied.finite is None and copied.signature == predictions.signature is not None
    layers, vectors = pickle.loads(pickle.dumps(predictions))
    component.set_annotations(docs, (layers, vectors))  # clean: written
    assert docs[1]._.ctx_vectors.shape == (1, 32)
    vectors = [v.copy() for v in vectors]  # (written arrays are read-only)
    vectors[1][0, 5] = float("inf")
    fresh = [nlp.make_doc("one two"), nlp.make_doc("three")]
    with pytest.raises(NonFiniteOutputs) as excinfo:
        component.set_annotations(fresh, (layers, vectors))
    _assert_error(excinfo, NAME, "for 1 of the 2 docs", "first: doc 1, 1 values", "'three'")
    assert all(not doc.user_data for doc in fresh)  # (the outputs' store lives there)


def AutoTokenizerPieces(model_dir):
    """The ids of a word's pieces, by `transformers`' own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda word: tokenizer(word, add_special_tokens=False)["input_ids"]


def test_finite_check_counts_nan_and_inf_and_passes_finite_values_whose_sum_overflows():
    """Per doc, the count of nan and inf values (both); a doc of finite values whose float32 sum
    overflows (the quick check by sums) is not one."""
    from thinc.api import NumpyOps

    from spacy_ctxembed.finite import FiniteCheck

    big = numpy.full((2, 3), 3e38, dtype="float32")  # every value finite; their float32 sum is inf
    assert numpy.isinf(big.sum()) and numpy.isfinite(big).all()
    both = numpy.ones((2, 3), dtype="float32")
    both[0, 1], both[1, 2] = numpy.inf, numpy.nan
    only_inf = numpy.ones((1, 3), dtype="float32")
    only_inf[0, 0] = -numpy.inf
    check = FiniteCheck(NumpyOps(), [big, numpy.ones((1, 3), "float32"), both, only_inf])
    assert check.bad_docs() == [(2, 2), (3, 1)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_the_error_counts_the_bad_docs_names_the_first_and_advises_by_precision(tiny_bert_dir, precision):
    nlp = make_nlp(tiny_bert_dir, precision=precision)
    component = nlp.get_pipe("ctxembed_bert")
    texts = ["one two", "three", "four five six"]
    layers, vectors = component.predict([nlp.make_doc(t) for t in texts])
    vectors = [numpy.array(v) for v in vectors]  # (plain tuple, own copies: checked in set_annotations)
    vectors[1][0, 5] = numpy.nan
    vectors[2][1, 0], vectors[2][2, 3] = numpy.inf, -numpy.inf
    fresh = [nlp.make_doc(t) for t in texts]
    with pytest.raises(NonFiniteOutputs) as excinfo:
        component.set_annotations(fresh, (layers, vectors))
    message = str(excinfo.value)
    assert message.startswith("[ctxembed_bert] the model gave nan or inf for 2 of the 3 docs of this batch "
                              "(first: doc 1, 1 values, text 'three')")
    assert "this batch is refused (nothing of it is written)" in message
    block = "[components.ctxembed_bert.model.encoder]"
    if precision == "fp16":
        assert message.endswith(f"with precision = 'fp16' this is most likely an overflow of the reduced precision: "
                                f"set {block} precision = 'fp32' (or 'bf16', whose range is float32's)")
    else:  # (bf16's range is float32's: fp32 would give the same nan, and is not advised)
        assert message.endswith("the model's weights may hold nan or inf, or its activations overflow float32")
    assert all(not doc.user_data for doc in fresh)
