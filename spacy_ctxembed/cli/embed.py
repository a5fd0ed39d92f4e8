"""`embed`: run a pipeline over a corpus and write the token vectors."""
import json
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import numpy
import typer
from spacy.tokens import Doc, DocBin
from thinc.api import get_current_ops
from tqdm import tqdm

from .pipelines import build_pipeline

FORMATS = ("docbin", "npy")


HELP = {
    "input": "Text file (one doc per line), '-' for stdin, or a .spacy DocBin",
    "output": "A .spacy file (docbin), or a directory for vectors.npy + docs.jsonl (npy)",
    "format": "docbin: DocBin with the vectors in user data; npy: vectors.npy + docs.jsonl",
    "model": "A saved pipeline (path or package) with a ctxembed component",
}


def embed(
    input_path: str = typer.Argument(..., metavar="INPUT", help=HELP["input"]),
    output: Path = typer.Option(..., "--output", "-o", help=HELP["output"]),
    output_format: str = typer.Option("docbin", "--format", "-f", help=HELP["format"]),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=HELP["model"]),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A config.cfg to build the pipeline from"),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Docs per nlp.pipe batch"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU to use; -1 for CPU"),
) -> None:
    """Embed a corpus: every token gets a contextual vector."""
    if output_format not in FORMATS:
        raise typer.BadParameter(f"--format {output_format!r}: expected one of {', '.join(FORMATS)}")
    nlp = build_pipeline(model=model, config=config, gpu_id=gpu_id)
    inputs, total = _read_inputs(input_path, nlp)
    docs = tqdm(nlp.pipe(inputs, batch_size=batch_size), total=total, unit="doc", desc="embedding", file=sys.stderr)
    if output_format == "docbin":
        n_docs = _write_docbin(docs, output)
    else:
        n_docs = _write_npy(docs, output)
    typer.echo(f"wrote {n_docs} docs to {output}", err=True)


def _read_inputs(input_path: str, nlp):
    if input_path == "-":
        lines = sys.stdin.read().splitlines()
        return iter(lines), len(lines)
    path = Path(input_path)
    if not path.exists():
        raise typer.BadParameter(f"INPUT {input_path!r}: no such file")
    if path.suffix == ".spacy":
        doc_bin = DocBin().from_disk(path)
        return doc_bin.get_docs(nlp.vocab), len(doc_bin)
    with path.open(encoding="utf8") as f:
        total = sum(1 for _ in f)
    return _lines(path), total


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf8") as f:
        for line in f:
            yield line.rstrip("\n")


def _write_docbin(docs, output: Path) -> int:
    doc_bin = DocBin(store_user_data=True)
    for doc in docs:
        _vectors_to_host(doc)
        doc_bin.add(doc)
    output.parent.mkdir(parents=True, exist_ok=True)
    doc_bin.to_disk(output)
    return len(doc_bin)


def _write_npy(docs, output: Path) -> int:
    """vectors.npy: all token vectors, docs one after another; docs.jsonl: where each doc's rows are."""
    output.mkdir(parents=True, exist_ok=True)
    blocks: List[numpy.ndarray] = []
    row = 0
    with (output / "docs.jsonl").open("w", encoding="utf8") as f:
        for doc in docs:
            vectors = _vectors_to_host(doc)
            blocks.append(vectors)
            record = {"text": doc.text, "tokens": [t.text for t in doc], "start": row, "end": row + len(doc)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            row += len(doc)
    width = blocks[0].shape[1] if blocks else 0
    vectors = numpy.concatenate(blocks) if blocks else numpy.zeros((0, width), dtype="float32")
    numpy.save(output / "vectors.npy", vectors)
    return len(blocks)


def _vectors_to_host(doc: Doc) -> numpy.ndarray:
    """Files hold numpy arrays: copy GPU vectors to the host (the one place we do)."""
    ops = get_current_ops()
    vectors = ops.to_numpy(doc._.ctx_vectors)
    doc._.ctx_vectors = vectors
    if doc._.ctx_layers is not None:
        doc._.ctx_layers = ops.to_numpy(doc._.ctx_layers)
    if doc.tensor is not None and doc.tensor.size:
        doc.tensor = ops.to_numpy(doc.tensor)
    return vectors
