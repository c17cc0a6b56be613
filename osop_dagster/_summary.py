"""Small, secret-free summaries of node values, for audit rows and asset metadata."""

import json
import math
import re
from collections.abc import Mapping
from typing import Any

# Keys whose values are never summarised, matched anywhere in the lowercased key.
SECRET_KEY_PARTS = ("token", "secret", "password", "passwd", "authorization", "api_key", "apikey")

# Upper bound of the JSON text of one summary; entries past it are left out.
MAX_FIGURES_BYTES = 8192
_MAX_TEXT_CHARS = 256

# jsonb cannot hold NUL, and other control characters only hide what a value says.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def is_secret_key(key: str) -> bool:
    """Whether an input key looks like it holds a credential."""
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def summarise(values: Mapping[str, Any]) -> dict[str, Any]:
    """A small, secret-free summary of named values: audit figures, asset metadata.

    Scalars are kept (long strings cut), a list becomes ``<key>_count``, a dict is summarised one
    level deep the same way (its own dicts become ``<key>_fields``, their number of keys). Keys
    that look like credentials are dropped at every level. Entries past ``MAX_FIGURES_BYTES`` of
    JSON are left out and ``_truncated`` is set.
    """
    figures: dict[str, Any] = {}
    budget = MAX_FIGURES_BYTES
    for key, value in values.items():
        for name, summary in _summarise_entry(str(key), value, depth=0):
            size = len(json.dumps({name: summary}, default=str))
            if size > budget:
                figures["_truncated"] = True
                return figures
            figures[name] = summary
            budget -= size
    return figures


def _summarise_entry(key: str, value: Any, *, depth: int) -> list[tuple[str, Any]]:
    if is_secret_key(key):
        return []
    if isinstance(value, list | tuple):
        return [(f"{key}_count", len(value))]
    if isinstance(value, Mapping):
        if depth >= 1:
            return [(f"{key}_fields", len(value))]
        inner: dict[str, Any] = {}
        for inner_key, inner_value in value.items():
            inner.update(_summarise_entry(str(inner_key), inner_value, depth=depth + 1))
        return [(key, inner)]
    if value is None or isinstance(value, bool | int):
        return [(key, value)]
    if isinstance(value, float) and math.isfinite(value):
        return [(key, value)]
    # Text, and anything else (dates, decimals, NaN) as its text, bounded in length.
    text = _CONTROL_CHARS.sub("", str(value))
    if len(text) > _MAX_TEXT_CHARS:
        text = text[:_MAX_TEXT_CHARS] + "…"
    return [(key, text)]
