"""Errors that name the component, the setting and the value that caused them."""
import contextlib
import math
import re
import warnings
from contextvars import ContextVar
from typing import Any, Iterable, Iterator, Optional, Tuple

#: The prefix a layer uses before it knows the component instance it serves: the factory name.
_PREFIX = re.compile(r"^\[(ctxembed_bert|ctxembed_elmo|ctxembed_from_trf)\]")


class SettingError(ValueError):
    """A component or model setting has a value that cannot work."""


def bad_setting(component: str, setting: str, value: Any, expected: str) -> SettingError:
    """Build an error of the form ``[component] setting = value: expected``."""
    return SettingError(f"[{component}] {setting} = {value!r}: {expected}")


def shortened(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters (ending in "...") where it is longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(err: BaseException, *, typed: bool = True, limit: Optional[int] = None) -> str:
    """The first line of what `err` says, for a message of one line: after the
    name of its type (`typed`), cut to `limit` characters; the name of its type
    alone where it says nothing."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    line = lines[0] if limit is None else shortened(lines[0], limit)
    return f"{type(err).__name__}: {line}" if typed else line


def install_extra(extra: str) -> str:
    """How to install the optional `extra`, as error messages say it."""
    return f"pip install 'spacy-ctxembed[{extra}]'"


class MissingExtra(ImportError):
    """A package of an optional extra (`extra`: ``ray``, ``analysis``) is not
    installed or too old (`package`: which). The message names what needs it
    and ends with how to install the extra (`install_extra`)."""

    def __init__(self, message: str, package: str, extra: str) -> None:
        super().__init__(message)
        self.package = package
        self.extra = extra

    def __reduce__(self) -> Tuple[Any, Tuple[str, str, str]]:  # (pickled by Ray and worker pools whole)
        return type(self), (str(self), self.package, self.extra)


class NonFiniteOutputs(ValueError):
    """A model gave nan or inf for some token: its vectors are refused, not written."""


#: The component instance whose entry point runs now (`named_errors`), for the
#: warnings of its layers (`warn`). A context variable: each thread (and each
#: asyncio task) sees its own, and a call that is not inside one sees None.
_NAMED: ContextVar[Optional[Tuple[str, str]]] = ContextVar("spacy_ctxembed_named", default=None)


@contextlib.contextmanager
def named_errors(name: str, block: str = "") -> Iterator[None]:
    """Re-raise errors of the layers inside a component with the instance's name.

    Models are built from the registry before the component that owns them
    exists, so their errors carry the factory's name; the component wraps its
    entry points (initialize, loading, the first call) in this, so that
    `name="bert_a"` reads `[bert_a] ...`. `block`: what the setting's name is
    inside (`embedder.encoder.` for an embedder's copy: `[ContextualTok2Vec]
    embedder.encoder.window = 0`). The layers' warnings (`warn`) are named so too.
    """
    token = _NAMED.set((name, block))
    try:
        yield
    except ValueError as err:
        message = str(err)
        if not _PREFIX.match(message):
            raise
        raise type(err)(_renamed(message, name, block)).with_traceback(err.__traceback__) from None
    finally:
        _NAMED.reset(token)


def warn(message: str, *, stacklevel: int = 2) -> None:
    """`warnings.warn` for a layer, whose message names the factory: inside a
    component's `named_errors`, the instance, as its errors are (two
    components then warn apart, where Python's filter showed one message)."""
    named = _NAMED.get()
    if named is not None and _PREFIX.match(message):
        message = _renamed(message, *named)
    warnings.warn(message, stacklevel=stacklevel + 1)


def _renamed(message: str, name: str, block: str) -> str:
    return _PREFIX.sub(f"[{name}]", message, count=1).replace(f"[{name}] ", f"[{name}] {block}", 1)


def check_int(
    component: str, setting: str, value: Any, *, minimum: int = 1, optional: bool = False, unit: str = "an integer"
) -> None:
    """Raise a `SettingError` unless `value` is an int >= `minimum` (or None if `optional`).

    Config files are text: `cache_mb = "10"` arrives as a string, and bools are
    ints to Python; both are refused by name rather than failing later.
    """
    if value is None and optional:
        return
    if not is_int(value):
        allowed = f"{unit} >= {minimum}" + (" or null" if optional else "")
        raise bad_setting(component, setting, value, f"expected {allowed}, got {type(value).__name__}")
    if value < minimum:
        raise bad_setting(component, setting, value, f"expected {unit} >= {minimum}")


def is_int(value: Any) -> bool:
    """Whether `value` is an integer: Python's bools are ints, and JSON's or a
    config's `true` is no count, no index and no offset."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is an int or a float, not a bool (`is_int`)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(component: str, setting: str, value: Any, *, minimum: float, unit: str) -> None:
    """Raise a `SettingError` unless `value` is a finite int or float >= `minimum`."""
    if not is_number(value):
        raise bad_setting(component, setting, value, f"expected {unit}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_setting(component, setting, value, f"expected {unit}, got a float that is not finite")
    if value < minimum:
        raise bad_setting(component, setting, value, f"expected {unit}")


def check_bool(component: str, setting: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise bad_setting(component, setting, value, "expected true or false")


def check_choice(component: str, setting: str, value: Any, choices: Iterable[str]) -> None:
    """Raise a `SettingError` unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise bad_setting(component, setting, value, f"expected one of {options}")
