"""Command-line interface: `python -m spacy_ctxembed {embed,demo,analyze}`.

Errors print one line (``error: ...``) and exit non-zero; ``--verbose`` shows
the traceback (see `errors`). typer's rich tracebacks and rich error panels
are off.
"""
import typer

# The modules, not their commands: `spacy_ctxembed.cli.embed` stays the module.
from . import analyze, demo, embed
from .errors import guarded

app = typer.Typer(
    name="spacy_ctxembed",
    help="Contextual token vectors for spaCy pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("embed")(guarded(embed.embed))
app.command("demo")(guarded(demo.demo))
app.command("analyze")(guarded(analyze.analyze))

__all__ = ["app"]
