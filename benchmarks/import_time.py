"""What a folder of many workflows adds to a code location's import time.

Generates ``count`` workflows of 6 to 20 nodes (a token node, a paged GET, a chain of jq steps,
a batch PATCH, its status check and an audit row, half of them on a cron trigger), then times a
cold ``import dagster`` against a cold import of the code location module
(``osop_dagster.code_location``, which builds the folder's definitions), alternating the two.
"""

import itertools
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from osop_dagster.constants import ENV_WORKFLOWS_DIR

MIN_NODES = 6
MAX_NODES = 20

IMPORT_DAGSTER = "import dagster"
# What a code server does: import the code location module, which builds the definitions of
# the folder that OSOP_WORKFLOWS_DIR names.
LOAD_CODE_LOCATION = (
    "import sys\n"
    "from osop_dagster import code_location\n"
    "assert len(code_location.defs.jobs) == int(sys.argv[1]), len(code_location.defs.jobs)\n"
)


def _api(
    node_id: str, method: str, endpoint: str, inputs: list[str], output: str
) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "api",
        "purpose": f"Call {method} {endpoint}",
        "runtime": {"endpoint": endpoint, "method": method, "url": "https://api.example.com"},
        "inputs": inputs,
        "outputs": [output],
        "security": {"auth": "bearer_token"},
    }


def workflow(number: int, nodes: int) -> dict[str, Any]:
    """One generated workflow with ``nodes`` nodes (6 to 20) in a sequential chain."""
    stages = nodes - 5
    body: list[dict[str, Any]] = [
        {
            "id": "authenticate",
            "type": "api",
            "purpose": "Obtain an access token",
            "runtime": {
                "endpoint": "/oauth/token",
                "method": "POST",
                "url": "https://api.example.com",
            },
            "security": {"auth": "oauth2", "secret_ref": "SERVICE_CLIENT_CREDENTIALS"},
            "outputs": ["access_token"],
        },
        _api("get_records", "GET", "/api/v2/records", ["access_token"], "records_list"),
    ]
    previous = "records_list"
    for stage in range(1, stages + 1):
        output = f"stage_{stage}"
        body.append(
            {
                "id": f"transform_{stage}",
                "type": "cli",
                "purpose": f"Keep records older than {stage} days",
                "runtime": {"command": f"jq '[.[] | select(.age_days > {stage})]'"},
                "inputs": [previous],
                "outputs": [output],
            }
        )
        previous = output
    body += [
        _api(
            "batch_update", "PATCH", "/api/v2/records/batch", [previous, "access_token"], "receipt"
        ),
        _api("verify", "GET", "/api/v2/records/batch/status", ["receipt", "access_token"], "check"),
        {
            "id": "log_audit",
            "type": "db",
            "purpose": "Write an audit row",
            "runtime": {"engine": "postgres", "connection": "postgresql://audit:5432/logs"},
            "inputs": ["receipt", "check"],
            "outputs": ["audit_id"],
        },
    ]
    document: dict[str, Any] = {
        "osop_version": "2.0",
        "id": f"generated-{number:03d}",
        "name": f"Generated workflow {number}",
        "nodes": body,
        "edges": [
            {"from": a["id"], "to": b["id"], "mode": "sequential"}
            for a, b in itertools.pairwise(body)
        ],
    }
    if number % 2 == 0:
        document["triggers"] = [
            {"type": "cron", "config": {"cron": f"{number % 60} 6 * * *", "timezone": "UTC"}}
        ]
    return document


def generate(folder: Path, count: int, seed: int = 5) -> int:
    """Write ``count`` workflow files into ``folder``; returns their total number of nodes."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for number in range(count):
        nodes = rng.randint(MIN_NODES, MAX_NODES)
        total += nodes
        path = folder / f"generated-{number:03d}.osop.yaml"
        path.write_text(yaml.safe_dump(workflow(number, nodes), sort_keys=False), encoding="utf-8")
    return total


def _time_child(
    code: str, args: list[str], timeout: float, cwd: Path, env: dict[str, str] | None = None
) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - started


def measure(folder: Path, count: int, repeat: int, timeout: float, cwd: Path) -> dict[str, Any]:
    """Time both commands ``repeat`` times each, alternating, and report medians and the gap."""
    nodes = generate(folder, count)
    env = {**os.environ, ENV_WORKFLOWS_DIR: str(folder)}
    dagster_runs: list[float] = []
    osop_runs: list[float] = []
    for _ in range(repeat):
        dagster_runs.append(_time_child(IMPORT_DAGSTER, [], timeout, cwd))
        osop_runs.append(_time_child(LOAD_CODE_LOCATION, [str(count)], timeout, cwd, env))
    added = statistics.median(osop_runs) - statistics.median(dagster_runs)
    return {
        "workflows": count,
        "nodes": nodes,
        "repeat": repeat,
        "import_dagster_s": [round(value, 3) for value in dagster_runs],
        "load_code_location_s": [round(value, 3) for value in osop_runs],
        "import_dagster_median_s": round(statistics.median(dagster_runs), 3),
        "load_code_location_median_s": round(statistics.median(osop_runs), 3),
        "added_s": round(added, 3),
    }
