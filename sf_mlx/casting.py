"""Casting recipe values (from YAML or `--set key=value` strings) to a field's type, and checking
them against the field's allowed values and lower bound; every error is one line naming the key."""

from __future__ import annotations

import math
import re
import typing
from typing import Any

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_INT = re.compile(r"[+-]?\d+")


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"tuple[{typing.get_args(tp)[0].__name__}, ...]"
    return tp.__name__


def _cast_scalar(key: str, value: Any, tp: type) -> Any:
    bad = ValueError(f"{key}={value!r} is not a valid {tp.__name__}")
    if tp is bool:
        text = str(value).strip().lower()  # also YAML's true/false and 0/1
        if text in _TRUE + _FALSE:
            return text in _TRUE
        raise bad
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad  # True is an int in Python, never in a recipe
    if tp is str:
        return str(value)
    if tp is int and (isinstance(value, int) or _INT.fullmatch(str(value).strip())):
        return int(value)
    try:
        number = float(value)  # YAML leaves "1e-5" a string
    except ValueError:
        raise bad from None
    if tp is float:
        return number
    if tp is int and number.is_integer():
        return int(number)
    raise bad


def cast_value(key: str, value: Any, tp: Any) -> Any:
    """Cast a YAML value or a `--set` string to field type `tp` (int, float, bool, str, tuples)."""
    if typing.get_origin(tp) is tuple:
        (elem,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            items: list[Any] = [p.strip() for p in text.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        else:
            raise ValueError(f"{key}={value!r} is not a valid {type_name(tp)}")
        try:
            return tuple(_cast_scalar(key, v, elem) for v in items)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a valid {type_name(tp)}") from None
    return _cast_scalar(key, value, tp)


def validate(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    choices, low = meta.get("choices"), meta.get("min")
    if isinstance(value, tuple) and choices is not None and not value:
        raise ValueError(f"{key} is empty; expected one or more of {', '.join(map(str, choices))}")
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{key}={v!r}; expected a finite number")
        if choices is not None and v not in choices:
            raise ValueError(f"{key}={v!r}; expected one of {', '.join(map(str, choices))}")
        if low is not None and v < low:
            raise ValueError(f"{key}={v!r}; must be >= {low}")
