"""Helpers for the CLI tests (no tests here): a tiny saved pipeline, running the CLI."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy
import spacy
from typer.testing import CliRunner

from spacy_ctxembed import iter_docs, load_npy
from spacy_ctxembed.cli import app
from spacy_ctxembed.embedded import read_manifest

from .conftest import make_nlp

_PIPELINES: Dict[Path, Path] = {}


def tiny_pipeline(tiny_bert_dir: Path, tmp_path_factory) -> Path:
    """A saved pipeline (blank English + ctxembed_bert on the tiny random BERT), built once."""
    if tiny_bert_dir not in _PIPELINES:
        path = tmp_path_factory.mktemp("tiny-pipeline")
        make_nlp(tiny_bert_dir).to_disk(path)
        _PIPELINES[tiny_bert_dir] = path
    return _PIPELINES[tiny_bert_dir]


def invoke(*args: Union[str, Path], stdin: Optional[bytes] = None):
    """Run the CLI in this process; the result has exit_code, stdout, stderr."""
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def run_subprocess(*args: Union[str, Path], stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spacy_ctxembed", *[str(a) for a in args]], input=stdin, capture_output=True
    )


def last_line(stderr: Union[str, bytes]) -> str:
    """The last line of stderr, past the progress bar's carriage returns."""
    text = stderr.decode("utf8") if isinstance(stderr, bytes) else stderr
    return text.strip().splitlines()[-1].split("\r")[-1]


def error_lines(stderr: Union[str, bytes]) -> List[str]:
    """stderr's lines, the progress bar left out."""
    text = stderr.decode("utf8") if isinstance(stderr, bytes) else stderr
    lines = [line.split("\r")[-1] for line in text.splitlines()]
    return [line for line in lines if line.strip() and not line.startswith("embedding")]


def read_docbin(path: Path) -> List[Tuple[int, str, numpy.ndarray]]:
    """(line, text, vectors) per doc of a docbin output."""
    return [(d.user_data["line"], d.text, numpy.asarray(d._.ctx_vectors)) for d in iter_docs(path)]


def read_npy(path: Path) -> List[Tuple[int, str, numpy.ndarray]]:
    vectors, records = load_npy(path)
    return [(r["line"], r["text"], numpy.asarray(vectors[r["start"] : r["end"]])) for r in records]


def read_output(path: Path) -> List[Tuple[int, str, numpy.ndarray]]:
    manifest = read_manifest(path)
    assert manifest is not None, f"{path} is not a complete output"
    return read_docbin(path) if manifest["format"] == "docbin" else read_npy(path)


def expected(pipeline: Path, lines: Sequence[str]) -> List[Tuple[int, str, numpy.ndarray]]:
    """What running the pipeline directly gives: (line number, text, vectors) for non-blank lines."""
    nlp = spacy.load(pipeline)
    return [(i, text, numpy.asarray(nlp(text)._.ctx_vectors)) for i, text in enumerate(lines, 1) if text.strip()]


def assert_same_docs(got, want, atol: float = 1e-6) -> None:
    assert [(line, text) for line, text, _ in got] == [(line, text) for line, text, _ in want]
    for (line, _, a), (_, _, b) in zip(got, want):
        assert a.shape == b.shape, line
        numpy.testing.assert_allclose(a, b, atol=atol, err_msg=f"line {line}")


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())
