"""What an entry's metadata may hold: JSON values, checked when the entry is inserted.

Metadata is packed into every snapshot and returned with every hit. A value that msgpack or
JSON cannot carry (an object, a NaN, an integer past 64 bits, a string with lone surrogates)
or a structure nested past Python's recursion limit would otherwise be accepted at insert
and fail later, at each save or each hit, where the caller can no longer fix it.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from .errors import InvalidInputError

MAX_DEPTH = 32
MAX_METADATA_BYTES = 1024 * 1024
# msgpack's integer range: -2**63 .. 2**64 - 1.
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def checked_metadata(value: object) -> dict[str, Any]:
    """A deep copy of `value` made of dict, list, str, int, float, bool and None only, or a
    clear InvalidInputError; None gives {}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"metadata must be a dict, got {type(value).__name__}")
    out = _json_value(value, "metadata", 1)
    size = len(msgpack.packb(out, use_bin_type=True))
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadata is {size} bytes packed; the limit is {MAX_METADATA_BYTES}")
    return out


def _text(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{where} is not valid UTF-8 (position {exc.start})") from None
    return str(value)


def _json_value(value: object, where: str, depth: int) -> Any:
    """`depth`: how many dicts and lists hold `value`, itself included if it is one."""
    if isinstance(value, dict | list | tuple) and depth > MAX_DEPTH:
        raise InvalidInputError(f"metadata is nested deeper than {MAX_DEPTH} levels (at {where[:120]})")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidInputError(f"{where}: integer {value} does not fit in 64 bits")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{where}: {value} is not a finite number")
        return float(value)
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"{where}: keys must be strings, got {type(key).__name__}")
            name = _text(key, f"{where} key")
            out[name] = _json_value(item, f"{where}[{name[:40]!r}]", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise InvalidInputError(
        f"{where}: {type(value).__name__} is not a JSON value "
        "(metadata holds strings, numbers, booleans, null, lists and objects)"
    )
