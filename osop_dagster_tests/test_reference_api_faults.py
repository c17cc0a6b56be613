import json
import math
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from osop_dagster_tests.fixtures.reference_api import ReferenceApi

pytestmark = pytest.mark.integration

# Slow answers wait this long; clients give up after CLIENT_TIMEOUT, so no test sleeps for long.
DELAY = 1.5
CLIENT_TIMEOUT = 0.5

# A reset reaches the client as "disconnected" or, when the RST wins the race with the read, as
# "connection reset by peer"; either way no answer arrived.
CONNECTION_LOST = (httpx.RemoteProtocolError, httpx.ReadError)


def _patch(client: httpx.Client, records: list[dict[str, Any]], **headers: str) -> httpx.Response:
    return client.patch("/api/v2/records/batch", json={"records": records}, headers=headers)


def _version(api: ReferenceApi, record_id: int) -> int:
    record = api.store.get(record_id)
    assert record is not None
    return int(record["version"])


def _ids(response: httpx.Response) -> list[int]:
    return [record["id"] for record in response.json()["data"]]


# -- the admin endpoint ---------------------------------------------------------------------------


def test_faults_are_set_reported_and_cleared(fresh_reference_api: ReferenceApi) -> None:
    active = fresh_reference_api.set_faults(
        {"kind": "server_error", "group": "batch", "count": 2},
        {"kind": "reject", "ids": [5, 3, 5]},
    )

    assert active == [
        {
            "kind": "server_error",
            "group": "batch",
            "after": 0,
            "every": 1,
            "count": 2,
            "status": 503,
            "retry_after": None,
            "retry_after_form": "seconds",
            "seen": 0,
            "fired": 0,
        },
        {"kind": "reject", "ids": [3, 5], "fraction": 0.0, "seed": 0, "seen": 0, "fired": 0},
    ]
    assert fresh_reference_api.faults() == active
    fresh_reference_api.clear_faults()
    assert fresh_reference_api.faults() == []


@pytest.mark.parametrize(
    ("switch", "fragment"),
    [
        ({"kind": "meltdown"}, "'kind' must be one of"),
        ({"kind": "rate_limit"}, "'group' must be one of"),
        ({"kind": "rate_limit", "group": "records", "cont": 2}, "unknown field(s) ['cont']"),
        ({"kind": "server_error", "group": "batch", "status": 404}, "'status' must be"),
        ({"kind": "delay", "group": "records", "seconds": 99}, "'seconds' must be a number"),
        ({"kind": "token_expiry"}, "give 'uses', 'ttl' or both"),
        ({"kind": "reject", "ids": ["7"]}, "a list of integer record ids"),
        ([{"kind": "reject"}, {"kind": "reject"}], "at most one 'reject' switch"),
    ],
)
def test_malformed_fault_switches_are_refused(
    fresh_reference_api: ReferenceApi, switch: dict[str, Any] | list[Any], fragment: str
) -> None:
    fresh_reference_api.set_faults({"kind": "rate_limit", "group": "token"})
    switches = switch if isinstance(switch, list) else [switch]

    response = httpx.put(
        f"{fresh_reference_api.base_url}/_admin/faults", json={"faults": switches}, timeout=10
    )

    assert response.status_code == 422
    assert fragment in response.json()["error_description"]
    assert [s["kind"] for s in fresh_reference_api.faults()] == ["rate_limit"]


def test_switches_answer_in_order_and_count_only_calls_they_see(
    fresh_reference_api: ReferenceApi,
) -> None:
    fresh_reference_api.set_faults(
        {"kind": "rate_limit", "group": "records"},
        {"kind": "server_error", "group": "records", "status": 502},
    )

    with fresh_reference_api.client() as client:
        statuses = [client.get("/api/v2/records").status_code for _ in range(3)]

    assert statuses == [429, 502, 200]
    counts = [(s["seen"], s["fired"]) for s in fresh_reference_api.faults()]
    assert counts == [(3, 1), (2, 1)]
    assert fresh_reference_api.stats()["requests"]["record_pages"] == 3


# -- tokens ---------------------------------------------------------------------------------------


def test_token_expires_after_its_allowed_uses(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults({"kind": "token_expiry", "uses": 2})
    limited = fresh_reference_api.token()
    fresh_reference_api.clear_faults()
    unlimited = fresh_reference_api.token()

    with fresh_reference_api.client(limited) as client:
        statuses = [client.get("/api/v2/records/1").status_code for _ in range(3)]
        refused = client.get("/api/v2/records/1")
    with fresh_reference_api.client(unlimited) as client:
        others = [client.get("/api/v2/records/1").status_code for _ in range(3)]

    assert statuses == [200, 200, 401]
    assert refused.json()["error"] == "invalid_token"
    assert others == [200, 200, 200]


def test_token_expires_after_the_overridden_lifetime(fresh_reference_api: ReferenceApi) -> None:
    switches = fresh_reference_api.set_faults({"kind": "token_expiry", "ttl": 0.3})
    answer = httpx.post(
        f"{fresh_reference_api.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(fresh_reference_api.client_id, fresh_reference_api.client_secret),
        timeout=10,
    ).json()
    time.sleep(0.5)

    with fresh_reference_api.client(answer["access_token"]) as client:
        response = client.get("/api/v2/records/1")

    assert switches[0]["announce"] is True
    assert answer["expires_in"] == 1
    assert response.status_code == 401
    assert fresh_reference_api.faults()[0] | {"kind": None} == switches[0] | {
        "kind": None,
        "seen": 1,
        "fired": 1,
    }


def test_unannounced_token_lifetime_keeps_the_usual_expires_in(
    fresh_reference_api: ReferenceApi,
) -> None:
    fresh_reference_api.set_faults({"kind": "token_expiry", "ttl": 0.3, "announce": False})
    answer = httpx.post(
        f"{fresh_reference_api.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(fresh_reference_api.client_id, fresh_reference_api.client_secret),
        timeout=10,
    ).json()

    assert answer["expires_in"] == 3600


@pytest.mark.parametrize(
    ("switch", "expected"),
    [
        ({"after": 1}, [200, 401, 200, 200]),
        ({"after": 1, "count": None}, [200, 401, 401, 401]),
        ({"every": 2, "count": None}, [200, 401, 200, 401]),
    ],
    ids=["once", "from-then-on", "every-second-call"],
)
def test_invalid_token_on_chosen_batch_calls(
    fresh_reference_api: ReferenceApi, switch: dict[str, Any], expected: list[int]
) -> None:
    fresh_reference_api.set_faults({"kind": "invalid_token", **switch})

    with fresh_reference_api.client() as client:
        answers = [_patch(client, [{"id": 1, "status": "closed"}]) for _ in range(4)]
        # Other endpoints keep accepting the token.
        assert client.get("/api/v2/records/1").status_code == 200

    assert [answer.status_code for answer in answers] == expected
    refused = next(answer for answer in answers if answer.status_code == 401)
    assert refused.json()["error"] == "invalid_token"
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert _version(fresh_reference_api, 1) == 1 + expected.count(200)
    assert fresh_reference_api.faults()[0]["fired"] == expected.count(401)


# -- rate limits and server errors ----------------------------------------------------------------


def test_rate_limit_with_retry_after_in_seconds(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults(
        {"kind": "rate_limit", "group": "records", "count": 2, "retry_after": 3}
    )

    with fresh_reference_api.client() as client:
        answers = [client.get("/api/v2/records") for _ in range(3)]

    assert [answer.status_code for answer in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "3"
    assert answers[0].json()["error"] == "rate_limited"
    assert "retry-after" not in answers[2].headers


def test_rate_limit_with_retry_after_as_http_date(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults(
        {"kind": "rate_limit", "group": "status", "retry_after": 2, "retry_after_form": "http_date"}
    )
    sent = time.time()

    with fresh_reference_api.client() as client:
        response = client.get("/api/v2/records/batch/status", params={"batch_id": "b_x"})

    assert response.status_code == 429
    retry_at = parsedate_to_datetime(response.headers["retry-after"])
    assert retry_at.tzinfo is not None
    assert retry_at.timestamp() >= math.floor(sent) + 2


def test_rate_limit_on_the_token_endpoint_issues_no_token(
    fresh_reference_api: ReferenceApi,
) -> None:
    fresh_reference_api.set_faults({"kind": "rate_limit", "group": "token"})

    with pytest.raises(httpx.HTTPStatusError) as raised:
        fresh_reference_api.token()
    fresh_reference_api.token()

    assert raised.value.response.status_code == 429
    requests = fresh_reference_api.stats()["requests"]
    assert (requests["token_requests"], requests["tokens_issued"]) == (2, 1)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_burst_applies_nothing(fresh_reference_api: ReferenceApi, status: int) -> None:
    fresh_reference_api.set_faults(
        {"kind": "server_error", "group": "batch", "status": status, "count": 2}
    )

    with fresh_reference_api.client() as client:
        answers = [_patch(client, [{"id": 7, "status": "closed"}]) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [status, status, 200]
    assert answers[0].json()["error"] == "server_error"
    assert "retry-after" not in answers[0].headers
    assert _version(fresh_reference_api, 7) == 2
    assert len(fresh_reference_api.store.batch_ids()) == 1


def test_unavailable_answer_carries_retry_after(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults(
        {"kind": "server_error", "group": "records", "status": 503, "retry_after": 2}
    )

    with fresh_reference_api.client() as client:
        response = client.get("/api/v2/records")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"


# -- slow answers and dropped connections ---------------------------------------------------------


def test_slow_answer_outlasts_the_client_timeout(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults({"kind": "delay", "group": "records", "seconds": DELAY})

    with fresh_reference_api.client() as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/api/v2/records", timeout=CLIENT_TIMEOUT)
        response = client.get("/api/v2/records", timeout=CLIENT_TIMEOUT)

    assert response.status_code == 200
    assert fresh_reference_api.faults()[0]["fired"] == 1


def test_batch_applied_before_a_slow_answer(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults(
        {"kind": "delay", "group": "batch", "seconds": DELAY, "when": "after"}
    )

    with fresh_reference_api.client() as client:
        with pytest.raises(httpx.ReadTimeout):
            client.patch(
                "/api/v2/records/batch",
                json={"records": [{"id": 9, "status": "closed"}]},
                timeout=CLIENT_TIMEOUT,
            )

    assert _version(fresh_reference_api, 9) == 2


@pytest.mark.parametrize(
    ("how", "error"), [("close", httpx.RemoteProtocolError), ("rst", httpx.ReadError)]
)
def test_reset_drops_the_connection_without_an_answer(
    fresh_reference_api: ReferenceApi, how: str, error: type[httpx.TransportError]
) -> None:
    fresh_reference_api.set_faults({"kind": "reset", "group": "records", "how": how})

    with fresh_reference_api.client() as client:
        with pytest.raises(error):
            client.get("/api/v2/records")
        response = client.get("/api/v2/records")

    assert response.status_code == 200
    assert fresh_reference_api.faults()[0]["fired"] == 1


def test_reset_before_a_batch_applies_nothing(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults({"kind": "reset", "group": "batch"})

    with fresh_reference_api.client() as client:
        with pytest.raises(CONNECTION_LOST):
            _patch(client, [{"id": 4, "status": "closed"}])

    assert _version(fresh_reference_api, 4) == 1
    assert fresh_reference_api.store.batch_ids() == []


def test_batch_reset_after_apply_is_replayed_not_reapplied(
    fresh_reference_api: ReferenceApi,
) -> None:
    """The answer lost to a reset is stored under the key; the retry gets it, nothing twice."""
    fresh_reference_api.set_faults({"kind": "reset", "group": "batch", "when": "after"})
    records = [{"id": 12, "status": "closed", "version": 1}, {"id": 13, "owner": "eve"}]

    with fresh_reference_api.client() as client:
        with pytest.raises(CONNECTION_LOST):
            _patch(client, records, **{"Idempotency-Key": "lost-answer-1"})
        applied = {record_id: _version(fresh_reference_api, record_id) for record_id in (12, 13)}
        replay = _patch(client, records, **{"Idempotency-Key": "lost-answer-1"})

    assert applied == {12: 2, 13: 2}
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["updated"] == 2
    assert [_version(fresh_reference_api, record_id) for record_id in (12, 13)] == [2, 2]
    assert fresh_reference_api.store.batch_ids() == [replay.json()["batch_id"]]
    assert fresh_reference_api.stats()["requests"]["batch_replays"] == 1


# -- damaged pages --------------------------------------------------------------------------------


def test_truncated_records_page_is_cut_mid_document(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults({"kind": "truncate", "group": "records", "fraction": 0.6})

    with fresh_reference_api.client() as client:
        cut = client.get("/api/v2/records", params={"per_page": 20})
        whole = client.get("/api/v2/records", params={"per_page": 20})

    assert cut.status_code == 200
    assert cut.headers["content-type"] == "application/json"
    assert int(cut.headers["content-length"]) == len(cut.content)
    assert 0 < len(cut.content) < len(whole.content)
    assert whole.content.startswith(cut.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)


@pytest.mark.parametrize(
    "params", [{"limit": 50}, {"per_page": 50}, {"offset": 0, "limit": 50}], ids=str
)
def test_repeated_cursor_points_at_the_same_page(
    fresh_reference_api: ReferenceApi, params: dict[str, Any]
) -> None:
    fresh_reference_api.set_faults({"kind": "repeat_cursor", "after": 1})

    with fresh_reference_api.client() as client:
        first = client.get("/api/v2/records", params=params)
        second = client.get(first.links["next"]["url"])
        again = client.get(second.links["next"]["url"])
        third = client.get(again.links["next"]["url"])

    assert _ids(first) == list(range(1, 51))
    assert _ids(second) == _ids(again) == list(range(51, 101))
    assert _ids(third) == list(range(101, 151))
    if "limit" in params and "offset" not in params:
        assert second.json()["pagination"]["next_cursor"] in again.request.url.query.decode()


# -- rejected records -----------------------------------------------------------------------------


def test_listed_records_are_rejected_by_fault(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults({"kind": "reject", "ids": [3]})

    with fresh_reference_api.client() as client:
        answer = _patch(client, [{"id": record_id, "status": "closed"} for record_id in (2, 3, 4)])

    body = answer.json()
    assert answer.status_code == 200
    assert body["updated"] == 2
    assert body["rejected"] == [{"id": 3, "reason": "rejected_by_fault"}]
    assert {"id": 3, "status": "rejected", "version": 1} in body["results"]
    assert [_version(fresh_reference_api, record_id) for record_id in (2, 3, 4)] == [2, 1, 2]
    assert fresh_reference_api.faults()[0]["fired"] == 1


def test_rejected_fraction_is_the_same_on_every_retry(fresh_reference_api: ReferenceApi) -> None:
    fresh_reference_api.set_faults({"kind": "reject", "fraction": 0.5, "seed": 11})
    records = [{"id": record_id, "owner": "ops"} for record_id in range(1, 41)]

    with fresh_reference_api.client() as client:
        first = _patch(client, records).json()
        second = _patch(client, records).json()

    refused = [entry["id"] for entry in first["rejected"]]
    assert 0 < len(refused) < 40
    assert {entry["reason"] for entry in first["rejected"]} == {"rejected_by_fault"}
    assert [entry["id"] for entry in second["rejected"]] == refused
    assert fresh_reference_api.faults()[0]["fired"] == 2 * len(refused)
