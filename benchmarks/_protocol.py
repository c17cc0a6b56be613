"""What the runner hands a contender and what a contender hands back, in plain JSON.

The runner writes a spec file and passes its path as the only argument; the client secret
travels in the ``BENCH_CLIENT_SECRET`` environment variable (the osop contenders read it from the
workflow's ``secret_ref`` variable instead), never in a file or an argument. A contender writes
its result to ``spec["result_path"]``. This module uses the standard library only, so that
contenders running in another virtualenv can copy its conventions.
"""

import json
import sys
from pathlib import Path
from typing import Any, Final, TypedDict

ENV_CLIENT_SECRET: Final = "BENCH_CLIENT_SECRET"
JQ_FILTER: Final = '[.[] | select(.status == "pending" and .age_days > 30)]'
"""The seed workflow's filter_records step, verbatim."""


class Phase(TypedDict):
    """One phase of a contender's work, timed inside the contender."""

    seconds: float
    requests: int
    records: int


def read_spec() -> dict[str, Any]:
    """The spec whose path is the process's only argument."""
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} SPEC_JSON_PATH")
    spec: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    return spec


def phase(seconds: float, requests: int, records: int) -> Phase:
    """A phase entry, rounded for the report."""
    return {"seconds": round(seconds, 4), "requests": requests, "records": records}


def write_result(spec: dict[str, Any], result: dict[str, Any]) -> None:
    """Hand the contender's result back to the runner."""
    Path(spec["result_path"]).write_text(json.dumps(result), encoding="utf-8")
