import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import stamina
import yaml

from osop_dagster.constants import HTTP_LOGGER_NAME
from osop_dagster.errors import OsopConfigError, OsopExecutionError, OsopHttpError
from osop_dagster.resources import _oauth2
from osop_dagster.resources.http import (
    ApiRuntime,
    HttpResult,
    OsopHttpResource,
    RetrySettings,
)
from osop_dagster_tests.fixtures.fake_api import (
    BASE_URL,
    CLIENT_ID,
    CLIENT_SECRET,
    FakeApi,
)
from osop_dagster_tests.fixtures.reference_api import ReferenceApi

SECRET_REF = "SERVICE_CLIENT_CREDENTIALS"
LOG = logging.getLogger("osop_test.http")
BATCH = "/api/v2/records/batch"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(SECRET_REF, f"{CLIENT_ID}:{CLIENT_SECRET}")
    _oauth2.clear_token_cache()
    with stamina.set_testing(True, attempts=10, cap=True):
        yield
    _oauth2.clear_token_cache()


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def resource(api: FakeApi) -> OsopHttpResource:
    resource = OsopHttpResource()
    resource._transport = api.transport()
    return resource


@pytest.fixture
def lease(resource: OsopHttpResource) -> dict[str, Any]:
    runtime = ApiRuntime(url=BASE_URL, endpoint="/oauth/token", method="POST")
    return resource.authenticate(
        node_id="authenticate",
        runtime=runtime,
        secret_ref=SECRET_REF,
        timeout_sec=10,
        retry=RetrySettings(),
        log=LOG,
    ).value


def call(
    resource: OsopHttpResource,
    runtime: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    *,
    token: dict[str, Any] | None = None,
    retry: RetrySettings | None = None,
    prefix: str = "run-1",
) -> HttpResult:
    return resource.call(
        node_id="node",
        runtime=ApiRuntime.model_validate({"url": BASE_URL, **runtime}),
        inputs=inputs or {},
        token=token,
        timeout_sec=None,
        retry=retry or RetrySettings(),
        idempotency_prefix=prefix,
        log=LOG,
    )


def answers(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    """A handler that answers (or raises) each given outcome in turn."""
    outcomes = iter(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return handle


# The runtime vocabulary.


def test_seed_workflow_runtimes_validate_unchanged(shared_dir: Path) -> None:
    workflow = yaml.safe_load((shared_dir / "workflows/rest-api-workflow.osop.yaml").read_text())

    runtimes = [node["runtime"] for node in workflow["nodes"] if node["type"] == "api"]

    parsed = [ApiRuntime.model_validate(runtime) for runtime in runtimes]
    assert [runtime.method for runtime in parsed] == ["POST", "GET", "PATCH", "GET"]


def test_schema_runtime_keys_of_other_node_types_are_accepted(shared_dir: Path) -> None:
    schema = json.loads((shared_dir / "osop-spec/osop.schema.json").read_text())
    declared = schema["$defs"]["node"]["properties"]["runtime"]["properties"]
    samples = {"string": "x", "number": 0.5, "integer": 3, "array": ["a"], "object": {}}
    runtime = {
        key: samples[spec.get("type", "object")]
        for key, spec in declared.items()
        if key not in ApiRuntime.model_fields
    }

    parsed = ApiRuntime.model_validate({**runtime, "x-vendor": 1, "method": "get"})

    assert parsed.method == "GET"


@pytest.mark.parametrize(
    ("runtime", "fragment"),
    [
        ({"method": "FETCH"}, "'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'"),
        ({"methd": "GET"}, "Extra inputs are not permitted"),
        ({"body": {"a": 1}, "form": {"b": "2"}}, "Only one request body may be given"),
        ({"method": "PUT", "batch": {"size": 10}, "body": {"a": 1}}, "cannot be set with batch"),
        ({"query": {"ids": "${not a path}"}}, "is not a dotted path"),
        ({"expect_status": [200, 700]}, "expected statuses 100 to 599"),
        ({"pagination": {"style": "pages"}}, "'page_number', 'offset', 'cursor' or 'link'"),
        ({"timeout": 5}, "Extra inputs are not permitted"),
        ({"method": "POST", "pagination": {"style": "link"}}, "pagination applies to GET"),
        ({"batch": {"size": 5}}, "batch applies to POST, PUT and PATCH"),
        ({"auth": {"type": "bearer", "secret": "X"}}, "Extra inputs are not permitted"),
        ({"headers": {"X-Count": 3}}, "Input should be a valid string"),
    ],
)
def test_invalid_runtime_is_refused_with_a_reason(runtime: dict[str, Any], fragment: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=fragment.replace("(", "\\(")):
        ApiRuntime.model_validate(runtime)


def test_body_template_is_the_schema_name_of_body(resource: OsopHttpResource, api: FakeApi) -> None:
    api.overrides["/hooks"] = lambda request: httpx.Response(200, json={"ok": True})

    call(
        resource,
        {"endpoint": "/hooks", "method": "POST", "body_template": {"ids": "${picked.ids}"}},
        {"picked": {"ids": [1, 2]}},
    )

    assert json.loads(api.requests[0].content) == {"ids": [1, 2]}


@pytest.mark.parametrize(
    ("policy", "timeout", "expected"),
    [
        (None, None, {"max_retries": 0, "attempts": 1, "strategy": "fixed"}),
        ({"max_retries": 3, "backoff_sec": 5}, 60, {"attempts": 4, "timeout_sec": 60.0}),
        ({"max_retries": 2.0, "strategy": "exponential_backoff"}, None, {"max_retries": 2}),
    ],
)
def test_retry_settings_follow_the_node(
    policy: dict[str, Any] | None, timeout: float | None, expected: dict[str, Any]
) -> None:
    settings = RetrySettings.from_node(policy, timeout)

    assert {key: getattr(settings, key) for key in expected} == expected


@pytest.mark.parametrize(
    "policy",
    [{"max_retries": -1}, {"max_retries": 1.5}, {"strategy": "linear"}, {"backoff_sec": "5"}],
)
def test_bad_retry_policy_is_a_config_error(policy: dict[str, Any]) -> None:
    with pytest.raises(OsopConfigError, match="retry_policy"):
        RetrySettings.from_node(policy, None, node_id="get_records")


# URLs and templates.


def test_list_input_in_a_query_template_becomes_a_repeated_parameter(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    api.batches = {"b1": {"batch_id": "b1"}, "b2": {"batch_id": "b2"}}

    result = call(
        resource,
        {"endpoint": f"{BATCH}/status", "query": {"batch_id": "${update.batch_ids}", "x": None}},
        {"update": {"batch_ids": ["b1", "b2"]}},
        token=lease,
    )

    (request,) = api.requests_to(f"{BATCH}/status")
    assert request.url.query == b"batch_id=b1&batch_id=b2"
    assert result.value["batches"] == [{"batch_id": "b1"}, {"batch_id": "b2"}]


def test_templates_inside_text_and_paths_are_rendered(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    api.overrides["/items/a/b"] = lambda request: httpx.Response(200, json={})

    call(
        resource,
        {
            "endpoint": "/items/${inputs.item.key}",
            "headers": {"X-Trace": "trace-${item.n}"},
            "query": {"flag": True, "n": "${item.n}"},
        },
        {"item": {"key": "a/b", "n": 7}},
    )

    (request,) = api.requests
    assert request.url.raw_path == b"/items/a%2Fb?flag=true&n=7"
    assert request.headers["X-Trace"] == "trace-7"


def test_template_naming_a_missing_input_fails_with_the_inputs(resource: OsopHttpResource) -> None:
    with pytest.raises(OsopExecutionError, match=r"names the input 'update'.*\['other'\]"):
        call(resource, {"endpoint": "/x", "query": {"id": "${update.id}"}}, {"other": 1})


def test_base_url_override_and_node_environment_variable(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    resource = OsopHttpResource(base_url="https://staging.test/root")
    resource._transport = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"url": str(request.url)})
    )
    runtime = {"url": "https://prod.test", "endpoint": "/ping"}

    assert call(resource, runtime).value == {"url": "https://staging.test/root/ping"}

    monkeypatch.setenv("PING_BASE_URL", "http://127.0.0.1:9")
    node_env = {**runtime, "base_url_env": "PING_BASE_URL"}
    assert call(resource, node_env).value == {"url": "http://127.0.0.1:9/ping"}


def test_node_without_any_url_is_a_config_error() -> None:
    resource = OsopHttpResource()

    with pytest.raises(OsopConfigError, match="OSOP_API_BASE_URL"):
        resource.call(
            node_id="n",
            runtime=ApiRuntime(endpoint="/x"),
            inputs={},
            token=None,
            timeout_sec=None,
            retry=RetrySettings(),
            idempotency_prefix="p",
            log=LOG,
        )


# Batch writes.


def test_batch_write_sends_chunks_of_the_list_input(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    records = [{"id": n, "status": "pending", "age_days": 40} for n in (1, 2, 3, 4, 5, 99)]

    result = call(
        resource,
        {
            "endpoint": BATCH,
            "method": "PATCH",
            "batch": {"size": 4, "fields": ["id"], "set": {"status": "${choice.status}"}},
        },
        {"filtered_records": records, "choice": {"status": "processed"}},
        token=lease,
    )

    bodies = [json.loads(request.content) for request in api.requests_to(BATCH)]
    assert bodies == [
        {"records": [{"id": n, "status": "processed"} for n in (1, 2, 3, 4)]},
        {"records": [{"id": n, "status": "processed"} for n in (5, 99)]},
    ]
    receipt = result.value
    assert receipt["status"] == 200
    assert receipt["items_sent"] == 6
    assert receipt["chunks"] == 2
    assert receipt["batch_ids"] == ["b1", "b2"]
    assert receipt["updated"] == 5
    assert receipt["rejected"] == [{"id": 99, "reason": "unknown id"}]
    assert len(receipt["responses"]) == 2
    assert result.metadata["osop/rejected_count"] == 1
    assert result.metadata["osop/rejected"] == [{"id": 99, "reason": "unknown id"}]


def test_write_with_a_list_input_is_a_batch_by_default(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    records = [{"id": n} for n in range(1, 8)]

    result = call(
        resource, {"endpoint": BATCH, "method": "PATCH"}, {"filtered_records": records}, token=lease
    )

    (request,) = api.requests_to(BATCH)
    assert json.loads(request.content) == {"records": records}
    assert result.value["chunks"] == 1


def test_idempotency_keys_are_deterministic_per_run_node_chunk_and_content(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    runtime = {"endpoint": BATCH, "method": "PATCH", "batch": {"size": 2}}
    records = [{"id": n} for n in (1, 2, 3)]

    def keys(prefix: str, items: list[dict[str, Any]]) -> list[str]:
        api.requests.clear()
        call(resource, runtime, {"records": items}, token=lease, prefix=prefix)
        return [request.headers["Idempotency-Key"] for request in api.requests_to(BATCH)]

    first = keys("run-1", records)
    assert keys("run-1", records) == first
    assert len(set(first)) == 2
    assert set(keys("run-2", records)).isdisjoint(first)
    changed = keys("run-1", [{"id": 1}, {"id": 2}, {"id": 4}])
    assert changed[0] == first[0]
    assert changed[1] != first[1]


def test_empty_list_sends_nothing_and_returns_an_empty_receipt(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    result = call(resource, {"endpoint": BATCH, "method": "PATCH"}, {"records": []}, token=lease)

    assert api.requests_to(BATCH) == []
    assert result.value == {
        "status": None,
        "items_sent": 0,
        "chunks": 0,
        "batch_ids": [],
        "updated": 0,
        "rejected": [],
        "responses": [],
    }


def test_two_list_inputs_need_batch_input(resource: OsopHttpResource) -> None:
    with pytest.raises(OsopExecutionError, match=r"set runtime\.batch\.input"):
        call(resource, {"endpoint": BATCH, "method": "POST"}, {"a": [1], "b": [2]})


def test_failed_chunk_reports_what_was_accepted_before(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    api.overrides[BATCH] = lambda request: (
        httpx.Response(422, json={"message": "Field 'status' is read-only."})
        if len(api.requests_to(BATCH)) == 2
        else api._batch(request)
    )

    with pytest.raises(OsopHttpError) as raised:
        call(
            resource,
            {"endpoint": BATCH, "method": "PATCH", "batch": {"size": 1}},
            {"records": [{"id": 1}, {"id": 2}, {"id": 3}]},
            token=lease,
        )

    message = str(raised.value)
    assert "HTTP 422" in message
    assert "Field 'status' is read-only." in message
    assert "Chunks 1 to 1 of 3 were accepted before chunk 2 failed" in message
    assert raised.value.metadata["osop/batch_ids"] == ["b1"]


def test_concurrent_chunks_keep_their_order_in_the_receipt(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    """Chunks sent three at a time: every item once, batch ids in chunk order."""
    records = [{"id": n} for n in range(1, 8)]
    api.records = records
    sent_order: list[int] = []

    def slow_first_chunks(request: httpx.Request) -> httpx.Response:
        first_id = json.loads(request.content)["records"][0]["id"]
        # Early chunks answer last, so answers arrive out of chunk order.
        time.sleep(0.05 if first_id < 4 else 0)
        sent_order.append(first_id)
        return api._batch(request)

    api.overrides[BATCH] = slow_first_chunks

    result = call(
        resource,
        {"endpoint": BATCH, "method": "PATCH", "batch": {"size": 2, "concurrency": 3}},
        {"records": records},
        token=lease,
    )

    receipt = result.value
    assert receipt["items_sent"] == 7
    assert receipt["chunks"] == 4
    answered = {answer["batch_id"]: answer["results"][0]["id"] for answer in receipt["responses"]}
    assert [answered[batch_id] for batch_id in receipt["batch_ids"]] == [1, 3, 5, 7]
    assert sent_order != [1, 3, 5, 7]
    keys = [request.headers["Idempotency-Key"] for request in api.requests_to(BATCH)]
    assert len(set(keys)) == 4


def test_a_failed_concurrent_chunk_lists_every_chunk_accepted_around_it(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    """Chunks in flight when one fails still come back; the error names each accepted one."""
    records = [{"id": n} for n in range(1, 7)]
    api.records = records

    def chunk_2_fails(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["records"][0]["id"] == 2:
            time.sleep(0.05)
            return httpx.Response(422, json={"message": "Record 2 is locked."})
        return api._batch(request)

    api.overrides[BATCH] = chunk_2_fails

    with pytest.raises(OsopHttpError) as raised:
        call(
            resource,
            {"endpoint": BATCH, "method": "PATCH", "batch": {"size": 1, "concurrency": 3}},
            {"records": records},
            token=lease,
        )

    message = str(raised.value)
    assert "Record 2 is locked." in message
    # Three in flight: chunk 4 left when chunk 1 came back, before chunk 2 had failed.
    assert "Chunk 2 of 6 failed; chunks 1, 3, 4 were accepted" in message
    assert raised.value.metadata["osop/items_sent"] == 3
    # Nothing was sent once chunk 2 had failed.
    sent = sorted(json.loads(r.content)["records"][0]["id"] for r in api.requests_to(BATCH))
    assert sent == [1, 2, 3, 4]


def test_a_batch_keeps_the_nodes_own_content_type(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    call(
        resource,
        {
            "endpoint": BATCH,
            "method": "PATCH",
            "headers": {"content-type": "application/merge-patch+json"},
            "batch": {"size": 2},
        },
        {"records": [{"id": 1}, {"id": 2}, {"id": 3}]},
        token=lease,
    )

    sent = api.requests_to(BATCH)
    assert len(sent) == 2
    assert all(
        request.headers.get_list("Content-Type") == ["application/merge-patch+json"]
        for request in sent
    )


def test_no_chunk_is_sent_once_one_in_flight_has_failed(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    """Chunk 3 fails while chunks 1 and 2 are still on their way: 5 and 6 never leave."""
    records = [{"id": n} for n in range(1, 7)]
    api.records = records

    def third_fails_first(request: httpx.Request) -> httpx.Response:
        first_id = json.loads(request.content)["records"][0]["id"]
        if first_id == 3:
            return httpx.Response(422, json={"message": "Record 3 is locked."})
        time.sleep(0.2 if first_id < 3 else 0)
        return api._batch(request)

    api.overrides[BATCH] = third_fails_first

    with pytest.raises(OsopHttpError) as raised:
        call(
            resource,
            {"endpoint": BATCH, "method": "PATCH", "batch": {"size": 1, "concurrency": 4}},
            {"records": records},
            token=lease,
        )

    sent = sorted(json.loads(r.content)["records"][0]["id"] for r in api.requests_to(BATCH))
    assert sent == [1, 2, 3, 4]
    assert "Chunk 3 of 6 failed; chunks 1, 2, 4 were accepted" in str(raised.value)


# Retries.


def test_server_error_then_success_is_retried(resource: OsopHttpResource, api: FakeApi) -> None:
    api.overrides["/x"] = answers(
        httpx.Response(502, text="bad gateway"), httpx.Response(200, json={"ok": True})
    )

    result = call(resource, {"endpoint": "/x"}, retry=RetrySettings(max_retries=2))

    assert result.value == {"ok": True}
    assert result.metadata["osop/attempts"] == 2


def test_retry_after_is_waited_out_and_logged(
    resource: OsopHttpResource, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.overrides["/x"] = answers(
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"}),
        httpx.Response(200, json={"ok": True}),
    )

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = call(resource, {"endpoint": "/x"}, retry=RetrySettings(max_retries=1))

    assert result.value == {"ok": True}
    assert "retrying in the 7 s the server asked for" in caplog.text


def test_retry_after_beyond_the_cap_fails_at_once(resource: OsopHttpResource, api: FakeApi) -> None:
    api.overrides["/x"] = answers(httpx.Response(503, headers={"Retry-After": "3600"}))

    with pytest.raises(OsopHttpError, match="asked to wait 3600 s") as raised:
        call(resource, {"endpoint": "/x"}, retry=RetrySettings(max_retries=3))

    assert raised.value.status == 503
    assert len(api.requests) == 1


def test_client_error_is_final(resource: OsopHttpResource, api: FakeApi) -> None:
    api.overrides["/x"] = answers(httpx.Response(404, json={"message": "No such record."}))

    with pytest.raises(OsopHttpError) as raised:
        call(resource, {"endpoint": "/x"}, retry=RetrySettings(max_retries=3))

    assert len(api.requests) == 1
    assert raised.value.status == 404
    assert str(raised.value) == (
        "Node 'node': GET https://api.test/x answered HTTP 404 Not Found: No such record."
    )


def test_exhausted_retries_say_how_many_attempts(resource: OsopHttpResource, api: FakeApi) -> None:
    api.overrides["/x"] = lambda request: httpx.Response(500, json={"error": "boom"})

    with pytest.raises(OsopHttpError, match="Gave up after 3 attempts") as raised:
        call(resource, {"endpoint": "/x"}, retry=RetrySettings(max_retries=2))

    assert raised.value.metadata["osop/attempts"] == 3
    assert raised.value.body == {"error": "boom"}


def test_patch_is_not_replayed_after_a_read_timeout(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    api.overrides["/x"] = answers(httpx.ReadTimeout("timed out"), httpx.Response(200, json={}))

    with pytest.raises(OsopHttpError, match="not safe to send twice"):
        call(
            resource,
            {"endpoint": "/x", "method": "PATCH", "body": {"a": 1}},
            retry=RetrySettings(max_retries=3),
        )

    assert len(api.requests) == 1


def test_patch_with_an_idempotency_key_is_replayed_after_a_read_timeout(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    first_try = True

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal first_try
        if first_try:
            first_try = False
            raise httpx.ReadTimeout("timed out", request=request)
        return api._batch(request)

    api.overrides[BATCH] = flaky

    result = call(
        resource,
        {"endpoint": BATCH, "method": "PATCH"},
        {"records": [{"id": 1}]},
        token=lease,
        retry=RetrySettings(max_retries=1),
    )

    sent = api.requests_to(BATCH)
    assert len(sent) == 2
    assert sent[0].headers["Idempotency-Key"] == sent[1].headers["Idempotency-Key"]
    assert result.value["batch_ids"] == ["b1"]


def test_connect_error_of_a_post_is_retried(resource: OsopHttpResource, api: FakeApi) -> None:
    """A request that never left the client can be sent again whatever its method."""
    api.overrides["/x"] = answers(httpx.ConnectError("refused"), httpx.Response(201, json={}))

    result = call(
        resource,
        {"endpoint": "/x", "method": "POST", "body": {"a": 1}},
        retry=RetrySettings(max_retries=1),
    )

    assert result.metadata["osop/http_status"] == 201


def test_post_server_error_without_idempotency_key_is_not_retried(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    api.overrides["/x"] = lambda request: httpx.Response(500, json={})

    with pytest.raises(OsopHttpError):
        call(
            resource,
            {"endpoint": "/x", "method": "POST", "body": {"a": 1}},
            retry=RetrySettings(max_retries=3),
        )

    assert len(api.requests) == 1


def test_expect_status_decides_success(resource: OsopHttpResource, api: FakeApi) -> None:
    api.overrides["/x"] = lambda request: httpx.Response(200, json={})

    with pytest.raises(OsopHttpError, match="HTTP 200"):
        call(resource, {"endpoint": "/x", "method": "POST", "body": {}, "expect_status": [201]})


# Limits, redirects and secrets.


def test_answer_over_the_size_cap_fails_the_step(api: FakeApi) -> None:
    resource = OsopHttpResource(max_response_bytes=1000)
    resource._transport = api.transport()
    api.overrides["/x"] = lambda request: httpx.Response(200, content=b"[" + b"1," * 2000 + b"1]")

    with pytest.raises(OsopHttpError, match="1000-byte limit"):
        call(resource, {"endpoint": "/x"})


def test_redirect_to_another_host_drops_authorization(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    api.overrides["/moved"] = lambda request: httpx.Response(
        302, headers={"Location": "https://other.test/landing"}
    )
    api.overrides["/landing"] = lambda request: httpx.Response(200, json={"landed": True})

    result = call(resource, {"endpoint": "/moved"}, token=lease)

    moved, landing = api.requests[-2:]
    assert moved.headers["Authorization"].startswith("Bearer ")
    assert landing.url.host == "other.test"
    assert "Authorization" not in landing.headers
    assert result.value == {"landed": True}


def test_redirect_on_the_same_host_keeps_authorization(
    resource: OsopHttpResource, api: FakeApi, lease: dict[str, Any]
) -> None:
    api.overrides["/moved"] = lambda request: httpx.Response(307, headers={"Location": "/here"})
    api.overrides["/here"] = lambda request: httpx.Response(200, json={})

    call(resource, {"endpoint": "/moved"}, token=lease)

    assert api.requests[-1].headers["Authorization"].startswith("Bearer ")


def test_token_request_is_not_redirected_to_another_host(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    """A 307 would resend the form body, client secret included, to the other host."""
    api.overrides["/oauth/token"] = lambda request: httpx.Response(
        307, headers={"Location": "https://collector.test/collect"}
    )
    runtime = ApiRuntime(
        url=BASE_URL,
        endpoint="/oauth/token",
        method="POST",
        token={"client_auth": "client_secret_post"},
    )

    with pytest.raises(OsopHttpError, match="redirect to another host") as raised:
        resource.authenticate(
            node_id="authenticate",
            runtime=runtime,
            secret_ref=SECRET_REF,
            timeout_sec=10,
            retry=RetrySettings(),
            log=LOG,
        )

    assert all(request.url.host != "collector.test" for request in api.requests)
    assert CLIENT_SECRET not in str(raised.value)


def test_secrets_stay_out_of_logs_errors_and_metadata(
    resource: OsopHttpResource, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Even at DEBUG, and even when the API echoes the token back in an error."""
    caplog.set_level(logging.DEBUG, logger=HTTP_LOGGER_NAME)
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        runtime = ApiRuntime(url=BASE_URL, endpoint="/oauth/token", method="POST")
        auth = resource.authenticate(
            node_id="authenticate",
            runtime=runtime,
            secret_ref=SECRET_REF,
            timeout_sec=10,
            retry=RetrySettings(),
            log=LOG,
        )
        token = api.tokens_issued[0]
        api.overrides["/echo"] = lambda request: httpx.Response(
            400, json={"message": f"bad header {request.headers['Authorization']}"}
        )
        with pytest.raises(OsopHttpError) as raised:
            call(
                resource,
                {"endpoint": "/echo", "query": {"api_key": "k-123456789"}},
                token=auth.value,
            )
        listing = call(resource, {"endpoint": "/api/v2/records"}, token=auth.value)

    seen = "\n".join(
        [
            caplog.text,
            str(raised.value),
            repr(raised.value.body),
            repr(raised.value.headers),
            repr(auth.value),
            repr(auth.metadata),
            repr(listing.metadata),
        ]
    )
    for secret in (token, CLIENT_SECRET, "k-123456789", "s3cr%3Aet"):
        assert secret not in seen
    assert "api_key=***" in caplog.text
    wire_lines = [
        r for r in caplog.records if r.name == HTTP_LOGGER_NAME and r.levelno == logging.INFO
    ]
    assert len(wire_lines) == len(api.requests)
    assert all(r.getMessage().startswith("HTTP ") for r in wire_lines)
    # The run's own log gets a line per node call, not per request.
    node_lines = [r for r in caplog.records if r.name == LOG.name and r.levelno == logging.INFO]
    assert [r.getMessage().split(":")[0] for r in node_lines] == ["Node 'node'"]


# Against the reference service, over real sockets on 127.0.0.1.


@pytest.mark.integration
def test_seed_chain_runs_against_the_reference_service(
    fresh_reference_api: ReferenceApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = fresh_reference_api
    monkeypatch.setenv(SECRET_REF, f"{api.client_id}:{api.client_secret}")
    resource = OsopHttpResource(base_url=api.base_url)
    seed_url = {"url": "https://api.service.com"}  # replaced by the resource's base_url

    def run(node_id: str, runtime: dict[str, Any], **kwargs: Any) -> HttpResult:
        return resource.call(
            node_id=node_id,
            runtime=ApiRuntime.model_validate({**seed_url, **runtime}),
            timeout_sec=10,
            retry=RetrySettings(max_retries=2),
            idempotency_prefix="run-integration",
            log=LOG,
            **kwargs,
        )

    lease = resource.authenticate(
        node_id="authenticate",
        runtime=ApiRuntime.model_validate(
            {**seed_url, "endpoint": "/oauth/token", "method": "POST"}
        ),
        secret_ref=SECRET_REF,
        timeout_sec=10,
        retry=RetrySettings(),
        log=LOG,
    ).value
    records = run("get_records", {"endpoint": "/api/v2/records"}, inputs={}, token=lease)
    selected = [
        record
        for record in records.value
        if record["status"] == "pending" and record["age_days"] > 30
    ]
    update = run(
        "batch_update",
        {
            "endpoint": "/api/v2/records/batch",
            "method": "PATCH",
            "batch": {"size": 200, "fields": ["id", "version"], "set": {"status": "processed"}},
        },
        inputs={"filtered_records": selected},
        token=lease,
    )
    verify = run(
        "verify_update",
        {
            "endpoint": "/api/v2/records/batch/status",
            "query": {"batch_id": "${update_response.batch_ids}"},
        },
        inputs={"update_response": update.value},
        token=lease,
    )

    assert len(records.value) == api.records
    assert records.metadata["osop/pages"] == -(-api.records // 100)
    assert update.value["items_sent"] == len(selected) > 0
    assert update.value["updated"] == len(selected)
    assert update.value["chunks"] == -(-len(selected) // 200)
    assert verify.value["verified"] is True
    assert verify.value["records_verified"] == len(selected)


def test_runtime_auth_bearer_reads_the_token_from_the_environment(
    resource: OsopHttpResource, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.overrides["/x"] = lambda request: httpx.Response(200, json={})
    runtime = {"endpoint": "/x", "auth": {"type": "bearer", "secret_ref": "STATIC_API_TOKEN"}}

    with pytest.raises(OsopConfigError, match="STATIC_API_TOKEN"):
        call(resource, runtime)

    monkeypatch.setenv("STATIC_API_TOKEN", "static-token-value")
    call(resource, runtime)

    assert api.requests[-1].headers["Authorization"] == "Bearer static-token-value"


def test_static_bearer_token_is_not_sent_over_plain_http_to_another_host(
    resource: OsopHttpResource, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATIC_API_TOKEN", "static-token-value")
    monkeypatch.delenv("OSOP_ALLOW_INSECURE_HTTP", raising=False)
    runtime = {
        "url": "http://plain.test",
        "endpoint": "/x",
        "auth": {"type": "bearer", "secret_ref": "STATIC_API_TOKEN"},
    }
    sent_before = len(api.requests)

    with pytest.raises(OsopConfigError, match="plain http") as raised:
        call(resource, runtime)

    assert len(api.requests) == sent_before, "nothing was sent"
    assert "static-token-value" not in str(raised.value)
