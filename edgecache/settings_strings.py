"""Settings dataclasses from `key=value` strings (`serve run module:build_app key=value ...`).

Each value is converted by its dataclass field's annotation: int, float, bool, str, an
optional (`X | None`: "", "none" or "null" give None) or a dict (JSON text). Non-string
values (from a Serve config file) pass through unchanged; the dataclass validates them.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, TypeVar

from .errors import ConfigError
from .policy import refuse_unknown_keys

__all__ = ["dataclass_from_strings"]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("", "none", "null")


def _annotation(tp: Any) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def _convert(owner: str, name: str, kind: str, value: str) -> Any:
    optional = kind.endswith(" | None")
    base = kind.removesuffix(" | None").strip()
    word = value.strip().lower()
    if optional and word in _NONE:
        return None
    if base == "bool":
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ConfigError(f"{owner}.{name}: {value!r} is not a boolean (true/false, yes/no, on/off, 1/0)")
    if base in ("int", "float"):
        try:
            return int(value) if base == "int" else float(value)
        except ValueError:
            raise ConfigError(f"{owner}.{name}: {value!r} is not a {base}") from None
    if base.startswith("dict"):
        try:
            return json.loads(value)
        except ValueError:
            raise ConfigError(f"{owner}.{name}: {value!r} is not JSON") from None
    return value


def dataclass_from_strings(cls: type[T], args: dict[str, Any]) -> T:
    """`cls(**args)` with string values converted by the field types; a ConfigError for an
    unknown field or a value that does not convert (an unrecognised boolean included)."""
    owner = cls.__name__
    types = {f.name: _annotation(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    refuse_unknown_keys(args, set(types), f"unknown {owner} fields:")
    out = {
        name: _convert(owner, name, types[name], value) if isinstance(value, str) else value
        for name, value in args.items()
    }
    return cls(**out)
