"""Command-line interface: `python -m spacy_ctxembed {embed,demo}`."""
import typer

from .demo import demo
from .embed import embed

app = typer.Typer(
    name="spacy_ctxembed",
    help="Contextual token vectors for spaCy pipelines.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("embed")(embed)
app.command("demo")(demo)

__all__ = ["app"]
