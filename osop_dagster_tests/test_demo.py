"""`osop-dagster demo`, run as a user runs it: a new process, embedded Postgres, no API given."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from osop_dagster import constants
from osop_dagster._local_stack import STATE_DIR_NAME, embedded_data_dir
from osop_dagster_tests._processes import processes_mentioning

pytestmark = pytest.mark.integration


@pytest.fixture
def project(project_copy: Path) -> Iterator[Path]:
    """A copy of the project's run files; the embedded server's temp folder goes afterwards."""
    project = project_copy
    yield project
    data_dir = embedded_data_dir(project / STATE_DIR_NAME)
    if not data_dir.is_relative_to(project):
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    for name in (constants.ENV_POSTGRES_URL, constants.ENV_API_BASE_URL):
        environment.pop(name, None)
    return environment


def _command(project: Path, records: int) -> list[str]:
    entry_point = Path(sys.executable).parent / "osop-dagster"
    return [str(entry_point), "demo", "--project-dir", str(project), "--records", str(records)]


def test_demo_runs_the_example_on_embedded_defaults_and_stops_what_it_started(
    project: Path,
) -> None:
    completed = subprocess.run(
        _command(project, 400),
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Run succeeded." in completed.stdout
    assert "records fetched   400" in completed.stdout
    assert "records selected  100" in completed.stdout
    assert "records updated   100" in completed.stdout
    assert "records verified  100" in completed.stdout
    assert "postgres          embedded" in completed.stdout
    assert "Traceback" not in output
    data_dir = embedded_data_dir(project / STATE_DIR_NAME)
    assert (data_dir / "PG_VERSION").is_file()
    assert not (data_dir / "postmaster.pid").exists(), "the embedded server was stopped"
    assert processes_mentioning(str(project)) == []


def test_sigterm_mid_run_stops_postgres_and_the_reference_api(project: Path) -> None:
    with subprocess.Popen(
        _command(project, 20_000),
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        _interrupt_once_fetching(process)

    assert process.returncode != 0
    data_dir = embedded_data_dir(project / STATE_DIR_NAME)
    assert not (data_dir / "postmaster.pid").exists(), "the embedded server was stopped"
    assert processes_mentioning(str(project)) == []


def _interrupt_once_fetching(process: subprocess.Popen[str]) -> None:
    try:
        deadline = time.monotonic() + 120
        assert process.stdout is not None
        for line in process.stdout:
            if "rest_api_workflow__get_records" in line or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_failing_demo_run_says_which_step_failed_and_why(project: Path) -> None:
    workflow = project / "workflows" / "rest-api-workflow.osop.yaml"
    text = workflow.read_text(encoding="utf-8")
    broken = text.replace(".age_days > 30)]", '.age_days + \\"days\\" > 30)]')
    assert broken != text
    workflow.write_text(broken, encoding="utf-8")

    completed = subprocess.run(
        _command(project, 400),
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert completed.returncode == 1, completed.stdout + completed.stderr
    failure = next(line for line in completed.stdout.splitlines() if line.startswith("Run failed"))
    assert "filter_records" in failure
    assert "cannot be added" in failure
