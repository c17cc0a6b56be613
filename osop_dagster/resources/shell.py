"""The run-time side of OSOP ``cli`` nodes: jq filters in-process, other programs as processes.

A ``cli`` node names a command line in ``runtime.command``. When the program is ``jq``, the
filter runs through the ``jq`` Python binding, with jq's own semantics, and no process starts.
Any other program runs from an argument list (never through a shell) only when the resource
lists it in ``allowed_programs``; the node's input goes to its standard input as JSON, so record
data never appears on a command line.
"""

import contextlib
import functools
import json
import logging
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, TypeVar

import dagster
import jq
from pydantic import Field, field_validator

from osop_dagster._json_text import OUTSIDE_JSON, JsonText, encode, resolve
from osop_dagster.constants import (
    META_COMMAND,
    META_DURATION_MS,
    META_EXECUTABLE,
    META_EXIT_CODE,
    META_MIXED_TYPE_FIELDS,
    META_RECORD_COUNT,
    META_RECORDS_IN,
)
from osop_dagster.errors import OsopShellError
from osop_dagster.resources._jq_shares import (
    MIN_SPLIT_BYTES,
    JqLimitError,
    fork_answer,
    maps_each_item,
    mixed_types,
    plan_shares,
    run_shares,
    type_census,
)
from osop_dagster.resources._vocabulary import RuntimeVocabulary

JQ_PROGRAM = "jq"

# How much of a failing program's standard error a message quotes: enough for the real error,
# little enough to stay readable in the Dagster UI.
STDERR_TAIL_BYTES = 2048

_READ_CHUNK = 65536


@dataclass(frozen=True)
class JqInvocation:
    """A jq command line reduced to what the binding needs.

    Attributes:
        filter: The jq program text.
        compact: ``-c``; changes only how ``output_format: text`` renders results.
        raw_output: ``-r``; strings render without quotes in ``output_format: text``.
        slurp: ``-s``; the input document is wrapped in a one-element array, as jq does with
            one document on standard input.
        null_input: ``-n``; the filter runs with ``null`` as input and the node's input is unused.
        args: Named arguments from ``--arg`` (strings) and ``--argjson`` (parsed JSON).
    """

    filter: str
    compact: bool = False
    raw_output: bool = False
    slurp: bool = False
    null_input: bool = False
    args: Mapping[str, Any] = field(default_factory=dict)


_JQ_FLAGS = {
    "c": "compact",
    "r": "raw_output",
    "s": "slurp",
    "n": "null_input",
}
_JQ_LONG_FLAGS = {
    "--compact-output": "compact",
    "--raw-output": "raw_output",
    "--slurp": "slurp",
    "--null-input": "null_input",
}


def parse_jq_argv(argv: Sequence[str]) -> JqInvocation:
    """Read a ``jq`` argument list (program name first) into a :class:`JqInvocation`.

    Supported options: ``-c``, ``-r``, ``-s``, ``-n`` (also combined, e.g. ``-cr``), their long
    forms, ``--arg NAME VALUE`` and ``--argjson NAME JSON``. The one positional argument is the
    filter; input files are not supported because the node's input is the document.

    Raises:
        ValueError: On an unsupported option, a missing or extra positional argument, or
            ``--argjson`` text that is not JSON; the message names the culprit.
    """
    flags = dict.fromkeys(_JQ_FLAGS.values(), False)
    args: dict[str, Any] = {}
    positional: list[str] = []
    words = list(argv[1:])
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if positional or not word.startswith("-") or word == "-":
            positional.append(word)
        elif word == "--":
            positional.extend(words[index:])
            break
        elif word in _JQ_LONG_FLAGS:
            flags[_JQ_LONG_FLAGS[word]] = True
        elif word in ("--arg", "--argjson"):
            if index + 2 > len(words):
                raise ValueError(f"jq option {word!r} needs a name and a value.")
            name, text = words[index], words[index + 1]
            index += 2
            if word == "--arg":
                args[name] = text
            else:
                try:
                    args[name] = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"jq option --argjson {name} expects JSON, got {text!r} ({exc.msg})."
                    ) from exc
        elif not word.startswith("--") and all(letter in _JQ_FLAGS for letter in word[1:]):
            for letter in word[1:]:
                flags[_JQ_FLAGS[letter]] = True
        else:
            supported = "-c, -r, -s, -n, --arg NAME VALUE, --argjson NAME JSON"
            raise ValueError(
                f"jq option {word!r} is not supported; supported options: {supported}."
            )

    if not positional:
        raise ValueError("The jq command has no filter; expected e.g. jq '.[] | .id'.")
    if len(positional) > 1:
        raise ValueError(
            f"The jq command names input files {positional[1:]!r}; a cli node's input is the "
            "document jq reads, so remove the file arguments."
        )
    return JqInvocation(filter=positional[0], args=args, **flags)


class CliRuntime(RuntimeVocabulary):
    """The ``runtime`` block of an OSOP ``cli`` node.

    Vocabulary:
        command: The command line, split like a POSIX shell would split it (quotes, no
            expansion, no pipes). ``jq ...`` runs through the jq binding.
        input: Which node input is the program's document. By default, the only input; with
            several inputs, a JSON object of all of them by name; with none, ``null``.
        output_format: ``json`` (default) parses standard output as JSON, one value, or a
            list when the program prints several JSON documents; ``text`` keeps it as a string.
        timeout_sec: Time limit of the program, overriding the resource's default.

    Other runtime keys the OSOP schema declares are accepted and ignored; any other key is an
    error.
    """

    command: str
    input: str | None = None
    output_format: Literal["json", "text"] = "json"
    timeout_sec: float | None = Field(default=None, gt=0)

    @field_validator("command")
    @classmethod
    def _command_parses(cls, command: str) -> str:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"The command {command!r} cannot be split into words: {exc}.") from exc
        if not argv:
            raise ValueError("The command is empty; expected a program and its arguments.")
        if argv[0] == JQ_PROGRAM:
            invocation = parse_jq_argv(argv)
            # Compiling now reports a broken filter when the workflow loads, not when it runs.
            try:
                compile_jq(invocation.filter, _args_key(invocation))
            except ValueError as exc:
                raise ValueError(
                    f"The jq filter {invocation.filter!r} does not compile: {exc}."
                ) from exc
        return command

    @cached_property
    def argv(self) -> tuple[str, ...]:
        """The command split into its argument list."""
        return tuple(shlex.split(self.command))

    @property
    def program(self) -> str:
        """The program, as written in the command."""
        return self.argv[0]

    @cached_property
    def jq(self) -> JqInvocation | None:
        """The parsed jq invocation, or ``None`` when the program is not jq."""
        return parse_jq_argv(self.argv) if self.program == JQ_PROGRAM else None


@dataclass(frozen=True)
class ShellResult:
    """What a ``cli`` node produced.

    Attributes:
        value: The node's output value.
        metadata: Facts for the materialization (program, exit code, duration, record counts).
    """

    value: Any
    metadata: dict[str, Any]


@functools.lru_cache(maxsize=256)
def compile_jq(filter_text: str, args_json: tuple[tuple[str, str], ...]) -> Any:
    """Compile a jq filter once per (filter, arguments); arguments come as (name, JSON text).

    Raises:
        ValueError: jq's own compile error.
    """
    args = {name: json.loads(text) for name, text in args_json}
    return jq.compile(filter_text, args=args)


def _args_key(invocation: JqInvocation) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, json.dumps(value)) for name, value in invocation.args.items()))


class OsopShellResource(dagster.ConfigurableResource):
    """Runs OSOP ``cli`` nodes.

    ``jq`` commands always run, in-process, through the jq binding. Other programs run only when
    ``allowed_programs`` lists them, by name or absolute path exactly as the command writes them.

    Attributes:
        allowed_programs: Programs a command may start.
        default_timeout_sec: Time limit of a program when neither the node nor its runtime sets one.
        max_output_bytes: Standard output beyond this size fails the step.
        jq_processes: Processes a jq filter of the form ``[.[] | f]`` or ``map(f)`` over a list
            stored in the line layout may use at once; by default one per CPU available.
    """

    allowed_programs: list[str] = Field(
        default=[JQ_PROGRAM],
        description="Programs a command may start, by name or absolute path; jq always runs.",
    )
    default_timeout_sec: float = Field(
        default=60.0, gt=0, description="Time limit of a program when the node sets none."
    )
    max_output_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Standard output beyond this fails the step."
    )
    jq_processes: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Processes a jq filter that maps each item of a large list may use at once; by "
            "default one per CPU available, 1 filters in one process."
        ),
    )

    def run(
        self,
        *,
        node_id: str,
        runtime: CliRuntime,
        inputs: Mapping[str, Any],
        timeout_sec: float | None,
        log: logging.Logger,
    ) -> ShellResult:
        """Run the node's command on its inputs and return its output value.

        Args:
            node_id: The OSOP node, for messages.
            runtime: The node's parsed runtime block.
            inputs: The node's resolved input values by name.
            timeout_sec: The node's ``timeout_sec``; wins over ``runtime.timeout_sec``.
            log: Where the one INFO line per step goes.

        Raises:
            OsopShellError: The program is not allowed, failed, timed out, or printed too much or
                something that is not JSON; or the jq filter failed.
        """
        document = _select_document(node_id, runtime, inputs)
        limit = timeout_sec or runtime.timeout_sec or self.default_timeout_sec
        if runtime.jq is not None:
            return self._run_jq(node_id, runtime, runtime.jq, document, limit, log)

        if runtime.program not in self.allowed_programs:
            raise OsopShellError(
                f"Node {node_id!r} runs program {runtime.program!r}, which is not allowed; "
                f"allowed programs are {self.allowed_programs!r}. Add it to the shell "
                "resource's allowed_programs if the workflow may run it.",
                metadata={META_COMMAND: runtime.command},
            )
        return self._run_process(node_id, runtime, document, limit, log)

    def _run_jq(
        self,
        node_id: str,
        runtime: CliRuntime,
        invocation: JqInvocation,
        document: Any,
        limit_sec: float,
        log: logging.Logger,
    ) -> ShellResult:
        started = time.monotonic()
        try:
            program = compile_jq(invocation.filter, _args_key(invocation))
        except ValueError as exc:
            raise OsopShellError(
                f"Node {node_id!r}: the jq filter {invocation.filter!r} does not compile: {exc}.",
                metadata={META_COMMAND: runtime.command},
            ) from exc

        lengths = document.run_lengths() if isinstance(document, JsonText) else None
        if (
            isinstance(document, JsonText)
            and lengths is not None
            and self._jq_processes() > 1
            and sum(lengths) >= MIN_SPLIT_BYTES
            and runtime.output_format == "json"
            and not (invocation.slurp or invocation.null_input)
            and maps_each_item(invocation.filter)
        ):
            return self._run_jq_in_shares(
                node_id, runtime, invocation, program, document, lengths, limit_sec, log
            )

        subject: Any = None
        text: bytes | None = None
        if invocation.null_input:
            pass
        elif isinstance(document, JsonText):
            # jq parses the stored text itself; -s wraps the one document in an array.
            text = b"[" + document.data + b"]" if invocation.slurp else document.data
        else:
            subject = [document] if invocation.slurp else document

        def census() -> dict[str, Any]:
            # The records' own figures, computed here while the jq child works on its copy.
            return _input_figures(resolve(document), log, node_id)

        with _jq_failures(node_id, runtime, invocation):
            results, input_figures = _bounded_jq(
                program, subject, text, limit_sec, self.max_output_bytes, meanwhile=census
            )
        duration_ms = round((time.monotonic() - started) * 1000)
        log.info("Shell step %r: program jq (binding), exit code 0, %d ms", node_id, duration_ms)

        if runtime.output_format == "text":
            value: Any = _render_jq_text(results, invocation)
        else:
            # jq prints nothing, one value, or a stream; the node yields null, it, or a list.
            value = results[0] if len(results) == 1 else (results or None)
        metadata = {
            META_COMMAND: runtime.command,
            META_EXECUTABLE: JQ_PROGRAM,
            META_EXIT_CODE: 0,
            META_DURATION_MS: duration_ms,
            **input_figures,
        }
        if input_figures and isinstance(value, list):
            metadata[META_RECORD_COUNT] = len(value)
        return ShellResult(value=value, metadata=metadata)

    def _jq_processes(self) -> int:
        if self.jq_processes is not None:
            return self.jq_processes
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    def _run_jq_in_shares(
        self,
        node_id: str,
        runtime: CliRuntime,
        invocation: JqInvocation,
        program: Any,
        document: JsonText,
        lengths: list[int],
        limit_sec: float,
        log: logging.Logger,
    ) -> ShellResult:
        started = time.monotonic()
        processes = self._jq_processes()
        shares = plan_shares(lengths, processes)
        with _jq_failures(node_id, runtime, invocation):
            outcome = run_shares(
                program, document, shares, processes, limit_sec, self.max_output_bytes
            )
        duration_ms = round((time.monotonic() - started) * 1000)
        log.info(
            "Shell step %r: program jq (binding), exit code 0, %d ms, %d shares on %d processes",
            node_id,
            duration_ms,
            len(shares),
            processes,
        )
        metadata = {
            META_COMMAND: runtime.command,
            META_EXECUTABLE: JQ_PROGRAM,
            META_EXIT_CODE: 0,
            META_DURATION_MS: duration_ms,
            META_RECORDS_IN: outcome.records_in,
            META_RECORD_COUNT: outcome.records_out,
            **_census_figures(outcome.census, log, node_id),
        }
        return ShellResult(value=JsonText.from_runs(outcome.runs), metadata=metadata)

    def _run_process(
        self,
        node_id: str,
        runtime: CliRuntime,
        document: Any,
        timeout_sec: float,
        log: logging.Logger,
    ) -> ShellResult:
        try:
            stdin = (
                document.data if isinstance(document, JsonText) else json.dumps(document).encode()
            )
        except (TypeError, ValueError) as exc:
            raise OsopShellError(
                f"Node {node_id!r}: its input cannot be written as JSON for {runtime.program!r}: "
                f"{exc}.",
                metadata={META_COMMAND: runtime.command},
            ) from exc

        started = time.monotonic()
        try:
            outcome = _run_bounded(runtime.argv, stdin, timeout_sec, self.max_output_bytes)
        except OSError as exc:
            raise OsopShellError(
                f"Node {node_id!r}: program {runtime.program!r} could not start: {exc}. Check "
                "that it is installed and on PATH.",
                metadata={META_COMMAND: runtime.command},
            ) from exc
        duration_ms = round((time.monotonic() - started) * 1000)
        log.info(
            "Shell step %r: program %s, exit code %s, %d ms",
            node_id,
            runtime.program,
            outcome.returncode,
            duration_ms,
        )

        metadata: dict[str, Any] = {
            META_COMMAND: runtime.command,
            META_EXECUTABLE: runtime.program,
            META_EXIT_CODE: outcome.returncode,
            META_DURATION_MS: duration_ms,
        }
        if outcome.timed_out:
            raise OsopShellError(
                f"Node {node_id!r}: program {runtime.program!r} ran longer than {timeout_sec} s "
                "and was killed. Raise the node's timeout_sec if it needs more time.",
                metadata=metadata,
            )
        if outcome.overflowed:
            raise OsopShellError(
                f"Node {node_id!r}: program {runtime.program!r} printed more than "
                f"{self.max_output_bytes} bytes and was killed. Filter the output down or raise "
                "the shell resource's max_output_bytes.",
                metadata=metadata,
            )
        if outcome.returncode != 0:
            tail = outcome.stderr_tail.decode(errors="replace").strip()
            raise OsopShellError(
                f"Node {node_id!r}: program {runtime.program!r} exited with code "
                f"{outcome.returncode}. End of its standard error: {tail or '(empty)'}",
                metadata=metadata,
            )

        value = _parse_output(node_id, runtime, outcome.stdout)
        metadata.update(_input_figures(resolve(document), log, node_id))
        if isinstance(value, list) and META_RECORDS_IN in metadata:
            metadata[META_RECORD_COUNT] = len(value)
        return ShellResult(value=value, metadata=metadata)


def _select_document(node_id: str, runtime: CliRuntime, inputs: Mapping[str, Any]) -> Any:
    if runtime.input is not None:
        if runtime.input not in inputs:
            raise OsopShellError(
                f"Node {node_id!r}: runtime.input names {runtime.input!r}, expected one of the "
                f"node's inputs {sorted(inputs)!r}."
            )
        return inputs[runtime.input]
    if len(inputs) == 1:
        return next(iter(inputs.values()))
    return {name: resolve(value) for name, value in inputs.items()} if inputs else None


@contextlib.contextmanager
def _jq_failures(node_id: str, runtime: CliRuntime, invocation: JqInvocation) -> Iterator[None]:
    """Turns jq's own errors and the limits into the step's error."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise OsopShellError(
            f"Node {node_id!r}: the jq filter {invocation.filter!r} failed on its input: {exc}.",
            metadata={META_COMMAND: runtime.command, META_EXIT_CODE: 5},
        ) from exc
    except JqLimitError as exc:
        raise OsopShellError(
            f"Node {node_id!r}: the jq filter {invocation.filter!r} {exc}.",
            metadata={META_COMMAND: runtime.command},
        ) from exc


def _render_jq_text(results: Sequence[Any], invocation: JqInvocation) -> str:
    lines = []
    for result in results:
        if invocation.raw_output and isinstance(result, str):
            lines.append(result)
        elif invocation.compact:
            lines.append(json.dumps(result, separators=(",", ":"), ensure_ascii=False))
        else:
            lines.append(json.dumps(result, indent=2, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def _parse_output(node_id: str, runtime: CliRuntime, stdout: bytes) -> Any:
    text = stdout.decode(errors="replace")
    if runtime.output_format == "text":
        return text
    try:
        values = list(_json_stream(text))
    except json.JSONDecodeError as exc:
        raise OsopShellError(
            f"Node {node_id!r}: program {runtime.program!r} printed {len(stdout)} bytes that are "
            f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). Set "
            "runtime.output_format: text to keep its output as text.",
            metadata={META_COMMAND: runtime.command},
        ) from exc
    return values[0] if len(values) == 1 else (values or None)


def _json_stream(text: str) -> Iterator[Any]:
    decoder = json.JSONDecoder(**OUTSIDE_JSON)
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        value, position = decoder.raw_decode(text, position)
        yield value


def _input_figures(document: Any, log: logging.Logger, node_id: str) -> dict[str, Any]:
    """The count of a list input's records, and fields whose JSON types vary across them.

    jq compares values of different types by type order (every string above every number), so
    a drifting field type changes which records a filter keeps; it is reported, never altered.
    """
    if not isinstance(document, list):
        return {}
    figures: dict[str, Any] = {META_RECORDS_IN: len(document)}
    figures.update(_census_figures(type_census(document), log, node_id))
    return figures


def _census_figures(
    census: dict[str, dict[str, int]], log: logging.Logger, node_id: str
) -> dict[str, Any]:
    mixed = mixed_types(census)
    if not mixed:
        return {}
    # Numbers written as strings are the mix that silently flips comparisons, e.g. "9" > 30.
    drifting = sorted(key for key, kinds in mixed.items() if {"number", "string"} <= kinds.keys())
    if drifting:
        log.warning(
            "Node %r: fields %s hold numbers in some records and strings in others; jq orders "
            "every string above every number, so comparisons on them may keep unexpected records",
            node_id,
            drifting,
        )
    return {META_MIXED_TYPE_FIELDS: mixed}


_Side = TypeVar("_Side")


def _bounded_jq(
    program: Any,
    subject: Any,
    text: bytes | None,
    limit_sec: float,
    max_bytes: int,
    *,
    meanwhile: Callable[[], _Side],
) -> tuple[list[Any], _Side]:
    """Runs a compiled jq filter in a forked child, so that its time and output are bounded.

    The binding holds the GIL while it runs and cannot be interrupted, so a filter that never
    ends could not be stopped in this process. The child inherits the compiled filter and the
    input (``text`` for jq to parse, else the value ``subject``) without copying them, and sends
    the results back as JSON, which is what jq computes. This process runs ``meanwhile`` while
    it waits and returns its result with jq's.
    """
    if not hasattr(os, "fork"):
        side = meanwhile()
        return _jq_results(program, subject, text), side

    def answer() -> bytes:
        # In the child: only the binding and json from here on.
        try:
            found: dict[str, Any] = {"results": _jq_results(program, subject, text)}
        except (ValueError, TypeError) as exc:
            found = {"error": str(exc), "type": type(exc).__name__}
        # UTF-8 like the shares' answers, so the output cap means the same in both.
        return encode(found)

    read_end, pid = fork_answer(answer)
    deadline = time.monotonic() + limit_sec
    try:
        side = meanwhile()
    except BaseException:
        os.close(read_end)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    chunks: list[bytes] = []
    received = 0
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(read_end, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JqLimitError(f"did not finish within {limit_sec:g} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(read_end, 1 << 20)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise JqLimitError(f"produced more than {max_bytes} bytes of output")
                chunks.append(chunk)
    except BaseException:
        # The limits, and anything else that ends the wait (a run being terminated): the child
        # may never finish on its own.
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)

    answer = json.loads(b"".join(chunks) or b'{"error": "the jq child ended without answering"}')
    if "error" in answer:
        raise ValueError(answer["error"])
    return list(answer["results"]), side


def _jq_results(program: Any, subject: Any, text: bytes | None) -> list[Any]:
    if text is not None:
        return list(program.input_text(text.decode("utf-8")).all())
    return list(program.input_value(subject).all())


@dataclass(frozen=True)
class _Outcome:
    returncode: int | None
    stdout: bytes
    stderr_tail: bytes
    timed_out: bool
    overflowed: bool


def _run_bounded(
    argv: Sequence[str], stdin: bytes, timeout_sec: float, max_output_bytes: int
) -> _Outcome:
    """Run ``argv`` with ``stdin``, bounded in time and output size; never through a shell."""
    # A session of its own lets a kill reach the program's children too.
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    # The writer runs beside the reader: a program that prints before it has read all of its
    # input would otherwise block on a full pipe while we block writing to it.
    writer = threading.Thread(target=_feed, args=(process.stdin, stdin), daemon=True)
    writer.start()

    deadline = time.monotonic() + timeout_sec
    stdout = bytearray()
    stderr = bytearray()
    timed_out = overflowed = False
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ, stdout)
        selector.register(process.stderr, selectors.EVENT_READ, stderr)
        while selector.get_map() and not (timed_out or overflowed):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is stderr and len(stderr) > STDERR_TAIL_BYTES:
                    del stderr[:-STDERR_TAIL_BYTES]
                if key.data is stdout and len(stdout) > max_output_bytes:
                    overflowed = True
                    break

    if not (timed_out or overflowed):
        try:
            process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out or overflowed:
        _kill_group(process)
    writer.join(timeout=1)
    process.stdout.close()
    process.stderr.close()
    return _Outcome(
        returncode=process.returncode,
        stdout=bytes(stdout),
        stderr_tail=bytes(stderr[-STDERR_TAIL_BYTES:]),
        timed_out=timed_out,
        overflowed=overflowed,
    )


def _feed(pipe: Any, data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError):
        # The program exited or closed its input early; its exit code tells the story.
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
