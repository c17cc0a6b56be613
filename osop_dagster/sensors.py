"""Error and fallback edges as run-failure sensors that launch one bounded recovery run.

For an edge ``from: batch_update, to: authenticate, mode: error, when: "update_response.status
== 401"``, a run of the workflow's job that fails at ``batch_update`` with an HTTP 401 makes the
sensor request one run that materializes the edge's target (``authenticate``), then the failed
node and everything downstream of it. Assets upstream of the failure that are still valid, such
as the fetched records, are loaded from storage instead of being fetched again. A ``fallback``
edge runs its target in place of the failed node, then everything downstream of the target.

The condition is CEL, evaluated against:

- each output of the failed node by name, as ``{"status", "headers", "body", "message"}`` when
  the node is an API call (``update_response.status == 401``);
- ``error``: ``{"node", "message", "status"}`` of the failure;
- ``run``: ``{"id", "job", "tags", "recovery_attempt"}``.

One failure launches one recovery: the run key names the failed run and the edge, so repeated
ticks or several daemons cannot launch it twice. A recovery run that fails the same way may be
recovered again, up to ``OSOP_MAX_RECOVERIES`` attempts (2 by default); past that the sensor
tags the failed run with the reason and launches nothing.
"""

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import dagster as dg

from osop_dagster import constants
from osop_dagster.model import OsopEdge, OsopWorkflow

ENV_MAX_RECOVERIES: Final = "OSOP_MAX_RECOVERIES"
DEFAULT_MAX_RECOVERIES: Final = 2
RECOVERY_EDGE_MODES: Final = frozenset({"error", "fallback"})

TAG_RECOVERS_RUN: Final = "osop/recovers_run"
TAG_RECOVERY_EDGE: Final = "osop/recovery_edge"
TAG_RECOVERY_ATTEMPT: Final = "osop/recovery_attempt"
TAG_RECOVERY: Final = "osop/recovery"
# Dagster groups runs that share a root run id, so the UI shows a failed run and its recovery
# together and links one to the other.
_TAG_ROOT_RUN: Final = "dagster/root_run_id"
_TAG_PARENT_RUN: Final = "dagster/parent_run_id"


@dataclass(frozen=True)
class RecoveryPlan:
    """What an error or fallback edge re-runs, fixed when definitions load."""

    workflow_id: str
    edge: OsopEdge
    condition: Any
    """The compiled CEL program of ``when``, or ``None`` when the edge always applies."""
    source_step: str
    """Step key of the edge's ``from`` node in the workflow's job."""
    source_outputs: tuple[str, ...]
    asset_selection: tuple[dg.AssetKey, ...]
    """The target node's assets, then the failed node's and everything downstream of it."""


def compile_condition(expression: str) -> Any:
    """Compiles a CEL condition; raises ``ValueError`` with the parser's reason."""
    # Imported on first use: the package loads its interactive shell too (50 ms), which a code
    # location whose edges have no conditions never needs.
    import cel

    return cel.compile(expression)


def max_recoveries() -> int:
    """How many recovery runs may follow one another for the same failure."""
    raw = os.environ.get(ENV_MAX_RECOVERIES, "")
    return int(raw) if raw.strip().isdigit() else DEFAULT_MAX_RECOVERIES


def build_recovery_sensor(
    workflow: OsopWorkflow, plan: RecoveryPlan, job: Any, sensor_name: str
) -> dg.SensorDefinition:
    """A run-failure sensor that launches ``plan``'s recovery run, running by default."""
    edge = plan.edge
    label = edge.describe()

    @dg.run_failure_sensor(
        name=sensor_name,
        monitored_jobs=[job],
        request_job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Recovers runs of {workflow.name!r} that fail at node {edge.from_node!r}: "
            f"{label}" + (f" when {edge.when}." if edge.when else ".")
        ),
    )
    def _recover(context: dg.RunFailureSensorContext) -> dg.RunRequest | dg.SkipReason:
        run = context.dagster_run
        failures = [
            event
            for event in context.get_step_failure_events()
            if event.step_key == plan.source_step
        ]
        if not failures:
            return dg.SkipReason(f"Run {run.run_id} did not fail at node {edge.from_node!r}.")

        attempt = int(run.tags.get(TAG_RECOVERY_ATTEMPT, "0")) + 1
        condition_context = failure_context(plan, run, failures[0], attempt)
        if plan.condition is not None:
            try:
                holds = bool(plan.condition.execute(condition_context))
            except (RuntimeError, ValueError, TypeError) as error:
                return dg.SkipReason(
                    f"The condition {edge.when!r} of {label} could not be evaluated on run "
                    f"{run.run_id}: {error}"
                )
            if not holds:
                return dg.SkipReason(f"The condition {edge.when!r} of {label} does not hold.")

        limit = max_recoveries()
        if attempt > limit:
            reason = (
                f"not launched: {limit} recovery runs through {label} already failed; "
                "fix the cause and re-execute the run"
            )
            context.instance.add_run_tags(run.run_id, {TAG_RECOVERY: reason})
            return dg.SkipReason(f"Run {run.run_id}: recovery {reason}.")

        root = run.tags.get(_TAG_ROOT_RUN, run.run_id)
        context.instance.add_run_tags(
            run.run_id, {TAG_RECOVERY: f"launched through {label} (attempt {attempt})"}
        )
        return dg.RunRequest(
            run_key=f"{run.run_id}:edge-{edge.index}",
            asset_selection=list(plan.asset_selection),
            tags={
                TAG_RECOVERS_RUN: run.run_id,
                TAG_RECOVERY_EDGE: label,
                TAG_RECOVERY_ATTEMPT: str(attempt),
                _TAG_ROOT_RUN: root,
                _TAG_PARENT_RUN: run.run_id,
            },
        )

    return _recover


def failure_context(
    plan: RecoveryPlan, run: dg.DagsterRun, failure: dg.DagsterEvent, attempt: int
) -> dict[str, Any]:
    """The CEL context of a failure at ``plan``'s source node (see the module docstring)."""
    data = failure.step_failure_data
    user = data.user_failure_data if data is not None else None
    metadata: Mapping[str, Any] = {
        key: getattr(value, "value", value)
        for key, value in (user.metadata if user else {}).items()
    }
    message = (user.description if user else None) or (
        data.error.message if data and data.error else ""
    )
    status = metadata.get(constants.META_STATUS)
    answer = {
        "status": status if isinstance(status, int) else 0,
        "headers": _as_mapping(metadata.get(constants.META_ERROR_HEADERS)),
        "body": metadata.get(constants.META_ERROR_BODY),
        "message": message or "",
    }
    context: dict[str, Any] = {name: answer for name in plan.source_outputs}
    context["error"] = {
        "node": plan.edge.from_node,
        "message": message or "",
        "status": answer["status"],
    }
    context["run"] = {
        "id": run.run_id,
        "job": run.job_name,
        "tags": dict(run.tags),
        "recovery_attempt": attempt,
    }
    return context


def _as_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def recovery_selection(
    target_keys: Sequence[dg.AssetKey], rerun_keys: Sequence[dg.AssetKey]
) -> tuple[dg.AssetKey, ...]:
    """The target's assets, then the re-run ones, each once."""
    return tuple(dict.fromkeys([*target_keys, *rerun_keys]))
