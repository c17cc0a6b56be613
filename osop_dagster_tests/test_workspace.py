import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from osop_dagster import constants
from osop_dagster_tests.test_definitions import BROKEN

pytestmark = pytest.mark.integration


def test_workspace_yaml_loads_the_code_location_and_reports_a_broken_file_without_traceback(
    repo_root: Path, tmp_path: Path
) -> None:
    """`dagster definitions validate -w workspace.yaml` loads the folder, good files and bad."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(repo_root / "workflows" / "rest-api-workflow.osop.yaml", folder)
    (folder / "broken.osop.yaml").write_text(BROKEN)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    environment = {
        **os.environ,
        constants.ENV_WORKFLOWS_DIR: str(folder),
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    dagster = [sys.executable, "-m", "dagster"]

    completed = subprocess.run(
        [*dagster, "definitions", "validate", "-w", str(repo_root / "workspace.yaml")],
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
    assert "broken.osop.yaml, line 8, node 'fetch'" in output
    assert "Traceback" not in output
    assert "Stack Trace" not in output
