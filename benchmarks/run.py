"""The benchmark's one command: seed the reference API, run every contender, report.

Usage, from the project folder::

    python -m benchmarks.run --records 100000 --repeat 3
    python -m benchmarks.run --records 1000000 --repeat 1 --contenders osop_best,floor,server_limit

Each contender runs in a cold child process against the same freshly reseeded data set, in an
order that rotates between repeats. Wall time is measured around the child, CPU time (user +
sys) and peak memory (max RSS) come from ``wait4`` on that very child, and each contender times
its own phases (fetch, batch). Ratios to the floor are taken run by run, within a repeat.
Results go to ``<output-dir>/<timestamp>-<records>.json`` and
``<output-dir>/latest-<records>.json``.
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import psycopg
import yaml

from benchmarks import import_time
from benchmarks._protocol import ENV_CLIENT_SECRET
from osop_dagster import constants
from osop_dagster._postgres_url import parse_postgres_url
from osop_reference_api import RecordStore, ReferenceApiProcess

PROJECT_DIR: Final = Path(__file__).resolve().parents[1]
SEED_WORKFLOW: Final = PROJECT_DIR / "workflows" / "rest-api-workflow.osop.yaml"
SECRET_REF: Final = "SERVICE_CLIENT_CREDENTIALS"
"""The seed workflow's ``secret_ref``: where the osop contenders find the client credentials."""
SERVER_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
DLT_VENV: Final = Path("/tmp/bench-dlt-venv")
DATA_SEED: Final = 7
CLIENT_ID: Final = "bench-client"

# The seed workflow's sizes: the server's default page (100) and the batch default (500).
DEFAULT_BATCH: Final = 500
BEST_PAGE: Final = 1000
BEST_BATCH: Final = 1000
CONCURRENCY: Final = 8

Kind = Literal["osop", "floor", "server_limit", "dlt"]


@dataclass(frozen=True)
class Contender:
    """One way of doing the job, run as ``python -m <module> <spec>``."""

    name: str
    kind: Kind
    module: str
    page_size: int | None
    batch_size: int
    updates: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    description: str = ""


CONTENDERS: Final = {
    c.name: c
    for c in (
        Contender(
            "osop_default",
            "osop",
            "benchmarks.contenders.osop",
            None,
            DEFAULT_BATCH,
            description="the seed workflow unchanged (Link paging at the server's 100, "
            "batches of 500, default console logging)",
        ),
        Contender(
            "osop_best",
            "osop",
            "benchmarks.contenders.osop",
            BEST_PAGE,
            BEST_BATCH,
            extra={"console_info": True},
            description="a copy with runtime.pagination page_number/page_size 1000/total_path, "
            f"runtime.batch.size 1000, {CONCURRENCY} pages and chunks in flight, console logger "
            "at INFO",
        ),
        Contender(
            "floor",
            "floor",
            "benchmarks.contenders.floor",
            None,
            DEFAULT_BATCH,
            description="plain httpx script, same pages and chunks as osop_default",
        ),
        Contender(
            "floor_best",
            "floor",
            "benchmarks.contenders.floor",
            BEST_PAGE,
            BEST_BATCH,
            description="plain httpx script, same pages and chunks as osop_best",
        ),
        Contender(
            "server_limit",
            "server_limit",
            "benchmarks.contenders.server_limit",
            BEST_PAGE,
            BEST_BATCH,
            extra={"concurrency": CONCURRENCY},
            description=f"async httpx, {CONCURRENCY} requests in flight, pages and chunks of 1000",
        ),
        Contender(
            "dlt",
            "dlt",
            "benchmarks.contenders.dlt_fetch",
            None,
            DEFAULT_BATCH,
            updates=False,
            description="dlt rest_api source, header_link paging at the server's 100; fetch only",
        ),
        Contender(
            "dlt_best",
            "dlt",
            "benchmarks.contenders.dlt_fetch",
            BEST_PAGE,
            BEST_BATCH,
            updates=False,
            description="dlt rest_api source, header_link paging at 1000; fetch only",
        ),
    )
}
NO_INSTALL: Final = ("osop_default", "osop_best", "floor", "floor_best", "server_limit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--records", type=int, default=100_000, help="data set size")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each contender")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, from {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per contender run (default scales)"
    )
    parser.add_argument("--output-dir", type=Path, default=PROJECT_DIR / "benchmarks" / "results")
    parser.add_argument("--dlt-venv", type=Path, default=DLT_VENV, help="virtualenv with dlt")
    parser.add_argument(
        "--install-dlt",
        action="store_true",
        help="create the dlt virtualenv with pip when it is missing",
    )
    parser.add_argument(
        "--import-workflows", type=int, default=200, help="workflows for the import test; 0 skips"
    )
    parser.add_argument("--import-repeat", type=int, default=3)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run every contender under cProfile; stats go to <output-dir>/profiles/",
    )
    return parser


# -- processes ----------------------------------------------------------------------------------


@dataclass
class ChildOutcome:
    """How a child process ended and what it cost."""

    exit_code: int | None
    timed_out: bool
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float
    tree_rss_mb: float
    rusage_maxrss_mb: float


def _peak_rss_kb(pid: int) -> int:
    """``VmHWM`` of a live process: the peak resident set of its current program."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _tree_pss_kb(pid: int) -> int:
    """Proportional set size of a process and all its descendants, summed.

    PSS charges each page shared between processes (a forked jq worker and its parent) to
    them in equal parts, so the sum is the memory the tree really holds.
    """
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        total += next(
            (int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")),
            0,
        )
        for task in tasks:
            try:
                pending.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return total


def run_child(
    argv: Sequence[str], env: dict[str, str], timeout: float, log_path: Path, cwd: Path
) -> ChildOutcome:
    """Run one child, reaping it with ``wait4`` so that its own rusage is known.

    Peak memory is the child's ``VmHWM``, polled while it runs: ``ru_maxrss`` of a child also
    counts the parent's memory copied at fork, which would flatter no one and hide small ones.
    The tree's peak is the largest proportional set size of the child and the processes it
    starts (jq workers), sampled every 100 ms, and at least the child's own peak.
    """
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = started + timeout
        timed_out = False
        peak_kb = 0
        tree_kb = 0
        polls = 0
        while True:
            peak_kb = max(peak_kb, _peak_rss_kb(process.pid))
            if polls % 5 == 0:
                tree_kb = max(tree_kb, _tree_pss_kb(process.pid))
            tree_kb = max(tree_kb, peak_kb)
            polls += 1
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                break
            if time.perf_counter() > deadline and not timed_out:
                timed_out = True
                # The child leads its own session: this reaches it and whatever it started.
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.02)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code  # reaped here; Popen must not wait for it again
    return ChildOutcome(
        exit_code=code,
        timed_out=timed_out,
        wall_s=round(wall, 3),
        user_s=round(usage.ru_utime, 3),
        sys_s=round(usage.ru_stime, 3),
        max_rss_mb=round(peak_kb / 1024, 1),
        tree_rss_mb=round(tree_kb / 1024, 1),
        # Linux reports ru_maxrss in KiB.
        rusage_maxrss_mb=round(usage.ru_maxrss / 1024, 1),
    )


# -- setup --------------------------------------------------------------------------------------


def best_workflow(target: Path, records: int) -> Path:
    """A copy of the seed workflow with the largest pages and batches, sent concurrently."""
    document = yaml.safe_load(SEED_WORKFLOW.read_text(encoding="utf-8"))
    for node in document["nodes"]:
        if node["id"] == "get_records":
            node["runtime"]["pagination"] = {
                "style": "page_number",
                "page_size": BEST_PAGE,
                "total_path": "pagination.total",
                "max_pages": records // BEST_PAGE + 10,
                "concurrency": CONCURRENCY,
            }
        if node["id"] == "batch_update":
            node["runtime"]["batch"] = {"size": BEST_BATCH, "concurrency": CONCURRENCY}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), "utf-8")
    return target


def dlt_python(venv: Path, install: bool, log_dir: Path) -> tuple[Path | None, str]:
    """The dlt virtualenv's python and dlt's version, or ``None`` and the reason it is missing."""
    python = venv / "bin" / "python"
    if not python.exists() and install:
        log = log_dir / "dlt-install.log"
        with log.open("wb") as out:
            steps = (
                [sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "dlt", "httpx"],
            )
            for step in steps:
                code = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=600)
                if code.returncode != 0:
                    tail = log.read_text(errors="replace")[-800:]
                    return None, f"{' '.join(step)} exited {code.returncode}: {tail}"
    if not python.exists():
        return None, f"no virtualenv at {venv}; run with --install-dlt to create it with pip"
    probe = subprocess.run(
        [str(python), "-c", "import dlt, dlt.sources.rest_api; print(dlt.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        return None, f"dlt does not import in {venv}: {probe.stderr.strip()[-800:]}"
    return python, probe.stdout.strip()


def reseed(base_url: str, records: int) -> None:
    """Restore the data set, so that every contender updates the same records."""
    timeout = 60 + records / 10_000
    for path, body in (
        ("/_admin/reseed", {"records": records, "seed": DATA_SEED}),
        ("/_admin/reset", None),
    ):
        httpx.post(f"{base_url}{path}", json=body, timeout=timeout).raise_for_status()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {name: metadata.version(name) for name in ("dagster", "httpx", "jq", "psycopg")}
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_total_mb": total_kb // 1024,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }


# -- one run ------------------------------------------------------------------------------------


def run_contender(
    contender: Contender,
    repeat: int,
    setup: dict[str, Any],
) -> dict[str, Any]:
    """Reseed, run one contender once, and check what it changed on the service."""
    work: Path = setup["work"]
    records: int = setup["records"]
    reseed(setup["base_url"], records)

    spec = {
        "base_url": setup["base_url"],
        "client_id": CLIENT_ID,
        "postgres_url": setup["postgres_url"],
        "records": records,
        "page_size": contender.page_size,
        "batch_size": contender.batch_size,
        "result_path": str(work / f"{contender.name}-{repeat}.result.json"),
        **contender.extra,
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("OSOP_")}
    env["PYTHONPATH"] = str(PROJECT_DIR)
    python = sys.executable
    if contender.kind == "osop":
        spec["workflow_path"] = str(setup["workflows"][contender.name])
        env.update(setup["osop_env"])
    else:
        env[ENV_CLIENT_SECRET] = setup["client_secret"]
    if contender.kind == "dlt":
        python = str(setup["dlt_python"])
        env["RUNTIME__DLTHUB_TELEMETRY"] = "false"
        env["DLT_DATA_DIR"] = str(work / "dlt")
    spec_path = work / f"{contender.name}-{repeat}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    Path(spec["result_path"]).unlink(missing_ok=True)

    log_path = work / f"{contender.name}-{repeat}.log"
    # Other work on the machine skews every figure; the load says how much there was.
    load_before = round(os.getloadavg()[0], 2)
    command = [python, "-m", contender.module, str(spec_path)]
    if setup["profile_dir"] is not None:
        stats = setup["profile_dir"] / f"{contender.name}-{repeat}.prof"
        command[1:1] = ["-m", "cProfile", "-o", str(stats)]
    outcome = run_child(
        command,
        env,
        setup["timeout"],
        log_path,
        PROJECT_DIR,
    )
    result_path = Path(spec["result_path"])
    reported: dict[str, Any] = (
        json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else {}
    )
    with RecordStore(setup["api_db"]) as store:
        observed = store.count(version=2)

    expected = setup["selected"] if contender.updates else 0
    error = None
    if outcome.timed_out:
        error = f"timed out after {setup['timeout']:.0f} s"
    elif outcome.exit_code != 0:
        error = f"exited {outcome.exit_code}: {log_path.read_text(errors='replace')[-600:]}"
    elif reported.get("success") is False:
        error = f"the Dagster run failed: {str(reported.get('failure'))[:600]}"
    elif observed != expected:
        error = f"updated {observed} records, expected {expected}"

    phases = reported.get("phases", {})
    for figures in phases.values():
        seconds = figures["seconds"]
        figures["requests_per_s"] = round(figures["requests"] / seconds, 1) if seconds else None
        figures["records_per_s"] = round(figures["records"] / seconds, 1) if seconds else None
    return {
        "contender": contender.name,
        "repeat": repeat,
        "ok": error is None,
        "error": error,
        "wall_s": outcome.wall_s,
        "cpu_s": round(outcome.user_s + outcome.sys_s, 3),
        "user_s": outcome.user_s,
        "sys_s": outcome.sys_s,
        "max_rss_mb": outcome.max_rss_mb,
        "tree_rss_mb": outcome.tree_rss_mb,
        "rusage_maxrss_mb": outcome.rusage_maxrss_mb,
        "updated_observed": observed,
        "updated_reported": reported.get("updated"),
        "expected_updated": expected,
        "records_fetched": reported.get("records_fetched"),
        "verified": reported.get("verified"),
        "phases": phases,
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "details": {
            key: reported[key]
            for key in (
                "inner_seconds",
                "definitions_seconds",
                "run_seconds",
                "run_events",
                "step_seconds",
                "records_json_bytes",
            )
            if key in reported
        },
    }


# -- report -------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 3) if present else None


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """Each run's wall and CPU time over the floor's in the same repeat."""
    floors = {run["repeat"]: run for run in runs if run["contender"] == "floor" and run["ok"]}
    for run in runs:
        floor = floors.get(run["repeat"])
        ok = floor is not None and run["ok"]
        run["ratio_to_floor_wall"] = round(run["wall_s"] / floor["wall_s"], 3) if ok else None
        run["ratio_to_floor_cpu"] = (
            round(run["cpu_s"] / floor["cpu_s"], 3) if ok and floor["cpu_s"] else None
        )


def summarise(runs: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Medians per contender over its successful runs."""
    summary: dict[str, Any] = {}
    for name in names:
        mine = [run for run in runs if run["contender"] == name]
        good = [run for run in mine if run["ok"]]
        entry: dict[str, Any] = {
            "runs": len(mine),
            "ok_runs": len(good),
            "errors": sorted({run["error"] for run in mine if run["error"]}),
        }
        if good:
            ratios = [run["ratio_to_floor_wall"] for run in good]
            entry.update(
                wall_s=_median([run["wall_s"] for run in good]),
                cpu_s=_median([run["cpu_s"] for run in good]),
                max_rss_mb=max(run["max_rss_mb"] for run in good),
                tree_rss_mb=max(run.get("tree_rss_mb", run["max_rss_mb"]) for run in good),
                ratio_to_floor_wall=_median(ratios),
                ratio_to_floor_wall_range=[
                    min((r for r in ratios if r is not None), default=None),
                    max((r for r in ratios if r is not None), default=None),
                ],
                ratio_to_floor_cpu=_median([run["ratio_to_floor_cpu"] for run in good]),
            )
            for phase_name in ("fetch", "batch"):
                figures = [run["phases"][phase_name] for run in good if phase_name in run["phases"]]
                if figures:
                    entry[phase_name] = {
                        "seconds": _median([f["seconds"] for f in figures]),
                        "requests_per_s": _median([f["requests_per_s"] for f in figures]),
                        "records_per_s": _median([f["records_per_s"] for f in figures]),
                    }
        summary[name] = entry
    return summary


def _target(name: str, value: float | None, limit: float, better: str) -> dict[str, Any]:
    met = None if value is None else (value <= limit if better == "lower" else value >= limit)
    return {"target": name, "value": value, "limit": limit, "better": better, "met": met}


def targets(
    summary: dict[str, Any], records: int, json_bytes: int | None, imports: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The issue's targets, met or missed, from what this run measured."""

    def get(name: str, *path: str) -> Any:
        value: Any = summary.get(name, {})
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return value

    at_million = records >= 1_000_000
    found = [
        _target(
            f"osop_default wall / floor <= {1.10 if at_million else 1.25}",
            get("osop_default", "ratio_to_floor_wall"),
            1.10 if at_million else 1.25,
            "lower",
        ),
        _target(
            "osop_best wall / floor <= 0.6 (set for 1M)",
            get("osop_best", "ratio_to_floor_wall"),
            0.6,
            "lower",
        ),
    ]
    best_fetch = get("osop_best", "fetch", "records_per_s")
    limit_fetch = get("server_limit", "fetch", "records_per_s")
    share = round(best_fetch / limit_fetch, 3) if best_fetch and limit_fetch else None
    found.append(_target("osop_best fetch / server_limit fetch >= 0.85", share, 0.85, "higher"))
    for osop, dlt in (("osop_default", "dlt"), ("osop_best", "dlt_best")):
        mine, theirs = get(osop, "fetch", "records_per_s"), get(dlt, "fetch", "records_per_s")
        speedup = round(mine / theirs, 3) if mine and theirs else None
        found.append(_target(f"{osop} fetch / {dlt} fetch > 1", speedup, 1.0, "higher"))
    if json_bytes:
        for osop in ("osop_default", "osop_best"):
            rss = get(osop, "tree_rss_mb")
            times = round(rss * 1024 * 1024 / json_bytes, 2) if rss else None
            found.append(
                _target(
                    f"{osop} peak RSS of the process tree / records JSON <= 3 (set for 1M)",
                    times,
                    3,
                    "lower",
                )
            )
    if imports is not None:
        found.append(
            _target(
                f"{imports['workflows']} workflows add <= 3 s to import time",
                imports["added_s"],
                3.0,
                "lower",
            )
        )
    return found


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| contender | ok | wall s | CPU s | peak RSS MiB (tree) | wall / floor (range) "
        "| CPU / floor "
        "| fetch rec/s (req/s) | batch rec/s (req/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        if "wall_s" not in entry:
            reason = "; ".join(entry["errors"])[:120] or "did not run"
            lines.append(f"| {name} | 0/{entry['runs']} | {reason} | | | | | | |")
            continue
        low, high = entry["ratio_to_floor_wall_range"]

        def phase_cell(phase: dict[str, Any] | None) -> str:
            if not phase:
                return "-"
            return f"{phase['records_per_s']:,.0f} ({phase['requests_per_s']:,.1f})"

        lines.append(
            f"| {name} | {entry['ok_runs']}/{entry['runs']} | {entry['wall_s']} | {entry['cpu_s']} "
            f"| {entry['max_rss_mb']} ({entry['tree_rss_mb']}) "
            f"| {entry['ratio_to_floor_wall']} ({low}-{high}) "
            f"| {entry['ratio_to_floor_cpu']} | {phase_cell(entry.get('fetch'))} "
            f"| {phase_cell(entry.get('batch'))} |"
        )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every contender that ran did its job."""
    args = _parser().parse_args(argv)
    names = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        raise SystemExit(f"Unknown contenders {unknown!r}; expected some of {list(CONTENDERS)!r}.")
    timeout = args.timeout or 120 + args.records * 0.0006
    started_at = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="osop-bench-"))
    dbname = f"osop_test_bench_{secrets.token_hex(4)}"
    postgres_url = f"postgresql://postgres@127.0.0.1:5432/{dbname}"
    client_secret = secrets.token_urlsafe(24)
    api = ReferenceApiProcess(
        work / "api.sqlite3",
        records=args.records,
        seed=DATA_SEED,
        client_id=CLIENT_ID,
        client_secret=client_secret,
        max_batch_size=BEST_BATCH,
        startup_timeout=60 + args.records / 10_000,
    )
    unavailable: dict[str, str] = {}
    try:
        with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {dbname}")
        api.start()
        with RecordStore(api.db_path) as store:
            selected = store.count(status="pending", age_days_gt=30)

        home = work / "dagster_home"
        home.mkdir()
        shutil.copyfile(PROJECT_DIR / "dagster.yaml", home / "dagster.yaml")
        osop_env = {
            "DAGSTER_HOME": str(home),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "OSOP_DAGSTER_STORAGE_URL": parse_postgres_url(postgres_url).sqlalchemy_url,
            constants.ENV_POSTGRES_URL: postgres_url,
            constants.ENV_API_BASE_URL: api.base_url,
            SECRET_REF: f"{CLIENT_ID}:{client_secret}",
        }
        # Dagster creates its tables on first use; do that once, outside every measurement.
        subprocess.run(
            [sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().dispose()"],
            env={**os.environ, **osop_env},
            check=True,
            timeout=180,
            capture_output=True,
        )
        workflows = {
            "osop_default": SEED_WORKFLOW,
            "osop_best": best_workflow(work / "best" / SEED_WORKFLOW.name, args.records),
        }
        setup: dict[str, Any] = {
            "work": work,
            "records": args.records,
            "base_url": api.base_url,
            "api_db": api.db_path,
            "client_secret": client_secret,
            "postgres_url": postgres_url,
            "osop_env": osop_env,
            "workflows": workflows,
            "selected": selected,
            "timeout": timeout,
            "profile_dir": None,
        }
        if args.profile:
            setup["profile_dir"] = args.output_dir / "profiles"
            setup["profile_dir"].mkdir(parents=True, exist_ok=True)
        dlt_version = None
        if any(CONTENDERS[name].kind == "dlt" for name in names):
            setup["dlt_python"], dlt_version = dlt_python(args.dlt_venv, args.install_dlt, work)
            if setup["dlt_python"] is None:
                for name in names:
                    if CONTENDERS[name].kind == "dlt":
                        unavailable[name] = dlt_version
        runnable = [name for name in names if name not in unavailable]

        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeat):
            shift = repeat % len(runnable)
            for name in runnable[shift:] + runnable[:shift]:
                run = run_contender(CONTENDERS[name], repeat, setup)
                runs.append(run)
                sys.stderr.write(
                    f"repeat {repeat} {name}: wall {run['wall_s']} s, cpu {run['cpu_s']} s, "
                    f"rss {run['max_rss_mb']} MB, ok={run['ok']} {run['error'] or ''}\n"
                )
        add_ratios(runs)

        imports = None
        if args.import_workflows > 0:
            imports = import_time.measure(
                work / "generated",
                args.import_workflows,
                args.import_repeat,
                timeout=300,
                cwd=PROJECT_DIR,
            )
    finally:
        api.stop()
        with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        keep_logs = args.output_dir / "last-logs"
        shutil.rmtree(keep_logs, ignore_errors=True)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(work, keep_logs, ignore=shutil.ignore_patterns("*.sqlite3*", "*.json*"))
        shutil.rmtree(work, ignore_errors=True)

    json_sizes = [
        run["details"]["records_json_bytes"]
        for run in runs
        if run["ok"] and "records_json_bytes" in run["details"]
    ]
    json_bytes = json_sizes[0] if json_sizes else None
    summary = summarise(runs, runnable)
    document = {
        "schema_version": 1,
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "machine": {**machine(), "dlt": dlt_version},
        "settings": {
            "records": args.records,
            "repeat": args.repeat,
            "contenders": {name: CONTENDERS[name].description for name in names},
            "timeout_s": timeout,
        },
        "selected_records": selected,
        "records_json_bytes": json_bytes,
        "unavailable": unavailable,
        "runs": runs,
        "summary": summary,
        "import_time": imports,
        "targets": targets(summary, args.records, json_bytes, imports),
    }
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, indent=2)
    (args.output_dir / f"{stamp}-{args.records}.json").write_text(text, encoding="utf-8")
    (args.output_dir / f"latest-{args.records}.json").write_text(text, encoding="utf-8")

    sys.stdout.write(table(summary) + "\n")
    for name, reason in unavailable.items():
        sys.stdout.write(f"{name}: unavailable: {reason}\n")
    for target in document["targets"]:
        sys.stdout.write(f"{target}\n")
    if imports is not None:
        sys.stdout.write(f"import time: {imports}\n")
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
