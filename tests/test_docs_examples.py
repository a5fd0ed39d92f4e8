"""Every ```python block in the README and docs/ runs as written, and does what it says.

Each block is found by its file and its first line (`BLOCKS` lists them all:
a new block without a test here fails `test_every_python_block_has_a_test`).
A test gives the block what it takes from the text around it (an `nlp`, a
`doc_bin`, a file named "dev.conllu"), runs it in a temporary working
directory, and checks what its comments claim (a shape, a similarity, "no
second forward pass") against independent references: `transformers` itself,
the docs the block's inputs came from, plain NumPy. What this machine lacks (a
GPU, `en_core_web_trf`, `/models/bert-base-cased`, real ELMo weights) is
stood in for by something of the same kind, and each stand-in names the text
it replaces, which must still be in the block. The ```bash blocks' commands
pass only options their command declares.
"""
import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy
import pytest
import spacy
from spacy.tokens import DocBin

from .analysis_support import saved_pipeline, write_conllu, write_wic
from .elmo_fixture import write_elmo_fixture
from .reference import hf_hidden_states, pool, token_pieces
from .test_cli_support import invoke
from .test_docs_and_configs import ROOT, fenced_blocks
from .test_from_trf import _with_transformer

#: (file, first line) of every ```python block -> the test that runs it.
BLOCKS = {
    ("README.md", "import spacy"): "test_readme_first_example",
    ("README.md", "from spacy_ctxembed import restore_vectors"): "test_restore_vectors_after_a_docbin",
    ("docs/saving.md", "from spacy_ctxembed import restore_vectors"): "test_restore_vectors_after_a_docbin",
    ("README.md", 'nlp = spacy.load("en_core_web_trf")'): "test_from_trf_reads_the_transformers_output",
    ("README.md", 'nlp = spacy.blank("en")'): "test_elmo_with_a_sentencizer",
    ("README.md", 'nlp.add_pipe("ctxembed_bert", config={"model": {'): "test_a_local_model_directory",
    ("README.md", "spacy.require_gpu()"): "test_gpu_outputs_are_cupy",
    ("docs/gpu.md", "spacy.require_gpu()"): "test_gpu_outputs_are_cupy",
    ("docs/analysis.md", "from spacy_ctxembed.analysis import ("): "test_analysis_library",
    ("docs/cli.md", "from spacy_ctxembed import iter_docs"): "test_iter_docs_reads_an_embed_output",
    ("docs/cli.md", "from spacy_ctxembed import load_npy"): "test_load_npy_reads_an_embed_output",
    ("docs/doc-operations.md", "from spacy.tokens import Doc"): "test_joined_cuts_read_their_sources_rows",
    ("docs/scaling.md", "import spacy"): "test_distributed_embed_corpus",
}

TEXTS = ["I ran to the park this morning.", "She ran some significance tests.", "Nothing here."]


def _python_blocks():
    for path, _, code in fenced_blocks("python"):
        yield path.relative_to(ROOT).as_posix(), code


def block(file: str, first_line: str) -> str:
    found = [code for name, code in _python_blocks() if name == file and code.splitlines()[0] == first_line]
    assert len(found) == 1, f"{len(found)} ```python blocks in {file} start with {first_line!r}"
    return found[0]


def run(code: str, *, stand_ins: Optional[Dict[str, str]] = None, **names: Any) -> Dict[str, Any]:
    """Run a block with `names` defined; each stand-in replaces text that must be in the block."""
    for text, replacement in (stand_ins or {}).items():
        assert text in code, f"the block no longer has {text!r}:\n{code}"
        code = code.replace(text, replacement)
    namespace = {"spacy": spacy, **names}
    exec(compile(code, "<docs block>", "exec"), namespace)  # noqa: S102 (the docs' own code)
    return namespace


def comment_on(code: str, line_start: str) -> str:
    """The comment of the block's line whose code starts with `line_start`."""
    for line in code.splitlines():
        if line.strip().startswith(line_start) and "#" in line:
            return line.split("#", 1)[1].strip()
    raise AssertionError(f"no commented line starting {line_start!r} in:\n{code}")


def claimed_shape(code: str, line_start: str) -> tuple:
    shape = ast.literal_eval(re.search(r"\(\d+, \d+\)", comment_on(code, line_start)).group(0))
    assert isinstance(shape, tuple)
    return shape


def _cosine(a, b) -> float:
    a, b = numpy.asarray(a, dtype="float64"), numpy.asarray(b, dtype="float64")
    return float(a @ b / (numpy.linalg.norm(a) * numpy.linalg.norm(b)))


@pytest.fixture(scope="module")
def default_nlp():
    """Blank English with `ctxembed_bert` as it comes: the embedded all-MiniLM-L6-v2."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert")
    nlp.initialize()
    return nlp


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_python_block_has_a_test():
    found = {(name, code.splitlines()[0]) for name, code in _python_blocks()}
    assert found == set(BLOCKS), f"without a test: {found - set(BLOCKS)}; no longer in the docs: {set(BLOCKS) - found}"
    assert all(callable(globals().get(test)) for test in BLOCKS.values())


def test_readme_first_example(in_tmp, hf_reference):
    code = block("README.md", "import spacy")
    names = run(code)
    doc1, doc2 = names["doc1"], names["doc2"]
    assert doc1[8].text == doc2[3].text == "ran"
    claimed = float(re.search(r"'ran' vs 'ran': ([0-9.]+)", comment_on(code, "doc1[8].similarity")).group(1))
    # Against `transformers` itself: the last layer, each token's pieces averaged.
    tokenizer, model = hf_reference
    rows = []
    for doc, i in ((doc1, 8), (doc2, 3)):
        states, offsets = hf_hidden_states(tokenizer, model, doc.text)
        rows.append(pool(states[-1], token_pieces(doc, offsets), "mean")[i])
    assert round(_cosine(*rows), 2) == claimed
    assert doc1[8].similarity(doc2[3]) == pytest.approx(_cosine(*rows), abs=1e-5)
    assert doc1._.ctx_vectors.shape == claimed_shape(code, "doc1._.ctx_vectors.shape")


@pytest.mark.parametrize("file", ["README.md", "docs/saving.md"])
def test_restore_vectors_after_a_docbin(file, default_nlp):
    docs = list(default_nlp.pipe(TEXTS))
    stored = DocBin(store_user_data=True, docs=docs).to_bytes()
    doc_bin = DocBin().from_bytes(stored)
    # What the block mends: read back without it, a token has the vocab's vector (none here).
    assert not any(token.vector.any() for doc in doc_bin.get_docs(default_nlp.vocab) for token in doc)
    restored = run(block(file, "from spacy_ctxembed import restore_vectors"), doc_bin=doc_bin,
                   nlp=default_nlp)["docs"]
    assert [doc.text for doc in restored] == TEXTS
    for before, after in zip(docs, restored):
        numpy.testing.assert_array_equal(numpy.stack([token.vector for token in after]), before._.ctx_vectors)
        assert after[1].similarity(after[2]) == before[1].similarity(before[2])
        numpy.testing.assert_array_equal(after[1:3].vector, before[1:3].vector)


def test_from_trf_reads_the_transformers_output(minilm_dir, hf_reference, monkeypatch):
    import torch

    trf = _with_transformer(minilm_dir)
    trf.initialize()
    # en_core_web_trf is not here: a pipeline whose `transformer` runs the embedded MiniLM stands in.
    monkeypatch.setattr(spacy, "load", lambda name: trf if name == "en_core_web_trf" else pytest.fail(name))
    modules = [shim._model for node in trf.get_pipe("transformer").model.walk() for shim in node.shims]
    assert len(modules) == 1 and isinstance(modules[0], torch.nn.Module)
    calls = []
    modules[0].register_forward_hook(lambda *_: calls.append(1))
    names = run(block("README.md", 'nlp = spacy.load("en_core_web_trf")'))
    doc = names["doc"]
    assert len(calls) == 1  # "no second forward pass": the transformer's one call made the vectors
    tokenizer, model = hf_reference
    states, offsets = hf_hidden_states(tokenizer, model, doc.text)
    expected = pool(states[-1], token_pieces(doc, offsets), "mean")
    numpy.testing.assert_allclose(doc.tensor, expected, atol=1e-5)
    numpy.testing.assert_array_equal(doc[0].vector, doc.tensor[0])


def test_elmo_with_a_sentencizer(in_tmp):
    # Real ELMo weights are not here: the test fixture's small model, under the names the block gives.
    code = block("README.md", 'nlp = spacy.blank("en")')
    files = re.findall(r'"(elmo_[\w.]+)"', code)
    options, weights = write_elmo_fixture(in_tmp / "fixture")
    assert [Path(f).suffix for f in files] == [".json", ".hdf5"]
    shutil.copy(options, files[0])
    shutil.copy(weights, files[1])
    names = run(code)
    nlp, doc = names["nlp"], names["doc"]
    n_tokens, width = claimed_shape(code, "doc._.ctx_vectors.shape")
    # ELMo's vectors are its top LSTM's two directions, each of its projection's size: 2 x 512 in
    # the named model ("..._512_..."); 2 x the fixture's projection here.
    assert width == 2 * int(re.search(r"2x4096_(\d+)_", files[0]).group(1))
    projection = json.loads(Path(files[0]).read_text(encoding="utf8"))["lstm"]["projection_dim"]
    assert doc._.ctx_vectors.shape == (n_tokens, 2 * projection)
    # "each sentence is embedded on its own": the first sentence reads as it does alone.
    first = next(iter(doc.sents))
    alone = nlp(first.text)
    assert len(alone) == len(first)
    numpy.testing.assert_allclose(doc._.ctx_vectors[: len(first)], alone._.ctx_vectors, atol=1e-5)
    # Without the sentencizer the doc is one sequence: the next sentence reaches back (ELMo's backward LSTM).
    nlp.remove_pipe("sentencizer")
    whole = nlp(doc.text)
    assert not numpy.allclose(whole._.ctx_vectors[: len(first)], alone._.ctx_vectors, atol=1e-3)


def test_a_local_model_directory(minilm_dir, hf_reference):
    # /models/bert-base-cased is not here: the embedded MiniLM's directory (6 layers) stands in.
    nlp = spacy.blank("en")
    run(block("README.md", 'nlp.add_pipe("ctxembed_bert", config={"model": {'), nlp=nlp,
        stand_ins={'"/models/bert-base-cased"': json.dumps(str(minilm_dir))})
    nlp.initialize()
    doc = nlp("The cat sat on the mat near the station.")
    tokenizer, model = hf_reference
    states, offsets = hf_hidden_states(tokenizer, model, doc.text)
    # An untrained ScalarMix is the plain mean of the layers it mixes: here the last four.
    expected = pool(states[-4:].mean(axis=0), token_pieces(doc, offsets), "mean")
    numpy.testing.assert_allclose(doc._.ctx_vectors, expected, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("file", ["README.md", "docs/gpu.md"])
def test_gpu_outputs_are_cupy(file):
    import cupy

    try:
        names = run(block(file, "spacy.require_gpu()"), text="I ran to the park.")
    finally:
        spacy.require_cpu()
    doc = names["doc"]
    assert isinstance(doc.tensor, cupy.ndarray) and isinstance(doc._.ctx_vectors, cupy.ndarray)
    assert isinstance(doc[0].vector, cupy.ndarray)


@pytest.mark.slow
def test_analysis_library(in_tmp, tiny_bert_dir, tmp_path_factory, capsys):
    write_conllu(in_tmp).rename("dev.conllu")
    write_wic(in_tmp / "wic")
    shutil.copytree(saved_pipeline(tiny_bert_dir, tmp_path_factory), in_tmp / "training" / "model-best")
    code = block("docs/analysis.md", "from spacy_ctxembed.analysis import (")
    result = run(code)["result"]
    printed = capsys.readouterr().out
    assert [pipeline["label"] for pipeline in result["pipelines"]] == [
        line[3:].split(" (component")[0] for line in printed.splitlines() if line.startswith("== ")]
    assert len(result["pipelines"]) == 2
    written = {path.name for path in (in_tmp / "analysis").iterdir()}
    # The comment's "analysis.json, PNGs, report.html":
    assert {"analysis.json", "report.html"} <= written and any(name.endswith(".png") for name in written)
    assert json.loads((in_tmp / "analysis" / "analysis.json").read_text(encoding="utf8"))["pipelines"]


def _command_lines():
    """Each command in a ```bash block (continuation lines joined, `&&` split, comments cut)."""
    for path, _, block in fenced_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("&&"):
                yield path.name, command.split(" #")[0]


def test_the_options_in_the_docs_commands_exist():
    """Every --option a documented command passes to `python -m spacy_ctxembed CMD`, or to a
    script of benchmarks/ or scripts/, is one that command declares."""
    import typer.main

    from spacy_ctxembed.cli import app

    commands = typer.main.get_command(app).commands
    declared = {name: {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
                for name, command in commands.items()}
    checked = 0
    for name, line in _command_lines():
        cli = re.search(r"-m spacy_ctxembed (\w+)(.*)", line)
        script = re.search(r"python3? ((?:benchmarks|scripts)/\w+\.py)(.*)", line)
        if cli:
            known, used = declared[cli.group(1)], cli.group(2)
        elif script:  # (the scripts' argparse option strings, read from their source)
            known = set(re.findall(r"[\"'](--[a-z][\w-]*)[\"']", (ROOT / script.group(1)).read_text(encoding="utf8")))
            used = script.group(2)
        else:
            continue
        unknown = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", used)) - known
        assert not unknown, f"{name}: {line.strip()!r} passes {sorted(unknown)}"
        checked += 1
    assert checked >= 15


def _embed(*options: str) -> None:
    Path("input.txt").write_text("\n".join(TEXTS[:2]) + "\n\n" + TEXTS[2] + "\n", encoding="utf8")
    result = invoke("embed", "input.txt", "-o", "OUTPUT", *options)
    assert result.exit_code == 0, result.output


def test_iter_docs_reads_an_embed_output(in_tmp, default_nlp):
    _embed()
    code = block("docs/cli.md", "from spacy_ctxembed import iter_docs")
    names = run(code)
    docs = list(names["iter_docs"]("OUTPUT"))
    assert [doc.user_data["line"] for doc in docs] == [1, 2, 4]  # input line numbers: line 3 is blank
    assert comment_on(code, 'doc.user_data["line"]') == "numpy (n_tokens, width)"
    for doc, text in zip(docs, TEXTS):
        assert isinstance(doc._.ctx_vectors, numpy.ndarray)
        expected = default_nlp(text)._.ctx_vectors
        assert doc._.ctx_vectors.shape == (len(doc), expected.shape[1])
        numpy.testing.assert_allclose(doc._.ctx_vectors, expected, atol=1e-5)  # (batched vs alone)
        numpy.testing.assert_array_equal(doc[0].vector, doc._.ctx_vectors[0])  # restore_vectors applied


def test_load_npy_reads_an_embed_output(in_tmp, default_nlp):
    _embed("--format", "npy")
    names = run(block("docs/cli.md", "from spacy_ctxembed import load_npy"))
    vectors, records = names["vectors"], names["records"]
    assert isinstance(vectors, numpy.memmap)  # "vectors memory-mapped"
    assert [record["text"] for record in records] == TEXTS
    for record in records:
        doc = default_nlp(record["text"])
        assert record["tokens"] == [token.text for token in doc]
        numpy.testing.assert_allclose(vectors[record["start"]:record["end"]], doc._.ctx_vectors, atol=1e-5)


def test_joined_cuts_read_their_sources_rows(minilm_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("ctxembed_bert")
    nlp.initialize()
    docs = list(nlp.pipe(["I ran to the park. It was late.", "Not this one. Then I ran some tests."]))
    joined = run(block("docs/doc-operations.md", "from spacy.tokens import Doc"), docs=docs)["joined"]
    sources = [sent for doc in docs for sent in doc.sents if "ran" in sent.text]
    assert [token.text for token in joined] == [token.text for sent in sources for token in sent]
    expected = numpy.concatenate([sent.doc._.ctx_vectors[sent.start:sent.end] for sent in sources])
    numpy.testing.assert_array_equal(numpy.stack([token.vector for token in joined]), expected)
    numpy.testing.assert_array_equal(joined._.ctx_vectors, expected)


@pytest.mark.slow
def test_distributed_embed_corpus(in_tmp, default_nlp):
    pytest.importorskip("ray")
    with open("corpus.jsonl", "w", encoding="utf8") as f:
        for text in TEXTS:
            f.write(json.dumps({"body": text}) + "\n")
    names = run(block("docs/scaling.md", "import spacy"))
    docs = names["docs"]
    assert [doc.text for doc in docs] == TEXTS
    assert [doc.user_data["doc_id"] for doc in docs] == [0, 1, 2]
    for doc in docs:
        numpy.testing.assert_allclose(numpy.stack([token.vector for token in doc]),
                                      default_nlp(doc.text)._.ctx_vectors, atol=1e-5)
    assert names["manifest"]["signature"] == default_nlp.get_pipe("ctxembed_bert").signature
