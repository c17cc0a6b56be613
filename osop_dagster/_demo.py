"""The main job: the example workflow, end to end, on embedded defaults."""

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from osop_dagster import constants
from osop_dagster._heap import tune_cycle_collector
from osop_dagster._local_stack import (
    STATE_DIR_NAME,
    get_instance,
    instance_environment,
    local_postgres,
    patched_environ,
    reference_api,
)
from osop_dagster.definitions import build_osop_definitions
from osop_dagster.errors import OsopConfigError
from osop_dagster.loader import load_workflow
from osop_dagster.translator import OsopTranslator

DEFAULT_WORKFLOW = Path("workflows") / "rest-api-workflow.osop.yaml"

# One line per step and per HTTP call on the console; the DEBUG events stay in the event log.
_CONSOLE_AT_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass(frozen=True)
class DemoSummary:
    """What one demo run did, for the command line to print."""

    run_id: str
    success: bool
    seconds: float
    postgres: str
    api_base_url: str
    figures: dict[str, Any]
    failure: str | None


def run_demo(
    project_dir: Path, workflow_path: Path | None = None, records: int = 10_000
) -> DemoSummary:
    """Materializes every asset of the example workflow against the reference API.

    Postgres is ``OSOP_POSTGRES_URL`` when set, else an embedded server under
    ``<project_dir>/.osop_dagster``; the run is recorded there, so ``osop-dagster ui`` shows it.
    """
    started = time.perf_counter()
    path = workflow_path or project_dir / DEFAULT_WORKFLOW
    workflow = load_workflow(path)
    secret_refs = sorted(
        {
            node.security.secret_ref
            for node in workflow.nodes
            if node.security and node.security.secret_ref
        }
    )
    state_dir = project_dir / STATE_DIR_NAME

    with local_postgres(state_dir) as postgres:
        environment = instance_environment(project_dir, state_dir, postgres.url)
        with (
            reference_api(state_dir, secret_refs, records) as api,
            patched_environ({**environment, **api.environment}),
        ):
            job_name = OsopTranslator().get_job_name(workflow)
            with get_instance() as instance:
                result = execute_in_one_process(
                    [path], job_name, instance, run_config=_CONSOLE_AT_INFO
                )
                figures = _figures(instance, result.run_id)
            failure = None if result.success else _failure_reason(result)

    return DemoSummary(
        run_id=result.run_id,
        success=result.success,
        seconds=time.perf_counter() - started,
        postgres="embedded" if postgres.embedded else "OSOP_POSTGRES_URL",
        api_base_url=api.base_url,
        figures=figures,
        failure=failure,
    )


def job_from_files(paths: Sequence[str], job_name: str) -> dg.JobDefinition:
    """The job ``job_name`` of the workflows in ``paths``: how a run rebuilds its job.

    What the run process holds by now (Dagster, the instance, the definitions) stays to its
    end, so it is kept out of the cycle collector's walks (see :mod:`osop_dagster._heap`).
    """
    job = build_osop_definitions([Path(path) for path in paths]).resolve_job_def(job_name)
    tune_cycle_collector()
    return job


def execute_in_one_process(
    paths: Sequence[Path],
    job_name: str,
    instance: dg.DagsterInstance,
    run_config: Mapping[str, Any] | None = None,
) -> dg.JobExecutionResult:
    """Runs a workflow's job in this process on ``instance``, keeping one storage connection.

    Every log line of a run is an event in the instance's storage; with Postgres each would
    otherwise open a connection of its own, which dominated the run time of large workflows.
    The job runs as a persistent instance runs it, rebuilt from its files: unlike
    ``execute_in_process``, which keeps every step's output in memory until the run ends, a
    step's records are freed once they are stored.
    """
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=2)
    job = dg.build_reconstructable_job(
        __name__,
        job_from_files.__name__,
        reconstructable_args=(tuple(str(path) for path in paths), job_name),
    )
    return dg.execute_job(job, instance, run_config=dict(run_config or {}))


def _failure_reason(result: dg.JobExecutionResult) -> str:
    """The sentence the failed step gave, rather than Dagster's generic step message."""
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data is not None and data.user_failure_data and data.user_failure_data.description:
            return f"{event.step_key}: {data.user_failure_data.description}"
        if data is not None and data.error is not None:
            return f"{event.step_key}: {data.error.message.strip()}"
    event = result.get_run_failure_event()
    return event.message if event is not None and event.message else "the run failed"


def _figures(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """Counts from the run's materializations, keyed by asset name."""
    figures: dict[str, Any] = {}
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        name = materialization.asset_key.path[-1]
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        flat = {**metadata, **metadata.get(constants.META_SUMMARY, {})}
        figures[name] = {
            key.removeprefix("osop/"): value
            for key, value in flat.items()
            if isinstance(value, int | float | str | bool)
        }
    return figures


def require_project_dir(project_dir: Path) -> Path:
    """Checks that ``project_dir`` holds the example workflow."""
    if not (project_dir / DEFAULT_WORKFLOW).is_file():
        raise OsopConfigError(
            f"No {DEFAULT_WORKFLOW} under {project_dir}: run this command from the osop_dagster "
            "project folder, or pass --project-dir."
        )
    return project_dir
