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
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Final

import orjson

_OPEN: Final = b"[\n"
_BETWEEN: Final = b",\n"
_CLOSE: Final = b"\n]"

RUN_ITEMS: Final = 1000
"""Items per run when a Python list is written in the line layout."""
_SCAN_BYTES: Final = 4 * 1024 * 1024


class JsonText:
    """One JSON value as compact UTF-8 text; a list may be held as runs of whole items.

    The text lives in memory, as one piece or as runs, or in a stored file, read only where
    asked: a reader of one share of a list reads only that share.
    """

    __slots__ = ("__weakref__", "_data", "_fd", "_runs", "_spans")

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data
        self._runs: list[bytes] | None = None
        self._fd: int | None = None
        self._spans: list[tuple[int, int]] | None = None

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

    @classmethod
    def from_file(cls, path: Path) -> "JsonText":
        """The text of a stored file; a list in the line layout stays in the file.

        The file is opened once: a later write of the same asset replaces the file, not what
        this text reads.
        """
        fd = os.open(path, os.O_RDONLY)
        if os.pread(fd, len(_OPEN), 0) != _OPEN:
            with os.fdopen(fd, "rb") as handle:
                return cls(handle.read())
        try:
            spans = _run_spans(fd, len(_OPEN))
        except BaseException:
            os.close(fd)
            raise
        text = cls(b"")
        text._data = None
        text._fd = fd
        text._spans = spans
        weakref.finalize(text, os.close, fd)
        return text

    def runs(self) -> list[bytes] | None:
        """The runs of items, if this is a list in the line layout; else ``None``."""
        if self._runs is not None:
            return self._runs
        if self._spans is not None:
            return [self._read(start, end) for start, end in self._spans]
        data = self._data or b""
        if data.startswith(_OPEN) and data.endswith(_CLOSE):
            return data[len(_OPEN) : -len(_CLOSE)].split(_BETWEEN)
        return None

    def run_lengths(self) -> list[int] | None:
        """The size of each run in bytes, without reading a stored file's runs."""
        if self._spans is not None:
            return [end - start for start, end in self._spans]
        runs = self.runs()
        return None if runs is None else [len(run) for run in runs]

    def share(self, first: int, last: int) -> bytes:
        """The list of the items of runs ``first`` to ``last`` (excluded), as JSON text."""
        if self._spans is not None:
            # The separators between runs are a comma and a newline, which JSON allows.
            return b"[" + self._read(self._spans[first][0], self._spans[last - 1][1]) + b"]"
        runs = self.runs() or []
        return b"[" + b",".join(runs[first:last]) + b"]"

    def pieces(self) -> Iterator[bytes]:
        """The text, in pieces whose concatenation is the whole, without joining them."""
        if self._spans is not None:
            runs: Iterable[bytes] = (self._read(start, end) for start, end in self._spans)
        elif self._runs is not None:
            runs = self._runs
        else:
            yield self._data or b""
            return
        first = True
        for run in runs:
            yield _OPEN if first else _BETWEEN
            yield run
            first = False
        yield b"[]" if first else _CLOSE

    @property
    def data(self) -> bytes:
        """The whole text."""
        if self._data is not None:
            return self._data
        return b"".join(self.pieces())

    def size(self) -> int:
        """Length of the text in bytes."""
        if self._spans is not None:
            separators = len(_OPEN) + len(_CLOSE) + len(_BETWEEN) * (len(self._spans) - 1)
            return sum(end - start for start, end in self._spans) + separators
        return sum(len(piece) for piece in self.pieces())

    def value(self) -> Any:
        """The value, decoded."""
        return json.loads(self.data)

    def _read(self, start: int, end: int) -> bytes:
        assert self._fd is not None  # only file-backed texts have spans
        return os.pread(self._fd, end - start, start)

    def __repr__(self) -> str:
        return f"JsonText({self.size()} bytes)"


def _run_spans(fd: int, offset: int) -> list[tuple[int, int]]:
    """Where each run of a file in the line layout lies, found from ``offset`` on.

    Reads the file in blocks and keeps only the places of its newlines: a run ends before the
    newline, and before the comma that precedes it unless it is the last run.
    """
    spans: list[tuple[int, int]] = []
    start = offset
    before = b""
    while block := os.pread(fd, _SCAN_BYTES, offset):
        found = block.find(b"\n")
        while found != -1:
            previous = block[found - 1 : found] if found else before
            end = offset + found - (1 if previous == b"," else 0)
            spans.append((start, end))
            start = offset + found + 1
            found = block.find(b"\n", found + 1)
        before = block[-1:]
        offset += len(block)
    return spans


class NonFiniteNumber(float):
    """NaN or an infinity read from a JSON text, which JSON itself cannot hold.

    Readers of outside JSON pass :func:`non_finite` as ``parse_constant``, so that such a number
    stays marked: :func:`encode` then refuses it instead of writing ``null`` for it.
    """


def non_finite(name: str) -> NonFiniteNumber:
    """``parse_constant`` hook of :func:`json.loads` for ``NaN``, ``Infinity``, ``-Infinity``."""
    return NonFiniteNumber(name)


def finite_or_marked(text: str) -> float:
    """``parse_float`` hook of :func:`json.loads`: a number too large for a float is marked."""
    value = float(text)
    # inf - inf is NaN, which differs from 0; every finite float gives exactly 0.
    return value if value - value == 0 else NonFiniteNumber(text)


OUTSIDE_JSON: Final = {"parse_constant": non_finite, "parse_float": finite_or_marked}
"""Keyword arguments of :func:`json.loads` for JSON from outside: non-finite numbers marked."""

# Every digit becomes "0", everything else a space: a long number shows as a run of zeros.
_DIGITS_AS_ZERO: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
# From 19 digits on, an integer may lie beyond 64 bits, which orjson reads as a float.
_LONG_DIGIT_RUN: Final = b"0" * 19
# orjson parses the whole text into a tree of its own before it makes the Python values: on a
# large text its peak is about twice the text's size above json's. Larger texts go to json.
FAST_DECODE_MAX_BYTES: Final = 16 * 1024 * 1024
# orjson reads nesting up to 1,024 levels wherever it is called; json refuses nesting deeper
# than about 990 levels less the depth of the caller's stack. What orjson reads nested at most
# this deep, json reads too from any stack under ~450 frames; deeper values are read again by
# json, which then decides.
FAST_DECODE_MAX_NESTING: Final = 512


def decode(content: bytes) -> Any:
    """JSON text, read exactly as ``json.loads(content, **OUTSIDE_JSON)`` reads it.

    orjson reads it (a page of records, checks included, in a third less time) when it surely
    reads it the same: a text of at most :data:`FAST_DECODE_MAX_BYTES` (memory), without a run
    of 19 digits (an integer orjson might turn into a float), that orjson accepts (it refuses
    NaN, an infinity or a number too large for a float, a lone surrogate, a byte order mark,
    another encoding than UTF-8) into a value nested at most :data:`FAST_DECODE_MAX_NESTING`
    deep. :mod:`json` reads any other text and has the last word, errors included.

    Raises:
        ValueError: ``content`` is not JSON.
        RecursionError: ``content`` is nested deeper than json reads from this call's stack.
    """
    if (
        len(content) <= FAST_DECODE_MAX_BYTES
        and content.translate(_DIGITS_AS_ZERO).find(_LONG_DIGIT_RUN) < 0
    ):
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
        else:
            if _nested_at_most(value, FAST_DECODE_MAX_NESTING):
                return value
    return json.loads(content, **OUTSIDE_JSON)


def _nested_at_most(value: Any, levels: int) -> bool:
    """Whether ``value`` holds no list or object more than ``levels`` deep (itself at 1).

    One level at a time, with the types of a level's values gathered in C: records of scalars
    cost one pass over their values.
    """
    dicts: list[dict[Any, Any]] = [value] if type(value) is dict else []
    lists: list[list[Any]] = [value] if type(value) is list else []
    for _ in range(levels):
        if not dicts and not lists:
            return True
        kinds = set(map(type, _children(dicts, lists)))
        if dict not in kinds and list not in kinds:
            return True
        deeper = list(_children(dicts, lists))
        dicts = [child for child in deeper if type(child) is dict]
        lists = [child for child in deeper if type(child) is list]
    return not dicts and not lists


def _children(dicts: list[dict[Any, Any]], lists: list[list[Any]]) -> Iterator[Any]:
    return chain(chain.from_iterable(map(dict.values, dicts)), chain.from_iterable(lists))


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
    strings, marked non-finite numbers) goes through :mod:`json` with the same layout. Values
    decoded with :data:`OUTSIDE_JSON` hold no unmarked NaN or infinity; a plain float NaN made
    in Python would be written as ``null``.

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
