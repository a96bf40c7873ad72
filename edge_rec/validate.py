"""Checks of request fields shared by the runtime and the behaviour store (numpy only).

A JSON client's mistakes (a string where a number belongs, ``1.7`` or ``true`` for an id) become a
:class:`~edge_rec.errors.DataError` naming the field, never a crash and never a silent cast.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge_rec.errors import DataError

INT64 = (-(2 ** 63), 2 ** 63 - 1)
FP16_MAX = 65504.0
"""The largest magnitude an embedding element may have anywhere: the dataset contract and the behaviour
store keep embeddings as float16, so a larger value cannot be a real feature (it would be stored as inf).
A bundle sets a tighter limit per modality from its training data (``features.embedding_limit``)."""
EMBEDDING_LIMIT_FACTOR = 16
"""A bundle accepts embedding elements up to this many times the largest |element| of its training
catalogue (``features.cand_modality.limit``): room for new items and a re-scaled encoder, none for
a vector that is broken or unscaled."""
_NUMBER_TYPES = (int, float, np.integer, np.floating)


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
        if len(v.strip().lstrip("+-").lstrip("0")) > 19:       # before int(): a huge digit string is slow or refused
            raise DataError(f"{what} must fit in 64-bit signed integers; got a {len(v.strip())}-digit string.")
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
    if isinstance(v, bool) or not isinstance(v, _NUMBER_TYPES):
        raise DataError(f"{what} must be a number, got {show(v)}.")
    try:
        return float(v)
    except OverflowError as exc:                   # an int of hundreds of digits (valid JSON)
        raise DataError(f"{what} is too large for a number ({len(str(abs(int(v))))} digits).") from exc


def to_flag(v: Any, what: str) -> bool:
    """A yes/no field: ``true``/``false`` (or 0/1, how some clients write them); ``None`` is false.
    Anything else (``"yes"``, ``2``) is a :class:`DataError`: guessing could flip a like into a skip."""
    if v is None or isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise DataError(f"{what} must be true or false, got {show(v)}.")


def _numbers(v: Any, what: str, whole: bool = False) -> np.ndarray:
    """A flat list (or numpy array) of numbers as float64 [d]. Strings, booleans, nested lists and
    ints too large for a float are a :class:`DataError` naming ``what``: ``np.asarray(["0.1"], float)``
    would cast them silently, and a nested list could recurse without bound."""
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "iuf":
            raise DataError(f"{what} must hold numbers, got an array of {v.dtype}.")
        if v.ndim != 1:
            raise DataError(f"{what} must be a 1-D vector, got shape {v.shape}.")
        with np.errstate(over="ignore"):
            return v.astype(np.float64)
    if not isinstance(v, (list, tuple)):
        raise DataError(f"{what} must be a list of numbers, got {show(v)}.")
    if not all(type(x) is float for x in v):                       # the common case costs one pass
        for x in v:
            if isinstance(x, bool) or not isinstance(x, _NUMBER_TYPES):
                kind = "a nested list" if isinstance(x, (list, tuple)) else show(x, 20)
                raise DataError(f"{what} must be a flat list of {'whole ' if whole else ''}numbers; it holds {kind}.")
    try:
        return np.array(v, dtype=np.float64)
    except OverflowError as exc:
        raise DataError(f"{what} holds an integer too large for a number.") from exc


def to_vector(v: Any, what: str, limit: float = FP16_MAX) -> np.ndarray:
    """An embedding as the server sends it -> float32 [d]: a list of numbers, ``{"int8": [...],
    "scale": s}`` (value = int8 x scale) or ``{"fp16_b64": "..."}`` (little-endian float16 bytes).

    Every element must be finite and within ``±limit`` (default :data:`FP16_MAX`; a bundle passes its
    per-modality limit). A vector outside it is a :class:`DataError`: a finite but huge value can make
    the model's internals overflow while the score still looks like a number."""
    if isinstance(v, Mapping):
        if "int8" in v:
            q = _numbers(v["int8"], f"{what}: 'int8'", whole=True)
            if not (np.isfinite(q).all() and (q == np.round(q)).all() and ((q >= -128) & (q <= 127)).all()):
                raise DataError(f"{what}: 'int8' values must be whole numbers in [-128, 127].")
            scale = to_number(v.get("scale"), f"{what}: 'scale'", 1.0)
            if not (math.isfinite(scale) and scale > 0):
                raise DataError(f"{what}: 'scale' must be a finite number > 0, got {scale}.")
            a = q * scale
        elif "fp16_b64" in v:
            b64 = v["fp16_b64"]
            if not isinstance(b64, str):
                raise DataError(f"{what}: 'fp16_b64' must be a base64 string, got {show(b64)}.")
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DataError(f"{what}: 'fp16_b64' is not valid base64 ({exc}).") from exc
            if len(raw) % 2:
                raise DataError(f"{what}: 'fp16_b64' holds {len(raw)} bytes; float16 values take 2 bytes each.")
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        else:
            raise DataError(f"{what}: an embedding object needs 'int8' + 'scale' or 'fp16_b64' (got keys {sorted(map(str, v))}).")
    else:
        a = _numbers(v, f"{what}: embedding")
    if not np.isfinite(a).all():
        raise DataError(f"{what}: embedding holds NaN or inf; the server sent a broken vector.")
    worst = float(np.abs(a).max()) if a.size else 0.0
    if worst > limit:
        raise DataError(f"{what}: embedding values must lie within ±{limit:.6g} (the range this model accepts); "
                        f"got {worst:.6g}. The vector is broken or was not scaled as the training data were.")
    return a.astype(np.float32)


def read_json(path: str | Path, what: str) -> Any:
    """The JSON in ``path``; a missing file or one that is not JSON is a :class:`DataError` saying
    ``what`` the file was for."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{what}: {path} not found.") from exc
    except RecursionError as exc:                   # valid JSON nested thousands deep
        raise DataError(f"{what}: {path} is nested too deeply to be a request or report.") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{what}: {path} is not readable JSON ({exc}).") from exc
