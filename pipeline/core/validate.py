"""Small checkers that turn a parsed YAML value into a typed one or raise ConfigError.

Every checker takes the dotted key it is checking (`where`) so that an error names the
exact key, the value received and what was expected, e.g.
`models.student_a.layers.3.kernel: must be a positive int, got 0`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.core.errors import UserError, shown


class ConfigError(UserError, ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def fail(where: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"{where}: {expected}, got {shown(got)}")


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(where, "must be a mapping of keys to values", value)
    return value


def keys(value: Any, where: str, required: Iterable[str] = (), optional: Iterable[str] = ()) -> Mapping[str, Any]:
    """Check that a mapping has every required key and nothing unknown."""
    value = mapping(value, where)
    required, optional = list(required), list(optional)
    allowed = required + optional
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{join(where, key)}: unknown key; allowed keys here: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise ConfigError(f"{join(where, key)}: missing; this key is required")
    return value


def join(where: str, key: Any) -> str:
    """The dotted key of `key` inside `where`; a key that is not plain printable text (a line break, an
    empty or endless string) is quoted, so that the message stays one readable line."""
    plain = isinstance(key, str) and key.isprintable() and 0 < len(key) <= 120
    name = key if plain else str(key) if isinstance(key, (int, float, type(None))) else shown(key)
    return f"{where}.{name}" if where else name


def integer(value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(where, _int_expectation(minimum, maximum), value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise fail(where, _int_expectation(minimum, maximum), value)
    return value


def _int_expectation(minimum: int | None, maximum: int | None) -> str:
    if minimum == 1 and maximum is None:
        return "must be a positive int"
    if minimum == 0 and maximum is None:
        return "must be a non-negative int"
    if minimum is not None and maximum is not None:
        return f"must be an int from {minimum} to {maximum}"
    return "must be an int"


def number(value: Any, where: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """A float in an interval; `low_open`/`high_open` exclude the bounds."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    expected = f"must be a number in {lo}{low}, {high}{hi}"
    if math.isinf(high):
        expected = f"must be a finite number {'>' if low_open else '>='} {low}"
    # YAML's .nan passes every comparison and .inf any open-ended bound: neither is a setting.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(where, expected, value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise fail(where, expected, value)
    return float(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, "must be true or false", value)
    return value


def choice(value: Any, where: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise fail(where, f"must be one of {', '.join(choices)}", value)
    return value


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(where, "must be a non-empty string", value)
    return value


def optional_text(value: Any, where: str) -> str | None:
    return None if value is None else text(value, where)


def string_list(value: Any, where: str, choices: Iterable[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise fail(where, "must be a non-empty list", value)
    items = []
    for index, item in enumerate(value):
        item_where = join(where, index)
        items.append(choice(item, item_where, choices) if choices is not None else text(item, item_where))
    _no_repeats(items, where)
    return tuple(items)


def integer_list(value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise fail(where, "must be a non-empty list of ints", value)
    items = [integer(item, join(where, index), minimum, maximum) for index, item in enumerate(value)]
    _no_repeats(items, where)
    return tuple(items)


def _no_repeats(items: list[Any], where: str) -> None:
    first_at: dict[Any, int] = {}  # not items.index(): quadratic in a long list
    for index, item in enumerate(items):
        first = first_at.setdefault(item, index)
        if first != index:
            raise fail(
                where,
                f"must not repeat an entry, but {join(where, index)} repeats {join(where, first)} ({shown(item)})",
                items,
            )


def pair(value: Any, where: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a [height, width] list of ints, as Keras takes kernel sizes and strides."""
    if isinstance(value, list) and len(value) == 2:
        return integer(value[0], join(where, 0), minimum), integer(value[1], join(where, 1), minimum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(where, "must be an int or a [height, width] pair of ints", value)
    size = integer(value, where, minimum)
    return size, size
