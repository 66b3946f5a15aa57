"""Strict JSON from outside the process: one rule for client frames, HTTP bodies,
facade values and messages read from Redis.

Strict means: no `NaN`/`Infinity`, no number too large for a float, at most
`MAX_NESTING` levels of arrays and objects, and no lone surrogate (`"\\ud800"` parses
to a string that no reply could carry as UTF-8). Every breach is a `JsonRefused`
(a ValueError) with a short text fit for a client, never a RecursionError.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_NESTING = 32
"""Deepest nesting of arrays and objects accepted anywhere (the value itself is level 1)."""


class JsonRefused(ValueError):
    """A text or value that breaks the strict JSON rule; the text says which part."""


def _reject_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # `1e999` would parse to inf, which no reply could encode.
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused("number out of range")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_NESTED_TOO_DEEPLY = f"nested too deeply (at most {MAX_NESTING} levels of arrays and objects)"


def loads(text: str | bytes) -> Any:
    """The value of a JSON text, held to the strict rule."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise JsonRefused("not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonRefused(_NESTED_TOO_DEEPLY) from None
    except JsonRefused:
        raise
    except ValueError as exc:  # JSONDecodeError, integers too long to parse
        raise JsonRefused(f"not JSON ({exc})") from None
    # Counting brackets runs at C speed; only a text that could be too deep is walked.
    if text.count("[") + text.count("{") > MAX_NESTING:
        check_nesting(value)
    if _SURROGATE_ESCAPE.search(text):
        check_encodable(value)
    return value


def check_nesting(value: Any) -> Any:
    """`value` if it nests at most MAX_NESTING levels; JsonRefused otherwise. Iterative:
    a value nested thousands of levels deep costs a walk, not the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            raise JsonRefused(_NESTED_TOO_DEEPLY)
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | tuple)
        )
    return value


def check_encodable(value: Any) -> Any:
    """`value` if its JSON text is valid UTF-8 (no lone surrogate in any string or key)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRefused("a string holds a lone surrogate") from None
    return value


def check_value(value: Any) -> Any:
    """A value built in Python (a facade payload) held to the same rule as a parsed one;
    a value JSON cannot carry (a set, NaN) is a JsonRefused too."""
    check_nesting(value)
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRefused("a string holds a lone surrogate") from None
    except (TypeError, ValueError) as exc:
        raise JsonRefused(f"not JSON ({exc})") from None
    return value
