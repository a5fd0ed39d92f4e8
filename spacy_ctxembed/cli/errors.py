"""How CLI commands fail: one short line on stderr, a traceback only with --verbose.

This is the CLI boundary: the library raises what it raises (`ValueError`s whose
message starts with ``[component]``, spaCy's ``OSError`` for a missing pipeline,
config validation errors from confection/thinc); only here are they turned into
``error: <what is wrong>`` and an exit code:

* 2: a usage or input error (bad option, unreadable input, output in the way,
  a pipeline or config that cannot be built),
* 1: a failure while running,
* 130: interrupted (Ctrl-C).
"""
import functools
import inspect
import re
import sys
import traceback
from typing import Any, Callable, Optional

import typer

EXIT_USAGE = 2
EXIT_RUNTIME = 1
EXIT_INTERRUPTED = 130
MAX_MESSAGE = 400
#: How a foreign message cut to MAX_MESSAGE ends: what was cut is in the traceback.
CUT = "... (cut; --verbose shows all of it)"
#: "[ctxembed_bert] pooling = ...", "[E050] Can't find model ...": not "[Errno 28] ..."
TAGGED = re.compile(r"\[[A-Za-z_][\w.\-]*\]")


class CliError(Exception):
    """An error the CLI reports as one line, with its exit code."""

    exit_code = EXIT_RUNTIME


class UsageError(CliError):
    """A bad option value, input or output path: nothing was run."""

    exit_code = EXIT_USAGE


class PipelineError(CliError):
    """The pipeline (--model, --config, the default) could not be built."""

    exit_code = EXIT_USAGE


def short_message(exc: BaseException) -> str:
    """The first line of what `exc` says, config validation errors condensed to one line."""
    errors = getattr(exc, "errors", None)
    title = getattr(exc, "title", None)
    if isinstance(errors, (list, tuple)) and errors and all(isinstance(e, dict) for e in errors):
        parts = []
        for err in errors[:3]:
            loc = " -> ".join(str(part) for part in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", "")))
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        message = f"{title}: " if title else ""
        message += "; ".join(parts) + more
    else:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        message = _described(exc) or (lines[0] if lines else "")
        if not isinstance(exc, CliError):
            message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    # Only foreign text is cut (a library's first line can be a whole tensor or file
    # listing). The CLI's own lines and the library's tagged ones are written to be
    # read whole: they are long only where a user's path is, and their advice comes last.
    if len(message) > MAX_MESSAGE and not _own(exc):
        message = message[: MAX_MESSAGE - len(CUT)] + CUT
    return message


def _own(exc: BaseException) -> bool:
    """A message written for the user: the CLI's, or tagged ``[component]``/``[E050]``."""
    return isinstance(exc, CliError) or _tagged(exc)


def _tagged(exc: BaseException) -> bool:
    return bool(TAGGED.match(str(exc).lstrip()))


def _described(exc: BaseException) -> Optional[str]:
    """A config error without per-setting errors (a bad interpolation, a file that does not
    parse), on one line: confection's first line is only its title, the detail is in `desc`."""
    title, desc = getattr(exc, "title", None), getattr(exc, "desc", None)
    if not (isinstance(title, str) and isinstance(desc, str) and desc.strip()):
        return None
    return f"{title}: " + " ".join(line.strip() for line in desc.splitlines() if line.strip())


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, CliError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    # Library setting errors ("[component] setting = value: expected ...") and
    # spaCy's coded errors ("[E050] Can't find model ...") are about what the user asked for.
    if isinstance(exc, (ValueError, OSError)) and _tagged(exc):
        return EXIT_USAGE
    if isinstance(getattr(exc, "errors", None), (list, tuple)) and isinstance(exc, ValueError):
        return EXIT_USAGE
    return EXIT_RUNTIME


def report(exc: BaseException, verbose: bool) -> int:
    """Print `exc` for the user (a traceback first if `verbose`); return the exit code."""
    code = exit_code(exc)
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        message = "interrupted"
    else:
        message = short_message(exc)
    told = verbose or isinstance(exc, (CliError, KeyboardInterrupt)) or message.endswith(CUT)
    hint = "" if told else " (--verbose shows the traceback)"
    typer.echo(f"error: {message}{hint}", err=True)
    return code


VERBOSE = inspect.Parameter(
    "verbose",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(False, "--verbose", "-v", help="On error, show the full traceback"),
    annotation=bool,
)


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a typer command so that errors print one line (see module docstring),
    and give it a `--verbose` option that prints the traceback before that line."""
    signature = inspect.signature(command)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = kwargs.pop("verbose", False)
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own: usage errors, explicit exits
        except (Exception, KeyboardInterrupt) as exc:  # noqa: B902 - the CLI boundary
            raise typer.Exit(report(exc, bool(verbose))) from None

    params = list(signature.parameters.values()) + [VERBOSE]
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper
