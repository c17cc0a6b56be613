"""Strict parsing of workflow text: YAML without 1.1 surprises, JSON without duplicate keys.

Both parsers return the plain data together with a :data:`LineMap` from every location in the
document (a tuple of mapping keys and sequence indexes) to the 1-based line where it is written,
so that later validation can point the user at the exact line.

YAML is scanned by libyaml when PyYAML is built with it, except for the few constructs the two
scanners read differently; a text libyaml refuses is read again by PyYAML's own scanner, so every
message users see, and every line in it, is that of the pure-Python reading.
"""

import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor

Location = tuple[str | int, ...]
"""A place in a document: mapping keys and sequence indexes from the root."""

LineMap = dict[Location, int]
"""1-based line of every mapping key and sequence item, keyed by its location."""

# An alias may point at a subtree that itself holds aliases; a few dozen of them can stand for
# billions of nodes once expanded. A workflow file is small, so a generous cap costs nothing.
MAX_EXPANDED_NODES = 200_000

# Parsing and validation recurse once per level of nesting; a few thousand brackets would exhaust
# Python's stack. Real workflows nest fewer than ten levels.
MAX_NESTING_DEPTH = 64

# Python refuses to convert integers of more than 4300 digits; no workflow value needs 100.
_MAX_NUMBER_DIGITS = 100

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# The spellings YAML 1.2 also reads as booleans; YAML 1.1 adds yes/no/on/off in any case.
_PLAIN_BOOLEANS = {"true": True, "True": True, "TRUE": True}
_PLAIN_BOOLEANS |= {"false": False, "False": False, "FALSE": False}
# Decimal integers without a leading zero, and hexadecimal: these read the same in YAML 1.1 and
# 1.2. Leading-zero octals, binary, underscores and base 60 are YAML 1.1 only.
_SAFE_INT = re.compile(r"[-+]?(0|[1-9][0-9]*|0x[0-9a-fA-F]+)")
_SAFE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+\.[0-9]*)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)")
_SAFE_FLOAT_NAN = re.compile(r"\.(nan|NaN|NAN)")


class StrictYamlError(Exception):
    """The text is not strict YAML or JSON; carries the 1-based line and a full sentence.

    Attributes:
        line: 1-based line of the problem, when known.
        message: What is wrong, as a sentence.
        fix: How to fix it, when known.
    """

    def __init__(self, message: str, *, line: int | None, fix: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.fix = fix


def _line(mark: yaml.Mark | None) -> int | None:
    return None if mark is None else mark.line + 1


def _check_encodable(value: str, line: int | None) -> str:
    """Refuse text holding a lone surrogate (U+D800 to U+DFFF): an escape that is no character."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise StrictYamlError(
                f"the text on this line escapes the code point U+{ord(value[error.start]):04X}, "
                "half of a surrogate pair, which is not a character",
                line=line,
                fix="Write the character itself instead of the escape.",
            ) from None
    return value


class _StrictRules(Composer, SafeConstructor):
    """What both strict loaders refuse; they differ only in who scans and parses the text.

    Composition and construction stay in Python in both, so the nesting limit, the node tree
    and every refusal below are the same whichever parser produced the events.
    """

    def _refuse(self, node: yaml.Node, message: str, fix: str) -> NoReturn:
        raise StrictYamlError(message, line=_line(node.start_mark), fix=fix)

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        """Accept only the boolean spellings that YAML 1.2 shares with YAML 1.1."""
        if node.value in _PLAIN_BOOLEANS:
            return _PLAIN_BOOLEANS[node.value]
        self._refuse(
            node,
            f"the unquoted value {node.value!r} is a boolean in YAML 1.1 but text in YAML 1.2, "
            "so its meaning depends on the reader",
            f"Write '{node.value}' in quotes if you mean the text, or true/false if you mean "
            "a boolean.",
        )

    def construct_scalar(self, node: yaml.ScalarNode) -> Any:
        """Build a scalar's text, refusing escapes that make no character."""
        value = super().construct_scalar(node)
        return _check_encodable(value, _line(node.start_mark)) if isinstance(value, str) else value

    # Current nesting, nodes composed so far, and whether the document defines an anchor.
    _osop_depth = 0
    _osop_nodes = 0
    _osop_anchored = False

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose one node, refusing nesting deeper than :data:`MAX_NESTING_DEPTH`."""
        # Composition recurses once per level; counting here stops a deep document before the
        # Python stack runs out.
        depth = self._osop_depth + 1
        if depth > MAX_NESTING_DEPTH:
            raise StrictYamlError(
                f"the document nests lists and mappings more than {MAX_NESTING_DEPTH} levels deep",
                line=_line(self.peek_event().start_mark),
                fix="Flatten the structure; a workflow needs only a few levels.",
            )
        self._osop_depth = depth
        self._osop_nodes += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._osop_depth = depth - 1
        if depth == 1:
            # The composer forgets the anchors once the document is done; only with anchors
            # can aliases make the document larger or deeper than what was composed.
            self._osop_anchored = bool(self.anchors)
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """Accept decimal and hexadecimal integers; refuse octal, binary, base 60, underscores."""
        if _SAFE_INT.fullmatch(node.value):
            if len(node.value) > _MAX_NUMBER_DIGITS:
                self._refuse(
                    node,
                    f"the number on this line has {len(node.value)} digits, more than the "
                    f"{_MAX_NUMBER_DIGITS} a workflow value may have",
                    "Write a smaller number, or put the value in quotes if it is text.",
                )
            return int(node.value, 0) if "x" in node.value else int(node.value, 10)
        self._refuse_number(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        """Accept plain decimal floats, ``.inf`` and ``.nan``; refuse base 60 and underscores."""
        if _SAFE_FLOAT.fullmatch(node.value) or _SAFE_FLOAT_NAN.fullmatch(node.value):
            return super().construct_yaml_float(node)
        if len(node.value) > _MAX_NUMBER_DIGITS and ":" in node.value:
            # Reading a long base-60 number to quote it would itself hit Python's digit limit.
            self._refuse(
                node,
                f"the unquoted value on this line is a {len(node.value)}-character base-60 "
                "number in YAML 1.1",
                "Put the value in quotes if it is text.",
            )
        self._refuse_number(node)

    def _refuse_number(self, node: yaml.ScalarNode) -> NoReturn:
        value = node.value
        if ":" in value:
            reading = "a base-60 number"
            if node.tag == _INT_TAG and len(value) <= _MAX_NUMBER_DIGITS:
                reading = f"a base-60 number ({super().construct_yaml_int(node)})"
        elif "_" in value:
            reading = "a number with its underscores dropped"
        elif value.lstrip("+-").startswith("0b"):
            reading = "a binary number"
        elif len(value) <= _MAX_NUMBER_DIGITS:
            reading = f"an octal number ({super().construct_yaml_int(node)})"
        else:
            reading = "an octal number"
        self._refuse(
            node,
            f"the unquoted value {value!r} is read by YAML 1.1 as {reading}, "
            "not as the text or decimal number it looks like",
            f"Write '{value}' in quotes if you mean text, or the plain decimal number you mean.",
        )

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> NoReturn:
        """Refuse unquoted dates: YAML 1.1 turns them into date objects, not text."""
        self._refuse(
            node,
            f"the unquoted value {node.value!r} is read by YAML 1.1 as a date, not as text",
            f"Write '{node.value}' in quotes.",
        )

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build a mapping after checking that no key is written twice."""
        seen: dict[Any, int | None] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool | None):
                self._refuse(
                    key_node,
                    f"a mapping key must be text, got a {type(key).__name__}",
                    "Write the key as plain text.",
                )
            if key in seen:
                self._refuse(
                    key_node,
                    f"the key {key!r} is written twice in the same mapping (first on line "
                    f"{seen[key]}); YAML would silently keep only the last one",
                    "Remove or rename one of them.",
                )
            seen[key] = _line(key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


for _tag, _method in (
    (_BOOL_TAG, _StrictRules.construct_yaml_bool),
    (_INT_TAG, _StrictRules.construct_yaml_int),
    (_FLOAT_TAG, _StrictRules.construct_yaml_float),
    (_TIMESTAMP_TAG, _StrictRules.construct_yaml_timestamp),
):
    _StrictRules.add_constructor(_tag, _method)


class StrictSafeLoader(_StrictRules, yaml.SafeLoader):
    """A safe YAML loader that refuses what YAML 1.1 would silently reinterpret.

    Compared with :class:`yaml.SafeLoader` it rejects duplicate mapping keys, the YAML 1.1-only
    booleans (``yes``, ``NO``, ``on``...), base-60 numbers (``1:30``), leading-zero octals
    (``010``), binary and underscored numbers and unquoted timestamps. Each refusal is a
    :class:`StrictYamlError` naming the line and asking for quotes or a plain spelling.

    Everything, scanning included, runs in Python: this loader is the reference whose messages
    users read.
    """


_StrictCSafeLoader: type[_StrictRules] | None = None
"""The strict loader over libyaml, or ``None`` when PyYAML is built without it."""

if yaml.__with_libyaml__:

    class _StrictLibyamlLoader(_StrictRules, yaml.CSafeLoader):
        """The same rules over libyaml's scanner and parser, about five times faster.

        ``Composer`` precedes libyaml's parser in the method order, so composition (and with it
        the nesting limit) stays the Python one; libyaml only turns the text into events.
        """

        def __init__(self, stream: str) -> None:
            yaml.CSafeLoader.__init__(self, stream)
            Composer.__init__(self)

    _StrictCSafeLoader = _StrictLibyamlLoader


# Where libyaml and PyYAML's scanner read the same text differently: PyYAML refuses tabs in
# places libyaml takes them as spaces, the two count lines differently after a lone carriage
# return, libyaml skips a byte-order mark at the start of any line, reads the non-specific tag
# `!` differently and takes a comment straight after a block scalar's `|` or `>`. Texts that
# may hold one of these, or a Unicode line break, are left to the reference loader.
_LEFT_TO_PYTHON = re.compile(r"[\t\r\ufeff\x85\u2028\u2029]|(?:^|[\s\[{,])!|[|>][-+0-9]*#")


def _left_to_python(text: str) -> bool:
    """Whether libyaml might read ``text`` (CRLF already made LF) otherwise than PyYAML."""
    # Inside brackets PyYAML ends a plain scalar at any `?` (`[a?b]` is an error), libyaml
    # only at `? `; a URL with a query in a flow list is where users would meet it.
    return bool(_LEFT_TO_PYTHON.search(text)) or ("?" in text and ("[" in text or "{" in text))


def _expanded_shape(root: yaml.Node) -> tuple[int, int]:
    """The number of values and the nesting depth of a node tree once aliases are expanded.

    Iterative, and each node is measured once: aliases of aliases may stand for a tree far
    deeper and larger than the text, which is exactly what this measures before building it.
    """
    shapes: dict[int, tuple[int, int]] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in shapes and not children_done:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if not children_done:
            # A recursive alias meets its own node on the way down and counts once.
            shapes[key] = (1, 1)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in shapes)
            continue
        known = [shapes[id(child)] for child in children]
        shapes[key] = (
            1 + sum(size for size, _ in known),
            1 + max((depth for _, depth in known), default=0),
        )
    return shapes[id(root)]


def _record_lines(
    node: yaml.Node, data: Any, location: Location, lines: LineMap, seen: set[int]
) -> None:
    # An aliased subtree is mapped once, under its anchor; later uses fall back to the alias line.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode) and isinstance(data, dict):
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            if key not in data:
                continue
            child = (*location, key)
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, data[key], child, lines, seen)
    elif isinstance(node, yaml.SequenceNode) and isinstance(data, list):
        for index, (item_node, item) in enumerate(zip(node.value, data, strict=False)):
            child = (*location, index)
            lines[child] = item_node.start_mark.line + 1
            _record_lines(item_node, item, child, lines, seen)


def _scanner_message(error: yaml.MarkedYAMLError) -> tuple[str, str]:
    problem = error.problem or "the text is not valid YAML"
    if "'\\t'" in problem or "\t" in problem:
        return (
            "a tab character is used for indentation, but YAML allows only spaces there",
            "Replace the tabs with spaces.",
        )
    context = f" {error.context}" if error.context else ""
    if context and error.context_mark is not None and error.problem_mark is not None:
        if error.context_mark.line != error.problem_mark.line:
            context = f"{context} (line {error.context_mark.line + 1})"
            if "end of stream" in problem:
                context = f"{error.context.replace('while ', '')} that is never closed, "
                return (
                    f"the text is not valid YAML: {context}{problem} "
                    f"(line {error.problem_mark.line + 1})",
                    "Close the quote or bracket that starts on this line.",
                )
    return (
        f"the text is not valid YAML:{context} {problem}".replace(":  ", ": "),
        "Check the indentation, quotes and brackets around this line.",
    )


def load_yaml(text: str) -> tuple[Any, LineMap]:
    """Parse YAML text strictly.

    Args:
        text: The document.

    Returns:
        The data (``None`` for an empty document) and the line of every location in it.

    Raises:
        StrictYamlError: The text is broken YAML or uses a YAML 1.1-only form.
    """
    # Both scanners read a CRLF line break as one LF, in scalars and in line counts alike.
    fast_text = text.replace("\r\n", "\n")
    if _StrictCSafeLoader is not None and not _left_to_python(fast_text):
        try:
            data, lines = _compose_and_construct(_StrictCSafeLoader(fast_text), fast_text)
        except Exception:
            # libyaml words its errors its own way, and a text it refuses may hold a problem
            # the rules find first: the reference loader reads the text again and says what
            # users are told. Only a broken file pays for the second reading.
            pass
        else:
            # A workflow is a mapping. Other documents are refused at the line of their root,
            # which the two parsers place differently in an empty document.
            if isinstance(data, dict):
                return data, lines
    try:
        # The reader checks the characters as soon as it is made, so it belongs in the try.
        loader = StrictSafeLoader(text)
    except yaml.reader.ReaderError as error:
        raise _unreadable(text, error) from None
    return _compose_and_construct(loader, text)


def _compose_and_construct(loader: Any, text: str) -> tuple[Any, LineMap]:
    """Compose the single document, check its expanded size and depth, then build the data."""
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        if loader._osop_anchored:
            size, depth = _expanded_shape(node)
        else:
            # A tree without aliases: its size is what was composed, its depth was bounded
            # while composing.
            size, depth = loader._osop_nodes, 1
        if size > MAX_EXPANDED_NODES:
            raise StrictYamlError(
                f"the document expands to more than {MAX_EXPANDED_NODES} values through "
                "anchors and aliases",
                line=_line(node.start_mark),
                fix="Write the repeated parts out, or use fewer nested aliases.",
            )
        if depth > MAX_NESTING_DEPTH:
            raise StrictYamlError(
                f"the document nests lists and mappings more than {MAX_NESTING_DEPTH} levels "
                "deep once its aliases are expanded",
                line=_line(node.start_mark),
                fix="Write the repeated parts out, or use fewer nested aliases.",
            )
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as error:
        raise _unreadable(text, error) from None
    except yaml.MarkedYAMLError as error:
        message, fix = _scanner_message(error)
        mark = error.problem_mark or error.context_mark
        if error.context_mark is not None and "end of stream" in (error.problem or ""):
            # Something opened earlier never closes; its start is where the fix belongs.
            mark = error.context_mark
        raise StrictYamlError(message, line=_line(mark), fix=fix) from None
    except yaml.YAMLError as error:
        raise StrictYamlError(f"the text is not valid YAML: {error}", line=None) from None
    finally:
        loader.dispose()

    lines: LineMap = {(): node.start_mark.line + 1}
    _record_lines(node, data, (), lines, set())
    return data, lines


def _unreadable(text: str, error: yaml.reader.ReaderError) -> StrictYamlError:
    position = max(0, min(error.position, len(text)))
    # Text (not bytes) reaches the reader, so the culprit is always a code point.
    code = error.character if isinstance(error.character, int) else 0
    return StrictYamlError(
        f"the text holds the control character U+{code:04X}, which YAML does not allow; a "
        "workflow file is plain text",
        line=text.count("\n", 0, position) + 1,
        fix="Remove the character, or check that this is the intended file and not a binary one.",
    )


class _JsonReader:
    """A small JSON reader that keeps lines and refuses duplicate keys.

    The standard :mod:`json` module has already accepted the text when this runs, so the reader
    only needs to walk valid JSON; it reuses the standard string and number scanners.
    """

    _NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
    _SPACE = re.compile(r"[ \t\n\r]*")

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: LineMap = {}
        self._scan: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring

    def _scan_string(self, text: str, offset: int) -> tuple[str, int]:
        value, end = self._scan(text, offset)
        return _check_encodable(value, self.line_at(offset)), end

    def line_at(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def skip(self, offset: int) -> int:
        match = self._SPACE.match(self.text, offset)
        return offset if match is None else match.end()

    def value(self, offset: int, location: Location) -> tuple[Any, int]:
        offset = self.skip(offset)
        char = self.text[offset]
        if char in "{[" and len(location) >= MAX_NESTING_DEPTH:
            raise StrictYamlError(
                f"the document nests arrays and objects more than {MAX_NESTING_DEPTH} levels deep",
                line=self.line_at(offset),
                fix="Flatten the structure; a workflow needs only a few levels.",
            )
        if char == "{":
            return self.mapping(offset + 1, location)
        if char == "[":
            return self.sequence(offset + 1, location)
        if char == '"':
            return self._scan_string(self.text, offset + 1)
        for word, meaning in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, offset):
                return meaning, offset + len(word)
        match = self._NUMBER.match(self.text, offset)
        if match is None:
            raise StrictYamlError(
                f"the JSON value at offset {offset} is not a string, number, true, false or null",
                line=self.line_at(offset),
                fix="Write NaN and Infinity as strings.",
            )
        number = match.group()
        if len(number) > _MAX_NUMBER_DIGITS:
            raise StrictYamlError(
                f"the number at offset {offset} has {len(number)} characters, more than the "
                f"{_MAX_NUMBER_DIGITS} a workflow value may have",
                line=self.line_at(offset),
                fix="Write a smaller number, or put the value in quotes if it is text.",
            )
        is_float = match.group(2) is not None or match.group(3) is not None
        return (float(number) if is_float else int(number)), match.end()

    def mapping(self, offset: int, location: Location) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        offset = self.skip(offset)
        if self.text[offset] == "}":
            return result, offset + 1
        while True:
            offset = self.skip(offset)
            key_line = self.line_at(offset)
            key, offset = self._scan_string(self.text, offset + 1)
            child = (*location, key)
            if key in result:
                raise StrictYamlError(
                    f"the key {key!r} is written twice in the same object (first on line "
                    f"{self.lines[child]}); JSON readers would silently keep only the last one",
                    line=key_line,
                    fix="Remove or rename one of them.",
                )
            self.lines[child] = key_line
            offset = self.skip(offset) + 1  # the colon
            result[key], offset = self.value(offset, child)
            offset = self.skip(offset)
            if self.text[offset] == "}":
                return result, offset + 1
            offset += 1  # the comma

    def sequence(self, offset: int, location: Location) -> tuple[list[Any], int]:
        result: list[Any] = []
        offset = self.skip(offset)
        if self.text[offset] == "]":
            return result, offset + 1
        while True:
            offset = self.skip(offset)
            child = (*location, len(result))
            self.lines[child] = self.line_at(offset)
            item, offset = self.value(offset, child)
            result.append(item)
            offset = self.skip(offset)
            if self.text[offset] == "]":
                return result, offset + 1
            offset += 1  # the comma


class _NonStandardConstant(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in JSON text."""


def _refuse_constant(name: str) -> NoReturn:
    raise _NonStandardConstant(name)


def load_json(text: str) -> tuple[Any, LineMap]:
    """Parse JSON text strictly: no duplicate keys, no NaN or Infinity.

    Args:
        text: The document.

    Returns:
        The data (``None`` for an empty document) and the line of every location in it.

    Raises:
        StrictYamlError: The text is broken JSON or repeats a key.
    """
    if not text.strip():
        return None, {}
    try:
        json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise StrictYamlError(
            f"the text is not valid JSON: {error.msg} (column {error.colno})",
            line=error.lineno,
            fix="Check the commas, quotes and brackets around this line.",
        ) from None
    except _NonStandardConstant as error:
        raise StrictYamlError(
            f"the JSON text uses the non-standard constant {error.args[0]!r}",
            line=None,
            fix="Write it as a string.",
        ) from None
    except ValueError:
        # Python's own limit on the digits of an integer; the reader below names the line.
        pass
    except RecursionError:
        raise StrictYamlError(
            f"the document nests arrays and objects more than {MAX_NESTING_DEPTH} levels deep",
            line=None,
            fix="Flatten the structure; a workflow needs only a few levels.",
        ) from None

    reader = _JsonReader(text)
    start = reader.skip(0)
    data, _ = reader.value(start, ())
    reader.lines[()] = reader.line_at(start)
    return data, reader.lines
