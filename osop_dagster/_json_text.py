"""Stored JSON handed over as text, for steps that read text rather than Python values.

A jq step parses its input itself: giving it the stored bytes spares decoding them into Python
objects only to encode them again for jq. Everything else asks :func:`resolve` for the value.

Lists are kept in a line layout: ``[`` and a newline, then runs of items, each run holding whole
items joined by commas, runs separated by a comma and a newline, and a newline before the closing
``]``. It is plain JSON, and since compact JSON never holds a raw newline (inside strings it is
escaped), every newline marks a place where the list can be cut between two items without
parsing it: a page of records fetched, or a share of the work for one jq process.
"""

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import orjson

_OPEN: Final = b"[\n"
_BETWEEN: Final = b",\n"
_CLOSE: Final = b"\n]"

RUN_ITEMS: Final = 1000
"""Items per run when a Python list is written in the line layout."""


class JsonText:
    """One JSON value as compact UTF-8 text; a list may be held as runs of whole items."""

    __slots__ = ("_data", "_runs")

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data
        self._runs: list[bytes] | None = None

    @classmethod
    def from_runs(cls, runs: Iterable[bytes]) -> "JsonText":
        """A list whose items are the comma-joined items of ``runs``; empty runs are skipped."""
        text = cls(b"")
        text._data = None
        text._runs = [run for run in runs if run]
        return text

    @classmethod
    def from_list(cls, items: Sequence[Any], run_items: int = RUN_ITEMS) -> "JsonText":
        """``items`` encoded, ``run_items`` to a run.

        Raises:
            TypeError: An item is not JSON (a set, a date, an object).
            ValueError: An item holds NaN or an infinity, which JSON cannot express.
        """
        return cls.from_runs(
            encode(items[start : start + run_items])[1:-1]
            for start in range(0, len(items), run_items)
        )

    def runs(self) -> list[bytes] | None:
        """The runs of items, if this is a list in the line layout; else ``None``."""
        if self._runs is not None:
            return self._runs
        data = self._data or b""
        if data.startswith(_OPEN) and data.endswith(_CLOSE):
            return data[len(_OPEN) : -len(_CLOSE)].split(_BETWEEN)
        return None

    def pieces(self) -> Iterator[bytes]:
        """The text, in pieces whose concatenation is the whole, without joining them."""
        if self._runs is None:
            yield self._data or b""
            return
        if not self._runs:
            yield b"[]"
            return
        yield _OPEN
        for index, run in enumerate(self._runs):
            if index:
                yield _BETWEEN
            yield run
        yield _CLOSE

    @property
    def data(self) -> bytes:
        """The whole text."""
        return (
            self._data if self._runs is None and self._data is not None else b"".join(self.pieces())
        )

    def size(self) -> int:
        """Length of the text in bytes."""
        return sum(len(piece) for piece in self.pieces())

    def value(self) -> Any:
        """The value, decoded."""
        return json.loads(self.data)

    def __repr__(self) -> str:
        return f"JsonText({self.size()} bytes)"


class NonFiniteNumber(float):
    """NaN or an infinity read from a JSON text, which JSON itself cannot hold.

    Readers of outside JSON pass :func:`non_finite` as ``parse_constant``, so that such a number
    stays marked: :func:`encode` then refuses it instead of writing ``null`` for it.
    """


def non_finite(name: str) -> NonFiniteNumber:
    """``parse_constant`` hook of :func:`json.loads` for ``NaN``, ``Infinity``, ``-Infinity``."""
    return NonFiniteNumber(name)


# Whatever orjson would write differently from json goes to json instead: datetimes and
# dataclasses (json refuses them), subclasses (NonFiniteNumber among them).
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the IO manager stores it.

    orjson writes it; what orjson cannot write (integers beyond 64 bits, keys that are not
    strings, marked non-finite numbers) goes through :mod:`json` with the same layout.

    Raises:
        TypeError: ``value`` holds something that is not JSON.
        ValueError: ``value`` holds NaN or an infinity.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()


def resolve(value: Any) -> Any:
    """``value`` decoded if it is a :class:`JsonText`, else ``value`` itself."""
    return value.value() if isinstance(value, JsonText) else value
