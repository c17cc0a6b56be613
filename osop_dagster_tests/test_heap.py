"""A run process keeps what lives on out of the cycle collector's walks, at exit too."""

import subprocess
import sys
from pathlib import Path

from osop_dagster._heap import YOUNG_THRESHOLD

PROJECT_DIR = Path(__file__).resolve().parents[1]

# An exit handler registered first runs last: it sees what the collector would still walk.
_PROBE = """
import atexit, gc, sys
atexit.register(lambda: print("left at exit", len(gc.get_objects())))
from osop_dagster._demo import job_from_files
before = len(gc.get_objects())
job_from_files([sys.argv[1]], "rest_api_workflow_job")
print("tracked before", before)
print("frozen", gc.get_freeze_count())
print("tracked after", len(gc.get_objects()))
print("young threshold", gc.get_threshold()[0])
made_later = [[index] for index in range(5000)]
"""


def _figures(output: str) -> dict[str, int]:
    figures = {}
    for line in output.splitlines():
        name, _, number = line.rpartition(" ")
        figures[name] = int(number)
    return figures


def test_a_run_process_freezes_what_it_built_and_leaves_nothing_to_walk_at_exit() -> None:
    workflow = PROJECT_DIR / "workflows" / "rest-api-workflow.osop.yaml"
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, str(workflow)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=PROJECT_DIR,
    )
    figures = _figures(completed.stdout)

    assert figures["frozen"] > figures["tracked before"] > 10_000
    assert figures["tracked after"] < 100
    assert figures["young threshold"] == YOUNG_THRESHOLD
    # The 5,000 lists made after the freeze are frozen at exit as well.
    assert figures["left at exit"] < 100
