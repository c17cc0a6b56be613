"""libyaml reads workflow text for speed; whatever it reads, the result is the reference one.

The reference is :class:`~osop_dagster._strict_yaml.StrictSafeLoader`, PyYAML's pure-Python
scanner and parser. These tests compare :func:`load_yaml` with it: the same data (types
included), the same lines, or the same error with the same line and fix.
"""

import glob
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from osop_dagster import _strict_yaml
from osop_dagster._strict_yaml import StrictYamlError, load_yaml
from osop_dagster_tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(
    _strict_yaml._StrictCSafeLoader is None, reason="PyYAML is built without libyaml"
)

COMMON = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROJECT_FILES = sorted(
    Path(name)
    for pattern in ("workflows/*.y*ml", "osop_dagster_tests/data/*/*.y*ml")
    for name in glob.glob(str(REPO_ROOT / pattern))
)

# Pieces of YAML that stress the scanner: indicators, quoting, escapes, comments, anchors,
# YAML 1.1 spellings, line ends, and the characters the two scanners treat differently.
PIECES = [
    *("a", "b c", "key", "k1", "'q'", '"d"', "''", "1", "010", "0x1F", "1.5", "1:30"),
    *("true", "yes", "null", "~", ".inf", "-.nan", "2001-01-01", "é", "\u00a0", "😀"),
    *(":", ": ", " ", "  ", "\n", "\n  ", "\n- ", "- ", "-", "? ", "?", ",", "[", "]", "{", "}"),
    *("#", " # c", "\n# c\n", "&x ", "*x", "!", "!!str ", "|", ">", "|-", ">+", "|#", "<<: "),
    *('"\\n"', '"\\x41"', '"\\u00e9"', '"\\/"', '"\\N"', '"\\_"', '"a\\\n b"', "'it''s'"),
    *("%YAML 1.1\n", "---\n", "...\n", "\t", "\r\n", "\r", "\ufeff", "\x85", "\u2028", "@"),
    *("http://x/y?z=1&w", "a?b", "a#b", "a:b", "-a", ":a", "--", "`"),
]

# The texts on which libyaml and PyYAML's scanner were found to disagree; each must come out as
# the reference reads it.
DIVERGENT = [
    pytest.param("key: a\tb\n", id="tab-in-plain-scalar"),
    pytest.param("key: [a\t, b]\n", id="tab-in-flow"),
    pytest.param("a: 1\rb: 2\n", id="lone-carriage-return"),
    pytest.param("\r---\n#\n", id="empty-document-after-cr"),
    pytest.param("---\n# nothing\n", id="empty-explicit-document"),
    pytest.param("a: 1\n\ufeffb: 2\n", id="byte-order-mark-at-line-start"),
    pytest.param("a: 1\x85b: 2\n", id="next-line-break"),
    pytest.param("a: !\n", id="non-specific-tag"),
    pytest.param("- !\n", id="non-specific-tag-in-list"),
    pytest.param("a: |#\n  text\n", id="comment-after-block-indicator"),
    pytest.param("a: >#\n  text\n", id="comment-after-folded-indicator"),
    pytest.param("k: [http://x/y?z=1&w]\n", id="query-in-flow-list"),
    pytest.param("k: {a?b: c}\n", id="question-mark-in-flow-mapping"),
    pytest.param("k: {a\n  ? b}\n", id="explicit-key-inside-flow-scalar"),
]


def _reference(text: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(_strict_yaml, "_StrictCSafeLoader", None)
        return _outcome(text)


def _outcome(text: str) -> Any:
    try:
        data, lines = load_yaml(text)
    except StrictYamlError as error:
        return ("error", error.message, error.line, error.fix)
    return ("data", _typed(data), lines)


def _typed(value: Any, depth: int = 0) -> Any:
    # `1 == 1.0 == True` in Python; the type is part of what must match. Aliases may make a
    # structure recursive, so the comparison stops well below any real nesting.
    if depth > 80:
        return "..."
    if isinstance(value, dict):
        return [(_typed(key, depth + 1), _typed(item, depth + 1)) for key, item in value.items()]
    if isinstance(value, list):
        return [_typed(item, depth + 1) for item in value]
    return (type(value).__name__, repr(value))


def _assert_same_as_reference(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _outcome(text) == _reference(text, monkeypatch)


@pytest.mark.parametrize("path", PROJECT_FILES, ids=lambda path: path.name)
def test_project_files_read_as_the_reference_reads_them(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    _assert_same_as_reference(text, monkeypatch)


def test_project_files_include_valid_and_invalid_ones() -> None:
    assert {path.parent.name for path in PROJECT_FILES} >= {"workflows", "invalid"}


@pytest.mark.parametrize("text", DIVERGENT)
def test_texts_libyaml_reads_differently_come_out_as_the_reference(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _assert_same_as_reference(text, monkeypatch)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_plain_workflow_is_read_by_libyaml(newline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is the one taken for ordinary files, with either line end."""
    text = (REPO_ROOT / "workflows" / "rest-api-workflow.osop.yaml").read_text(encoding="utf-8")
    text = text.replace("\r\n", "\n").replace("\n", newline)
    expected = _reference(text, monkeypatch)

    def refuse(_text: str) -> None:
        raise AssertionError("the reference loader was used")

    monkeypatch.setattr(_strict_yaml, "StrictSafeLoader", refuse)
    assert _outcome(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a: [1, 2, 3]\nb: {c: d, e: f}\n",
        "a: &x [1, 2, 3]\nb: *x\nc: *x\n",
        "a: &x {k: [1, 2]}\nb: [*x, *x]\n",
    ],
    ids=["without-anchors", "aliased-list", "aliased-mapping"],
)
def test_the_expanded_size_limit_counts_every_value(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without anchors the composed nodes are counted; with them, the expanded tree is."""
    monkeypatch.setattr(_strict_yaml, "MAX_EXPANDED_NODES", 8)
    outcome = _outcome(text)
    assert outcome == _reference(text, monkeypatch)
    assert outcome[0] == "error"
    assert "expands to more than 8 values" in outcome[1]


@settings(COMMON, max_examples=1500)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=30).map("".join))
def test_generated_texts_read_as_the_reference_reads_them(text: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _assert_same_as_reference(text, monkeypatch)
