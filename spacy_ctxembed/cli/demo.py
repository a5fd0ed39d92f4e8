"""`demo`: the seed example, 'ran' in three sentences, contextual vs static."""
from typing import Optional, Sequence

import numpy
import typer

from .pipelines import build_pipeline, refuse_folder_without_pipeline

SENTENCES = {
    "A": ("It was nice out this morning when I ran to the park", "running"),
    "B": ("Yesterday afternoon I ran some more significance tests", "conducting"),
    "C": ("After breakfast she ran to the station to catch her train", "running (control)"),
}
PAIRS = [("A", "B", "different senses"), ("A", "C", "same sense"), ("B", "C", "different senses")]
WORD = "ran"


def demo(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A saved pipeline with a ctxembed component"),
) -> None:
    """Show that 'ran' gets a different vector in each context."""
    refuse_folder_without_pipeline(model)
    nlp = build_pipeline(model=model)
    contextual = {key: _word_vector(nlp(text)) for key, (text, _) in SENTENCES.items()}
    static = _static_vector(nlp)
    typer.echo(f"Cosine similarity of '{WORD}' across sentences\n")
    for key, (text, sense) in SENTENCES.items():
        typer.echo(f"  {key}: {text}  [{sense}]")
    typer.echo("")
    rows = [("pair", "relation", "contextual", "static")]
    for a, b, relation in PAIRS:
        static_sim = "n/a" if static is None else f"{_cosine(static, static):.3f}"
        rows.append((f"{a}-{b}", relation, f"{_cosine(contextual[a], contextual[b]):.3f}", static_sim))
    typer.echo(_table(rows))
    typer.echo(
        "\ncontextual: ctxembed vectors (doc._.ctx_vectors); "
        + (f"static: the model's input embedding of '{WORD}', the same in every sentence." if static is not None
           else "static: n/a, the pipeline has no ctxembed_bert component with a BERT encoder of its own, whose "
                "input embedding of words it could show.")
    )


def _word_vector(doc) -> numpy.ndarray:
    token = next(t for t in doc if t.text == WORD)
    from thinc.api import get_current_ops

    return get_current_ops().to_numpy(token.vector).astype("float64")


def _static_vector(nlp) -> Optional[numpy.ndarray]:
    """The context-independent input embedding of the word, where the model has one: a
    ctxembed_bert whose encoder is its own BERT (a TrfEncoder.v2 pools another component's)."""
    from ..models.bert import BertShim
    from ..models.torch_bridge import encoder_shim

    for name, pipe in nlp.pipeline:
        shim = encoder_shim(pipe.encoder) if nlp.get_pipe_meta(name).factory == "ctxembed_bert" else None
        if isinstance(shim, BertShim):
            encoder = shim.get_runner().encoder
            ids = encoder.tokenizer(WORD, add_special_tokens=False)["input_ids"]
            table = encoder.module.get_input_embeddings().weight.detach()
            return table[ids].mean(dim=0).double().cpu().numpy()
    return None


def _cosine(u: numpy.ndarray, v: numpy.ndarray) -> float:
    return float(u @ v / (numpy.linalg.norm(u) * numpy.linalg.norm(v)))


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
