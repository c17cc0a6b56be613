import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from osop_dagster.cli import main
from osop_dagster_tests._processes import processes_mentioning

DATA = Path(__file__).parent / "data"
ENTRY_POINT = Path(sys.executable).parent / "osop-dagster"


def test_validate_valid_file_prints_ok_and_exits_zero(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = shared_dir / "workflows" / "rest-api-workflow.osop.yaml"

    status = main(["validate", str(seed)])

    assert status == 0
    assert capsys.readouterr().out == f"ok  {seed} (6 nodes, 6 edges)\n"


def test_validate_invalid_file_prints_problems_and_exits_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = DATA / "invalid" / "yaml11-boolean.osop.yml"

    status = main(["validate", str(bad)])

    out = capsys.readouterr().out
    assert status == 1
    assert f"{bad}, line 4:" in out
    assert "'NO'" in out


def test_validate_folder_checks_every_workflow_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["validate", str(DATA / "valid"), str(DATA / "invalid")])

    out = capsys.readouterr().out
    assert status == 1
    assert "ok  " in out and "two-steps.osop.json (2 nodes, 1 edges)" in out
    for name in ("duplicate-key.osop.json", "tab-indentation.osop.yaml", "yaml11-boolean.osop.yml"):
        assert name in out


def test_validate_missing_file_exits_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["validate", str(tmp_path / "absent.osop.yaml")])

    assert status == 1
    assert "the file cannot be read" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["validate"], ["frobnicate", "x"]])
def test_usage_error_exits_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_installed_entry_point_reports_without_traceback(shared_dir: Path) -> None:
    seed = shared_dir / "workflows" / "rest-api-workflow.osop.yaml"
    empty = shared_dir / "osop-corpus" / "osop_tests_fixtures_empty.osop.yaml"

    result = subprocess.run(
        [str(ENTRY_POINT), "validate", str(seed), str(empty), str(DATA / "invalid")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert f"ok  {seed}" in result.stdout
    assert "the file is empty" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.integration
def test_ui_shows_the_lineage_and_the_demo_run_then_stops_cleanly(
    project_copy: Path, postgres_url: str
) -> None:
    """`osop-dagster demo` then `osop-dagster ui`, over one instance, as the README says."""
    project = project_copy
    environment = {**os.environ, "OSOP_POSTGRES_URL": postgres_url}
    environment.pop("OSOP_API_BASE_URL", None)
    entry_point = str(Path(sys.executable).parent / "osop-dagster")
    common = ["--project-dir", str(project), "--records", "200"]

    demo = subprocess.run(
        [entry_point, "demo", *common],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    run_id = re.search(r"run id\s+(\S+)", demo.stdout).group(1)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    query = (
        '{ assetNodes(group: {groupName: "rest_api_workflow", repositoryName: "__repository__",'
        ' repositoryLocationName: "osop_workflows"}) { assetKey { path } }'
        " runsOrError { ... on Runs { results { runId status } } } }"
    )
    with subprocess.Popen(
        [entry_point, "ui", *common, "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as ui:
        try:
            answer = _graphql_when_up(f"http://127.0.0.1:{port}/graphql", query, ui)
        finally:
            ui.send_signal(signal.SIGTERM)
            ui.wait(timeout=90)

    assets = {tuple(node["assetKey"]["path"]) for node in answer["assetNodes"]}
    assert ("rest-api-workflow", "records_list") in assets
    assert len(assets) == 6
    runs = {run["runId"]: run["status"] for run in answer["runsOrError"]["results"]}
    assert runs[run_id] == "SUCCESS"
    assert ui.returncode is not None
    assert not processes_mentioning(str(project))


def _graphql_when_up(url: str, query: str, ui: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert ui.poll() is None, "osop-dagster ui exited early"
        try:
            response = httpx.post(url, json={"query": query}, timeout=10)
        except httpx.TransportError:
            time.sleep(1)
            continue
        body = response.json()
        if response.status_code == 200 and body.get("data", {}).get("assetNodes"):
            return dict(body["data"])
        time.sleep(1)
    pytest.fail("The Dagster UI did not answer with the workflow's assets within 120 s.")
