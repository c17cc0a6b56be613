"""A jq filter that maps each item of a list, run over shares of the list in parallel processes.

``[.[] | f]`` and ``map(f)`` see one item at a time: run over consecutive shares of the list,
their results joined in share order are the result over the whole list, and the first failing
item fails it with the same message. Lists stored in the line layout of
:mod:`osop_dagster._json_text` are cut between runs of items without parsing them, and each
share goes to a forked child that reads and parses only its share, in jq and, for the type
census of the records, in Python. On a machine with several cores the filter then takes a
fraction of the time, and no process holds the whole list, as text or as objects.
"""

import json
import os
import re
import selectors
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from osop_dagster._json_text import JsonText, encode

# ``[.[] | f]`` and ``map(f)``, to be confirmed by a scan of the brackets.
_COLLECT: Final = re.compile(r"\A\s*(\[)\s*\.\s*\[\s*\]\s*\|.*(\])\s*\Z", re.DOTALL)
_MAP: Final = re.compile(r"\A\s*map\s*(\().*(\))\s*\Z", re.DOTALL)
# Built-ins that read more input, report where they are, or stop or talk for the whole program.
_WHOLE_PROGRAM: Final = re.compile(
    r"\b(input|inputs|input_line_number|input_filename|halt|halt_error|debug|stderr)\b"
    r"|\$__loc__"
)
_PAIRS: Final = {"(": ")", "[": "]", "{": "}"}

SHARE_BYTES: Final = 8 * 1024 * 1024
"""Aim of the text one child parses; a list is cut in a multiple of the process count."""
MIN_SPLIT_BYTES: Final = 1024 * 1024
"""Below this, one process filters the whole list: forking would cost more than it saves."""

_JSON_TYPES: Final[dict[type, str]] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def maps_each_item(filter_text: str) -> bool:
    """Whether ``filter_text`` is ``[.[] | f]`` or ``map(f)`` with an ``f`` that sees one item.

    Conservative: a filter with string interpolation or comments, or one that names a built-in
    acting for the whole program (``input``, ``halt``, ``$__loc__``, ...), is not split.
    """
    match = _COLLECT.match(filter_text) or _MAP.match(filter_text)
    if match is None or "\\(" in filter_text or "#" in filter_text:
        return False
    code = _without_strings(filter_text)
    if code is None or _WHOLE_PROGRAM.search(code):
        return False
    return _closes_at(code, match.start(1)) == match.start(2)


def _without_strings(text: str) -> str | None:
    """``text`` with the inside of every string literal blanked; ``None`` if one is unclosed."""
    kept: list[str] = []
    inside = False
    escaped = False
    for char in text:
        if inside:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
                kept.append(char)
                continue
            kept.append(" ")
        else:
            inside = char == '"'
            kept.append(char)
    return None if inside else "".join(kept)


def _closes_at(code: str, opening: int) -> int | None:
    """Index of the bracket that closes the one at ``opening``, or ``None``."""
    expected: list[str] = []
    for index in range(opening, len(code)):
        char = code[index]
        if char in _PAIRS:
            expected.append(_PAIRS[char])
        elif char in _PAIRS.values():
            if not expected or expected.pop() != char:
                return None
            if not expected:
                return index
    return None


def plan_shares(run_lengths: Sequence[int], processes: int) -> list[range]:
    """Consecutive ranges of runs of about equal size, a multiple of ``processes`` of them."""
    total = sum(run_lengths)
    rounds = max(1, -(-total // (SHARE_BYTES * processes)))
    count = max(1, min(len(run_lengths), processes * rounds))
    aim = total / count or 1
    owners: list[int] = []
    done = 0
    for length in run_lengths:
        # A run goes to the share its middle byte falls in, so shares stay in list order.
        owners.append(min(count - 1, int((done + length / 2) // aim)))
        done += length
    shares: list[range] = []
    first = 0
    for index in range(1, len(owners) + 1):
        if index == len(owners) or owners[index] != owners[first]:
            shares.append(range(first, index))
            first = index
    return shares


@dataclass
class SplitOutcome:
    """What the shares produced, joined in share order.

    Attributes:
        runs: The result's items as runs of encoded items, one per share with results.
        records_in: Items read.
        records_out: Items in the result.
        census: Count of each JSON type of each record field, over every share.
    """

    runs: list[bytes] = field(default_factory=list)
    records_in: int = 0
    records_out: int = 0
    census: dict[str, dict[str, int]] = field(default_factory=dict)


class JqShareError(ValueError):
    """jq failed on an item of a share; the message is jq's."""


class JqLimitError(Exception):
    """jq ran out of time or produced too much output, in one process or in shares."""


def run_shares(
    program: Any,
    text: JsonText,
    shares: Sequence[range],
    processes: int,
    limit_sec: float,
    max_bytes: int,
) -> SplitOutcome:
    """Runs ``program`` over each share of ``text``'s runs in forked children, a few at a time.

    Raises:
        JqShareError: jq failed; the error of the first share in list order that failed.
        JqLimitError: All shares together took longer than ``limit_sec`` or answered
            more than ``max_bytes``.
    """
    deadline = time.monotonic() + limit_sec
    answers: dict[int, bytes] = {}
    running: dict[int, tuple[int, int, list[bytes]]] = {}  # fd -> (share index, pid, chunks)
    received = 0
    waiting = iter(range(len(shares)))
    failed = False

    with selectors.DefaultSelector() as selector:
        try:
            while True:
                while not failed and len(running) < processes:
                    index = next(waiting, None)
                    if index is None:
                        break
                    read_end, pid = _fork_share(program, text, shares[index])
                    running[read_end] = (index, pid, [])
                    selector.register(read_end, selectors.EVENT_READ)
                if not running:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JqLimitError(f"did not finish within {limit_sec:g} s")
                for key, _ in selector.select(remaining):
                    read_end = int(key.fd)
                    index, pid, chunks = running[read_end]
                    chunk = os.read(read_end, 1 << 20)
                    received += len(chunk)
                    if received > max_bytes:
                        raise JqLimitError(f"produced more than {max_bytes} bytes of output")
                    if chunk:
                        chunks.append(chunk)
                        continue
                    selector.unregister(read_end)
                    os.close(read_end)
                    os.waitpid(pid, 0)
                    del running[read_end]
                    answers[index] = b"".join(chunks)
                    if not answers[index].startswith(b'{"ok"'):
                        # Shares before a failed one still finish, since the first failing
                        # item names the error; those after it are not needed.
                        failed = True
                        for later in [fd for fd, (at, _, _) in running.items() if at > index]:
                            _, later_pid, _ = running.pop(later)
                            selector.unregister(later)
                            _stop(later, later_pid)
        finally:
            for read_end, (_, pid, _) in running.items():
                _stop(read_end, pid)

    return _join(answers)


def _stop(read_end: int, pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.close(read_end)
    os.waitpid(pid, 0)


def fork_answer(answer: Callable[[], bytes]) -> tuple[int, int]:
    """Forks a child that writes ``answer()`` to a pipe; returns the pipe's read end and its pid.

    The child never exits normally, which would run the parent's atexit handlers and flush its
    buffers a second time; it ends with status 1 when ``answer`` raises.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(read_end)
            text = answer()
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(text)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    return read_end, pid


def _fork_share(program: Any, text: JsonText, share: range) -> tuple[int, int]:
    return fork_answer(lambda: _filter_share(program, text.share(share.start, share.stop)))


def _filter_share(program: Any, text: bytes) -> bytes:
    """A header line of JSON, then the result's items encoded, without the brackets."""
    records = json.loads(text)
    census = type_census(records)
    records_in = len(records)
    del records
    try:
        results = program.input_text(text.decode("utf-8")).all()
    except (ValueError, TypeError) as exc:
        return json.dumps({"error": str(exc)}).encode()
    if len(results) != 1 or not isinstance(results[0], list):
        # Cannot happen for the filters split here; said plainly rather than joined wrongly.
        return json.dumps({"error": "the filter did not produce one list per share"}).encode()
    header = {"ok": True, "in": records_in, "out": len(results[0]), "census": census}
    return json.dumps(header).encode() + b"\n" + encode(results[0])[1:-1]


def _join(answers: dict[int, bytes]) -> SplitOutcome:
    outcome = SplitOutcome()
    for index in sorted(answers):
        header_text, _, run = answers[index].partition(b"\n")
        header = json.loads(header_text or b'{"error": "a jq process ended without answering"}')
        if "error" in header:
            raise JqShareError(header["error"])
        outcome.records_in += header["in"]
        outcome.records_out += header["out"]
        merge_census(outcome.census, header["census"])
        if run:
            outcome.runs.append(run)
    return outcome


def type_census(records: Iterable[Any]) -> dict[str, dict[str, int]]:
    """For each field of the records that are objects, how many hold each JSON type."""
    # Counted by Python type first, one dict lookup per value, and named after JSON types at
    # the end: this scan sees every value of every record, so it must stay cheap.
    seen: dict[Any, dict[type, int]] = {}
    for record in records:
        if type(record) is dict:
            for key, item in record.items():
                counts = seen.get(key)
                if counts is None:
                    counts = seen[key] = {}
                kind = type(item)
                counts[kind] = counts.get(kind, 0) + 1
    census: dict[str, dict[str, int]] = {}
    for key, by_type in seen.items():
        named = census.setdefault(str(key), {})
        for kind, count in by_type.items():
            name = _JSON_TYPES.get(kind, "object")
            named[name] = named.get(name, 0) + count
    return census


def merge_census(into: dict[str, dict[str, int]], other: dict[str, dict[str, int]]) -> None:
    """Adds the counts of ``other`` to ``into``."""
    for key, by_type in other.items():
        named = into.setdefault(key, {})
        for name, count in by_type.items():
            named[name] = named.get(name, 0) + count


def mixed_types(census: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The fields of a census that hold more than one JSON type."""
    return {key: by_type for key, by_type in census.items() if len(by_type) > 1}
