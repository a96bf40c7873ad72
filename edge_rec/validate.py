"""Checks of request fields shared by the runtime and the behaviour store (numpy only).

A JSON client's mistakes (a string where a number belongs, ``1.7`` or ``true`` for an id) become a
:class:`~edge_rec.errors.DataError` naming the field, never a crash and never a silent cast.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from edge_rec.errors import DataError

INT64 = (-(2 ** 63), 2 ** 63 - 1)


def show(v: Any, n: int = 60) -> str:
    """A value for an error message: its type and a bounded repr."""
    r = repr(v)
    return f"{type(v).__name__} {r if len(r) <= n else r[:n] + '...'}"


def to_id(v: Any, what: str) -> int:
    """An item or creator id: a whole number that fits in 64 bits, or a string of digits (how JSON
    clients send 64-bit ids they cannot hold in a double). Anything else is a :class:`DataError`:
    truncating 1.7 to 1 could merge two items."""
    if isinstance(v, bool):
        raise DataError(f"{what} must be an integer id, got {show(v)}.")
    if isinstance(v, (int, np.integer)):
        i = int(v)
    elif isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        i = int(v)
    elif isinstance(v, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", v):
        i = int(v)
    else:
        raise DataError(f"{what} must be an integer id (or a string of digits), got {show(v)}.")
    if not INT64[0] <= i <= INT64[1]:
        raise DataError(f"{what} must fit in 64-bit signed integers; got {i}.")
    return i


def checked_id(v: Any, what: str) -> int:
    """:func:`to_id` with a fast path for a plain int in range (most ids, checked once per page)."""
    return v if type(v) is int and INT64[0] <= v <= INT64[1] else to_id(v, what)


def to_number(v: Any, what: str, default: float | None = None) -> float:
    """A JSON number as float (``None`` -> ``default`` when there is one); strings and booleans are a
    :class:`DataError` naming ``what``. Finiteness is checked where the values are used."""
    if v is None and default is not None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise DataError(f"{what} must be a number, got {show(v)}.")
    return float(v)


def read_json(path: str | Path, what: str) -> Any:
    """The JSON in ``path``; a missing file or one that is not JSON is a :class:`DataError` saying
    ``what`` the file was for."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{what}: {path} not found.") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{what}: {path} is not readable JSON ({exc}).") from exc
