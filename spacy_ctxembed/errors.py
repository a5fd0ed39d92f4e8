"""Errors that name the setting and the value that caused them."""
from typing import Any, Iterable


class SettingError(ValueError):
    """A component or model setting has a value that cannot work."""


def bad_setting(component: str, setting: str, value: Any, expected: str) -> SettingError:
    """Build an error of the form ``[component] setting = value: expected``."""
    return SettingError(f"[{component}] {setting} = {value!r}: {expected}")


def check_positive(component: str, setting: str, value: Any, unit: str = "number") -> None:
    """Raise a `SettingError` unless `value` is None or a positive integer."""
    if value is not None and value < 1:
        raise bad_setting(component, setting, value, f"expected a positive {unit}")


def check_choice(component: str, setting: str, value: Any, choices: Iterable[str]) -> None:
    """Raise a `SettingError` unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise bad_setting(component, setting, value, f"expected one of {options}")
