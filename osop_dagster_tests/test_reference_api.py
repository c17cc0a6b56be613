import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from osop_dagster_tests.fixtures.reference_api import ReferenceApi
from osop_reference_api import RecordStore, ReferenceApiProcess, iter_seed_rows
from osop_reference_api.seed import AGE_BOUNDARY_DAYS, is_selected_by_workflow

integration = pytest.mark.integration


def _token_response(api: ReferenceApi, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{api.base_url}/oauth/token", timeout=10, **kwargs)


def _walk(client: httpx.Client, params: dict[str, Any]) -> tuple[list[int], list[httpx.Response]]:
    """Follow Link rel="next" from the first page; bounded so a loop cannot hang the test."""
    responses = [client.get("/api/v2/records", params=params)]
    while "next" in responses[-1].links:
        assert len(responses) < 1000, "the Link chain does not end"
        responses.append(client.get(responses[-1].links["next"]["url"]))
    ids = [record["id"] for response in responses for record in response.json()["data"]]
    return ids, responses


# -- seed and store, without a server -------------------------------------------------------------


def test_seed_is_deterministic() -> None:
    assert list(iter_seed_rows(500, 7)) == list(iter_seed_rows(500, 7))
    assert list(iter_seed_rows(500, 7)) != list(iter_seed_rows(500, 8))


def test_seed_ids_run_from_one_without_gaps() -> None:
    assert [row[0] for row in iter_seed_rows(47, 3)] == list(range(1, 48))
    assert list(iter_seed_rows(0, 3)) == []


@pytest.mark.parametrize("seed", [1, 7, 12345])
def test_seed_selects_a_quarter_and_covers_the_boundary(seed: int) -> None:
    """A quarter are pending and older than 30 days; boundary and near-miss cases all occur."""
    rows = list(iter_seed_rows(2000, seed))
    selected = [row for row in rows if is_selected_by_workflow(row[2], row[3])]
    assert len(selected) == 500

    pending_ages = {row[3] for row in rows if row[2] == "pending"}
    assert AGE_BOUNDARY_DAYS in pending_ages
    assert AGE_BOUNDARY_DAYS + 1 in pending_ages
    assert any(row[2] == "pending" and row[3] < AGE_BOUNDARY_DAYS for row in rows)
    assert any(row[2] != "pending" and row[3] > AGE_BOUNDARY_DAYS for row in rows)
    assert {row[2] for row in rows} == {"pending", "active", "processed", "closed"}


def test_store_reads_what_was_seeded(tmp_path: Path) -> None:
    with RecordStore(tmp_path / "api.sqlite3") as store:
        assert store.dataset() is None
        store.seed(100, 7)

        assert store.dataset() == (100, 7)
        assert store.count() == 100
        assert store.count(status="pending", age_days_gt=30) == 25
        first = next(iter_seed_rows(1, 7))
        record = store.get(1)
        assert record is not None
        assert tuple(record.values()) == first
        assert store.get(101) is None
        assert store.ids_where(last_batch_id=None) == list(range(1, 101))


def test_store_refuses_unknown_filters(tmp_path: Path) -> None:
    with RecordStore(tmp_path / "api.sqlite3") as store:
        store.seed(10, 7)
        with pytest.raises(TypeError, match="age_over"):
            store.count(age_over=3)


def test_cli_refuses_a_host_other_than_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "osop_reference_api", "--host", "0.0.0.0", "--db", "x.sqlite3"],
        env={"OSOP_REFERENCE_CLIENT_ID": "a", "OSOP_REFERENCE_CLIENT_SECRET": "b"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "127.0.0.1" in result.stderr
    assert not (tmp_path / "x.sqlite3").exists()


def test_cli_requires_client_credentials(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "osop_reference_api", "--port", "0", "--db", "x.sqlite3"],
        env={},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "OSOP_REFERENCE_CLIENT_SECRET" in result.stderr


# -- token endpoint -------------------------------------------------------------------------------


@integration
def test_token_with_basic_auth(reference_api: ReferenceApi) -> None:
    response = _token_response(
        reference_api,
        data={"grant_type": "client_credentials"},
        auth=(reference_api.client_id, reference_api.client_secret),
    )

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "records:read records:write"
    assert len(body["access_token"]) >= 32


@integration
def test_token_with_credentials_in_body(reference_api: ReferenceApi) -> None:
    response = _token_response(
        reference_api,
        data={
            "grant_type": "client_credentials",
            "client_id": reference_api.client_id,
            "client_secret": reference_api.client_secret,
            "scope": "records:read",
        },
    )

    assert response.status_code == 200
    assert response.json()["scope"] == "records:read"


@integration
def test_token_with_both_client_authentications_is_invalid_request(
    reference_api: ReferenceApi,
) -> None:
    response = _token_response(
        reference_api,
        data={"grant_type": "client_credentials", "client_id": reference_api.client_id},
        auth=(reference_api.client_id, reference_api.client_secret),
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@integration
@pytest.mark.parametrize(
    "how",
    ["wrong secret by basic", "wrong id in body", "no credentials", "garbled basic"],
)
def test_token_with_bad_credentials_is_invalid_client(
    reference_api: ReferenceApi, how: str
) -> None:
    kwargs: dict[str, Any] = {"data": {"grant_type": "client_credentials"}}
    if how == "wrong secret by basic":
        kwargs["auth"] = (reference_api.client_id, "not-the-secret")
    elif how == "wrong id in body":
        kwargs["data"] |= {"client_id": "someone", "client_secret": reference_api.client_secret}
    elif how == "garbled basic":
        kwargs["headers"] = {"Authorization": "Basic !!!"}

    response = _token_response(reference_api, **kwargs)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


@integration
def test_token_with_other_grant_is_unsupported(reference_api: ReferenceApi) -> None:
    response = _token_response(
        reference_api,
        data={"grant_type": "password", "username": "u", "password": "p"},
        auth=(reference_api.client_id, reference_api.client_secret),
    )

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


@integration
def test_token_request_must_be_form_encoded(reference_api: ReferenceApi) -> None:
    response = _token_response(
        reference_api,
        json={"grant_type": "client_credentials"},
        auth=(reference_api.client_id, reference_api.client_secret),
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@integration
def test_token_with_unknown_scope_is_invalid_scope(reference_api: ReferenceApi) -> None:
    response = _token_response(
        reference_api,
        data={"grant_type": "client_credentials", "scope": "records:delete"},
        auth=(reference_api.client_id, reference_api.client_secret),
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


@integration
def test_read_only_token_cannot_batch_update(reference_api: ReferenceApi) -> None:
    with reference_api.client(reference_api.token(scope="records:read")) as client:
        assert client.get("/api/v2/records").status_code == 200
        response = client.patch("/api/v2/records/batch", json={"records": []})

    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"


@pytest.fixture(scope="module")
def short_lived_tokens_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceApi]:
    """A second service whose tokens live half a second."""
    db_path = tmp_path_factory.mktemp("short_ttl") / "api.sqlite3"
    with (
        ReferenceApiProcess(db_path, records=20, token_ttl=0.5, client_id="ttl-client") as process,
        RecordStore(db_path) as store,
    ):
        yield ReferenceApi(
            base_url=process.base_url,
            client_id=process.client_id,
            client_secret=process.client_secret,
            store=store,
            process=process,
            records=20,
        )


@integration
def test_token_expires_after_its_lifetime(short_lived_tokens_api: ReferenceApi) -> None:
    with short_lived_tokens_api.client() as client:
        assert client.get("/api/v2/records").status_code == 200
        time.sleep(0.7)
        response = client.get("/api/v2/records")

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@integration
def test_secret_stays_out_of_argv_and_log(reference_api: ReferenceApi) -> None:
    token = reference_api.token()
    with reference_api.client(token) as client:
        client.get("/api/v2/records")
    pid = reference_api.process.pid
    assert pid is not None

    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    log = reference_api.process.log_path.read_text()
    assert reference_api.client_secret.encode() not in argv
    assert reference_api.client_secret not in log
    assert token not in log


# -- bearer enforcement ---------------------------------------------------------------------------


@integration
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v2/records"),
        ("GET", "/api/v2/records/1"),
        ("PATCH", "/api/v2/records/batch"),
        ("GET", "/api/v2/records/batch/status?batch_id=b_x"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz"])
def test_protected_endpoints_need_a_valid_bearer_token(
    reference_api: ReferenceApi, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = httpx.request(
        method, f"{reference_api.base_url}{path}", headers=headers, json={}, timeout=10
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@integration
def test_revoked_tokens_are_refused(fresh_reference_api: ReferenceApi) -> None:
    with fresh_reference_api.client() as client:
        assert client.get("/api/v2/records").status_code == 200
        httpx.post(f"{fresh_reference_api.base_url}/_admin/revoke-tokens", timeout=10)
        assert client.get("/api/v2/records").status_code == 401


@integration
def test_health_needs_no_token(reference_api: ReferenceApi) -> None:
    response = httpx.get(f"{reference_api.base_url}/health", timeout=10)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- pagination -----------------------------------------------------------------------------------


@integration
@pytest.mark.parametrize(
    "params",
    [
        {"per_page": 300},
        {"offset": 0, "limit": 300},
        {"limit": 300},
        {"per_page": 1000},
        {"per_page": 70, "status": "pending"},
        {"offset": 0, "limit": 70, "status": "pending"},
        {"limit": 70, "status": "pending"},
    ],
    ids=lambda params: "&".join(f"{k}={v}" for k, v in params.items()),
)
def test_link_walk_reaches_every_record_once(
    reference_api: ReferenceApi, params: dict[str, Any]
) -> None:
    filters = {"status": params["status"]} if "status" in params else {}
    expected = reference_api.store.ids_where(**filters)

    with reference_api.client() as client:
        ids, responses = _walk(client, params)

    assert ids == expected
    assert len(responses) == -(-len(expected) // (params.get("per_page") or params["limit"]))
    assert all(r.json()["pagination"]["total"] == len(expected) for r in responses)
    assert all(r.links["next"]["url"].startswith(reference_api.base_url) for r in responses[:-1])


@integration
def test_link_header_keeps_style_and_parameters(reference_api: ReferenceApi) -> None:
    with reference_api.client() as client:
        by_page = client.get(
            "/api/v2/records", params={"page": 2, "per_page": 50, "status": "closed"}
        )
        by_offset = client.get("/api/v2/records", params={"offset": 10, "limit": 5})
        by_cursor = client.get("/api/v2/records", params={"limit": 5})

    page_url = httpx.URL(by_page.links["next"]["url"])
    assert dict(page_url.params) == {"page": "3", "per_page": "50", "status": "closed"}
    offset_url = httpx.URL(by_offset.links["next"]["url"])
    assert dict(offset_url.params) == {"offset": "15", "limit": "5"}
    cursor_url = httpx.URL(by_cursor.links["next"]["url"])
    assert cursor_url.params["cursor"] == by_cursor.json()["pagination"]["next_cursor"]
    assert by_page.json()["pagination"] == {
        "page": 2,
        "per_page": 50,
        "total": reference_api.store.count(status="closed"),
        "total_pages": -(-reference_api.store.count(status="closed") // 50),
        "next_cursor": None,
    }


@integration
def test_records_default_to_first_page_of_100(reference_api: ReferenceApi) -> None:
    with reference_api.client() as client:
        body = client.get("/api/v2/records").json()

    assert [record["id"] for record in body["data"]] == list(range(1, 101))
    assert body["pagination"]["page"] == 1
    assert body["pagination"]["total_pages"] == 20
    assert body["data"][0] == reference_api.store.get(1)


@integration
def test_page_size_above_the_maximum_is_clamped(reference_api: ReferenceApi) -> None:
    with reference_api.client() as client:
        response = client.get("/api/v2/records", params={"per_page": 5000})

    assert len(response.json()["data"]) == 1000
    assert response.json()["pagination"]["per_page"] == 1000
    assert "per_page=1000" in response.links["next"]["url"]


@integration
def test_page_past_the_end_is_empty(reference_api: ReferenceApi) -> None:
    with reference_api.client() as client:
        response = client.get("/api/v2/records", params={"page": 99, "per_page": 100})

    assert response.status_code == 200
    assert response.json()["data"] == []
    assert "link" not in response.headers


@integration
@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"page": 0}, "invalid_request"),
        ({"per_page": "ten"}, "invalid_request"),
        ({"offset": -1}, "invalid_request"),
        ({"page": 2, "offset": 10}, "invalid_request"),
        ({"status": "archived"}, "invalid_request"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
    ],
)
def test_bad_pagination_parameters_are_refused(
    reference_api: ReferenceApi, params: dict[str, Any], error: str
) -> None:
    with reference_api.client() as client:
        response = client.get("/api/v2/records", params=params)

    assert response.status_code == 400
    assert response.json()["error"] == error


@integration
def test_cursor_is_bound_to_its_filter(reference_api: ReferenceApi) -> None:
    with reference_api.client() as client:
        first = client.get("/api/v2/records", params={"limit": 10, "status": "pending"})
        cursor = first.json()["pagination"]["next_cursor"]
        response = client.get("/api/v2/records", params={"cursor": cursor, "status": "closed"})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_cursor"


@integration
def test_record_by_id(reference_api: ReferenceApi) -> None:
    with reference_api.client() as client:
        found = client.get("/api/v2/records/17")
        missing = client.get("/api/v2/records/999999")

    assert found.json() == reference_api.store.get(17)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


# -- batch updates --------------------------------------------------------------------------------


def _patch(client: httpx.Client, records: list[dict[str, Any]], **headers: str) -> httpx.Response:
    return client.patch("/api/v2/records/batch", json={"records": records}, headers=headers)


@integration
def test_batch_updates_writable_fields_and_bumps_versions(
    fresh_reference_api: ReferenceApi,
) -> None:
    store = fresh_reference_api.store
    before = store.get(5)
    assert before is not None

    with fresh_reference_api.client() as client:
        response = _patch(
            client,
            [
                {
                    "id": 5,
                    "status": "processed",
                    "owner": "finance",
                    "amount": 12.5,
                    "age_days": 1,
                    "created_at": "2000-01-01T00:00:00Z",
                    "last_batch_id": "b_forged",
                    "colour": "blue",
                },
                {"id": 6, "title": "Renamed"},
            ],
        )

    assert response.status_code == 200
    body = response.json()
    batch_id = body["batch_id"]
    assert batch_id.startswith("b_")
    assert body["status"] == "completed"
    assert (body["requested"], body["updated"], body["rejected"]) == (2, 2, [])
    assert body["results"] == [
        {"id": 5, "status": "updated", "version": 2},
        {"id": 6, "status": "updated", "version": 2},
    ]
    after = store.get(5)
    assert after is not None
    assert after | {"updated_at": None} == before | {
        "status": "processed",
        "owner": "finance",
        "amount": 12.5,
        "version": 2,
        "last_batch_id": batch_id,
        "updated_at": None,
    }
    assert after["updated_at"] > before["updated_at"]
    assert store.updated_by_batch(batch_id) == [5, 6]


@integration
def test_batch_write_back_of_unchanged_records_counts_as_update(
    fresh_reference_api: ReferenceApi,
) -> None:
    with fresh_reference_api.client() as client:
        records = client.get("/api/v2/records", params={"per_page": 3}).json()["data"]
        response = _patch(client, records)

    assert response.json()["updated"] == 3
    for record in records:
        stored = fresh_reference_api.store.get(record["id"])
        assert stored is not None
        assert stored["version"] == record["version"] + 1
        assert stored["last_batch_id"] == response.json()["batch_id"]
        assert stored["status"] == record["status"]


@integration
def test_batch_rejects_records_one_by_one(fresh_reference_api: ReferenceApi) -> None:
    store = fresh_reference_api.store
    untouched = {record_id: store.get(record_id) for record_id in (2, 3, 4, 7)}
    untouched_one = store.get(1)

    with fresh_reference_api.client() as client:
        response = _patch(
            client,
            [
                {"id": 1, "status": "processed", "version": 1},
                {"id": 2, "status": "processed", "version": 7},
                {"id": 3, "status": "archived"},
                {"id": 4, "amount": "a lot"},
                {"id": 1, "status": "closed"},
                {"id": 999_999, "status": "processed"},
                {"id": 7, "title": ""},
            ],
        )

    body = response.json()
    assert response.status_code == 200
    assert body["updated"] == 1
    assert body["rejected"] == [
        {"id": 2, "reason": "version_conflict"},
        {"id": 3, "reason": "invalid_status"},
        {"id": 4, "reason": "invalid_value"},
        {"id": 1, "reason": "duplicate_id"},
        {"id": 999_999, "reason": "not_found"},
        {"id": 7, "reason": "invalid_value"},
    ]
    assert [result["status"] for result in body["results"]] == ["updated"] + ["rejected"] * 6
    changed = store.get(1)
    assert changed is not None and untouched_one is not None
    assert changed | {"updated_at": None, "last_batch_id": None} == untouched_one | {
        "status": "processed",
        "version": 2,
        "updated_at": None,
    }
    assert {record_id: store.get(record_id) for record_id in untouched} == untouched


@integration
def test_batch_idempotency_key_replays_the_stored_answer(fresh_reference_api: ReferenceApi) -> None:
    records = [{"id": 10, "status": "processed"}, {"id": 11, "status": "processed"}]

    with fresh_reference_api.client() as client:
        first = _patch(client, records, **{"Idempotency-Key": "run-42"})
        # The same body with keys in another order is the same request.
        second = client.patch(
            "/api/v2/records/batch",
            content=b'{"records": [{"status": "processed", "id": 10}, {"id": 11, "status": '
            b'"processed"}]}',
            headers={"Idempotency-Key": "run-42", "Content-Type": "application/json"},
        )

    assert second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    record = fresh_reference_api.store.get(10)
    assert record is not None and record["version"] == 2
    assert fresh_reference_api.store.batch_ids() == [first.json()["batch_id"]]
    assert fresh_reference_api.stats()["requests"]["batch_replays"] == 1


@integration
def test_batch_idempotency_key_reused_with_another_body_is_refused(
    fresh_reference_api: ReferenceApi,
) -> None:
    with fresh_reference_api.client() as client:
        _patch(client, [{"id": 10, "status": "processed"}], **{"Idempotency-Key": "k1"})
        response = _patch(client, [{"id": 11, "status": "processed"}], **{"Idempotency-Key": "k1"})

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert 11 in fresh_reference_api.store.ids_where(version=1, last_batch_id=None)


@integration
def test_batch_over_the_size_limit_is_refused_whole(fresh_reference_api: ReferenceApi) -> None:
    with fresh_reference_api.client() as client:
        response = _patch(client, [{"id": i, "status": "closed"} for i in range(1, 1002)])

    assert response.status_code == 413
    assert response.json()["error"] == "batch_too_large"
    assert response.json()["max_batch_size"] == 1000
    assert fresh_reference_api.store.count(version=1) == fresh_reference_api.records


@integration
@pytest.mark.parametrize(
    ("content", "content_type", "status", "error"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[]", "application/json", 422, "invalid_body"),
        (b'{"records": "all"}', "application/json", 422, "invalid_body"),
        (b'{"records": [{"id": "1"}]}', "application/json", 422, "invalid_body"),
        (b'{"records": [5]}', "application/json", 422, "invalid_body"),
        (b'{"records": []}', "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_malformed_batch_bodies_are_refused(
    fresh_reference_api: ReferenceApi, content: bytes, content_type: str, status: int, error: str
) -> None:
    with fresh_reference_api.client() as client:
        response = client.patch(
            "/api/v2/records/batch", content=content, headers={"Content-Type": content_type}
        )

    assert response.status_code == status
    assert response.json()["error"] == error
    assert fresh_reference_api.store.batch_ids() == []


@integration
def test_empty_batch_completes_with_nothing_updated(fresh_reference_api: ReferenceApi) -> None:
    with fresh_reference_api.client() as client:
        body = _patch(client, []).json()
        status = client.get("/api/v2/records/batch/status", params={"batch_id": body["batch_id"]})

    assert (body["requested"], body["updated"]) == (0, 0)
    assert status.json()["verified"] is True
    assert status.json()["records_checked"] == 0


# -- batch status ---------------------------------------------------------------------------------


@integration
def test_status_verifies_every_claimed_record(fresh_reference_api: ReferenceApi) -> None:
    with fresh_reference_api.client() as client:
        first = _patch(client, [{"id": i, "status": "processed"} for i in (1, 2, 3)]).json()
        second = _patch(client, [{"id": 4, "status": "processed"}, {"id": 0}]).json()
        response = client.get(
            "/api/v2/records/batch/status",
            params=[("batch_id", first["batch_id"]), ("batch_id", second["batch_id"])],
        )

    body = response.json()
    assert response.status_code == 200
    assert [batch["batch_id"] for batch in body["batches"]] == [
        first["batch_id"],
        second["batch_id"],
    ]
    assert body["batches"][1]["rejected"] == [{"id": 0, "reason": "not_found"}]
    assert (body["records_checked"], body["records_verified"]) == (4, 4)
    assert body["mismatched_ids"] == []
    assert body["verified"] is True


@integration
def test_status_reports_records_overwritten_by_a_later_batch(
    fresh_reference_api: ReferenceApi,
) -> None:
    with fresh_reference_api.client() as client:
        first = _patch(client, [{"id": i, "status": "processed"} for i in (1, 2, 3)]).json()
        _patch(client, [{"id": 2, "status": "closed"}])
        body = client.get(
            "/api/v2/records/batch/status", params={"batch_id": first["batch_id"]}
        ).json()

    assert (body["records_checked"], body["records_verified"]) == (3, 2)
    assert body["mismatched_ids"] == [2]
    assert body["verified"] is False


@integration
def test_status_of_unknown_or_missing_batch_is_refused(reference_api: ReferenceApi) -> None:
    with reference_api.client() as client:
        unknown = client.get("/api/v2/records/batch/status", params={"batch_id": "b_nope"})
        missing = client.get("/api/v2/records/batch/status")

    assert unknown.status_code == 404
    assert unknown.json()["batch_ids"] == ["b_nope"]
    assert missing.status_code == 400


# -- administration -------------------------------------------------------------------------------


@integration
def test_admin_stats_count_requests_per_endpoint(fresh_reference_api: ReferenceApi) -> None:
    with fresh_reference_api.client() as client:
        _walk(client, {"per_page": 500})
        batch = _patch(client, [{"id": 1, "status": "closed"}]).json()
        client.get("/api/v2/records/batch/status", params={"batch_id": batch["batch_id"]})

    requests = fresh_reference_api.stats()["requests"]
    assert requests["token_requests"] == 1
    assert requests["tokens_issued"] == 1
    assert requests["record_pages"] == 4
    assert requests["batch_calls"] == 1
    assert requests["status_calls"] == 1


@integration
def test_reseed_restores_the_data_set(fresh_reference_api: ReferenceApi) -> None:
    with fresh_reference_api.client() as client:
        _patch(client, [{"id": 1, "status": "closed"}])
    fresh_reference_api.reseed()

    assert fresh_reference_api.store.count(version=1) == fresh_reference_api.records
    assert fresh_reference_api.store.batch_ids() == []
    assert fresh_reference_api.stats()["requests"]["batch_calls"] == 0


@integration
def test_restart_keeps_changes_unless_fresh(tmp_path: Path) -> None:
    db_path = tmp_path / "api.sqlite3"
    with ReferenceApiProcess(db_path, records=40) as process:
        token = httpx.post(
            f"{process.base_url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(process.client_id, process.client_secret),
            timeout=10,
        ).json()["access_token"]
        httpx.patch(
            f"{process.base_url}/api/v2/records/batch",
            json={"records": [{"id": 3, "status": "closed"}]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).raise_for_status()

    with ReferenceApiProcess(db_path, records=40, fresh=False), RecordStore(db_path) as store:
        kept = store.get(3)
    with ReferenceApiProcess(db_path, records=40, fresh=True), RecordStore(db_path) as store:
        reseeded = store.get(3)

    assert kept is not None and kept["version"] == 2
    assert reseeded is not None and reseeded["version"] == 1


@integration
def test_basic_credentials_are_form_decoded(tmp_path: Path) -> None:
    """RFC 6749 section 2.3.1: id and secret are form-encoded before Basic encoding."""
    secret = "p@ss word:+/"
    with ReferenceApiProcess(tmp_path / "api.sqlite3", records=5, client_secret=secret) as api:
        encoded = base64.b64encode(f"{api.client_id}:p%40ss+word%3A%2B%2F".encode()).decode()
        response = httpx.post(
            f"{api.base_url}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {encoded}"},
            timeout=10,
        )

    assert response.status_code == 200


_PARENT_SCRIPT = """
import sys, time
from osop_reference_api import ReferenceApiProcess
api = ReferenceApiProcess(sys.argv[1], records=10, startup_timeout=20).start()
sys.stdout.write(f"{api.pid}\\n")
sys.stdout.flush()
time.sleep(60)
"""


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state follows the parenthesised command name; a zombie has already exited.
    return stat.rpartition(")")[2].split()[0] != "Z"


@integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_child_stops_when_its_parent_dies(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, str(tmp_path / "api.sqlite3")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()

    deadline = time.monotonic() + 10
    while _is_running(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = _is_running(child_pid)
    if survived:
        os.kill(child_pid, signal.SIGKILL)
    assert not survived


@integration
def test_batch_body_over_the_byte_limit_is_refused(fresh_reference_api: ReferenceApi) -> None:
    padding = "x" * (9 * 1024 * 1024)
    with fresh_reference_api.client() as client:
        response = _patch(client, [{"id": 1, "title": padding}])

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert fresh_reference_api.store.batch_ids() == []
