"""A tiny run of the performance benchmark, so that it keeps working; timings are not checked."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from osop_reference_api.seed import is_selected_by_workflow, iter_seed_rows

pytestmark = pytest.mark.integration

RECORDS = 300
CONTENDERS = ("osop_default", "osop_best", "floor", "server_limit")
RUN_FIELDS = {
    "contender",
    "repeat",
    "ok",
    "error",
    "wall_s",
    "cpu_s",
    "user_s",
    "sys_s",
    "max_rss_mb",
    "tree_rss_mb",
    "updated_observed",
    "updated_reported",
    "expected_updated",
    "phases",
    "ratio_to_floor_wall",
    "ratio_to_floor_cpu",
}


@pytest.fixture(scope="module")
def report(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON document of one benchmark run on 300 records, one repeat, no extra installs."""
    output = tmp_path_factory.mktemp("benchmark")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--records",
            str(RECORDS),
            "--repeat",
            "1",
            "--contenders",
            ",".join(CONTENDERS),
            "--import-workflows",
            "3",
            "--import-repeat",
            "1",
            "--output-dir",
            str(output),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:]
    written = sorted(path.name for path in output.glob("*.json"))
    assert len(written) == 2 and f"latest-{RECORDS}.json" in written, written
    return json.loads((output / f"latest-{RECORDS}.json").read_text(encoding="utf-8"))


def test_benchmark_report_has_the_documented_shape(report: dict[str, Any]) -> None:
    assert report["schema_version"] == 1
    assert report["settings"]["records"] == RECORDS
    assert set(report["settings"]["contenders"]) == set(CONTENDERS)
    assert report["machine"]["nproc"] >= 1
    assert {run["contender"] for run in report["runs"]} == set(CONTENDERS)
    for run in report["runs"]:
        assert RUN_FIELDS <= run.keys()
        assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["max_rss_mb"] > 0
        assert run["tree_rss_mb"] >= run["max_rss_mb"]
        for phase in ("fetch", "batch"):
            assert {"seconds", "requests", "records", "requests_per_s"} <= run["phases"][
                phase
            ].keys()
    assert set(report["summary"]) == set(CONTENDERS)
    assert report["summary"]["floor"]["ratio_to_floor_wall"] == 1.0
    assert {target["target"] for target in report["targets"]} >= {
        "osop_default wall / floor <= 1.25",
        "osop_best fetch / server_limit fetch >= 0.85",
    }
    imports = report["import_time"]
    assert imports["workflows"] == 3 and len(imports["load_code_location_s"]) == 1


def test_every_contender_updates_exactly_the_selected_records(report: dict[str, Any]) -> None:
    selected = sum(
        is_selected_by_workflow(row[2], row[3]) for row in iter_seed_rows(RECORDS, seed=7)
    )
    assert report["selected_records"] == selected
    for run in report["runs"]:
        assert run["ok"], run["error"]
        assert run["updated_observed"] == run["updated_reported"] == selected
        assert run["phases"]["fetch"]["records"] == RECORDS
        assert run["phases"]["batch"]["records"] == selected
