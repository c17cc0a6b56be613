import subprocess
import sys
from pathlib import Path

import pytest

from osop_dagster.cli import main

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
