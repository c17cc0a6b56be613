import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stamina

from osop_dagster.constants import HTTP_LOGGER_NAME
from osop_dagster.errors import OsopExecutionError, OsopHttpError
from osop_dagster.resources import _pagination
from osop_dagster.resources.http import ApiRuntime, HttpResult, OsopHttpResource, RetrySettings
from osop_dagster_tests.fixtures.fake_api import BASE_URL, FakeApi

LOG = logging.getLogger("osop_test.pagination")
RECORDS = "/api/v2/records"


@pytest.fixture(autouse=True)
def _testing_mode() -> Iterator[None]:
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


@pytest.fixture
def api() -> FakeApi:
    api = FakeApi()
    # No token endpoint in these tests: every request counts as authorized.
    api._authorized = lambda request: True  # type: ignore[method-assign]
    return api


def fetch(
    api: FakeApi,
    pagination: Any,
    *,
    max_pages: int = 1000,
    resource: OsopHttpResource | None = None,
    **runtime: Any,
) -> HttpResult:
    resource = resource or OsopHttpResource(max_pages=max_pages)
    resource._transport = api.transport()
    return resource.call(
        node_id="get_records",
        runtime=ApiRuntime.model_validate(
            {"url": BASE_URL, "endpoint": RECORDS, "pagination": pagination, **runtime}
        ),
        inputs={},
        token=None,
        timeout_sec=None,
        retry=RetrySettings(),
        idempotency_prefix="run-1",
        log=LOG,
    )


def answer_with(bodies: list[Any], headers: list[dict[str, str]] | None = None) -> Callable:
    """A handler that answers the given bodies in turn, then empty pages."""
    answers = iter(zip(bodies, headers or [{}] * len(bodies), strict=True))

    def handle(request: httpx.Request) -> httpx.Response:
        body, extra = next(answers, ({"data": []}, {}))
        return httpx.Response(200, json=body, headers=extra)

    return handle


def test_auto_follows_link_headers_and_concatenates_items(api: FakeApi) -> None:
    result = fetch(api, "auto")

    assert result.value == api.records
    assert result.metadata["osop/pages"] == 3
    assert result.metadata["osop/record_count"] == 7


def test_auto_keeps_a_single_answer_that_is_not_a_collection(api: FakeApi) -> None:
    api.overrides[RECORDS] = answer_with([{"verified": True, "batches": []}])

    result = fetch(api, "auto")

    assert result.value == {"verified": True, "batches": []}


def test_none_keeps_the_first_answer_whole(api: FakeApi) -> None:
    result = fetch(api, "none", output="pagination.total")

    assert result.value == 7
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("pagination", "sent"),
    [
        (
            {"style": "page_number", "page_size": 3, "total_path": "pagination.total"},
            [
                {"page": "1", "per_page": "3"},
                {"page": "2", "per_page": "3"},
                {"page": "3", "per_page": "3"},
            ],
        ),
        (
            {"style": "offset", "page_size": 3},
            [
                {"offset": "0", "limit": "3"},
                {"offset": "3", "limit": "3"},
                {"offset": "6", "limit": "3"},
                {"offset": "7", "limit": "3"},
            ],
        ),
        (
            {"style": "cursor", "page_size": 3},
            [{"limit": "3"}, {"cursor": "3", "limit": "3"}, {"cursor": "6", "limit": "3"}],
        ),
        (
            {"style": "link"},
            [{}, {"page": "2", "per_page": "3"}, {"page": "3", "per_page": "3"}],
        ),
    ],
    ids=["page_number", "offset", "cursor", "link"],
)
def test_every_style_collects_all_items_in_order(
    api: FakeApi, pagination: dict[str, Any], sent: list[dict[str, str]]
) -> None:
    result = fetch(api, pagination)

    assert result.value == api.records
    assert [dict(request.url.params) for request in api.requests] == sent


def test_empty_page_stops_paging(api: FakeApi) -> None:
    result = fetch(api, {"style": "page_number", "page_size": 3})

    assert result.value == api.records
    assert len(api.requests) == 4  # the fourth page is empty


def test_node_query_parameters_go_with_every_page(api: FakeApi) -> None:
    fetch(api, {"style": "page_number", "page_size": 5}, query={"status": "pending"})

    assert {request.url.params["status"] for request in api.requests} == {"pending"}


def test_repeated_cursor_fails_clearly(api: FakeApi) -> None:
    page = {"data": [{"id": 1}], "next_cursor": "abc"}
    api.overrides[RECORDS] = answer_with([page, page, page])

    with pytest.raises(OsopExecutionError, match="already fetched \\(cursor 'abc'\\)"):
        fetch(api, {"style": "cursor"})

    assert len(api.requests) == 2


def test_link_back_to_an_earlier_page_fails_clearly(api: FakeApi) -> None:
    first = f"{BASE_URL}{RECORDS}"
    api.overrides[RECORDS] = answer_with(
        [{"data": [1]}, {"data": [2]}],
        [{"Link": f'<{first}?page=2>; rel="next"'}, {"Link": f'<{first}>; rel="next"'}],
    )

    with pytest.raises(OsopExecutionError, match="going round in circles"):
        fetch(api, "auto")


def test_page_cap_fails_clearly(api: FakeApi) -> None:
    with pytest.raises(OsopExecutionError, match="more than 2 pages") as raised:
        fetch(api, {"style": "page_number", "page_size": 1}, max_pages=2)

    assert "max_pages" in str(raised.value)
    assert len(api.requests) == 2


def test_node_page_cap_overrides_the_resource_cap(api: FakeApi) -> None:
    with pytest.raises(OsopExecutionError, match="more than 1 pages"):
        fetch(api, {"style": "link", "max_pages": 1})


def test_total_that_changes_while_paging_is_reported(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.overrides[RECORDS] = answer_with(
        [
            {"data": [1, 2], "meta": {"total": 5}},
            {"data": [3, 4], "meta": {"total": 6}},
            {"data": [5, 6], "meta": {"total": 6}},
        ]
    )

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = fetch(api, {"style": "page_number", "total_path": "meta.total"})

    assert result.value == [1, 2, 3, 4, 5, 6]
    (warning,) = result.metadata["osop/warnings"]
    assert "changed from 5 to 6" in warning
    assert "changed from 5 to 6" in caplog.text


def test_items_path_selects_the_list(api: FakeApi) -> None:
    api.overrides[RECORDS] = answer_with([{"payload": {"rows": [1, 2]}}])

    result = fetch(api, {"style": "page_number", "items_path": "payload.rows"})

    assert result.value == [1, 2]


def test_missing_item_list_fails_with_the_fix(api: FakeApi) -> None:
    api.overrides[RECORDS] = answer_with([{"rows": [1]}])

    with pytest.raises(OsopExecutionError, match=r"Set pagination\.items_path"):
        fetch(api, {"style": "page_number"})


def test_next_link_to_another_origin_is_not_followed(api: FakeApi) -> None:
    """The next request would carry the credentials to the other host."""
    api.overrides[RECORDS] = answer_with(
        [{"data": [1]}], [{"Link": '<https://elsewhere.test/records?page=2>; rel="next"'}]
    )

    with pytest.raises(OsopExecutionError, match="another origin"):
        fetch(api, "auto")

    assert len(api.requests) == 1


def test_a_long_walk_reports_progress_to_the_run_log_not_a_line_per_page(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Per-request lines go to the process's HTTP logger; the run's log gets progress."""
    monkeypatch.setattr(_pagination, "PROGRESS_EVERY_SEC", 0.0)
    caplog.set_level(logging.INFO, logger=HTTP_LOGGER_NAME)

    with caplog.at_level(logging.INFO, logger=LOG.name):
        fetch(api, "auto")

    run_lines = [r.getMessage() for r in caplog.records if r.name == LOG.name]
    wire_lines = [r.getMessage() for r in caplog.records if r.name == HTTP_LOGGER_NAME]
    assert len(wire_lines) == 3
    assert [line.split(": ")[-1] for line in run_lines[:3]] == [
        "1 pages, 3 items so far.",
        "2 pages, 6 items so far.",
        "3 pages, 7 items so far.",
    ]
    assert len(run_lines) == 4
    assert "3 requests, 7 items" in run_lines[-1]


class _InFlight:
    """Wraps a handler, holding each answer briefly and counting requests in flight at once."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.02)
            return self.handler(request)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("style", ["page_number", "offset"])
def test_concurrent_pages_arrive_in_order_with_the_same_requests(api: FakeApi, style: str) -> None:
    """Pages fetched ahead are kept in page order; no page is asked twice or skipped."""
    api.records = [{"id": n} for n in range(1, 24)]
    in_flight = _InFlight(api._records)
    api.overrides[RECORDS] = in_flight
    pagination = {"style": style, "page_size": 2, "total_path": "pagination.total"}

    result = fetch(api, {**pagination, "concurrency": 4})

    assert result.value == api.records
    assert result.metadata["osop/pages"] == 12
    assert len(api.requests) == 12
    sent = sorted(str(request.url.params) for request in api.requests)
    assert len(set(sent)) == 12
    assert 2 <= in_flight.most <= 4


def test_the_resource_caps_the_pages_in_flight(api: FakeApi) -> None:
    api.records = [{"id": n} for n in range(1, 24)]
    in_flight = _InFlight(api._records)
    api.overrides[RECORDS] = in_flight

    pagination = {"style": "page_number", "page_size": 2, "total_path": "pagination.total"}

    result = fetch(
        api, {**pagination, "concurrency": 8}, resource=OsopHttpResource(max_concurrency=2)
    )

    assert result.value == api.records
    assert in_flight.most == 2


def test_a_server_that_caps_the_page_size_drops_the_plan_and_still_reads_every_item(
    api: FakeApi,
) -> None:
    """Offsets planned for pages of 5 are wrong when the server sends 3: the walk goes on alone."""
    api.records = [{"id": n} for n in range(1, 12)]

    def capped(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        params["limit"] = str(min(int(params["limit"]), 3))
        return api._records(httpx.Request("GET", request.url.copy_with(params=params)))

    api.overrides[RECORDS] = capped

    result = fetch(
        api,
        {"style": "offset", "page_size": 5, "total_path": "pagination.total", "concurrency": 4},
    )

    assert result.value == api.records
    offsets = [int(request.url.params["offset"]) for request in api.requests]
    # The walk itself asks 0, 3, 6, 9; what was planned ahead (5, 10) is extra, never used.
    assert [0, 3, 6, 9] == [offset for offset in offsets if offset % 3 == 0]


def test_a_failing_page_fetched_ahead_fails_the_walk_with_its_own_error(api: FakeApi) -> None:
    api.records = [{"id": n} for n in range(1, 24)]

    def broken_page_4(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "4":
            return httpx.Response(404, json={"error": "gone"})
        return api._records(request)

    api.overrides[RECORDS] = broken_page_4

    with pytest.raises(OsopHttpError, match="HTTP 404"):
        fetch(
            api,
            {
                "style": "page_number",
                "page_size": 2,
                "total_path": "pagination.total",
                "concurrency": 3,
            },
        )
    # Nothing after the failure was planned beyond the window in flight.
    assert len(api.requests) <= 4 + 3


def test_pages_with_the_same_ends_but_other_items_are_not_a_loop(api: FakeApi) -> None:
    api.overrides[RECORDS] = answer_with([["ok", "warn", "ok"], ["ok", "fail", "ok"]])

    result = fetch(api, {"style": "page_number"})

    assert result.value == ["ok", "warn", "ok", "ok", "fail", "ok"]


def test_a_page_holding_a_number_json_cannot_store_fails_the_walk(api: FakeApi) -> None:
    def overflowing(request: httpx.Request) -> httpx.Response:
        body = b'{"data": [{"id": 1, "score": 1e999}]}' if "page=1" in str(request.url) else b"{}"
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    api.overrides[RECORDS] = overflowing
    resource = OsopHttpResource()
    resource._transport = api.transport()

    with pytest.raises(OsopExecutionError, match="cannot be stored as JSON"):
        resource.call(
            node_id="get_records",
            runtime=ApiRuntime.model_validate(
                {"url": BASE_URL, "endpoint": RECORDS, "pagination": {"style": "page_number"}}
            ),
            inputs={},
            token=None,
            timeout_sec=None,
            retry=RetrySettings(),
            idempotency_prefix="run-1",
            log=LOG,
            as_text=True,
        )
