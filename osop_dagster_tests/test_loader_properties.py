"""Thousands of generated documents: loading and compiling fail only with OsopSpecError.

Each strategy starts from something a user could write (the example workflow, a two-node
workflow, YAML fragments) and breaks it: random text and bytes, line edits, and mutations of the
parsed document (values replaced, keys dropped or added, items duplicated). Whatever comes out,
:func:`load_workflow_text` / :func:`load_workflow` and then :func:`build_osop_assets` either
succeed or raise :class:`OsopSpecError` whose every problem names the file.

The runs are derandomized (the same examples every time, so CI cannot flake) and bounded by
``max_examples``; the whole module takes well under 30 seconds.
"""

import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from osop_dagster.compiler import build_osop_assets
from osop_dagster.constants import RUNTIME_SCHEMA_KEYS
from osop_dagster.errors import OsopSpecError
from osop_dagster.loader import load_workflow, load_workflow_text
from osop_dagster.model import EDGE_MODES, NODE_TYPES, OsopEdge, OsopNode, OsopWorkflow
from osop_dagster_tests.conftest import REPO_ROOT

SEED_TEXT = (REPO_ROOT / "workflows" / "rest-api-workflow.osop.yaml").read_text(encoding="utf-8")
SEED = yaml.safe_load(SEED_TEXT)

SMALL_TEXT = """\
osop_version: "2.0"
id: small
name: Small
nodes:
  - id: fetch
    type: api
    purpose: Fetch records
    runtime: {url: "https://api.example.test", endpoint: /records, method: GET}
    outputs: [records]
    retry_policy: {max_retries: 2, backoff_sec: 1}
  - id: keep
    type: cli
    purpose: Keep some
    runtime: {command: "jq '[.[] | select(.ok)]'"}
    inputs: [records]
    outputs: [kept]
  - id: store
    type: db
    purpose: Store records
    runtime: {engine: postgres, table: audit}
    inputs: [kept]
    outputs: [audit_id]
edges:
  - {from: fetch, to: keep}
  - {from: keep, to: store, mode: conditional, when: "kept.size() > 0"}
  - {from: store, to: fetch, mode: error, when: "error.status == 500"}
"""
SMALL = yaml.safe_load(SMALL_TEXT)

COMMON = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Words a user plausibly writes, so mutations reach deep rules instead of failing on spelling.
KEYS = sorted(
    {
        *OsopWorkflow.osop_keys(),
        *OsopNode.osop_keys(),
        *OsopEdge.osop_keys(),
        *RUNTIME_SCHEMA_KEYS,
        "pagination",
        "batch",
        "query",
        "body",
        "form",
        "expect_status",
        "output",
        "token",
        "input",
        "output_format",
        "max_retries",
        "backoff_sec",
        "strategy",
        "auth",
        "secret_ref",
        "x-extra",
    }
)
WORDS = [
    *NODE_TYPES,
    *EDGE_MODES,
    "GET",
    "PATCH",
    "FETCH",
    "postgres",
    "oauth2",
    "bearer_token",
    "fetch",
    "keep",
    "store",
    "records",
    "kept",
    "audit_id",
    "access_token",
    "authenticate",
    "jq '.[]'",
    "jq '[.[] | select(.status == \"pending\")]'",
    "jq '.['",
    "rm -rf /",
    "kept.size() > 0",
    "update_response.status == 401",
    "records.size( >",
    "${records.0.id}",
    "${ not a path }",
    "https://api.example.test",
    "postgresql://user:pw@db/x",
    "0 6 * * *",
    "not a cron",
    "exponential_backoff",
    "",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
YAML_PIECES = [
    "osop_version: ",
    '"2.0"',
    "id: ",
    "name: ",
    "nodes:",
    "edges:",
    "  - ",
    "    ",
    "\t",
    "from: ",
    "to: ",
    "mode: ",
    "type: api",
    "runtime: {",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "<<: *a",
    "!!python/object:os.system",
    "!!binary",
    "? ",
    ": ",
    "---",
    "...",
    "%YAML 1.1",
    "yes",
    "NO",
    "1:30",
    "010",
    "0b11",
    "1_000",
    "2024-01-01",
    '"\\ud800"',
    "'",
    '"',
    "#",
    "|",
    ">",
    "\n",
    "\r\n",
    "\x00",
    "\x85",
    "\ufeff",
    "é",
]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder for generated files, shared by the examples of one module."""
    with tempfile.TemporaryDirectory(prefix="osop_props_") as folder:
        yield Path(folder)


def _outcome_is_clean(error: OsopSpecError, path: str) -> None:
    for problem in error.problems:
        assert problem.path == path
        text = str(problem)
        assert text.startswith(path), text
        assert "Traceback" not in text
        assert text.endswith("."), text


def _load_and_compile(text: str, path: str) -> None:
    """The property: a workflow, or an OsopSpecError naming the file; nothing else escapes."""
    try:
        workflow = load_workflow_text(text, path=path)
    except OsopSpecError as error:
        _outcome_is_clean(error, path)
        return
    try:
        build_osop_assets(workflow)
    except OsopSpecError as error:
        _outcome_is_clean(error, path)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """A copy of ``base`` with a few random edits at random places."""
    document: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        parent, key = None, None
        current = document
        # Walk down a random path, then edit where the walk stopped.
        for _ in range(draw(st.integers(min_value=0, max_value=5))):
            if isinstance(current, dict) and current:
                key = draw(st.sampled_from(sorted(current, key=str)))
            elif isinstance(current, list) and current:
                key = draw(st.integers(min_value=0, max_value=len(current) - 1))
            else:
                break
            parent, current = current, current[key]
        action = draw(st.sampled_from(["replace", "delete", "add", "duplicate", "word"]))
        if parent is None:
            if action == "replace":
                document = draw(VALUES)
            continue
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "word":
            parent[key] = draw(st.sampled_from(WORDS))
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(VALUES)
        elif action == "add" and isinstance(parent, list):
            parent.insert(key, draw(VALUES))
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    return document


def _dump(document: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(document, ensure_ascii=False)
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


@settings(COMMON, max_examples=600)
@given(document=mutated(SMALL), as_json=st.booleans())
def test_mutated_small_workflow_loads_or_fails_with_a_spec_error(
    document: Any, as_json: bool
) -> None:
    path = "mutated.osop.json" if as_json else "mutated.osop.yaml"
    _load_and_compile(_dump(document, as_json), path)


@settings(COMMON, max_examples=150)
@given(document=mutated(SEED))
def test_mutated_seed_workflow_loads_or_fails_with_a_spec_error(document: Any) -> None:
    _load_and_compile(_dump(document, as_json=False), "seed.osop.yaml")


@settings(COMMON, max_examples=500)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["drop", "double", "swap", "insert", "indent", "piece"]),
            st.integers(min_value=0, max_value=10**6),
            st.sampled_from(YAML_PIECES) | st.text(max_size=6),
        ),
        min_size=1,
        max_size=5,
    ),
    seed=st.sampled_from([SMALL_TEXT, SEED_TEXT]),
)
def test_edited_yaml_lines_load_or_fail_with_a_spec_error(
    edits: list[tuple[str, int, str]], seed: str
) -> None:
    lines = seed.splitlines(keepends=True)
    for action, position, piece in edits:
        index = position % len(lines)
        if action == "drop" and len(lines) > 1:
            del lines[index]
        elif action == "double":
            lines.insert(index, lines[index])
        elif action == "swap":
            other = (index + 1) % len(lines)
            lines[index], lines[other] = lines[other], lines[index]
        elif action == "insert":
            lines.insert(index, piece + "\n")
        elif action == "indent":
            lines[index] = " " * (position % 5) + lines[index]
        else:
            line = lines[index]
            cut = position % (len(line) + 1)
            lines[index] = line[:cut] + piece + line[cut:]
    _load_and_compile("".join(lines), "edited.osop.yaml")


@settings(COMMON, max_examples=600)
@given(
    text=st.text(max_size=300)
    | st.lists(st.sampled_from(YAML_PIECES) | st.text(max_size=5), max_size=40).map("".join),
    suffix=st.sampled_from([".osop.yaml", ".osop.json"]),
)
def test_random_text_loads_or_fails_with_a_spec_error(text: str, suffix: str) -> None:
    _load_and_compile(text, f"random{suffix}")


@settings(COMMON, max_examples=300)
@given(
    data=st.binary(max_size=400)
    | st.builds(
        lambda head, tail: head + tail,
        st.sampled_from([SMALL_TEXT.encode(), b"\xef\xbb\xbf", b"\xff\xfe", b"{", b""]),
        st.binary(max_size=60),
    ),
    suffix=st.sampled_from([".osop.yaml", ".osop.json"]),
)
def test_random_bytes_in_a_file_load_or_fail_with_a_spec_error(
    scratch: Path, data: bytes, suffix: str
) -> None:
    path = scratch / f"bytes{suffix}"
    path.write_bytes(data)
    try:
        workflow = load_workflow(path)
    except OsopSpecError as error:
        _outcome_is_clean(error, str(path))
        return
    try:
        build_osop_assets(workflow)
    except OsopSpecError as error:
        _outcome_is_clean(error, str(path))


def test_mutation_strategy_keeps_some_documents_valid() -> None:
    """The mutations are not all fatal: unedited documents load and compile."""
    for text in (SMALL_TEXT, SEED_TEXT, _dump(SMALL, as_json=True)):
        path = "valid.osop.json" if text.startswith("{") else "valid.osop.yaml"
        assert build_osop_assets(load_workflow_text(text, path=path)).job is not None
