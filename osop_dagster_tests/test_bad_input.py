"""Every broken workflow file gets a located message, through each of the three doors.

The doors are the ``osop-dagster validate`` command, the Python API (:func:`load_workflow` then
:func:`build_osop_assets`) and the code location (:func:`build_osop_definitions` on a folder that
also holds the example workflow). The files live in ``data/invalid``; the invalid files of the
shared OSOP corpus (by the official JSON Schema's verdict) go through the same doors.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from jsonschema import Draft202012Validator

from osop_dagster import build_osop_definitions, constants
from osop_dagster.cli import main
from osop_dagster.compiler import build_osop_assets
from osop_dagster.definitions import INVALID_GROUP
from osop_dagster.errors import OsopSpecError
from osop_dagster.loader import load_workflow
from osop_dagster_tests.conftest import REPO_ROOT

INVALID = Path(__file__).parent / "data" / "invalid"
SEED = REPO_ROOT / "workflows" / "rest-api-workflow.osop.yaml"
OVERSIZED = "oversized.osop.yaml"

# (file, line of the problem or None, fragments the message must hold besides file and line)
CASES: list[tuple[str, int | None, list[str]]] = [
    # Broken YAML and JSON.
    ("unclosed-quote.osop.yaml", 33, ["not valid YAML", "quotes and brackets"]),
    ("unclosed-flow-list.osop.yaml", 24, ["flow sequence (line 23)", "expected ',' or ']'"]),
    ("bad-indentation.osop.yaml", 18, ["not valid YAML", "indentation"]),
    ("two-documents.osop.yaml", 57, ["single document", "another document"]),
    ("python-tag.osop.yaml", 3, ["python/object/apply:os.system", "not valid YAML"]),
    ("not-json.osop.json", 3, ["not valid JSON", "Expecting ',' delimiter", "commas"]),
    ("json-nan.osop.json", None, ["non-standard constant 'NaN'", "Write it as a string"]),
    ("duplicate-key.osop.json", 7, ["'id'", "twice", "first on line 3"]),
    # Keys written twice.
    ("duplicate-top-key.osop.yaml", 4, ["'name'", "twice", "first on line 3", "Remove or rename"]),
    ("duplicate-node-key.osop.yaml", 32, ["'purpose'", "twice", "first on line 31"]),
    ("duplicate-runtime-key.osop.yaml", 22, ["'endpoint'", "twice", "first on line 21"]),
    # YAML 1.1 readings.
    ("yaml11-boolean.osop.yml", 4, ["'NO'", "YAML 1.1", "quotes"]),
    ("yaml11-yes.osop.yaml", 30, ["'yes'", "boolean in YAML 1.1", "true/false"]),
    ("yaml11-off.osop.yaml", 4, ["'off'", "boolean in YAML 1.1"]),
    ("yaml11-on-key.osop.yaml", 5, ["'on'", "boolean in YAML 1.1"]),
    ("sexagesimal-timeout.osop.yaml", 36, ["'1:30'", "base-60 number (90)", "quotes"]),
    ("octal-backoff.osop.yaml", 28, ["'010'", "octal number (8)"]),
    ("underscore-number.osop.yaml", 27, ["'1_0'", "underscores dropped"]),
    ("unquoted-date.osop.yaml", 4, ["'2024-01-31'", "as a date", "in quotes"]),
    ("tab-indentation.osop.yaml", 5, ["tab character", "Replace the tabs with spaces"]),
    ("tab-in-node.osop.yaml", 38, ["tab character", "Replace the tabs with spaces"]),
    # Documents too big, too deep or too strange to read.
    ("alias-bomb.osop.yaml", 1, ["more than 200000 values", "anchors and aliases"]),
    ("deep-nesting.osop.yaml", 4, ["more than 64 levels deep", "Flatten"]),
    ("huge-number.osop.yaml", 27, ["5000 digits", "more than the 100"]),
    (OVERSIZED, None, ["more than the 1048576 a workflow file may hold", "Split the workflow"]),
    # Not a workflow at all.
    ("empty.osop.yaml", None, ["the file is empty", "'osop_version', 'id', 'name'"]),
    ("only-comments.osop.yml", None, ["the file is empty", "Write the workflow"]),
    ("null-document.osop.yaml", None, ["the file is empty"]),
    ("not-a-mapping.osop.yaml", 1, ["expected a mapping", "got a list of 2 items"]),
    ("scalar.osop.yaml", 1, ["expected a mapping", "got the text 'just some words'"]),
    ("json-array.osop.json", 1, ["expected a mapping", "got a list of 3 items"]),
    ("binary.osop.yaml", 2, ["not UTF-8 text", "byte 0x80", "Save the file as UTF-8"]),
    ("latin1.osop.yaml", 3, ["not UTF-8 text", "byte 0xfc", "Save the file as UTF-8"]),
    ("utf16.osop.yaml", 1, ["not UTF-8 text", "byte 0xff"]),
    ("nul-byte.osop.yaml", 3, ["control character U+0000", "binary"]),
    # Wrong types and missing fields.
    ("purpose-number.osop.yaml", 18, ["node 'fetch'", "'purpose' must be text", "42", "quotes"]),
    ("id-list.osop.yaml", 2, ["'id' must be text", "got a list of 1 items"]),
    ("version-number.osop.yaml", 1, ["'osop_version' must be text", "2.0", "quotes"]),
    ("nodes-mapping.osop.yaml", 4, ["'nodes' must be a list", "got a mapping"]),
    ("edges-empty.osop.yaml", 44, ["'edges' must list at least 1 item"]),
    ("inputs-string.osop.yaml", 42, ["node 'audit'", "'inputs' must be a list", "'open_orders'"]),
    ("timeout-text.osop.yaml", 36, ["node 'pick'", "'timeout_sec' must be a number", "'30'"]),
    ("missing-version.osop.yaml", 1, ["no 'osop_version'", "required", "Add 'osop_version: ...'"]),
    ("missing-purpose.osop.yaml", 29, ["node 'pick'", "no 'purpose'", "Add 'purpose: ...'"]),
    ("missing-node-type.osop.yaml", 36, ["node 'audit'", "no 'type'", "required"]),
    ("missing-edge-to.osop.yaml", 47, ["edge 2", "no 'to'", "required"]),
    ("empty-node-id.osop.yaml", 36, ["node ''", "'id' must not be empty"]),
    ("unknown-top-key.osop.yaml", 4, ["unknown key 'nodez'", "did you mean 'nodes'", "'x-'"]),
    ("unknown-edge-key.osop.yaml", 47, ["edge 1 (login -> fetch)", "'mdoe'", "'mode'"]),
    (
        "unknown-retry-key.osop.yaml",
        28,
        ["node 'fetch'", "'backoff'", "did you mean 'backoff_sec'"],
    ),
    # Closed vocabularies.
    ("unknown-node-type.osop.yaml", 30, ["node 'pick'", "'type' must be one of", "'shell'"]),
    (
        "unknown-edge-mode.osop.yaml",
        51,
        ["edge 3 (pick -> audit)", "'mode' must be one", "'maybe'"],
    ),
    ("unknown-retry-strategy.osop.yaml", 29, ["'retry_policy.strategy'", "'linear'"]),
    # The graph.
    ("edge-to-unknown-node.osop.yaml", 48, ["edge 2 (fetch -> pik)", "did you mean 'pick'"]),
    ("edge-from-unknown-node.osop.yaml", 45, ["edge 1 (logn -> fetch)", "did you mean 'login'"]),
    ("switch-case-unknown-node.osop.yaml", 61, ["edge 5 (pick -> audit)", "'review'"]),
    ("duplicate-node-id.osop.yaml", 36, ["node 4", "'pick' is already used by node 3 (line 29)"]),
    ("sequential-cycle.osop.yaml", 57, ["edge 5 (pick -> fetch)", "fetch -> pick -> fetch"]),
    ("self-loop-sequential.osop.yaml", 57, ["edge 5 (pick -> pick)", "never finish", "'when'"]),
    ("unknown-input.osop.yaml", 42, ["node 'audit'", "'open_order'", "did you mean 'open_orders'"]),
    ("duplicate-output.osop.yaml", 35, ["node 'pick'", "'orders' is also produced by node"]),
    ("data-cycle.osop.yaml", 22, ["fetch -> pick -> audit -> fetch", "depend on each other"]),
    ("when-and-condition-differ.osop.yaml", 53, ["edge 3 (pick -> audit)", "older spelling"]),
    # Conditions that CEL cannot compile (edges between runnable nodes).
    ("cel-syntax-error.osop.yaml", 52, ["edge 3 (pick -> audit)", "not valid CEL", "Write it"]),
    ("cel-python-syntax.osop.yaml", 56, ["edge 4 (fetch -> login)", "not valid CEL", "'and'"]),
    ("cel-unclosed-string.osop.yaml", 56, ["edge 4 (fetch -> login)", "not valid CEL"]),
    # The runtime vocabulary of runnable nodes.
    ("unknown-http-method.osop.yaml", 22, ["node 'fetch'", "runtime.method", "'FETCH'", "'GET'"]),
    ("misspelled-runtime-key.osop.yaml", 21, ["node 'fetch'", "runtime.endpont"]),
    ("runtime-method-number.osop.yaml", 22, ["node 'fetch'", "'runtime.method' must be text"]),
    ("bad-template.osop.yaml", 21, ["node 'fetch'", "runtime.endpoint", "not a dotted path"]),
    ("expect-status-out-of-range.osop.yaml", 22, ["node 'fetch'", "999", "100 to 599"]),
    ("pagination-on-post.osop.yaml", 8, ["node 'login'", "pagination applies to GET"]),
    ("page-size-zero.osop.yaml", 22, ["node 'fetch'", "page_size", "greater than 0"]),
    ("jq-filter-broken.osop.yaml", 33, ["node 'pick'", "does not compile", "syntax error"]),
    ("jq-unsupported-option.osop.yaml", 33, ["node 'pick'", "'--seq' is not supported"]),
    ("command-unclosed-quote.osop.yaml", 33, ["node 'pick'", "No closing quotation"]),
    ("cli-timeout-zero.osop.yaml", 34, ["node 'pick'", "runtime.timeout_sec", "greater than 0"]),
    ("db-password-in-connection.osop.yaml", 42, ["node 'audit'", "carries a password", "***"]),
    ("db-table-injection.osop.yaml", 41, ["node 'audit'", "'audit; DROP TABLE users'"]),
    ("cron-not-cron.osop.yaml", 6, ["trigger 1", "'every morning'", "cron"]),
    # Limits on runnable nodes: nothing may hold a run for ever.
    ("negative-timeout.osop.yaml", 29, ["node 'fetch'", "'timeout_sec' must be at least 0", "-5"]),
    ("zero-timeout.osop.yaml", 29, ["node 'fetch'", "timeout_sec is 0", "above 0", "e.g."]),
    ("infinite-timeout.osop.yaml", 29, ["node 'fetch'", "timeout_sec is inf", "at most 86400"]),
    ("nan-backoff.osop.yaml", 28, ["node 'fetch'", "'retry_policy.backoff_sec'", ".nan"]),
    ("retry-forever.osop.yaml", 27, ["node 'fetch'", "1000000", "from 0 to 10", "at most 10"]),
    ("retry-fraction.osop.yaml", 27, ["node 'fetch'", "max_retries is 1.5", "whole number"]),
    ("backoff-a-day.osop.yaml", 28, ["node 'fetch'", "backoff_sec is 86400", "at most 300"]),
    ("negative-retries.osop.yaml", 27, ["node 'fetch'", "'retry_policy.max_retries'", "-1"]),
]

# Secrets a broken file holds must not come back in its message.
NEVER_SHOWN = {"db-password-in-connection.osop.yaml": "hunter2"}


def _official_verdict(shared: Path, path: Path) -> bool:
    schema = json.loads((shared / "osop-spec" / "osop.schema.json").read_text(encoding="utf-8"))
    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return Draft202012Validator(schema).is_valid(document)


@pytest.fixture
def bad_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The case's file, alone in a folder of its own; the oversized one is written here."""
    name: str = request.param
    folder = tmp_path / "bad"
    folder.mkdir()
    if name == OVERSIZED:
        text = (INVALID / "yaml11-yes.osop.yaml").read_text(encoding="utf-8")
        (folder / name).write_text(text + "# padding\n" * 110_000, encoding="utf-8")
    else:
        shutil.copy(INVALID / name, folder / name)
    return folder / name


def _check_message(text: str, path: Path, line: int | None, fragments: list[str]) -> None:
    location = f"{path}, line {line}" if line is not None else f"{path}:"
    assert location in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} is missing from:\n{text}"
    assert "Traceback" not in text
    secret = NEVER_SHOWN.get(path.name)
    assert secret is None or secret not in text


def _api_error(path: Path) -> OsopSpecError:
    with pytest.raises(OsopSpecError) as caught:
        build_osop_assets(load_workflow(path))
    return caught.value


def _ids(cases: list[tuple[str, int | None, list[str]]]) -> list[str]:
    return [case[0] for case in cases]


def test_the_corpus_is_large_and_every_file_has_a_case() -> None:
    listed = {case[0] for case in CASES}

    assert len(CASES) >= 60
    assert len(listed) == len(CASES)
    assert {path.name for path in INVALID.iterdir()} == listed - {OVERSIZED}


@pytest.mark.parametrize(
    ("bad_file", "line", "fragments"),
    [(name, line, fragments) for name, line, fragments in CASES],
    ids=_ids(CASES),
    indirect=["bad_file"],
)
def test_python_api_raises_a_located_spec_error(
    bad_file: Path, line: int | None, fragments: list[str]
) -> None:
    error = _api_error(bad_file)

    _check_message(str(error), bad_file, line, fragments)
    assert error.path == str(bad_file)
    assert all(str(problem).endswith(".") for problem in error.problems)


@pytest.mark.parametrize(
    ("bad_file", "line", "fragments"),
    [(name, line, fragments) for name, line, fragments in CASES],
    ids=_ids(CASES),
    indirect=["bad_file"],
)
def test_validate_command_prints_the_located_problem_and_exits_one(
    bad_file: Path, line: int | None, fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["validate", str(bad_file)])

    captured = capsys.readouterr()
    assert status == 1
    _check_message(captured.out + captured.err, bad_file, line, fragments)


@pytest.mark.parametrize(
    ("bad_file", "line", "fragments"),
    [(name, line, fragments) for name, line, fragments in CASES],
    ids=_ids(CASES),
    indirect=["bad_file"],
)
def test_code_location_keeps_the_seed_and_describes_the_broken_file(
    bad_file: Path, line: int | None, fragments: list[str]
) -> None:
    shutil.copy(SEED, bad_file.parent)

    defs = build_osop_definitions(bad_file.parent)

    keys = defs.resolve_all_asset_keys()
    assert dg.AssetKey(["rest-api-workflow", "records_list"]) in keys
    assert defs.resolve_job_def("rest_api_workflow_job") is not None
    placeholders = [s for s in defs.resolve_all_asset_specs() if s.group_name == INVALID_GROUP]
    assert [spec.metadata[constants.META_SOURCE_FILE] for spec in placeholders] == [str(bad_file)]
    assert placeholders[0].key.path[0] == "osop_invalid"
    _check_message(placeholders[0].description or "", bad_file, line, fragments)


def _corpus_invalid(shared: Path) -> list[Path]:
    return [
        path
        for path in sorted((shared / "osop-corpus").iterdir())
        if not _official_verdict(shared, path)
    ]


def test_invalid_files_of_the_shared_corpus_fail_through_every_door(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each file the official schema refuses: a located message from the API, CLI and UI."""
    invalid = _corpus_invalid(shared_dir)
    assert invalid, "the shared corpus should hold files the schema refuses"

    for path in invalid:
        folder = tmp_path / path.name.split(".")[0]
        folder.mkdir()
        shutil.copy(path, folder)
        shutil.copy(SEED, folder)
        copy = folder / path.name

        api_text = str(_api_error(copy))
        assert main(["validate", str(copy)]) == 1
        captured = capsys.readouterr()
        defs = build_osop_definitions(folder)
        (placeholder,) = (
            spec for spec in defs.resolve_all_asset_specs() if spec.group_name == INVALID_GROUP
        )

        for text in (api_text, captured.out + captured.err, placeholder.description or ""):
            assert str(copy) in text
            assert "Traceback" not in text
        assert api_text.splitlines()[0] in captured.out
        assert dg.AssetKey(["rest-api-workflow", "audit_id"]) in defs.resolve_all_asset_keys()


SUBPROCESS_CASES = [
    ("yaml11-yes.osop.yaml", "line 30"),
    ("cel-syntax-error.osop.yaml", "edge 3 (pick -> audit)"),
    ("binary.osop.yaml", "not UTF-8 text"),
    ("retry-forever.osop.yaml", "node 'fetch'"),
    ("db-password-in-connection.osop.yaml", "carries a password"),
]


@pytest.mark.integration
def test_dagster_definitions_validate_reports_broken_files_without_traceback(
    repo_root: Path, tmp_path: Path
) -> None:
    """One `dagster definitions validate` over the seed and a handful of broken files."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(SEED, folder)
    for number, (name, _) in enumerate(SUBPROCESS_CASES):
        # Files that load but do not compile keep their id, so each needs its own.
        data = (INVALID / name).read_bytes().replace(b"id: orders\n", f"id: o{number}\n".encode())
        (folder / name).write_bytes(data)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    environment = {
        **os.environ,
        constants.ENV_WORKFLOWS_DIR: str(folder),
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }

    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=repo_root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Validation successful for code location osop_workflows" in output
    for name, fragment in SUBPROCESS_CASES:
        lines = [line for line in output.splitlines() if name in line]
        assert any(fragment in line for line in lines), (name, output)
    assert "hunter2" not in output
    assert "Traceback" not in output
    assert "Stack Trace" not in output
