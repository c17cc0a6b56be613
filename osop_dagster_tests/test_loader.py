import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from osop_dagster.constants import MAX_WORKFLOW_FILE_BYTES
from osop_dagster.errors import OsopSpecError
from osop_dagster.loader import load_workflow, load_workflow_folder, load_workflow_text
from osop_dagster_tests.conftest import REPO_ROOT

DATA = Path(__file__).parent / "data"

BASE = """\
osop_version: "2.0"
id: demo
name: Demo
nodes:
  - id: fetch
    type: api
    purpose: Fetch records
    outputs: [records]
  - id: store
    type: db
    purpose: Store records
    inputs: [records]
edges:
  - from: fetch
    to: store
"""


def _edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


def _problems_text(text: str, name: str = "bad.osop.yaml") -> str:
    with pytest.raises(OsopSpecError) as caught:
        load_workflow_text(text, path=name)
    return str(caught.value)


# (case, text, fragments the message must contain: file name and line are always checked)
INVALID_TEXTS: list[tuple[str, str, int | None, list[str]]] = [
    ("broken yaml", 'osop_version: "2.0\nid: x\n', 1, ["not valid YAML"]),
    ("duplicate key", _edit("name: Demo\n", "name: Demo\nid: again\n"), 4, ["'id'", "twice"]),
    ("NO boolean", _edit("name: Demo\n", "name: Demo\ntags: [SE, NO]\n"), 4, ["'NO'", "quotes"]),
    (
        "on boolean key",
        _edit("name: Demo\n", "name: Demo\nx-trigger:\n  on: push\n"),
        5,
        ["'on'", "true/false"],
    ),
    (
        "sexagesimal",
        _edit(
            "    purpose: Store records\n", "    purpose: Store records\n    timeout_sec: 1:30\n"
        ),
        12,
        ["'1:30'", "base-60", "(90)"],
    ),
    ("leading-zero octal", _edit("id: demo", "id: 010"), 2, ["'010'", "octal"]),
    (
        "tab indentation",
        _edit("  - id: fetch\n    type: api", "  - id: fetch\n\ttype: api"),
        6,
        ["tab", "spaces"],
    ),
    (
        "wrong type",
        _edit("purpose: Fetch records", "purpose: 42"),
        7,
        ["node 'fetch'", "'purpose' must be text", "got the number 42", "quotes"],
    ),
    (
        "missing required field",
        _edit("    purpose: Fetch records\n", ""),
        5,
        ["node 'fetch'", "no 'purpose'", "required"],
    ),
    (
        "unknown node type",
        _edit("type: api", "type: event"),
        6,
        ["node 'fetch'", "'type' must be one of", "'event'"],
    ),
    (
        "unknown edge mode",
        BASE + "    mode: dataflow\n",
        16,
        ["edge 1 (fetch -> store)", "'mode' must be one of", "'dataflow'"],
    ),
    (
        "edge to unknown node",
        _edit("    to: store", "    to: stor"),
        15,
        ["edge 1 (fetch -> stor)", "no node has that id", "did you mean 'store'"],
    ),
    (
        "cycle",
        BASE + "  - from: store\n    to: fetch\n",
        16,
        ["edge 2 (store -> fetch)", "fetch -> store -> fetch", "never finish"],
    ),
    (
        "unknown input",
        _edit("inputs: [records]", "inputs: [recods]"),
        12,
        ["node 'store'", "'recods'", "not an output of any node", "did you mean 'records'"],
    ),
    (
        "duplicate output",
        _edit("inputs: [records]", "inputs: [records]\n    outputs: [records]"),
        13,
        ["node 'store'", "'records' is also produced by node 'fetch'"],
    ),
    (
        "when and condition differ",
        BASE + "    when: a > 1\n    condition: a > 2\n",
        17,
        ["edge 1 (fetch -> store)", "two different conditions", "older spelling"],
    ),
    ("empty file", "# nothing here\n", None, ["the file is empty"]),
    ("not a mapping", "- one\n- two\n", 1, ["expected a mapping", "a list of 2 items"]),
    (
        "unknown top-level key",
        _edit("name: Demo", "name: Demo\nnodez: []"),
        4,
        ["unknown key 'nodez'", "did you mean 'nodes'", "'x-'"],
    ),
    ("bad version", _edit('osop_version: "2.0"', 'osop_version: "two"'), 1, ["'osop_version'"]),
    (
        "duplicate node id",
        _edit("  - id: store", "  - id: fetch"),
        9,
        ["node 2", "'fetch' is already used by node 1"],
    ),
    (
        "data cycle",
        _edit("outputs: [records]", "inputs: [done]\n    outputs: [records]").replace(
            "inputs: [records]", "inputs: [records]\n    outputs: [done]"
        ),
        None,
        ["depend on each other", "fetch -> store -> fetch"],
    ),
    (
        "negative timeout",
        _edit("purpose: Fetch records", "purpose: Fetch records\n    timeout_sec: -1"),
        8,
        ["node 'fetch'", "'timeout_sec' must be at least 0", "-1"],
    ),
    (
        "runtime field type",
        _edit("purpose: Fetch records", "purpose: Fetch records\n    runtime: {method: 5}"),
        8,
        ["node 'fetch'", "'runtime.method' must be text"],
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [case[1:] for case in INVALID_TEXTS],
    ids=[case[0] for case in INVALID_TEXTS],
)
def test_invalid_text_is_refused_with_located_message(
    text: str, line: int | None, fragments: list[str]
) -> None:
    message = _problems_text(text)

    assert "bad.osop.yaml" in message
    if line is not None:
        assert f"line {line}:" in message or f"line {line}," in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message


INVALID_FILES = [
    ("duplicate-key.osop.json", 7, ["'id'", "twice", "first on line 3"]),
    ("tab-indentation.osop.yaml", 5, ["tab"]),
    ("yaml11-boolean.osop.yml", 4, ["'NO'"]),
]


@pytest.mark.parametrize(("name", "line", "fragments"), INVALID_FILES)
def test_invalid_fixture_file_is_refused(name: str, line: int, fragments: list[str]) -> None:
    with pytest.raises(OsopSpecError) as caught:
        load_workflow(DATA / "invalid" / name)

    message = str(caught.value)
    assert name in message
    assert f"line {line}" in message
    for fragment in fragments:
        assert fragment in message


def test_several_problems_of_one_file_are_reported_together() -> None:
    text = _edit("type: api", "type: event").replace("type: db", "type: table")
    with pytest.raises(OsopSpecError) as caught:
        load_workflow_text(text, path="bad.osop.yaml")

    assert [problem.where for problem in caught.value.problems] == ["node 'fetch'", "node 'store'"]


def _official_verdict(shared: Path, path: Path) -> bool:
    schema = json.loads((shared / "osop-spec" / "osop.schema.json").read_text(encoding="utf-8"))
    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return Draft202012Validator(schema).is_valid(document)


# Parametrisation happens before fixtures exist, so the names come from where `shared_dir` looks.
CORPUS_NAMES = [
    *sorted(p.name for p in (REPO_ROOT.parent / "shared" / "osop-corpus").glob("*")),
    "rest-api-workflow.osop.yaml",
]


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_verdict_agrees_with_official_schema(shared_dir: Path, name: str) -> None:
    """Valid or not, the loader says what the official JSON Schema says about each corpus file."""
    folder = "workflows" if name == "rest-api-workflow.osop.yaml" else "osop-corpus"
    path = shared_dir / folder / name
    expected = _official_verdict(shared_dir, path)

    try:
        load_workflow(path)
        accepted, message = True, ""
    except OsopSpecError as error:
        accepted, message = False, str(error)

    assert accepted == expected, message
    if not accepted:
        assert name in message


def test_corpus_holds_every_file(shared_dir: Path) -> None:
    assert len(list((shared_dir / "osop-corpus").iterdir())) == len(CORPUS_NAMES) - 1 == 54


def test_seed_workflow_loads_into_typed_model(shared_dir: Path) -> None:
    workflow = load_workflow(shared_dir / "workflows" / "rest-api-workflow.osop.yaml")

    assert workflow.id == "rest-api-workflow"
    assert [node.id for node in workflow.nodes][:2] == ["authenticate", "get_records"]
    assert workflow.producers["access_token"] == "authenticate"
    assert workflow.node("batch_update").input_names == ("filtered_records", "access_token")
    assert workflow.node("batch_update").retry_policy.max_retries == 2  # type: ignore[union-attr]
    security = workflow.node("authenticate").security
    assert security is not None
    assert security.secret_ref == "SERVICE_CLIENT_CREDENTIALS"
    error_edge = workflow.edges[5]
    assert (error_edge.mode, error_edge.when) == ("error", "update_response.status == 401")
    assert workflow.node("get_records").runtime["method"] == "GET"
    assert workflow.line_of(("nodes", 1, "runtime", "method")) == 27
    assert workflow.line_of(("edges", 5, "when")) == 120


def test_line_of_falls_back_to_nearest_known_ancestor() -> None:
    workflow = load_workflow_text(BASE, path="demo.osop.yaml")

    assert workflow.line_of(("nodes", 1, "retry_policy", "strategy")) == 9
    assert workflow.line_of(()) == 1


def test_node_problem_is_located_in_file() -> None:
    workflow = load_workflow_text(BASE, path="demo.osop.yaml")

    problem = workflow.problem("store", ("inputs", 0), "bad input", fix="Do better.")

    assert str(problem) == "demo.osop.yaml, line 12, node 'store': bad input. Do better."


def test_extension_keys_are_kept_and_ignored() -> None:
    text = _edit("name: Demo", "name: Demo\nx-owner-team: data") + "    x-note: kept\n"
    text = text.replace("type: api", "type: api\n    x-color: red\n    anything: open")

    workflow = load_workflow_text(text, path="demo.osop.yaml")

    assert workflow.extensions == {"x-owner-team": "data"}
    assert workflow.edges[0].extensions == {"x-note": "kept"}
    assert workflow.nodes[0].extensions == {"x-color": "red", "anything": "open"}


def test_condition_is_read_as_when() -> None:
    workflow = load_workflow_text(BASE + "    condition: records.size() > 0\n", path="d.osop.yaml")

    assert workflow.edges[0].when == "records.size() > 0"
    assert workflow.edges[0].is_conditional


def test_same_when_and_condition_is_accepted() -> None:
    text = BASE + "    when: a > 1\n    condition: a > 1\n"

    assert load_workflow_text(text, path="d.osop.yaml").edges[0].when == "a > 1"


def test_json_workflow_loads_with_lines() -> None:
    workflow = load_workflow(DATA / "valid" / "two-steps.osop.json")

    assert workflow.id == "two-steps-json"
    assert workflow.edges[0].when == "records.size() > 0"
    assert workflow.extensions == {"x-team": {"slack": "#data"}}
    assert workflow.line_of(("nodes", 1)) == 8


def test_loop_closed_by_conditional_edge_is_accepted() -> None:
    text = BASE + "  - from: store\n    to: fetch\n    mode: conditional\n    when: again\n"

    assert len(load_workflow_text(text, path="d.osop.yaml").edges) == 2


def test_alternative_branches_may_share_an_output() -> None:
    text = _edit("inputs: [records]", "inputs: [records]\n    outputs: [records]")
    text = text.replace("    to: store\n", "    to: store\n    mode: fallback\n")

    workflow = load_workflow_text(text, path="d.osop.yaml")

    assert workflow.producers["records"] == "fetch"
    assert workflow.all_producers["records"] == ("fetch", "store")


def test_input_declared_as_variable_or_placeholder_is_accepted() -> None:
    text = _edit("inputs: [records]", "inputs: [records, region, day]")
    text = text.replace("name: Demo", "name: Demo\nvariables: {region: eu}")
    text = text.replace("type: db", "type: db\n    runtime: {table: 'audit_${day}'}")

    workflow = load_workflow_text(text, path="d.osop.yaml")

    assert workflow.node("store").input_names == ("records", "region", "day")


def test_agent_inputs_need_no_producer() -> None:
    text = _edit("type: db", "type: agent").replace("inputs: [records]", "inputs: [goal]")

    assert load_workflow_text(text, path="d.osop.yaml").node("store").type == "agent"


def test_models_are_frozen() -> None:
    workflow = load_workflow_text(BASE, path="d.osop.yaml")

    with pytest.raises(ValueError, match="frozen"):
        workflow.nodes[0].purpose = "changed"  # type: ignore[misc]


def test_fingerprint_changes_with_definition_only() -> None:
    first = load_workflow_text(BASE, path="a.osop.yaml").node("store")
    moved = load_workflow_text(BASE.replace("id: demo", "id: other"), path="b.osop.yaml")
    edited = load_workflow_text(BASE.replace("Store records", "Keep records"), path="c.osop.yaml")

    assert len(first.definition_fingerprint()) == 16
    assert first.definition_fingerprint() == moved.node("store").definition_fingerprint()
    assert first.definition_fingerprint() != edited.node("store").definition_fingerprint()


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.osop.yaml"
    path.write_text(BASE + "#" * MAX_WORKFLOW_FILE_BYTES, encoding="utf-8")

    with pytest.raises(OsopSpecError, match=r"huge\.osop\.yaml: .* more than the 1048576"):
        load_workflow(path)


def test_alias_bomb_is_refused() -> None:
    layers = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    layers += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    text = BASE.replace("name: Demo", "name: Demo\nx-bomb:\n  " + "\n  ".join(layers))

    assert "anchors and aliases" in _problems_text(text)


def test_missing_file_is_reported_without_traceback(tmp_path: Path) -> None:
    with pytest.raises(OsopSpecError, match=r"absent\.osop\.yaml: the file cannot be read"):
        load_workflow(tmp_path / "absent.osop.yaml")


def test_folder_loading_keeps_good_files_beside_a_bad_one(tmp_path: Path) -> None:
    (tmp_path / "a-good.osop.yaml").write_text(BASE, encoding="utf-8")
    (tmp_path / "b-bad.osop.yaml").write_text("id: [", encoding="utf-8")
    (tmp_path / "c-same-id.osop.yml").write_text(BASE, encoding="utf-8")
    (tmp_path / "d-other.osop.json").write_text(
        (DATA / "valid" / "two-steps.osop.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (tmp_path / "notes.yaml").write_text("not: a workflow", encoding="utf-8")

    workflows, errors = load_workflow_folder(tmp_path)

    assert [Path(w.source_path).name for w in workflows] == [
        "a-good.osop.yaml",
        "d-other.osop.json",
    ]
    assert [Path(e.path).name for e in errors] == ["b-bad.osop.yaml", "c-same-id.osop.yml"]
    assert "'demo' is already used by" in str(errors[1])
    assert "line 2" in str(errors[1])


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OsopSpecError, match="folder cannot be read"):
        load_workflow_folder(tmp_path / "nowhere")
