import base64
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stamina

from osop_dagster.errors import OsopAuthError, OsopConfigError, OsopHttpError
from osop_dagster.resources import _oauth2
from osop_dagster.resources.http import ApiRuntime, OsopHttpResource, RetrySettings
from osop_dagster_tests.fixtures.fake_api import BASE_URL, CLIENT_ID, CLIENT_SECRET, FakeApi

SECRET_REF = "SERVICE_CLIENT_CREDENTIALS"
LOG = logging.getLogger("osop_test.oauth2")


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


def authenticate(
    resource: OsopHttpResource, retry: RetrySettings | None = None, **token: Any
) -> Any:
    runtime = ApiRuntime.model_validate(
        {"url": BASE_URL, "endpoint": "/oauth/token", "method": "POST", "token": token}
    )
    return resource.authenticate(
        node_id="authenticate",
        runtime=runtime,
        secret_ref=SECRET_REF,
        timeout_sec=10,
        retry=retry or RetrySettings(),
        log=LOG,
    )


def get_records(resource: OsopHttpResource, lease: dict[str, Any]) -> Any:
    return resource.call(
        node_id="get_records",
        runtime=ApiRuntime(url=BASE_URL, endpoint="/api/v2/records"),
        inputs={},
        token=lease,
        timeout_sec=None,
        retry=RetrySettings(),
        idempotency_prefix="run-1",
        log=LOG,
    )


def test_basic_client_auth_form_urlencodes_id_and_secret_before_base64(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    """RFC 6749 section 2.3.1: a colon, plus or slash in the secret is percent-encoded first."""
    authenticate(resource)

    (request,) = api.requests_to("/oauth/token")
    expected = base64.b64encode(b"client-7:s3cr%3Aet%2B%2Fvalue").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.content == b"grant_type=client_credentials"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_post_client_auth_sends_credentials_in_the_form_body(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    api.client_auth = "post"

    authenticate(resource, client_auth="client_secret_post", scope="records:write")

    (request,) = api.requests_to("/oauth/token")
    assert "Authorization" not in request.headers
    assert request.content == (
        b"grant_type=client_credentials&scope=records%3Awrite"
        b"&client_id=client-7&client_secret=s3cr%3Aet%2B%2Fvalue"
    )


def test_lease_holds_no_token_and_describes_it(resource: OsopHttpResource, api: FakeApi) -> None:
    result = authenticate(resource, scope="records:read")

    lease = result.value
    (token,) = api.tokens_issued
    assert token not in repr(lease)
    assert token not in repr(result.metadata)
    assert lease["fingerprint"] == _oauth2.fingerprint(token)
    assert lease["token_type"] == "Bearer"
    assert lease["scope"] == "records:read"
    assert lease["expires_at"] is not None
    assert result.metadata["osop/token_fingerprint"] == lease["fingerprint"]


def test_bearer_call_reuses_the_cached_token(resource: OsopHttpResource, api: FakeApi) -> None:
    lease = authenticate(resource).value

    result = get_records(resource, lease)

    assert len(api.requests_to("/oauth/token")) == 1
    assert result.metadata["osop/token_renewed"] is False
    assert all(
        request.headers["Authorization"] == f"Bearer {api.tokens_issued[0]}"
        for request in api.requests_to("/api/v2/records")
    )


def test_absent_token_is_renewed_with_a_warning(
    resource: OsopHttpResource, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """A run in a new process has the lease but not the token: it asks for a new one."""
    lease = authenticate(resource).value
    _oauth2.clear_token_cache()

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = get_records(resource, lease)

    assert len(api.tokens_issued) == 2
    assert result.metadata["osop/token_renewed"] is True
    assert len(result.value) == len(api.records)
    assert "was renewed" in caplog.text
    assert SECRET_REF in caplog.text
    assert api.tokens_issued[1] not in caplog.text


def test_expired_token_is_renewed_once_per_call(
    resource: OsopHttpResource, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.expires_in = 60
    lease = authenticate(resource).value
    later = _oauth2._now() + 45  # inside the 30 s margin before expiry
    monkeypatch.setattr(_oauth2, "_now", lambda: later)

    get_records(resource, lease)

    assert len(api.tokens_issued) == 2
    pages = api.requests_to("/api/v2/records")
    assert len(pages) == 3
    assert {request.headers["Authorization"] for request in pages} == {
        f"Bearer {api.tokens_issued[1]}"
    }


def test_a_token_gone_while_pages_are_in_flight_is_renewed_once(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    """Pages fetched ahead find the token gone together; one of them renews it."""
    api.records = [{"id": n} for n in range(1, 41)]
    lease = authenticate(resource).value

    def records_then_forget(request: httpx.Request) -> httpx.Response:
        answer = api._records(request)
        if request.url.params.get("page") == "1":
            # The process loses its copy of the token once the first page is in.
            _oauth2.forget_token(lease["token_url"], lease["secret_ref"])
        time.sleep(0.01)
        return answer

    def slow_token(request: httpx.Request) -> httpx.Response:
        time.sleep(0.05)  # long enough for every page in flight to miss the token
        return api._token(request)

    api.overrides["/api/v2/records"] = records_then_forget
    api.overrides["/oauth/token"] = slow_token
    result = resource.call(
        node_id="get_records",
        runtime=ApiRuntime.model_validate(
            {
                "url": BASE_URL,
                "endpoint": "/api/v2/records",
                "pagination": {
                    "style": "page_number",
                    "page_size": 2,
                    "total_path": "pagination.total",
                    "concurrency": 4,
                },
            }
        ),
        inputs={},
        token=lease,
        timeout_sec=10,
        retry=RetrySettings(),
        idempotency_prefix="run-1",
        log=LOG,
    )

    assert result.value == api.records
    assert len(api.tokens_issued) == 2
    assert len(api.requests_to("/oauth/token")) == 2


def test_invalid_client_is_final_and_names_only_the_reference(
    resource: OsopHttpResource, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_REF, f"{CLIENT_ID}:wrong-secret-value")

    with pytest.raises(OsopAuthError) as raised:
        authenticate(resource, RetrySettings(max_retries=3))

    assert len(api.requests_to("/oauth/token")) == 1
    message = str(raised.value)
    assert SECRET_REF in message
    assert "invalid_client" in message
    assert "wrong-secret-value" not in message
    assert raised.value.status == 401
    assert raised.value.headers["www-authenticate"] == 'Basic realm="token"'


def test_server_error_from_the_token_endpoint_is_retried(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    answers = iter([httpx.Response(503, json={"error": "temporarily_unavailable"})])
    api.overrides["/oauth/token"] = lambda request: next(answers, None) or api._token(request)

    result = authenticate(resource, RetrySettings(max_retries=2))

    assert len(api.requests_to("/oauth/token")) == 2
    assert result.metadata["osop/attempts"] == 2


def test_token_type_other_than_bearer_is_refused(resource: OsopHttpResource, api: FakeApi) -> None:
    api.overrides["/oauth/token"] = lambda request: httpx.Response(
        200, json={"access_token": "mac-token-123456", "token_type": "mac"}
    )

    with pytest.raises(OsopHttpError, match="expected 'bearer'"):
        authenticate(resource)


def test_refused_bearer_token_surfaces_as_401_without_refresh(
    resource: OsopHttpResource, api: FakeApi
) -> None:
    """The workflow's error edge handles a 401; the resource neither refreshes nor retries."""
    lease = authenticate(resource).value
    api.tokens_issued.clear()  # the API forgets the token: it is now refused

    with pytest.raises(OsopHttpError) as raised:
        get_records(resource, lease)

    assert raised.value.status == 401
    assert len(api.requests_to("/oauth/token")) == 1
    assert _oauth2.cached_token(lease["token_url"], SECRET_REF) is None


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({SECRET_REF: "id-1:sec:ret"}, ("id-1", "sec:ret")),
        (
            {f"{SECRET_REF}_CLIENT_ID": "id-2", f"{SECRET_REF}_CLIENT_SECRET": "x:y"},
            ("id-2", "x:y"),
        ),
    ],
)
def test_client_credentials_come_from_either_environment_form(
    environment: dict[str, str], expected: tuple[str, str]
) -> None:
    credentials = _oauth2.load_client_credentials(SECRET_REF, environment)

    assert (credentials.client_id, credentials.client_secret) == expected
    assert expected[1] not in repr(credentials)


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({}, SECRET_REF),
        ({SECRET_REF: "no-colon-secret"}, SECRET_REF),
        ({SECRET_REF: ":only-secret"}, SECRET_REF),
        ({f"{SECRET_REF}_CLIENT_ID": "id-3"}, f"{SECRET_REF}_CLIENT_SECRET"),
    ],
)
def test_missing_or_malformed_credentials_name_the_variable_not_the_value(
    environment: dict[str, str], named: str
) -> None:
    with pytest.raises(OsopConfigError) as raised:
        _oauth2.load_client_credentials(SECRET_REF, environment)

    assert named in str(raised.value)
    for value in environment.values():
        assert value not in str(raised.value)
