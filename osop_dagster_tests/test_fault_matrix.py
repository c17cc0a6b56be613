"""End-to-end fault matrix of issue #3: every fault the reference API can inject, one run each.

Each test runs the seed workflow in-process against the reference API with one fault switch on,
evaluates the recovery sensor as the daemon would, runs the recovery it asks for, and then checks
the outcome from the service's own store (every eligible record updated exactly once, none
twice), the audit table, the run statuses and the service's request counters.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import dagster as dg
import psycopg
import pytest
import stamina

from osop_dagster import constants
from osop_dagster.definitions import build_osop_definitions
from osop_dagster.io_manager import OsopJsonIOManager
from osop_dagster.resources import _oauth2
from osop_dagster.resources.http import OsopHttpResource
from osop_dagster.sensors import TAG_RECOVERS_RUN, TAG_RECOVERY_ATTEMPT
from osop_dagster_tests.fixtures.reference_api import ReferenceApi

pytestmark = pytest.mark.integration

JOB: Final = "rest_api_workflow_job"
SENSOR: Final = "rest_api_workflow__batch_update_error_to_authenticate_6"
KEY: Final = "rest-api-workflow"
SECRET_REF: Final = "SERVICE_CLIENT_CREDENTIALS"
STEP_PREFIX: Final = "rest_api_workflow__"
# A healthy run on the fixture's 2,000 records: 100 records a page, and the 500 selected records
# go out in chunks of 100 (see CHUNKED).
PAGES: Final = 20
CHUNKS: Final = 5


def asset(name: str) -> dg.AssetKey:
    """The asset key of one output of the seed workflow."""
    return dg.AssetKey([KEY, name])


@dataclass
class Outcome:
    """A run, and the recovery the sensor launched for it (if any)."""

    run: dg.ExecuteInProcessResult
    decision: dg.RunRequest | dg.SkipReason | None = None
    recovery: dg.ExecuteInProcessResult | None = None

    @property
    def final_success(self) -> bool:
        """Whether the run or its recovery ended well."""
        return self.run.success or (self.recovery is not None and self.recovery.success)

    @property
    def run_ids(self) -> list[str]:
        """The run's id, then the recovery's."""
        return [self.run.run_id] + ([self.recovery.run_id] if self.recovery else [])


@dataclass
class Harness:
    """The seed workflow's definitions on one Dagster instance, aimed at the reference API."""

    api: ReferenceApi
    instance: dg.DagsterInstance
    defs: dg.Definitions
    postgres_url: str

    @property
    def job(self) -> Any:
        """The workflow's job."""
        return self.defs.resolve_job_def(JOB)

    def selected(self) -> set[int]:
        """The records the workflow's filter selects on the pristine data set."""
        return set(self.api.store.ids_where(status="pending", age_days_gt=30))

    def run(self, **kwargs: Any) -> dg.ExecuteInProcessResult:
        """Run the job (or a selection of it) without raising on failure."""
        return self.job.execute_in_process(instance=self.instance, raise_on_error=False, **kwargs)

    def evaluate_sensor(
        self, failed: dg.ExecuteInProcessResult
    ) -> dg.RunRequest | dg.SkipReason | None:
        """One tick of the recovery sensor on ``failed``, as the daemon would evaluate it."""
        sensor = self.defs.resolve_sensor_def(SENSOR)
        context = dg.build_run_status_sensor_context(
            sensor_name=SENSOR,
            dagster_event=failed.get_run_failure_event(),
            dagster_instance=self.instance,
            dagster_run=failed.dagster_run,
        ).for_run_failure()
        return sensor(context)

    def run_with_recovery(self, **kwargs: Any) -> Outcome:
        """Run the job; when it fails, launch the recovery the sensor asks for, once."""
        outcome = Outcome(self.run(**kwargs))
        if outcome.run.success:
            return outcome
        outcome.decision = self.evaluate_sensor(outcome.run)
        if isinstance(outcome.decision, dg.RunRequest):
            outcome.recovery = self.run(
                asset_selection=list(outcome.decision.asset_selection or []),
                tags=dict(outcome.decision.tags),
            )
        return outcome

    def updated_ids(self) -> list[int]:
        """Every record id some batch updated, once per batch that claims it last."""
        store = self.api.store
        return [rid for batch in store.batch_ids() for rid in store.updated_by_batch(batch)]

    def audit_rows(self, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        """``(run_id, node_id)`` of every audit row written by these runs."""
        with psycopg.connect(self.postgres_url) as connection:
            exists = connection.execute("SELECT to_regclass('osop_audit')").fetchone()
            if exists is None or exists[0] is None:
                return []
            rows = connection.execute(
                "SELECT run_id, node_id FROM osop_audit WHERE run_id = ANY(%s)", (list(run_ids),)
            ).fetchall()
        return [(str(run_id), str(node_id)) for run_id, node_id in rows]

    def requests(self) -> dict[str, int]:
        """The service's request counters."""
        return dict(self.api.stats()["requests"])

    def assert_invariants(
        self, outcome: Outcome, *, selected: set[int], rejected: set[int] = frozenset()
    ) -> None:
        """Nothing applied twice; all applied once when the run or its recovery succeeded."""
        store = self.api.store
        updated = self.updated_ids()
        assert store.count(version=3) == 0, "no record was updated twice"
        assert len(updated) == len(set(updated)), "no record is claimed by two batches"
        assert set(updated) <= selected - rejected, "only eligible records were updated"
        if outcome.final_success:
            assert set(updated) == selected - rejected
            assert store.count(version=2) == len(selected - rejected)

        rows = self.audit_rows(outcome.run_ids)
        assert len(rows) == len(set(rows)), "at most one audit row per run and node"
        reached = [
            result.run_id
            for result in (outcome.run, outcome.recovery)
            if result is not None and _succeeded_step(result, "log_audit")
        ]
        assert sorted(run_id for run_id, _ in rows) == sorted(reached)
        assert all(node == "log_audit" for _, node in rows)


def _succeeded_step(result: dg.ExecuteInProcessResult, node: str) -> bool:
    return any(
        event.step_key == STEP_PREFIX + node
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_SUCCESS
    )


def failure_message(result: dg.ExecuteInProcessResult, node: str) -> str:
    """The description of the failure of ``node``'s step in ``result``."""
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        if event.step_key != STEP_PREFIX + node:
            continue
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        if user is not None and user.description:
            return user.description
        return data.error.message if data and data.error else ""
    raise AssertionError(f"Node {node!r} did not fail in run {result.run_id}.")


def run_logs(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every log line the run wrote through ``context.log``."""
    return "\n".join(entry.user_message for entry in instance.all_logs(run_id))


def materialized(result: dg.ExecuteInProcessResult, name: str) -> dict[str, Any]:
    """The metadata of the run's materialization of one asset."""
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == asset(name):
            return {key: value.value for key, value in materialization.metadata.items()}
    raise AssertionError(f"Run {result.run_id} did not materialize {name!r}.")


def workflow_copy(source: Path, folder: Path, replacements: Mapping[str, str]) -> Path:
    """The seed workflow with some lines replaced, written under ``folder``."""
    text = source.read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} must occur once in the seed workflow"
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    target.write_text(text)
    return target


# The ~500 selected records would fit in one chunk of the default 500; chunks of 100 make a
# failure between chunks, and the replay of the chunks already applied, possible.
CHUNKED: Final = {
    "      method: PATCH\n": "      method: PATCH\n      batch:\n        size: 100\n",
}


@pytest.fixture
def seed_path(repo_root: Path, tmp_path: Path) -> Path:
    """The seed workflow, its batch update sent in chunks of 100 records."""
    seed = repo_root / "workflows" / "rest-api-workflow.osop.yaml"
    return workflow_copy(seed, tmp_path / "chunked", CHUNKED)


@pytest.fixture(autouse=True)
def _no_real_backoff() -> Iterator[None]:
    """Retries still happen as configured, without sleeping through the seed's backoffs."""
    _oauth2.clear_token_cache()
    with stamina.set_testing(True, attempts=10, cap=True):
        yield
    _oauth2.clear_token_cache()


@pytest.fixture
def make_harness(
    fresh_reference_api: ReferenceApi,
    postgres_url: str,
    seed_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """Builds a harness on a fresh instance, from the seed workflow or a copy of it."""
    api = fresh_reference_api
    monkeypatch.setenv(constants.ENV_API_BASE_URL, api.base_url)
    monkeypatch.setenv(SECRET_REF, f"{api.client_id}:{api.client_secret}")
    monkeypatch.setenv(constants.ENV_POSTGRES_URL, postgres_url)

    with dg.instance_for_test() as instance:

        def make(workflow: Path | None = None, **resources: Any) -> Harness:
            defs = build_osop_definitions(
                [workflow or seed_path],
                resources={
                    "io_manager": OsopJsonIOManager(base_dir=str(tmp_path / "storage")),
                    **resources,
                },
            )
            return Harness(api, instance, defs, postgres_url)

        yield make


@pytest.fixture
def harness(make_harness: Any) -> Harness:
    return make_harness()


# -- 1. token that expires after N uses -----------------------------------------------------------


def test_token_used_up_at_the_batch_is_renewed_by_one_recovery_run(harness: Harness) -> None:
    selected = harness.selected()
    # 20 record pages and 2 chunks use the token up; the third chunk gets a 401.
    harness.api.set_faults({"kind": "token_expiry", "uses": PAGES + 2})

    outcome = harness.run_with_recovery()

    assert not outcome.run.success
    assert "HTTP 401" in failure_message(outcome.run, "batch_update")
    assert isinstance(outcome.decision, dg.RunRequest)
    assert outcome.recovery is not None and outcome.recovery.success
    counts = harness.requests()
    assert counts["tokens_issued"] == 2
    assert counts["record_pages"] == PAGES, "the recovery loaded the records from storage"
    assert counts["batch_calls"] == 3 + CHUNKS
    assert counts["batch_replays"] == 2, "the two chunks applied before the 401 were replayed"
    harness.assert_invariants(outcome, selected=selected)


# -- 2. token that expires after S seconds, announced ---------------------------------------------


def test_token_with_a_short_announced_lifetime_is_renewed_before_it_expires(
    harness: Harness,
) -> None:
    selected = harness.selected()
    harness.api.set_faults(
        {"kind": "token_expiry", "ttl": 2.0, "announce": True},
        # The first page answers late, so the token is past half its life when page 2 goes out;
        # the request itself was checked on arrival, while the token was young.
        {"kind": "delay", "group": "records", "seconds": 1.5, "when": "after"},
    )

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    assert materialized(outcome.run, "records_list")[constants.META_TOKEN_RENEWED] is True
    counts = harness.requests()
    assert counts["unauthorized"] == 0, "the client renewed before the service refused the token"
    assert 2 <= counts["tokens_issued"] <= 4
    assert counts["record_pages"] == PAGES
    assert counts["batch_calls"] == CHUNKS
    harness.assert_invariants(outcome, selected=selected)


# -- 3. 401 on the Nth batch call -----------------------------------------------------------------


def test_401_on_the_third_chunk_is_recovered_once_with_every_record_applied_once(
    harness: Harness,
) -> None:
    selected = harness.selected()
    harness.api.set_faults({"kind": "invalid_token", "group": "batch", "after": 2})

    failed = harness.run()
    assert not failed.success
    message = failure_message(failed, "batch_update")
    assert "HTTP 401" in message and "Chunks 1 to 2 of 5 were accepted" in message
    applied_before = harness.api.store.count(version=2)

    request = harness.evaluate_sensor(failed)
    again = harness.evaluate_sensor(failed)
    assert isinstance(request, dg.RunRequest) and isinstance(again, dg.RunRequest)
    assert request.run_key == again.run_key, "one failure, one run key, whatever the ticks"
    assert request.tags[TAG_RECOVERS_RUN] == failed.run_id
    assert request.tags[TAG_RECOVERY_ATTEMPT] == "1"

    recovery = harness.run(asset_selection=list(request.asset_selection or []), tags=request.tags)
    outcome = Outcome(failed, request, recovery)

    assert recovery.success
    assert 0 < applied_before < len(selected)
    counts = harness.requests()
    assert counts["tokens_issued"] == 2
    assert counts["record_pages"] == PAGES
    assert counts["batch_calls"] == 3 + CHUNKS
    assert counts["batch_replays"] == 2
    assert materialized(recovery, "update_response")[constants.META_UPDATED_COUNT] == len(
        selected
    ), "replayed chunks report what they applied the first time"
    harness.assert_invariants(outcome, selected=selected)


# -- 4. 429 with Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["seconds", "http_date"])
@pytest.mark.parametrize("group", ["records", "batch"])
def test_429_with_retry_after_is_waited_out(harness: Harness, group: str, form: str) -> None:
    selected = harness.selected()
    harness.api.set_faults(
        {
            "kind": "rate_limit",
            "group": group,
            "after": 1,
            "retry_after": 1,
            "retry_after_form": form,
        }
    )

    # Real waits here: the pause comes from the server's Retry-After, not from the backoff.
    with stamina.set_testing(False):
        outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    assert "the server asked for" in run_logs(harness.instance, outcome.run.run_id)
    counts = harness.requests()
    assert counts["record_pages"] == PAGES + (group == "records")
    assert counts["batch_calls"] == CHUNKS + (group == "batch")
    assert counts["batch_replays"] == 0, "the 429 came before anything was applied"
    harness.assert_invariants(outcome, selected=selected)


# -- 5. 5xx bursts --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 500])
@pytest.mark.parametrize("group", ["records", "batch"])
def test_5xx_burst_within_the_retry_policy_is_retried(
    harness: Harness, group: str, status: int
) -> None:
    selected = harness.selected()
    # Two failures in a row; get_records may retry 3 times and batch_update 2 times.
    harness.api.set_faults(
        {"kind": "server_error", "group": group, "status": status, "after": 1, "count": 2}
    )

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    counts = harness.requests()
    assert counts["record_pages"] == PAGES + 2 * (group == "records")
    assert counts["batch_calls"] == CHUNKS + 2 * (group == "batch")
    harness.assert_invariants(outcome, selected=selected)


@pytest.mark.parametrize(
    ("group", "node", "attempts"), [("records", "get_records", 4), ("batch", "batch_update", 3)]
)
def test_5xx_burst_longer_than_the_retry_policy_fails_saying_how_often_it_tried(
    harness: Harness, group: str, node: str, attempts: int
) -> None:
    selected = harness.selected()
    harness.api.set_faults(
        {"kind": "server_error", "group": group, "status": 503, "after": 1, "count": None}
    )

    outcome = harness.run_with_recovery()

    assert not outcome.final_success
    message = failure_message(outcome.run, node)
    assert "HTTP 503" in message and f"Gave up after {attempts} attempts." in message
    assert isinstance(outcome.decision, dg.SkipReason), "a 503 is not what the error edge recovers"
    counts = harness.requests()
    if group == "batch":
        assert "Chunks 1 to 1 of 5 were accepted" in message
        assert counts["batch_calls"] == 1 + attempts
        assert harness.api.store.count(version=2) == len(harness.updated_ids()) > 0
    else:
        assert counts["record_pages"] == 1 + attempts
        assert counts["batch_calls"] == 0
    harness.assert_invariants(outcome, selected=selected)


# -- 6. slow answers past the client timeout ------------------------------------------------------


def test_slow_records_page_past_the_timeout_is_fetched_again(
    make_harness: Any, fresh_reference_api: ReferenceApi
) -> None:
    # get_records sets no timeout_sec, so the resource's default applies to it.
    resource = OsopHttpResource(base_url=fresh_reference_api.base_url, timeout_sec=1.0)
    harness = make_harness(osop_http=resource)
    selected = harness.selected()
    harness.api.set_faults({"kind": "delay", "group": "records", "after": 3, "seconds": 2.5})

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    assert "ReadTimeout" in run_logs(harness.instance, outcome.run.run_id)
    # One more page call for the slow one; a busy machine may make another page slow too.
    assert PAGES + 1 <= harness.requests()["record_pages"] <= PAGES + 4
    harness.assert_invariants(outcome, selected=selected)


def test_batch_applied_but_answered_past_the_timeout_is_replayed_not_reapplied(
    make_harness: Any, seed_path: Path, tmp_path: Path
) -> None:
    # batch_update's own timeout_sec (60 s in the seed) wins over the resource's, so this test
    # runs a copy of the workflow with a one-second timeout on that node.
    workflow = workflow_copy(
        seed_path, tmp_path / "workflows", {"    timeout_sec: 60\n": "    timeout_sec: 1\n"}
    )
    harness = make_harness(workflow)
    selected = harness.selected()
    harness.api.set_faults(
        {"kind": "delay", "group": "batch", "after": 1, "seconds": 2.5, "when": "after"}
    )

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    counts = harness.requests()
    assert counts["batch_replays"] >= 1, "the late chunk's retry got the stored answer"
    assert counts["batch_calls"] == CHUNKS + counts["batch_replays"]
    harness.assert_invariants(outcome, selected=selected)


# -- 7. connection reset --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "rst"])
def test_connection_dropped_on_a_records_page_is_retried(harness: Harness, how: str) -> None:
    selected = harness.selected()
    harness.api.set_faults({"kind": "reset", "group": "records", "after": 2, "how": how})

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    assert harness.requests()["record_pages"] == PAGES + 1
    harness.assert_invariants(outcome, selected=selected)


@pytest.mark.parametrize("how", ["close", "rst"])
def test_connection_dropped_after_a_chunk_was_applied_replays_it(
    harness: Harness, how: str
) -> None:
    selected = harness.selected()
    harness.api.set_faults(
        {"kind": "reset", "group": "batch", "after": 2, "how": how, "when": "after"}
    )

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    counts = harness.requests()
    assert counts["batch_calls"] == CHUNKS + 1
    assert counts["batch_replays"] == 1
    harness.assert_invariants(outcome, selected=selected)


# -- 8. truncated JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("after", [0, 5])
def test_truncated_records_page_is_fetched_again(harness: Harness, after: int) -> None:
    """A cut JSON answer is a transient fault: the page is fetched again, no record is lost."""
    selected = harness.selected()
    harness.api.set_faults({"kind": "truncate", "group": "records", "after": after})

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    assert materialized(outcome.run, "records_list")[constants.META_RECORD_COUNT] == 2000
    assert "not valid JSON" in run_logs(harness.instance, outcome.run.run_id)
    assert harness.requests()["record_pages"] == PAGES + 1
    harness.assert_invariants(outcome, selected=selected)


def test_records_page_that_stays_truncated_fails_naming_node_url_and_problem(
    harness: Harness,
) -> None:
    selected = harness.selected()
    harness.api.set_faults({"kind": "truncate", "group": "records", "after": 5, "count": None})

    outcome = harness.run_with_recovery()

    assert not outcome.final_success
    message = failure_message(outcome.run, "get_records")
    assert "'get_records'" in message and "/api/v2/records?page=6" in message
    assert "not valid JSON" in message and "Gave up after 4 attempts." in message
    assert harness.requests()["batch_calls"] == 0
    harness.assert_invariants(outcome, selected=selected)


# -- 9. repeated next link ------------------------------------------------------------------------


@pytest.mark.parametrize(("after", "count"), [(0, 1), (3, 1), (3, None)])
def test_next_link_back_to_a_page_already_read_fails_the_run(
    harness: Harness, after: int, count: int | None
) -> None:
    selected = harness.selected()
    harness.api.set_faults({"kind": "repeat_cursor", "after": after, "count": count})

    outcome = harness.run_with_recovery()

    assert not outcome.final_success and outcome.recovery is None
    message = failure_message(outcome.run, "get_records")
    assert "'get_records'" in message and "going round in circles" in message
    counts = harness.requests()
    assert counts["record_pages"] <= after + 2, "paging stopped at the first repeat"
    assert counts["batch_calls"] == 0
    harness.assert_invariants(outcome, selected=selected)


# -- 10. records rejected by the batch ------------------------------------------------------------


def test_rejected_records_are_reported_and_the_others_applied_once(harness: Harness) -> None:
    selected = harness.selected()
    refused = set(sorted(selected)[::150][:3])
    harness.api.set_faults({"kind": "reject", "ids": sorted(refused)})

    outcome = harness.run_with_recovery()

    assert outcome.run.success and outcome.recovery is None
    value = outcome.run.asset_value(asset("update_response"))
    assert {(item["id"], item["reason"]) for item in value["rejected"]} == {
        (record_id, "rejected_by_fault") for record_id in refused
    }
    assert value["updated"] == len(selected) - len(refused)
    metadata = materialized(outcome.run, "update_response")
    assert metadata[constants.META_REJECTED_COUNT] == len(refused)
    assert {item["id"] for item in metadata[constants.META_REJECTED]} == refused
    assert harness.api.store.count(version=1, status="pending", age_days_gt=30) == len(refused)
    harness.assert_invariants(outcome, selected=selected, rejected=refused)


# -- 11. wrong client secret ----------------------------------------------------------------------


def test_wrong_client_secret_fails_once_at_authenticate_without_recovery(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    selected = harness.selected()
    wrong = "made-up-wrong-secret-7f3a9c"
    monkeypatch.setenv(SECRET_REF, f"{harness.api.client_id}:{wrong}")

    outcome = harness.run_with_recovery()

    assert not outcome.final_success
    message = failure_message(outcome.run, "authenticate")
    assert SECRET_REF in message and "invalid_client" in message
    logged = run_logs(harness.instance, outcome.run.run_id)
    for secret in (wrong, harness.api.client_secret):
        assert secret not in message and secret not in logged
    assert isinstance(outcome.decision, dg.SkipReason)
    assert "did not fail at node 'batch_update'" in (outcome.decision.skip_message or "")
    counts = harness.requests()
    assert counts["token_requests"] == 1, "no retry storm on refused credentials"
    assert counts["tokens_issued"] == 0
    assert counts["record_pages"] == counts["batch_calls"] == 0
    harness.assert_invariants(outcome, selected=selected)
