"""osop_dagster as a user runs it: a cold process builds the definitions and executes the job.

The runner sets the environment a user would set (``DAGSTER_HOME`` with the project's
``dagster.yaml``, the Postgres URL, the API base URL, the client credentials in the workflow's
``secret_ref`` variable). The run is recorded in Postgres like any other; its step durations
and the api nodes' own figures (duration, requests) are read back from the event log.
"""

import time
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks._protocol import phase, read_spec, write_result
from osop_dagster import OsopTranslator, load_workflow
from osop_dagster._demo import execute_in_one_process

# The demo's console setting: one line per step and per HTTP call instead of every DEBUG event.
CONSOLE_AT_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _materializations(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict[str, Any]]:
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None:
            found[materialization.asset_key.path[-1]] = {
                key: value.value for key, value in materialization.metadata.items()
            }
    return found


def _step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
    ).records
    seconds: dict[str, float] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.step_key is not None:
            seconds[event.step_key] = round(event.event_specific_data.duration_ms / 1000, 4)
    return seconds


def main() -> None:
    """Execute the workflow's job once and write what the run recorded."""
    spec = read_spec()
    started = time.perf_counter()
    path = Path(spec["workflow_path"])
    job_name = OsopTranslator().get_job_name(load_workflow(path))

    run_config = CONSOLE_AT_INFO if spec.get("console_info") else None
    with dg.DagsterInstance.get() as instance:
        # The run builds the job from the file itself, as a run launched by Dagster does.
        result = execute_in_one_process([path], job_name, instance, run_config=run_config)
        run_seconds = time.perf_counter() - started
        figures = _materializations(instance, result.run_id)
        steps = _step_seconds(instance, result.run_id)
        events = len(instance.get_records_for_run(run_id=result.run_id, limit=1_000_000).records)

    failure = None
    if not result.success:
        failures = result.get_step_failure_events()
        failure = "the run failed"
        if failures:
            error = failures[0].step_failure_data.error
            failure = error.message.strip() if error is not None else str(failures[0].message)

    fetched = figures.get("records_list", {})
    update = figures.get("update_response", {})
    verification = figures.get("verification_result", {})
    write_result(
        spec,
        {
            "success": result.success,
            "failure": failure,
            "updated": update.get("osop/updated_count", 0),
            "verified": verification.get("osop/summary", {}).get("verified"),
            "records_fetched": fetched.get("osop/record_count", 0),
            "inner_seconds": round(time.perf_counter() - started, 4),
            "run_seconds": round(run_seconds, 4),
            "run_events": events,
            "step_seconds": steps,
            "phases": {
                "fetch": phase(
                    fetched.get("osop/duration_ms", 0) / 1000,
                    fetched.get("osop/requests", 0),
                    fetched.get("osop/record_count", 0),
                ),
                "batch": phase(
                    update.get("osop/duration_ms", 0) / 1000,
                    update.get("osop/requests", 0),
                    update.get("osop/items_sent", 0),
                ),
            },
        },
    )


if __name__ == "__main__":
    main()
