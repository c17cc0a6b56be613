"""Error edges as run-failure sensors: the example's "re-authenticate on 401" recovery."""

from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from osop_dagster import constants
from osop_dagster.compiler import build_osop_assets
from osop_dagster.definitions import build_osop_definitions, build_osop_resources
from osop_dagster.errors import OsopSpecError
from osop_dagster.io_manager import OsopJsonIOManager
from osop_dagster.loader import load_workflow_text
from osop_dagster.sensors import TAG_RECOVERS_RUN, TAG_RECOVERY, TAG_RECOVERY_ATTEMPT

JOB = "rest_api_workflow_job"
SENSOR = "rest_api_workflow__batch_update_error_to_authenticate_6"
KEY = "rest-api-workflow"
BEFORE_BATCH = [
    dg.AssetKey([KEY, name]) for name in ("access_token", "records_list", "filtered_records")
]
FROM_BATCH = [
    dg.AssetKey([KEY, name]) for name in ("update_response", "verification_result", "audit_id")
]


@pytest.fixture
def defs(
    repo_root: Path,
    tmp_path: Path,
    fresh_reference_api: Any,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dg.Definitions:
    api = fresh_reference_api
    monkeypatch.setenv(constants.ENV_API_BASE_URL, api.base_url)
    monkeypatch.setenv("SERVICE_CLIENT_CREDENTIALS", f"{api.client_id}:{api.client_secret}")
    monkeypatch.setenv(constants.ENV_POSTGRES_URL, postgres_url)
    return build_osop_definitions(
        [repo_root / "workflows" / "rest-api-workflow.osop.yaml"],
        resources={"io_manager": OsopJsonIOManager(base_dir=str(tmp_path / "storage"))},
    )


def _fail_at_batch_with_401(
    defs: dg.Definitions, instance: dg.DagsterInstance, api: Any, tags: dict[str, str] | None = None
) -> dg.ExecuteInProcessResult:
    """Fetches and filters, then revokes every token so that the batch update gets a 401."""
    job = defs.resolve_job_def(JOB)
    assert job.execute_in_process(instance=instance, asset_selection=BEFORE_BATCH).success
    httpx.post(f"{api.base_url}/_admin/revoke-tokens", timeout=10).raise_for_status()
    failed = job.execute_in_process(
        instance=instance, asset_selection=FROM_BATCH, raise_on_error=False, tags=tags or {}
    )
    assert not failed.success
    return failed


def _evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, failed: Any) -> Any:
    sensor = defs.resolve_sensor_def(SENSOR)
    context = dg.build_run_status_sensor_context(
        sensor_name=SENSOR,
        dagster_event=failed.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=failed.dagster_run,
    ).for_run_failure()
    return sensor(context)


@pytest.mark.integration
def test_401_at_the_batch_update_launches_one_recovery_that_reauthenticates(
    defs: dg.Definitions, fresh_reference_api: Any
) -> None:
    api = fresh_reference_api
    selected = set(api.store.ids_where(status="pending", age_days_gt=30))
    with dg.instance_for_test() as instance:
        failed = _fail_at_batch_with_401(defs, instance, api)
        pages_before = api.stats()["requests"]["record_pages"]

        request = _evaluate(defs, instance, failed)
        again = _evaluate(defs, instance, failed)

        assert isinstance(request, dg.RunRequest)
        assert request.run_key == again.run_key, "one failure, one run key, whatever the ticks"
        assert set(request.asset_selection) == {dg.AssetKey([KEY, "access_token"]), *FROM_BATCH}
        assert request.tags[TAG_RECOVERS_RUN] == failed.run_id
        assert request.tags[TAG_RECOVERY_ATTEMPT] == "1"
        assert "launched" in instance.get_run_by_id(failed.run_id).tags[TAG_RECOVERY]

        recovery = defs.resolve_job_def(JOB).execute_in_process(
            instance=instance, asset_selection=request.asset_selection, tags=request.tags
        )

    assert recovery.success
    assert api.stats()["requests"]["record_pages"] == pages_before, "records were not refetched"
    assert api.stats()["requests"]["tokens_issued"] == 2
    updated = {rid for batch in api.store.batch_ids() for rid in api.store.updated_by_batch(batch)}
    assert updated == selected
    assert api.store.count(version=2) == len(selected), "every record updated exactly once"


@pytest.mark.integration
def test_recovery_stops_after_the_configured_number_of_attempts(
    defs: dg.Definitions, fresh_reference_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSOP_MAX_RECOVERIES", "1")
    with dg.instance_for_test() as instance:
        failed = _fail_at_batch_with_401(
            defs, instance, fresh_reference_api, tags={TAG_RECOVERY_ATTEMPT: "1"}
        )
        answer = _evaluate(defs, instance, failed)
        reason = instance.get_run_by_id(failed.run_id).tags[TAG_RECOVERY]

    assert isinstance(answer, dg.SkipReason)
    assert "1 recovery runs" in reason and "already failed" in reason


def test_condition_that_is_not_cel_is_a_located_error() -> None:
    text = """\
osop_version: "2.0"
id: flaky
name: Flaky
nodes:
  - {id: a, type: cli, purpose: A, runtime: {command: "jq '1'"}, outputs: [one]}
  - {id: b, type: cli, purpose: B, runtime: {command: "jq '2'"}, inputs: [one]}
edges:
  - {from: a, to: b}
  - {from: b, to: a, mode: error, when: "one.status == 401 AND true"}
"""
    workflow = load_workflow_text(text, path="flaky.osop.yaml")
    with pytest.raises(OsopSpecError) as raised:
        build_osop_assets(workflow)

    message = str(raised.value)
    assert "flaky.osop.yaml, line 9, edge 2 (b -> a)" in message
    assert "not valid CEL" in message


def test_fallback_edge_runs_its_target_in_place_of_the_failed_node(tmp_path: Path) -> None:
    text = """\
osop_version: "2.0"
id: payments
name: Payments
nodes:
  - {id: primary, type: cli, purpose: Pay, runtime: {command: "jq -n '.missing | keys'"},
     outputs: [receipt]}
  - {id: backup, type: cli, purpose: Pay otherwise, runtime: {command: "jq -n '{ok: true}'"},
     outputs: [backup_receipt]}
  - {id: notify, type: cli, purpose: Tell, runtime: {command: "jq '.ok'"},
     inputs: [backup_receipt], outputs: [told]}
edges:
  - {from: primary, to: backup, mode: fallback}
  - {from: backup, to: notify}
"""
    workflow = load_workflow_text(text, path="payments.osop.yaml")
    compiled = build_osop_assets(workflow)
    resources = {"io_manager": OsopJsonIOManager(base_dir=str(tmp_path))}
    defs = dg.Definitions(
        assets=compiled.assets,
        jobs=[compiled.job],
        sensors=compiled.sensors,
        resources={**build_osop_resources(), **resources},
    )
    job = defs.resolve_job_def("payments_job")
    (sensor,) = compiled.sensors

    with dg.instance_for_test() as instance:
        failed = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey(["payments", "receipt"])],
            raise_on_error=False,
        )
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=failed.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=failed.dagster_run,
        ).for_run_failure()
        request = sensor(context)
        recovery = job.execute_in_process(
            instance=instance, asset_selection=request.asset_selection, tags=request.tags
        )

    assert not failed.success
    assert [key.path[-1] for key in request.asset_selection] == ["backup_receipt", "told"]
    assert recovery.success
    assert recovery.asset_value(dg.AssetKey(["payments", "told"])) is True
