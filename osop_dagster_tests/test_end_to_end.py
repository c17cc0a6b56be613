"""The example workflow, materialized through Dagster against the reference API and Postgres."""

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from osop_dagster import constants
from osop_dagster._embedded_postgres import EmbeddedPostgres
from osop_dagster._postgres_url import parse_postgres_url
from osop_dagster.definitions import build_osop_definitions
from osop_dagster.io_manager import OsopJsonIOManager
from osop_reference_api import ReferenceApiProcess

pytestmark = pytest.mark.integration

JOB = "rest_api_workflow_job"
SECRET_REF = "SERVICE_CLIENT_CREDENTIALS"


@pytest.fixture
def seed_path(repo_root: Path) -> Path:
    return repo_root / "workflows" / "rest-api-workflow.osop.yaml"


@pytest.fixture
def postgres_instance(postgres_url: str) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose runs and event log live in the test Postgres database."""
    storage_url = parse_postgres_url(postgres_url).sqlalchemy_url
    overrides = {"storage": {"postgres": {"postgres_url": storage_url}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


@dataclass(frozen=True)
class _Reachable:
    """How the pipeline reaches a reference API started by the test itself."""

    base_url: str
    client_id: str
    client_secret: str

    @classmethod
    def of(cls, service: ReferenceApiProcess) -> "_Reachable":
        return cls(service.base_url, "osop-reference-client", service.client_secret)


def _point_at(monkeypatch: pytest.MonkeyPatch, api: Any, postgres_url: str) -> None:
    monkeypatch.setenv(constants.ENV_API_BASE_URL, api.base_url)
    monkeypatch.setenv(SECRET_REF, f"{api.client_id}:{api.client_secret}")
    monkeypatch.setenv(constants.ENV_POSTGRES_URL, postgres_url)


def _defs(seed_path: Path, storage: Path) -> dg.Definitions:
    return build_osop_definitions(
        [seed_path], resources={"io_manager": OsopJsonIOManager(base_dir=str(storage))}
    )


def _materializations(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict[str, Any]]:
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    return {
        record.asset_materialization.asset_key.path[-1]: {
            key: value.value for key, value in record.asset_materialization.metadata.items()
        }
        for record in records
        if record.asset_materialization is not None
    }


def test_seed_workflow_updates_exactly_the_selected_records(
    fresh_reference_api: Any,
    postgres_url: str,
    postgres_instance: dg.DagsterInstance,
    seed_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = fresh_reference_api
    store = api.store
    selected = set(store.ids_where(status="pending", age_days_gt=30))
    assert 0 < len(selected) < api.records
    _point_at(monkeypatch, api, postgres_url)

    job = _defs(seed_path, tmp_path / "storage").resolve_job_def(JOB)
    result = job.execute_in_process(instance=postgres_instance)

    assert result.success
    updated = {
        record_id for batch in store.batch_ids() for record_id in store.updated_by_batch(batch)
    }
    assert updated == selected
    assert store.count(version=2) == len(selected)
    assert store.count(version=1) == api.records - len(selected)

    verification = result.asset_value(dg.AssetKey(["rest-api-workflow", "verification_result"]))
    assert verification["verified"] is True
    assert verification["records_verified"] == len(selected)

    audit_id = result.asset_value(dg.AssetKey(["rest-api-workflow", "audit_id"]))
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT id, workflow_id, node_id, figures FROM osop_audit WHERE run_id = %s",
            (result.run_id,),
        ).fetchall()
    assert len(rows) == 1
    row_id, workflow_id, node_id, figures = rows[0]
    assert (row_id, workflow_id, node_id) == (audit_id, "rest-api-workflow", "log_audit")
    assert figures["update_response"]["updated"] == len(selected)
    assert figures["verification_result"]["records_verified"] == len(selected)

    metadata = _materializations(postgres_instance, result.run_id)
    assert metadata["records_list"][constants.META_RECORD_COUNT] == api.records
    assert metadata["filtered_records"][constants.META_RECORD_COUNT] == len(selected)
    assert metadata["update_response"][constants.META_UPDATED_COUNT] == len(selected)
    assert metadata["update_response"][constants.META_REJECTED_COUNT] == 0
    assert metadata["access_token"][constants.META_TOKEN_TYPE].lower() == "bearer"

    assert api.stats()["requests"]["tokens_issued"] == 1, "one token serves the whole run"


def test_access_token_is_not_stored_in_plain_text(
    fresh_reference_api: Any,
    postgres_url: str,
    postgres_instance: dg.DagsterInstance,
    seed_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = fresh_reference_api
    _point_at(monkeypatch, api, postgres_url)
    storage = tmp_path / "storage"

    job = _defs(seed_path, storage).resolve_job_def(JOB)
    result = job.execute_in_process(instance=postgres_instance)
    assert result.success

    tokens = api.live_tokens()  # the run's, and those of earlier tests on this service
    assert tokens
    stored = "".join(path.read_text() for path in storage.rglob("*.json"))
    events = postgres_instance.get_records_for_run(run_id=result.run_id, limit=10_000).records
    logged = "\n".join(repr(record.event_log_entry) for record in events)
    lease = result.asset_value(dg.AssetKey(["rest-api-workflow", "access_token"]))

    assert "access_token" not in lease
    assert len(stored) > 1000 and len(events) > 20
    for secret in (*tokens, api.client_secret):
        assert secret not in stored
        assert secret not in logged


def test_run_that_starts_after_the_token_expired_renews_it(
    postgres_url: str,
    postgres_instance: dg.DagsterInstance,
    seed_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ReferenceApiProcess(tmp_path / "api.sqlite3", records=150, token_ttl=2.0) as service:
        _point_at(monkeypatch, _Reachable.of(service), postgres_url)
        defs = _defs(seed_path, tmp_path / "storage")
        job = defs.resolve_job_def(JOB)
        token_key = dg.AssetKey(["rest-api-workflow", "access_token"])
        first = job.execute_in_process(instance=postgres_instance, asset_selection=[token_key])
        assert first.success

        time.sleep(3)  # outlive the token's two seconds
        rest = [key for key in defs.resolve_all_asset_keys() if key != token_key]
        second = job.execute_in_process(instance=postgres_instance, asset_selection=rest)

        assert second.success
        renewed = _materializations(postgres_instance, second.run_id)["records_list"]
        assert renewed[constants.META_TOKEN_RENEWED] is True
        with service.open_store() as store:
            assert store.count(version=2) == len(store.ids_where(status="pending", age_days_gt=30))


def test_records_rejected_by_the_batch_fail_its_check_and_are_audited(
    fresh_reference_api: Any,
    postgres_url: str,
    postgres_instance: dg.DagsterInstance,
    seed_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run completes, verification and audit included; the batch's check fails, listed."""
    api = fresh_reference_api
    selected = sorted(api.store.ids_where(status="pending", age_days_gt=30))
    refused = selected[:3]
    api.set_faults({"kind": "reject", "ids": refused})
    _point_at(monkeypatch, api, postgres_url)

    result = (
        _defs(seed_path, tmp_path / "storage")
        .resolve_job_def(JOB)
        .execute_in_process(instance=postgres_instance)
    )

    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "no_rejected_records"
    assert evaluation.passed is False
    assert evaluation.metadata[constants.META_REJECTED_COUNT].value == 3
    receipt = result.asset_value(dg.AssetKey(["rest-api-workflow", "update_response"]))
    assert sorted(item["id"] for item in receipt["rejected"]) == refused
    assert {item["reason"] for item in receipt["rejected"]} == {"rejected_by_fault"}
    assert api.store.count(version=2) == len(selected) - 3
    assert all(api.store.get(record_id)["version"] == 1 for record_id in refused)
    with psycopg.connect(postgres_url) as connection:
        (figures,) = connection.execute(
            "SELECT figures FROM osop_audit WHERE run_id = %s", (result.run_id,)
        ).fetchone()
    assert figures["update_response"]["rejected_count"] == 3


def test_audit_survives_a_postgres_restart_and_a_rerun_sends_no_batch_again(
    fresh_reference_api: Any, seed_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart in the retry window is absorbed; an outage fails loudly; a rerun sends no batch."""
    api = fresh_reference_api
    # The embedded server runs as another OS user under root: its folder must be reachable.
    folder = Path(tempfile.mkdtemp(prefix="osop-audit-restart-"))
    folder.chmod(0o755)
    server = EmbeddedPostgres(folder / "pg", database="osop_audit")
    try:
        url = server.start()
        _point_at(monkeypatch, api, url)
        job = _defs(seed_path, tmp_path / "storage").resolve_job_def(JOB)
        audit = [dg.AssetKey(["rest-api-workflow", "audit_id"])]
        before_audit = [key for key in job.asset_layer.selected_asset_keys if key not in audit]
        with dg.instance_for_test() as instance:
            assert job.execute_in_process(instance=instance, asset_selection=before_audit).success
            batch_calls = api.stats()["requests"]["batch_calls"]

            server.stop()
            restart = threading.Timer(1.0, server.start)
            restart.start()
            survived = job.execute_in_process(instance=instance, asset_selection=audit)
            restart.join()

            server.stop()
            down = job.execute_in_process(
                instance=instance, asset_selection=audit, raise_on_error=False
            )
            server.start()
            rerun = job.execute_in_process(instance=instance, asset_selection=audit)

        assert survived.success
        assert not down.success
        (failure,) = down.get_step_failure_events()
        description = failure.step_failure_data.user_failure_data.description
        assert "could not write to Postgres" in description
        assert "re-execute the run from this step" in description
        assert rerun.success
        assert api.stats()["requests"]["batch_calls"] == batch_calls
        with psycopg.connect(url) as connection:
            rows = connection.execute("SELECT run_id FROM osop_audit ORDER BY id").fetchall()
        assert [row[0] for row in rows] == [survived.run_id, rerun.run_id]
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_day_with_nothing_to_update_succeeds_and_is_audited(
    postgres_url: str,
    postgres_instance: dg.DagsterInstance,
    seed_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ReferenceApiProcess(tmp_path / "empty.sqlite3", records=0) as service:
        _point_at(monkeypatch, _Reachable.of(service), postgres_url)
        job = _defs(seed_path, tmp_path / "storage").resolve_job_def(JOB)
        result = job.execute_in_process(instance=postgres_instance)

    assert result.success
    assert result.asset_value(dg.AssetKey(["rest-api-workflow", "filtered_records"])) == []
    verification = result.asset_value(dg.AssetKey(["rest-api-workflow", "verification_result"]))
    assert verification["skipped"] is True
    with psycopg.connect(postgres_url) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM osop_audit WHERE run_id = %s", (result.run_id,)
        ).fetchone()
    assert count == 1


def test_a_tampered_token_lease_cannot_send_credentials_elsewhere(
    fresh_reference_api: Any,
    postgres_url: str,
    postgres_instance: dg.DagsterInstance,
    seed_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease is read from asset storage; its token URL must be the workflow's own."""
    _point_at(monkeypatch, fresh_reference_api, postgres_url)
    storage = tmp_path / "storage"
    job = _defs(seed_path, storage).resolve_job_def(JOB)
    token_key = dg.AssetKey(["rest-api-workflow", "access_token"])
    assert job.execute_in_process(instance=postgres_instance, asset_selection=[token_key]).success
    lease_file = storage / "rest-api-workflow" / "access_token.json"
    lease = json.loads(lease_file.read_text())
    lease["token_url"] = "https://collector.test/oauth/token"
    lease_file.write_text(json.dumps(lease))

    result = job.execute_in_process(
        instance=postgres_instance,
        asset_selection=[dg.AssetKey(["rest-api-workflow", "records_list"])],
        raise_on_error=False,
    )

    assert not result.success
    (failure,) = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert "collector.test" in description and "node 'authenticate' asks" in description
