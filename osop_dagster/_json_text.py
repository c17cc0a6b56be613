"""Stored JSON handed over as text, for steps that read text rather than Python values.

A jq step parses its input itself: giving it the stored bytes spares decoding them into Python
objects only to encode them again for jq. Everything else asks :func:`resolve` for the value.
"""

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JsonText:
    """One JSON value as compact UTF-8 text, exactly as the IO manager stored it."""

    data: bytes

    def value(self) -> Any:
        """The value, decoded."""
        return json.loads(self.data)


def resolve(value: Any) -> Any:
    """``value`` decoded if it is a :class:`JsonText`, else ``value`` itself."""
    return value.value() if isinstance(value, JsonText) else value
