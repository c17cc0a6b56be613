"""Secrets canary: client secrets and access tokens never leave the process that holds them.

The example workflow runs through Dagster on a Postgres-backed instance, against the reference
service (a success, then a client secret the token endpoint refuses) and against a small echoing
API on 127.0.0.1 whose error answers quote the ``Authorization`` header and the token back. After
each run, every place a value could land is read: the event log (each event's repr, so
materialization metadata and failure descriptions too), run config and tags, every file under the
instance's folder (compute logs, temp files) and the asset storage, and the log output at DEBUG.

Credentials also travel only over TLS, or to this machine: plain http to another host is refused
before anything is sent, unless ``OSOP_ALLOW_INSECURE_HTTP`` allows it.
"""

import base64
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import httpx
import pytest
import stamina

from osop_dagster import constants
from osop_dagster._postgres_url import parse_postgres_url
from osop_dagster.definitions import build_osop_definitions
from osop_dagster.errors import OsopConfigError
from osop_dagster.io_manager import OsopJsonIOManager
from osop_dagster.resources import _oauth2
from osop_dagster.resources.http import ApiRuntime, OsopHttpResource, RetrySettings
from osop_dagster_tests._processes import processes_mentioning
from osop_dagster_tests.fixtures.fake_api import CLIENT_ID, CLIENT_SECRET, FakeApi
from osop_dagster_tests.fixtures.reference_api import ReferenceApi

SECRET_REF = "SERVICE_CLIENT_CREDENTIALS"
JOB = "rest_api_workflow_job"
LOG = logging.getLogger("osop_test.secrets")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(constants.ENV_ALLOW_INSECURE_HTTP, raising=False)
    _oauth2.clear_token_cache()
    with stamina.set_testing(True, attempts=10, cap=True):
        yield
    _oauth2.clear_token_cache()


# Plain http: credentials go only over TLS or to this machine.


def _resource(api: FakeApi) -> OsopHttpResource:
    resource = OsopHttpResource()
    resource._transport = api.transport()
    return resource


def _authenticate(resource: OsopHttpResource, url: str) -> dict[str, Any]:
    return resource.authenticate(
        node_id="authenticate",
        runtime=ApiRuntime(url=url, endpoint="/oauth/token", method="POST"),
        secret_ref=SECRET_REF,
        timeout_sec=10,
        retry=RetrySettings(),
        log=LOG,
    ).value


def _get(resource: OsopHttpResource, url: str, lease: dict[str, Any]) -> Any:
    return resource.call(
        node_id="get_records",
        runtime=ApiRuntime(url=url, endpoint="/api/v2/records"),
        inputs={},
        token=lease,
        timeout_sec=None,
        retry=RetrySettings(),
        idempotency_prefix="run",
        log=LOG,
    ).value


@pytest.mark.parametrize("url", ["http://api.example.test", "http://10.1.2.3:8080"])
def test_client_credentials_are_not_sent_over_plain_http_to_another_host(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_REF, f"{CLIENT_ID}:{CLIENT_SECRET}")
    api = FakeApi()

    with pytest.raises(OsopConfigError) as raised:
        _authenticate(_resource(api), url)

    assert api.requests == []
    message = str(raised.value)
    assert "plain http" in message and "https://" in message
    assert constants.ENV_ALLOW_INSECURE_HTTP in message
    assert CLIENT_SECRET not in message


def test_bearer_token_is_not_sent_over_plain_http_to_another_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease comes from an https token endpoint; the API itself is plain http."""
    monkeypatch.setenv(SECRET_REF, f"{CLIENT_ID}:{CLIENT_SECRET}")
    api = FakeApi()
    resource = _resource(api)
    lease = _authenticate(resource, "https://api.test")
    sent = len(api.requests)

    with pytest.raises(OsopConfigError, match="an access token over plain http"):
        _get(resource, "http://api.test", lease)

    assert len(api.requests) == sent
    assert api.tokens_issued[0] not in repr(api.requests)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765", "https://api.test"],
)
def test_credentials_may_go_to_this_machine_or_over_tls(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_REF, f"{CLIENT_ID}:{CLIENT_SECRET}")
    api = FakeApi()
    resource = _resource(api)

    lease = _authenticate(resource, url)
    records = _get(resource, url, lease)

    assert len(records) == len(api.records)
    assert api.requests[-1].headers["Authorization"].startswith("Bearer ")


def test_insecure_http_is_allowed_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_REF, f"{CLIENT_ID}:{CLIENT_SECRET}")
    monkeypatch.setenv(constants.ENV_ALLOW_INSECURE_HTTP, "1")
    api = FakeApi()
    resource = _resource(api)

    lease = _authenticate(resource, "http://api.test")
    _get(resource, "http://api.test", lease)

    assert len(api.requests) >= 2
    assert {request.url.scheme for request in api.requests} == {"http"}


def test_redirect_downgrading_to_plain_http_drops_authorization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_REF, f"{CLIENT_ID}:{CLIENT_SECRET}")
    api = FakeApi()
    api.overrides["/api/v2/records"] = lambda request: httpx.Response(
        302, headers={"Location": "http://api.test/landing"}
    )
    api.overrides["/landing"] = lambda request: httpx.Response(200, json=[])
    resource = _resource(api)

    _get(resource, "https://api.test", _authenticate(resource, "https://api.test"))

    assert api.requests[-1].url.scheme == "http"
    assert "Authorization" not in api.requests[-1].headers


# The canary, through Dagster runs.


class _EchoingApi:
    """A token endpoint that issues ``token``, and records endpoints that quote it back.

    ``mode`` picks the answer of ``GET /api/v2/records``: ``echo_400`` is a JSON error that
    quotes the ``Authorization`` header and every request header; ``text_500`` a plain-text
    server error that quotes the token, with the header echoed in the answer's headers too.

    ``token_mode`` picks the answer of ``POST /oauth/token``: ``issue`` grants ``token``;
    ``echo_401`` is an OAuth2 ``invalid_client`` error whose description and fields quote the
    request's ``Authorization`` header and form body; ``echo_500`` a plain-text server error
    quoting both, with the header echoed in the answer's headers too. ``token_requests`` keeps
    what the token endpoint received, as (``Authorization`` header, form body) pairs.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.mode = "echo_400"
        self.token_mode: Literal["issue", "echo_401", "echo_500"] = "issue"
        self.requests = 0
        self.token_requests: list[tuple[str, str]] = []
        echoing = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode("utf-8", errors="replace")
                authorization = self.headers.get("Authorization", "")
                echoing.requests += 1
                echoing.token_requests.append((authorization, form))
                if echoing.token_mode == "echo_401":
                    body = {
                        "error": "invalid_client",
                        "error_description": (
                            f"refused Authorization: {authorization} with the form {form}"
                        ),
                        "request": {"form": form, "headers": dict(self.headers.items())},
                        "hint": f"you sent {form} and {authorization}",
                    }
                    self._answer(401, json.dumps(body), "application/json")
                    return
                if echoing.token_mode == "echo_500":
                    text = f"token service failed on {authorization} with the form {form}"
                    self._answer(500, text, "text/plain", {"X-Echo": f"{authorization} {form}"})
                    return
                self._answer(
                    200,
                    json.dumps(
                        {"access_token": echoing.token, "token_type": "bearer", "expires_in": 600}
                    ),
                    "application/json",
                )

            def do_GET(self) -> None:
                echoing.requests += 1
                authorization = self.headers.get("Authorization", "")
                if echoing.mode == "echo_400":
                    body = {
                        "error": "bad_request",
                        "message": f"rejected the header Authorization: {authorization}",
                        "received": dict(self.headers.items()),
                    }
                    self._answer(400, json.dumps(body), "application/json")
                else:
                    text = f"upstream refused {authorization} (token {echoing.token})"
                    self._answer(500, text, "text/plain", {"X-Echo": authorization})

            def _answer(
                self, status: int, body: str, kind: str, extra: dict[str, str] | None = None
            ) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_EchoingApi":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def instance(postgres_url: str) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose runs and event log live in the test Postgres database."""
    storage_url = parse_postgres_url(postgres_url).sqlalchemy_url
    overrides = {"storage": {"postgres": {"postgres_url": storage_url}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


def _run(seed: Path, storage: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    defs = build_osop_definitions(
        [seed], resources={"io_manager": OsopJsonIOManager(base_dir=str(storage))}
    )
    return defs.resolve_job_def(JOB).execute_in_process(
        instance=instance, raise_on_error=False, tags={"osop/test": "canary"}
    )


def _everything_written(
    instance: dg.DagsterInstance, run_ids: list[str], folders: list[Path], logged: str
) -> str:
    parts = [logged]
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        parts += [repr(run.run_config), repr(run.tags)]
        records = instance.get_records_for_run(run_id=run_id, limit=100_000).records
        parts += [repr(record.event_log_entry) for record in records]
    for folder in [Path(instance.root_directory), *folders]:
        parts += [
            path.read_bytes().decode("utf-8", errors="replace")
            for path in folder.rglob("*")
            if path.is_file()
        ]
    return "\n".join(parts)


def _failure_text(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.STEP_FAILURE
    ).records
    return "\n".join(repr(record.event_log_entry) for record in records)


@pytest.mark.integration
def test_secrets_stay_out_of_every_record_of_a_good_and_a_refused_run(
    fresh_reference_api: ReferenceApi,
    postgres_url: str,
    instance: dg.DagsterInstance,
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = fresh_reference_api
    seed = repo_root / "workflows" / "rest-api-workflow.osop.yaml"
    storage = tmp_path / "storage"
    wrong_secret = f"canary-wrong-secret-{secrets.token_hex(12)}"
    monkeypatch.setenv(constants.ENV_API_BASE_URL, api.base_url)
    monkeypatch.setenv(constants.ENV_POSTGRES_URL, postgres_url)
    caplog.set_level(logging.DEBUG)

    monkeypatch.setenv(SECRET_REF, f"{api.client_id}:{api.client_secret}")
    good = _run(seed, storage, instance)
    _oauth2.clear_token_cache()
    monkeypatch.setenv(SECRET_REF, f"{api.client_id}:{wrong_secret}")
    refused = _run(seed, storage, instance)

    assert good.success
    assert not refused.success
    assert SECRET_REF in _failure_text(instance, refused.run_id)
    tokens = api.live_tokens()
    assert tokens
    written = _everything_written(instance, [good.run_id, refused.run_id], [storage], caplog.text)
    assert len(written) > 10_000
    for secret in (*tokens, api.client_secret, wrong_secret):
        assert secret not in written


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["echo_400", "text_500"])
def test_secrets_quoted_back_by_an_api_stay_out_of_every_record(
    mode: str,
    postgres_url: str,
    instance: dg.DagsterInstance,
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API answers errors that quote the bearer token, in the body and in a header."""
    token = f"canary-token-{secrets.token_hex(16)}"
    client_secret = f"canary-client-secret-{secrets.token_hex(12)}"
    seed = repo_root / "workflows" / "rest-api-workflow.osop.yaml"
    storage = tmp_path / "storage"
    caplog.set_level(logging.DEBUG)

    with _EchoingApi(token) as api:
        api.mode = mode
        monkeypatch.setenv(constants.ENV_API_BASE_URL, api.base_url)
        monkeypatch.setenv(constants.ENV_POSTGRES_URL, postgres_url)
        monkeypatch.setenv(SECRET_REF, f"echo-client:{client_secret}")
        result = _run(seed, storage, instance)

    assert not result.success
    failure = _failure_text(instance, result.run_id)
    assert "get_records" in failure
    assert "***" in failure
    written = _everything_written(instance, [result.run_id], [storage], caplog.text)
    assert api.requests >= 2
    for secret in (token, client_secret):
        assert secret not in written


def _seed_copy(repo_root: Path, folder: Path, client_auth: str | None) -> Path:
    """The seed workflow, its ``authenticate`` node asking with ``client_auth`` when given."""
    text = (repo_root / "workflows" / "rest-api-workflow.osop.yaml").read_text(encoding="utf-8")
    if client_auth is not None:
        anchor = "      method: POST\n      url: https://api.service.com\n"
        assert text.count(anchor) == 1
        text = text.replace(anchor, f"{anchor}      token:\n        client_auth: {client_auth}\n")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rest-api-workflow.osop.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _basic_credentials(client_id: str, client_secret: str) -> str:
    """The credentials part of an HTTP Basic header, as RFC 6749 section 2.3.1 encodes it."""
    return base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()


@pytest.mark.integration
@pytest.mark.parametrize("token_mode", ["echo_401", "echo_500"])
@pytest.mark.parametrize("client_auth", ["client_secret_post", None])
def test_client_secret_quoted_back_by_the_token_endpoint_stays_out_of_every_record(
    client_auth: str | None,
    token_mode: Literal["echo_401", "echo_500"],
    postgres_url: str,
    instance: dg.DagsterInstance,
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The token endpoint's error quotes the form body and the Basic header it received."""
    client_id = "echo-client"
    client_secret = f"canary-client-secret-{secrets.token_hex(12)}"
    seed = _seed_copy(repo_root, tmp_path / "workflows", client_auth)
    storage = tmp_path / "storage"
    caplog.set_level(logging.DEBUG)

    with _EchoingApi(f"canary-token-{secrets.token_hex(16)}") as api:
        api.token_mode = token_mode
        monkeypatch.setenv(constants.ENV_API_BASE_URL, api.base_url)
        monkeypatch.setenv(constants.ENV_POSTGRES_URL, postgres_url)
        monkeypatch.setenv(SECRET_REF, f"{client_id}:{client_secret}")
        result = _run(seed, storage, instance)

    assert not result.success
    assert "authenticate" in _failure_text(instance, result.run_id)
    assert api.token_requests, "the token endpoint was asked"
    basic = _basic_credentials(client_id, client_secret)
    for authorization, form in api.token_requests:
        if client_auth == "client_secret_post":
            assert f"client_secret={client_secret}" in form and not authorization
        else:
            assert authorization == f"Basic {basic}" and "client_secret" not in form
    written = _everything_written(instance, [result.run_id], [storage], caplog.text)
    for secret in (client_secret, basic):
        assert secret not in written


RECOVERY_SENSOR = "rest_api_workflow__batch_update_error_to_authenticate_6"
WORKFLOW_KEY = "rest-api-workflow"
_BEFORE_BATCH = ("access_token", "records_list", "filtered_records")
_FROM_BATCH = ("update_response", "verification_result", "audit_id")


@pytest.mark.integration
def test_secrets_stay_out_of_every_record_of_a_401_and_its_recovery_run(
    fresh_reference_api: ReferenceApi,
    postgres_url: str,
    instance: dg.DagsterInstance,
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tokens are revoked before the batch update; the sensor's run re-authenticates."""
    api = fresh_reference_api
    storage = tmp_path / "storage"
    monkeypatch.setenv(constants.ENV_API_BASE_URL, api.base_url)
    monkeypatch.setenv(constants.ENV_POSTGRES_URL, postgres_url)
    monkeypatch.setenv(SECRET_REF, f"{api.client_id}:{api.client_secret}")
    caplog.set_level(logging.DEBUG)
    defs = build_osop_definitions(
        [repo_root / "workflows" / "rest-api-workflow.osop.yaml"],
        resources={"io_manager": OsopJsonIOManager(base_dir=str(storage))},
    )
    job = defs.resolve_job_def(JOB)
    before = [dg.AssetKey([WORKFLOW_KEY, name]) for name in _BEFORE_BATCH]
    rest = [dg.AssetKey([WORKFLOW_KEY, name]) for name in _FROM_BATCH]

    revoke = f"{api.base_url}/_admin/revoke-tokens"
    # Tokens of earlier tests on the session's service would blur which run fetched which.
    httpx.post(revoke, timeout=10).raise_for_status()

    fetched = job.execute_in_process(instance=instance, asset_selection=before)
    tokens = set(api.live_tokens())
    httpx.post(revoke, timeout=10).raise_for_status()
    failed = job.execute_in_process(instance=instance, asset_selection=rest, raise_on_error=False)
    context = dg.build_run_status_sensor_context(
        sensor_name=RECOVERY_SENSOR,
        dagster_event=failed.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=failed.dagster_run,
    ).for_run_failure()
    request = defs.resolve_sensor_def(RECOVERY_SENSOR)(context)
    assert isinstance(request, dg.RunRequest)
    recovery = job.execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags
    )
    tokens |= set(api.live_tokens())

    assert fetched.success and not failed.success and recovery.success
    assert "401" in _failure_text(instance, failed.run_id)
    assert api.stats()["requests"]["tokens_issued"] == 2
    assert len(tokens) == 2, "the revoked token and the one the recovery run fetched"
    run_ids = [fetched.run_id, failed.run_id, recovery.run_id]
    written = _everything_written(instance, run_ids, [storage], caplog.text)
    written += repr(request)
    for secret in (
        *tokens,
        api.client_secret,
        _basic_credentials(api.client_id, api.client_secret),
    ):
        assert secret not in written


# The canary, through what the Dagster UI shows.

_REFERENCE_SECRET_VAR = "OSOP_REFERENCE_CLIENT_SECRET"
_TCP_LISTEN = "0A"
_ERROR = "message className stack causes { message stack }"
_METADATA_TYPE = """
{ __type(name: "MetadataEntry") { possibleTypes { name
    fields { name type { kind ofType { kind } } } } } }
"""
_ASSETS = """
{ assetNodes { assetKey { path } description opNames jobNames computeKind groupName
    metadataEntries { ...M } tags { key value } opTags { key value }
    assetMaterializations(limit: 20) { runId description label stepKey
      metadataEntries { ...M } tags { key value } } } }
"""
_RUNS = """
{ runsOrError { __typename ... on Runs { results { runId status jobName runConfigYaml
    tags { key value } assetSelection { path } } } ... on PythonError { ERROR_FIELDS } } }
""".replace("ERROR_FIELDS", _ERROR)
_EVENTS = """
query ($runId: ID!) {
  logsForRun(runId: $runId, limit: 100000) { __typename
    ... on EventConnection { events { __typename
      ... on MessageEvent { message level stepKey eventType }
      ... on DisplayableEvent { label description metadataEntries { ...M } }
      ... on ErrorEvent { error { ERROR_FIELDS } }
      ... on ExecutionStepFailureEvent { failureMetadata { label description
        metadataEntries { ...M } } }
      ... on MaterializationEvent { tags { key value } } } }
    ... on PythonError { ERROR_FIELDS } }
  runOrError(runId: $runId) { __typename ... on Run { runConfigYaml tags { key value }
    eventConnection(limit: 100000) { events { __typename ... on MessageEvent { message }
      ... on DisplayableEvent { metadataEntries { ...M } } } } } }
}
""".replace("ERROR_FIELDS", _ERROR)
_WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { ERROR_FIELDS }
      ... on RepositoryLocation { name repositories { name
        allTopLevelResourceDetails { name description resourceType
          configFields { name description isSecret defaultValueAsJson configTypeKey }
          configuredValues { key value type }
          nestedResources { name type } }
        sensors { name description tags { key value } metadataEntries { ...M } }
        schedules { name description cronSchedule tags { key value } }
        jobs { name description tags { key value } metadataEntries { ...M } } } } } } }
    ... on PythonError { ERROR_FIELDS } } }
""".replace("ERROR_FIELDS", _ERROR)


def _graphql(
    url: str, query: str, variables: dict[str, Any] | None = None, fragment: str = ""
) -> dict[str, Any]:
    if "...M" in query:
        query += fragment
    response = httpx.post(url, json={"query": query, "variables": variables or {}}, timeout=60)
    body = response.json()
    assert response.status_code == 200 and not body.get("errors"), body
    return dict(body["data"])


def _metadata_fragment(url: str) -> str:
    """``fragment M on MetadataEntry`` asking every scalar field of every kind of entry."""
    kinds = _graphql(url, _METADATA_TYPE)["__type"]["possibleTypes"]
    parts = []
    for kind in kinds:
        scalars = [
            field["name"]
            for field in kind["fields"]
            if field["type"]["kind"] in ("SCALAR", "ENUM")
            or (field["type"]["ofType"] or {}).get("kind") in ("SCALAR", "ENUM")
        ]
        parts.append(f"... on {kind['name']} {{ {' '.join(scalars)} }}")
    return "fragment M on MetadataEntry { __typename " + " ".join(parts) + " }"


def _wait_for_graphql(url: str, ui: subprocess.Popen[bytes], timeout_sec: float = 180) -> None:
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        assert ui.poll() is None, "osop-dagster ui exited early"
        try:
            body = httpx.post(url, json={"query": "{ assetNodes { id } }"}, timeout=10).json()
        except (httpx.TransportError, ValueError):
            body = {}
        if (body.get("data") or {}).get("assetNodes"):
            return
        time.sleep(1)
    pytest.fail(f"The Dagster UI did not list the workflow's assets within {timeout_sec} s.")


def _reference_api_of(project: Path) -> int | None:
    """The pid of the reference API that the command line started for ``project``, if any."""
    found = [
        pid
        for pid in processes_mentioning(str(project))
        if b"osop_reference_api" in _read(Path(f"/proc/{pid}/cmdline"))
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _environment_of(pid: int) -> dict[str, str]:
    pairs = _read(Path(f"/proc/{pid}/environ")).split(b"\0")
    return dict(pair.decode().partition("=")[::2] for pair in pairs if b"=" in pair)


def _listening_port(pid: int) -> int | None:
    """The TCP port ``pid`` listens on, from its socket inodes and ``/proc/<pid>/net/tcp``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    for line in _read(Path(f"/proc/{pid}/net/tcp")).decode().splitlines()[1:]:
        fields = line.split()
        if fields[3] == _TCP_LISTEN and fields[9] in inodes:
            return int(fields[1].rpartition(":")[2], 16)
    return None


def _watch_reference_api(project: Path, secrets_seen: set[str], tokens_seen: set[str]) -> None:
    """Learns the client secret and every live token of the project's reference API, if up."""
    pid = _reference_api_of(project)
    if pid is None:
        return
    secret = _environment_of(pid).get(_REFERENCE_SECRET_VAR)
    if secret:
        secrets_seen.add(secret)
    port = _listening_port(pid)
    if port is None:
        return
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/_admin/tokens", timeout=5)
    except httpx.TransportError:
        return
    if answer.status_code == 200:
        tokens_seen.update(answer.json()["tokens"])


@pytest.mark.integration
def test_secrets_stay_out_of_what_the_ui_shows(
    tmp_path: Path, project_copy: Path, postgres_url: str
) -> None:
    """`osop-dagster demo`, then `osop-dagster ui`: no GraphQL answer quotes a secret."""
    project = project_copy
    environment = {**os.environ, constants.ENV_POSTGRES_URL: postgres_url}
    for name in (constants.ENV_API_BASE_URL, SECRET_REF, _REFERENCE_SECRET_VAR):
        environment.pop(name, None)
    entry_point = str(Path(sys.executable).parent / "osop-dagster")
    common = ["--project-dir", str(project), "--records", "200"]
    client_secrets: set[str] = set()
    tokens: set[str] = set()
    outputs = tmp_path / "outputs"
    outputs.mkdir()

    # The demo's reference API lives only as long as the demo: learn its secret and tokens while
    # the run goes on.
    with (outputs / "demo.log").open("wb") as out:
        demo = subprocess.Popen(
            [entry_point, "demo", *common], env=environment, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 300
        while demo.poll() is None and time.monotonic() < deadline:
            _watch_reference_api(project, client_secrets, tokens)
            time.sleep(0.1)
        if demo.poll() is None:
            demo.kill()
        demo.wait(timeout=30)
    demo_output = (outputs / "demo.log").read_text(errors="replace")
    assert demo.returncode == 0, demo_output
    run_id = re.search(r"run id\s+(\S+)", demo_output).group(1)
    assert len(client_secrets) == 1 and tokens, "the demo's secret and token were learned"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/graphql"
    answers: list[str] = []
    with (outputs / "ui.log").open("wb") as out:
        ui = subprocess.Popen(
            [entry_point, "ui", *common, "--port", str(port)],
            env=environment,
            stdout=out,
            stderr=out,
        )
        try:
            _wait_for_graphql(url, ui)
            _watch_reference_api(project, client_secrets, tokens)
            fragment = _metadata_fragment(url)
            for query in (_ASSETS, _RUNS, _WORKSPACE):
                answers.append(json.dumps(_graphql(url, query, fragment=fragment)))
            answers.append(json.dumps(_graphql(url, _EVENTS, {"runId": run_id}, fragment)))
        finally:
            ui.send_signal(signal.SIGTERM)
            ui.wait(timeout=90)

    assert len(client_secrets) == 2, "the ui's reference API has a secret of its own"
    shown = "\n".join(answers)
    assert run_id in shown and "records_list" in shown and "osop/" in shown
    assert '"configuredValues": [{' in shown and '"MaterializationEvent"' in shown
    assert not processes_mentioning(str(project))
    written = [shown, *(path.read_text(errors="replace") for path in outputs.iterdir())]
    written += [
        path.read_bytes().decode("utf-8", errors="replace")
        for path in project.rglob("*")
        if path.is_file() and not path.name.startswith("reference_api.")
    ]
    everything = "\n".join(written)
    for secret in (*client_secrets, *tokens):
        assert secret not in everything
