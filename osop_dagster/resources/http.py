"""The run-time side of OSOP ``api`` nodes: HTTP calls through httpx.

One call of :meth:`OsopHttpResource.call` is one of three things, as the node's runtime and
inputs say: a single request; a GET walking through pages (:mod:`._pagination`); or a write
whose list input goes out in chunks (:mod:`._batch`). Token nodes go through
:meth:`OsopHttpResource.authenticate` (:mod:`._oauth2`). Every request passes the retry policy
of :mod:`._retry`, and everything logged or raised passes the masking of :mod:`._redaction`.
Runtime values may hold ``${input.path}`` templates, resolved by :mod:`._templates`.
"""

import functools
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import dagster
import httpx
from pydantic import PrivateAttr

from osop_dagster._json_text import encode
from osop_dagster.constants import (
    HTTP_LOGGER_NAME,
    META_ATTEMPTS,
    META_BATCH_IDS,
    META_CHUNKS,
    META_DURATION_MS,
    META_ITEMS_SENT,
    META_METHOD,
    META_PAGES,
    META_RECORD_COUNT,
    META_REJECTED,
    META_REJECTED_COUNT,
    META_REQUESTS,
    META_RESPONSE_BYTES,
    META_STATUS,
    META_TOKEN_EXPIRES_AT,
    META_TOKEN_FINGERPRINT,
    META_TOKEN_RENEWED,
    META_TOKEN_SCOPE,
    META_TOKEN_TYPE,
    META_UPDATED_COUNT,
    META_URL,
    META_WARNINGS,
)
from osop_dagster.errors import OsopConfigError, OsopExecutionError, OsopHttpError
from osop_dagster.resources._api_runtime import (
    TEMPLATE,
    WRITE_METHODS,
    ApiRuntime,
    AuthSettings,
    BatchSettings,
    PaginationSettings,
    TokenSettings,
)
from osop_dagster.resources._batch import (
    BatchReceipt,
    chunks,
    idempotency_key,
    send_in_order,
    shape_item,
)
from osop_dagster.resources._oauth2 import (
    BearerAuth,
    build_token_request,
    decode_body,
    forget_token,
    is_lease,
    load_client_credentials,
    parse_token_response,
    require_secure_transport,
    store_token,
)
from osop_dagster.resources._pagination import PROGRESS_EVERY_SEC, PageRequest, get_path, walk_pages
from osop_dagster.resources._progress import Progress
from osop_dagster.resources._redaction import (
    mask_data,
    mask_form,
    mask_url,
    masked_headers,
    preview,
    register_secret,
    safe_headers,
)
from osop_dagster.resources._retry import (
    IDEMPOTENCY_HEADER,
    RetryableAnswer,
    RetrySettings,
    call_with_retries,
    is_replay_safe,
    is_retryable_status,
    parse_retry_after,
)
from osop_dagster.resources._templates import query_text, render, render_query, render_text

__all__ = [
    "ApiRuntime",
    "AuthSettings",
    "BatchSettings",
    "HttpResult",
    "OsopHttpResource",
    "PaginationSettings",
    "RetrySettings",
    "TokenSettings",
]

# One INFO line per request, headers and bodies at DEBUG. A plain process logger, not the run's
# event log: an event per request costs a database write each, more than the request itself on
# a fast API. Listing it under ``python_logs.managed_python_loggers`` stores the lines as events.
WIRE_LOG: Final = logging.getLogger(HTTP_LOGGER_NAME)


# How much of a body a debug line or an error quotes.
_PREVIEW_CHARS: Final = 2000
# Rejected items listed in metadata; the full list is in the output.
_REJECTED_IN_METADATA: Final = 20

_MISSING: Final = object()


@dataclass(frozen=True)
class HttpResult:
    """What an api node produced.

    Attributes:
        value: The node's output: the answer (or the part ``runtime.output`` names), the items
            of every page, a batch receipt, or a token lease.
        metadata: Facts for the Dagster UI, keyed by ``osop/...`` constants; never secrets.
    """

    value: Any
    metadata: dict[str, Any] = field(default_factory=dict)


class OsopHttpResource(dagster.ConfigurableResource):
    """Runs OSOP ``api`` nodes with httpx.

    Attributes:
        base_url: Replaces ``runtime.url`` of every api node, e.g. to aim a workflow at a
            staging service. A node's ``base_url_env`` variable, when set, wins over it.
        timeout_sec: Timeout of each request when the node sets no ``timeout_sec``.
        max_pages: Most pages one GET may walk through unless the node sets its own cap.
        max_response_bytes: Largest answer body accepted; a larger one fails the step.
        max_retry_after_sec: Longest ``Retry-After`` waited out; a longer one fails the step.
        verify_tls: Verify server certificates.
        follow_redirects: Follow redirects. httpx drops ``Authorization`` when a redirect leads
            to another origin, except for a plain http-to-https upgrade of the same host.
        user_agent: The ``User-Agent`` header of every request.
        max_concurrency: Most requests one node keeps in flight, whatever its ``concurrency``
            settings ask for; 1 makes every node send one request after another.

    Tests may set the private ``_transport`` attribute to an ``httpx.MockTransport``.
    """

    base_url: str | None = None
    timeout_sec: float = 30.0
    max_pages: int = 100_000
    max_response_bytes: int = 64 * 1024 * 1024
    max_retry_after_sec: float = 120.0
    verify_tls: bool = True
    follow_redirects: bool = True
    user_agent: str = "osop-dagster"
    max_concurrency: int = 8

    _transport: httpx.BaseTransport | None = PrivateAttr(default=None)

    def authenticate(
        self,
        *,
        node_id: str,
        runtime: ApiRuntime,
        secret_ref: str,
        timeout_sec: float | None,
        retry: RetrySettings,
        log: logging.Logger,
    ) -> HttpResult:
        """Obtain an access token with the client credentials grant and return its lease.

        The lease (``value``) says where the token came from and when it expires, with a
        fingerprint but never the token; the token stays in this process's cache for the
        nodes that present it.

        Raises:
            OsopConfigError: The credentials are missing from the environment.
            OsopAuthError: The token endpoint refused the credentials.
            OsopHttpError: Any other failure of the token endpoint.
        """
        started = time.perf_counter()
        token_url = self._target_url(node_id, runtime, {})
        credentials = load_client_credentials(secret_ref)
        headers = {name: render_text(value, {}, node_id) for name, value in runtime.headers.items()}
        request = build_token_request(
            token_url,
            credentials,
            client_auth=runtime.token.client_auth,
            scope=runtime.token.scope,
            headers=headers,
        )

        with self._session(node_id, timeout_sec, retry, log) as session:

            def exchange() -> tuple[httpx.Response, Any]:
                response, body = session.receive(request, auth=None)
                return response, parse_token_response(response, body, secret_ref=secret_ref)

            (response, issued), attempts = call_with_retries(
                exchange,
                settings=session.retry,
                # Issuing a token changes nothing on the server; asking twice is harmless.
                replay_safe=True,
                describe=session.describe("POST", token_url),
                log=log,
            )

        lease = store_token(
            token_url,
            secret_ref,
            issued,
            client_auth=runtime.token.client_auth,
            requested_scope=runtime.token.scope,
        )
        return HttpResult(
            value=lease,
            metadata={
                META_METHOD: "POST",
                META_URL: mask_url(token_url),
                META_STATUS: response.status_code,
                META_REQUESTS: session.transport.requests,
                META_ATTEMPTS: attempts,
                META_TOKEN_TYPE: lease["token_type"],
                META_TOKEN_EXPIRES_AT: lease["expires_at"],
                META_TOKEN_SCOPE: lease["scope"],
                META_TOKEN_FINGERPRINT: lease["fingerprint"],
                META_DURATION_MS: _elapsed_ms(started),
            },
        )

    def call(
        self,
        *,
        node_id: str,
        runtime: ApiRuntime,
        inputs: Mapping[str, Any],
        token: Mapping[str, Any] | None,
        timeout_sec: float | None,
        retry: RetrySettings,
        idempotency_prefix: str,
        log: logging.Logger,
        as_text: bool = False,
    ) -> HttpResult:
        """Run one api node: a single request, a walk through pages, or a batch write.

        Args:
            node_id: The node, for messages.
            runtime: The node's validated runtime.
            inputs: The node's input values by name.
            token: The lease from the node's oauth2 node, for ``bearer_token`` nodes.
            timeout_sec: The node's ``timeout_sec``; the resource default when ``None``.
            retry: The node's retry settings.
            idempotency_prefix: Start of every batch chunk's ``Idempotency-Key``; keep it equal
                across re-executions of the same logical run so that resent chunks deduplicate.
            log: Receives a line per call, progress, retries and renewals.
            as_text: Return the items of a walk through pages as a :class:`JsonText` list,
                encoded a page at a time, instead of Python values.

        Raises:
            OsopHttpError: An answer was a final failure, or retries ran out.
            OsopExecutionError: The inputs do not fit the runtime, or a paging guard tripped.
            OsopConfigError: A URL, credential or setting is missing from the environment.
        """
        started = time.perf_counter()
        data_inputs = {name: value for name, value in inputs.items() if not is_lease(value)}
        url = self._target_url(node_id, runtime, data_inputs)
        auth = _auth_for(token, runtime.auth, log)
        headers = {
            name: render_text(value, data_inputs, node_id)
            for name, value in runtime.headers.items()
        }
        query = render_query(runtime.query, data_inputs, node_id)

        prepared = _Prepared(runtime, url, headers, query, data_inputs, auth)

        with self._session(node_id, timeout_sec, retry, log) as session:
            batch = _batch_plan(node_id, runtime, data_inputs)
            if batch is not None:
                settings, items = batch
                value, metadata = _batch_write(
                    session,
                    prepared,
                    settings,
                    items,
                    idempotency_prefix,
                    min(settings.concurrency, self.max_concurrency),
                )
            elif runtime.method == "GET" and runtime.pagination != "none":
                value, metadata = _paged_get(
                    session, prepared, self.max_pages, self.max_concurrency, as_text
                )
            else:
                value, metadata = _single(session, prepared)

        metadata.update(
            {
                META_METHOD: runtime.method,
                META_URL: mask_url(url),
                META_REQUESTS: session.transport.requests,
                META_ATTEMPTS: session.attempts,
                META_RESPONSE_BYTES: session.bytes_received,
                META_DURATION_MS: _elapsed_ms(started),
            }
        )
        if isinstance(auth, BearerAuth):
            metadata[META_TOKEN_FINGERPRINT] = auth.presented_fingerprint
            metadata[META_TOKEN_RENEWED] = auth.renewed
        if isinstance(value, list):
            metadata.setdefault(META_RECORD_COUNT, len(value))
        requests = session.transport.requests
        log.info(
            "%s: %d %s, %d items, %d bytes received in %d ms.",
            session.describe(runtime.method, url),
            requests,
            "request" if requests == 1 else "requests",
            metadata.get(META_RECORD_COUNT, 0),
            session.bytes_received,
            metadata[META_DURATION_MS],
        )
        return HttpResult(value=value, metadata=metadata)

    def token_url(self, *, node_id: str, runtime: ApiRuntime) -> str:
        """The token endpoint an ``oauth2`` node with this runtime asks, overrides applied."""
        return self._target_url(node_id, runtime, {})

    def _target_url(self, node_id: str, runtime: ApiRuntime, inputs: Mapping[str, Any]) -> str:
        override = (os.environ.get(runtime.base_url_env) if runtime.base_url_env else None) or (
            self.base_url
        )
        endpoint = (
            render_text(runtime.endpoint, inputs, node_id, quote=True) if runtime.endpoint else ""
        )
        if endpoint and httpx.URL(endpoint).is_absolute_url:
            if not override:
                return _checked_url(node_id, endpoint)
            absolute = httpx.URL(endpoint)
            endpoint = absolute.raw_path.decode("ascii")
        base = override or runtime.url
        if not base:
            raise OsopConfigError(
                f"Node {node_id!r} has no URL to call: set runtime.url in the workflow, or the "
                "resource's base_url (environment variable OSOP_API_BASE_URL)."
            )
        if not endpoint:
            return _checked_url(node_id, base)
        return _checked_url(node_id, f"{base.rstrip('/')}/{endpoint.lstrip('/')}")

    def _session(
        self, node_id: str, timeout_sec: float | None, retry: RetrySettings, log: logging.Logger
    ) -> "_Session":
        timeout = timeout_sec or retry.timeout_sec or self.timeout_sec
        if self._transport is not None:
            transport = _LoggingTransport(self._transport, owned=False)
        else:
            verify = _verified_tls() if self.verify_tls else False
            inner = httpx.HTTPTransport(verify=verify, retries=0)
            transport = _LoggingTransport(inner, owned=True)
        client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=self.follow_redirects,
            event_hooks={"response": [_refuse_body_to_other_host]},
            headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            # No proxies or .netrc credentials picked up from the environment behind our back.
            trust_env=False,
        )
        settings = retry.model_copy(update={"max_retry_after_sec": self.max_retry_after_sec})
        return _Session(node_id, client, transport, settings, log, self.max_response_bytes)


@functools.cache
def _verified_tls() -> "ssl.SSLContext":
    # Loading the CA bundle takes tens of milliseconds; one context serves every node call.
    return httpx.create_ssl_context()


def _refuse_body_to_other_host(response: httpx.Response) -> None:
    """Stops a redirect that would resend a request body to another host.

    httpx drops ``Authorization`` on a redirect to another origin, but a 307 or 308 resends the
    body, which may hold client credentials (``client_secret_post``) or records.
    """
    if not response.has_redirect_location:
        return
    request = response.request
    target = request.url.join(response.headers["Location"])
    same_origin = (target.scheme, target.host, target.port) == (
        request.url.scheme,
        request.url.host,
        request.url.port,
    )
    if same_origin or request.method in ("GET", "HEAD"):
        return
    raise OsopHttpError(
        f"{request.method} {mask_url(request.url)} answered {response.status_code} with a "
        f"redirect to another host, {mask_url(target)}; it is not followed, since the request's "
        "body would go there too. Point the workflow at the final URL.",
        status=response.status_code,
        headers=safe_headers(response.headers),
    )


@dataclass(frozen=True)
class _Prepared:
    """A node's request parts that do not change between pages, chunks and attempts."""

    runtime: ApiRuntime
    url: str
    headers: dict[str, str]
    query: list[tuple[str, str]]
    inputs: Mapping[str, Any]
    auth: httpx.Auth | None


def _single(session: "_Session", prepared: _Prepared) -> tuple[Any, dict[str, Any]]:
    runtime = prepared.runtime
    body_arguments = _body(runtime, prepared.inputs, session.node_id)
    request = session.client.build_request(
        runtime.method,
        prepared.url,
        params=prepared.query,
        headers={**prepared.headers, **_content_type(body_arguments, prepared.headers)},
        **body_arguments,
    )
    response, answer = session.send(request, auth=prepared.auth, expect=runtime.expect_status)
    value = _output(answer, runtime.output, session.describe(runtime.method, prepared.url))
    return value, {META_STATUS: response.status_code}


def _paged_get(
    session: "_Session",
    prepared: _Prepared,
    max_pages: int,
    max_concurrency: int,
    as_text: bool,
) -> tuple[Any, dict[str, Any]]:
    runtime = prepared.runtime
    settings = runtime.pagination if isinstance(runtime.pagination, PaginationSettings) else None
    describe = session.describe("GET", prepared.url)

    def fetch(page: PageRequest) -> tuple[httpx.Response, Any]:
        if page.url is not None:
            # A next link carries its own query; the node's parameters are already in it.
            request = session.client.build_request("GET", page.url, headers=prepared.headers)
        else:
            page_params = {name: str(value) for name, value in page.params.items()}
            params = [(name, value) for name, value in prepared.query if name not in page_params]
            params.extend(page_params.items())
            request = session.client.build_request(
                "GET", prepared.url, params=params, headers=prepared.headers
            )
        return session.send(request, auth=prepared.auth, expect=runtime.expect_status)

    paged = walk_pages(
        fetch,
        settings,
        max_pages=max_pages,
        describe=describe,
        log=session.log,
        concurrency=min(settings.concurrency, max_concurrency) if settings else 1,
        as_text=as_text,
    )

    metadata: dict[str, Any] = {
        META_STATUS: paged.last_response.status_code,
        META_PAGES: paged.pages,
    }
    if paged.warnings:
        metadata[META_WARNINGS] = paged.warnings
    if paged.items is None:
        return _output(paged.body, runtime.output, describe), metadata
    metadata[META_RECORD_COUNT] = paged.count
    return paged.items, metadata


def _batch_write(
    session: "_Session",
    prepared: _Prepared,
    settings: BatchSettings,
    items: list[Any],
    idempotency_prefix: str,
    concurrency: int,
) -> tuple[Any, dict[str, Any]]:
    runtime = prepared.runtime
    assigned = render(settings.set, prepared.inputs, session.node_id)
    receipt = BatchReceipt()
    total_chunks = -(-len(items) // settings.size)

    # The node's own Content-Type (say application/merge-patch+json) wins, as with one request.
    declared = any(name.lower() == "content-type" for name in prepared.headers)
    content_type = {} if declared else {"Content-Type": "application/json"}

    def send_chunk(index: int, chunk: list[Any]) -> tuple[httpx.Response, Any]:
        body = {settings.body_key: [shape_item(item, settings, assigned) for item in chunk]}
        try:
            content = encode(body)
        except (TypeError, ValueError) as error:
            raise OsopExecutionError(
                f"Node {session.node_id!r}: chunk {index + 1} cannot be sent as JSON: {error}."
            ) from error
        key = idempotency_key(idempotency_prefix, session.node_id, index, content)
        request = session.client.build_request(
            runtime.method,
            prepared.url,
            params=prepared.query,
            headers={**content_type, **prepared.headers, IDEMPOTENCY_HEADER: key},
            content=content,
        )
        return session.send(request, auth=prepared.auth, expect=runtime.expect_status)

    progress = Progress(session.log, PROGRESS_EVERY_SEC)
    describe = session.describe(runtime.method, prepared.url)
    accepted: list[int] = []
    failure: tuple[int, OsopHttpError] | None = None
    outcomes = send_in_order(send_chunk, chunks(items, settings.size), concurrency)
    for index, chunk, outcome in outcomes:
        progress.report("%s: sent %d of %d chunks.", describe, index, total_chunks)
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, OsopHttpError):
                raise outcome
            # Chunks already in flight still come back; the accepted ones go on the receipt.
            failure = failure or (index, outcome)
            continue
        response, answer = outcome
        accepted.append(index)
        receipt.add(response.status_code, answer, len(chunk), settings)
    if failure is not None:
        index, error = failure
        raise _partial_batch_error(error, receipt, accepted, index, total_chunks) from None

    if receipt.rejected:
        session.log.warning(
            "Node %r: the API rejected %d of %d items sent; see the output's 'rejected'.",
            session.node_id,
            len(receipt.rejected),
            receipt.items_sent,
        )
    metadata: dict[str, Any] = {
        META_STATUS: receipt.status,
        META_ITEMS_SENT: receipt.items_sent,
        META_CHUNKS: receipt.chunks,
        META_BATCH_IDS: receipt.batch_ids,
        META_UPDATED_COUNT: receipt.updated,
        META_REJECTED_COUNT: len(receipt.rejected),
        META_RECORD_COUNT: receipt.items_sent,
    }
    if receipt.rejected:
        metadata[META_REJECTED] = mask_data(receipt.rejected[:_REJECTED_IN_METADATA])
    return receipt.as_output(), metadata


class _Session:
    """One node's HTTP work: a client kept alive across pages and chunks, and its counters."""

    def __init__(
        self,
        node_id: str,
        client: httpx.Client,
        transport: "_LoggingTransport",
        retry: RetrySettings,
        log: logging.Logger,
        max_bytes: int,
    ) -> None:
        self.node_id = node_id
        self.client = client
        self.transport = transport
        self.retry = retry
        self.log = log
        self.max_bytes = max_bytes
        self.attempts = 0
        self.bytes_received = 0
        # Pages and chunks may be in flight from several threads at once.
        self._counting = threading.Lock()

    def __enter__(self) -> "_Session":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()

    def describe(self, method: str, url: httpx.URL | str) -> str:
        """``Node 'x': METHOD <masked URL>``, the subject of messages."""
        return f"Node {self.node_id!r}: {method} {mask_url(url)}"

    def receive(
        self, request: httpx.Request, *, auth: httpx.Auth | None
    ) -> tuple[httpx.Response, Any]:
        """Send once and read the answer within the size cap; no status check."""
        with self._counting:
            self.attempts += 1
        response = self.client.send(request, auth=auth or httpx.USE_CLIENT_DEFAULT, stream=True)
        try:
            content = self._read_capped(response)
        finally:
            response.close()
        with self._counting:
            self.bytes_received += len(content)
        body = decode_body(response, content)
        if WIRE_LOG.isEnabledFor(logging.DEBUG):
            WIRE_LOG.debug(
                "HTTP answer %s %s: headers=%s body=%s",
                response.status_code,
                mask_url(request.url),
                masked_headers(response.headers),
                preview(body, _PREVIEW_CHARS),
            )
        return response, body

    def send(
        self, request: httpx.Request, *, auth: httpx.Auth | None, expect: list[int] | None
    ) -> tuple[httpx.Response, Any]:
        """Send with retries; return the successful answer and its parsed body."""
        describe = self.describe(request.method, request.url)

        def attempt() -> tuple[httpx.Response, Any]:
            response, body = self.receive(request, auth=auth)
            status = response.status_code
            if (status in expect) if expect else response.is_success:
                if isinstance(body, str) and _declares_json(response):
                    # A JSON answer that does not parse was cut short or garbled on the way;
                    # reading it as text would pass a fragment on as if it were the data.
                    raise RetryableAnswer(
                        _unreadable_json_error(describe, response, body),
                        wait_sec=None,
                        reason=f"HTTP {status} with a body that is not valid JSON",
                    )
                return response, body
            if status == 401 and isinstance(auth, BearerAuth):
                # The token is no good any more; a later run must not present it again.
                forget_token(auth.lease["token_url"], auth.lease["secret_ref"])
            error = _status_error(describe, response, body)
            if is_retryable_status(status):
                raise RetryableAnswer(
                    error, wait_sec=parse_retry_after(response.headers.get("Retry-After"))
                )
            raise error

        result, _attempts = call_with_retries(
            attempt,
            settings=self.retry,
            replay_safe=is_replay_safe(request.method, request.headers),
            describe=describe,
            log=self.log,
        )
        return result

    def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(response, int(declared))
        received = bytearray()
        # Counting decoded bytes also stops a small compressed body that inflates without end.
        for part in response.iter_bytes():
            received.extend(part)
            if len(received) > self.max_bytes:
                raise self._too_large(response, None)
        return bytes(received)

    def _too_large(self, response: httpx.Response, declared: int | None) -> OsopHttpError:
        size = f"{declared} bytes" if declared is not None else "more bytes"
        return OsopHttpError(
            f"{self.describe(response.request.method, response.request.url)} answered "
            f"HTTP {response.status_code} with {size} than the {self.max_bytes}-byte limit "
            "(max_response_bytes); the answer was not read. Page through the collection, or "
            "raise the resource's max_response_bytes.",
            status=response.status_code,
            headers=safe_headers(response.headers),
        )


class _LoggingTransport(httpx.BaseTransport):
    """Logs one INFO line per request that goes on the wire, and counts them."""

    def __init__(self, inner: httpx.BaseTransport, *, owned: bool) -> None:
        self.inner = inner
        self.log = WIRE_LOG
        self.owned = owned
        self.requests = 0
        self._counting = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the wrapped transport, timing until the answer's body is closed."""
        with self._counting:
            self.requests += 1
        started = time.perf_counter()
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "HTTP request %s %s: headers=%s body=%s",
                request.method,
                mask_url(request.url),
                masked_headers(request.headers),
                _request_body_preview(request),
            )
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError as exc:
            self.log.info(
                "HTTP %s %s -> no answer (%s) after %d ms",
                request.method,
                mask_url(request.url),
                type(exc).__name__,
                _elapsed_ms(started),
            )
            raise
        # A fresh answer around a counting stream: the INFO line is written when the body is
        # closed, so its duration covers the whole body. (An answer made in memory, as by
        # MockTransport, arrives already read and closed; rebuilding it re-arms the close.)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_LoggedStream(response, request, started, self.log),
            extensions=response.extensions,
        )

    def close(self) -> None:
        """Close the wrapped transport, unless it was lent by a test."""
        if self.owned:
            self.inner.close()


class _LoggedStream(httpx.SyncByteStream):
    def __init__(
        self, response: httpx.Response, request: httpx.Request, started: float, log: logging.Logger
    ) -> None:
        self.inner = response.stream
        self.status = response.status_code
        self.request = request
        self.started = started
        self.log = log
        self.size = 0
        self.logged = False

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self.inner, httpx.SyncByteStream)
        for part in self.inner:
            self.size += len(part)
            yield part

    def close(self) -> None:
        if isinstance(self.inner, httpx.SyncByteStream):
            self.inner.close()
        if not self.logged:
            self.logged = True
            # Masking the URL costs more than the request's own bookkeeping; skip it unheard.
            if not self.log.isEnabledFor(logging.INFO):
                return
            self.log.info(
                "HTTP %s %s -> %d in %d ms (%d bytes)",
                self.request.method,
                mask_url(self.request.url),
                self.status,
                _elapsed_ms(self.started),
                self.size,
            )


def _request_body_preview(request: httpx.Request) -> str:
    try:
        content = request.content
    except httpx.RequestNotRead:
        return "<stream>"
    if not content:
        return "<empty>"
    if "form-urlencoded" in request.headers.get("Content-Type", ""):
        pairs = httpx.QueryParams(content.decode("ascii", errors="replace")).multi_items()
        return str(mask_form(pairs))
    return preview(content, _PREVIEW_CHARS)


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _checked_url(node_id: str, url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise OsopConfigError(
            f"Node {node_id!r}: the URL {mask_url(url)!r} is invalid: {exc}."
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise OsopConfigError(
            f"Node {node_id!r}: expected an http or https URL with a host, got {mask_url(url)!r}."
        )
    return url


def _auth_for(
    token: Mapping[str, Any] | None, static: AuthSettings | None, log: logging.Logger
) -> httpx.Auth | None:
    if token is not None:
        return BearerAuth(token, log=log)
    if static is not None and static.type in ("bearer", "bearer_token"):
        if not static.secret_ref:
            raise OsopConfigError(
                "runtime.auth of type 'bearer' needs secret_ref, the environment variable that "
                "holds the token; add it."
            )
        value = os.environ.get(static.secret_ref)
        if not value:
            raise OsopConfigError(
                f"The environment variable {static.secret_ref} (runtime.auth.secret_ref) is "
                "not set; set it to the bearer token."
            )
        register_secret(value)
        return _StaticBearer(value)
    return None


class _StaticBearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        require_secure_transport(request.url, "a bearer token")
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def _body(runtime: ApiRuntime, inputs: Mapping[str, Any], node_id: str) -> dict[str, Any]:
    """The body arguments of ``build_request``: ``json``, ``data`` or ``content``."""
    if runtime.form is not None:
        form = render(runtime.form, inputs, node_id)
        return {"data": {name: query_text(value) for name, value in form.items()}}
    template = runtime.body_value
    if template is not None:
        if isinstance(template, str) and not TEMPLATE.fullmatch(template.strip()):
            return {"content": render_text(template, inputs, node_id).encode()}
        return {"json": render(template, inputs, node_id)}
    if runtime.method not in WRITE_METHODS or not inputs:
        return {}
    # Without a template, a write sends its one input, or all of them by name.
    return {"json": next(iter(inputs.values())) if len(inputs) == 1 else dict(inputs)}


def _content_type(body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, str]:
    """A Content-Type for a text body the node did not label itself."""
    if "content" not in body or any(name.lower() == "content-type" for name in headers):
        return {}
    try:
        json.loads(body["content"])
    except ValueError:
        return {"Content-Type": "text/plain; charset=utf-8"}
    return {"Content-Type": "application/json"}


def _batch_plan(
    node_id: str, runtime: ApiRuntime, inputs: Mapping[str, Any]
) -> tuple[BatchSettings, list[Any]] | None:
    """The batch settings and the list to send, when this call is a batch write."""
    if runtime.method not in WRITE_METHODS or runtime.batch == "none":
        return None
    explicit = isinstance(runtime.batch, BatchSettings)
    if not explicit and (runtime.body_value is not None or runtime.form is not None):
        return None
    settings = runtime.batch if isinstance(runtime.batch, BatchSettings) else BatchSettings()
    lists = sorted(name for name, value in inputs.items() if isinstance(value, list))
    if settings.input is not None:
        if not isinstance(inputs.get(settings.input), list):
            found = type(inputs[settings.input]).__name__ if settings.input in inputs else "nothing"
            raise OsopExecutionError(
                f"Node {node_id!r}: batch.input names {settings.input!r}, expected a list input, "
                f"got {found}; the node's list inputs are {lists!r}."
            )
        name = settings.input
    elif len(lists) == 1:
        name = lists[0]
    elif not lists:
        if explicit:
            raise OsopExecutionError(
                f"Node {node_id!r} is a batch write, but none of its inputs "
                f"{sorted(inputs)!r} is a list; expected one list of items to send."
            )
        return None
    else:
        raise OsopExecutionError(
            f"Node {node_id!r}: several inputs are lists ({', '.join(lists)}), so which one to "
            "send in batches is ambiguous; set runtime.batch.input."
        )
    return settings, inputs[name]


def _output(body: Any, path: str | None, describe: str) -> Any:
    if not path:
        return body
    value = get_path(body, path, _MISSING)
    if value is _MISSING:
        raise OsopExecutionError(
            f"{describe}: the answer has no value at runtime.output {path!r}; the answer was "
            f"{preview(body, 300)}."
        )
    return value


def _api_error_text(body: Any) -> str:
    if isinstance(body, Mapping):
        for key in ("error_description", "message", "detail", "error", "title"):
            text = body.get(key)
            if isinstance(text, str) and text:
                return preview(text, 300)
            if isinstance(text, Mapping):
                return _api_error_text(text)
    if body is None:
        return "an empty body"
    return preview(body, 300)


def _status_error(describe: str, response: httpx.Response, body: Any) -> OsopHttpError:
    status = response.status_code
    message = f"{describe} answered HTTP {status} {response.reason_phrase}: {_api_error_text(body)}"
    message = message.rstrip(".") + "."
    if status == 401:
        message += (
            " The credentials were refused; a workflow can recover with an error edge on "
            "status 401 that re-runs its oauth2 node."
        )
    masked = mask_data(body)
    if len(json.dumps(masked, default=str)) > _PREVIEW_CHARS:
        masked = preview(body, _PREVIEW_CHARS)
    return OsopHttpError(
        message,
        status=status,
        body=masked,
        headers=safe_headers(response.headers),
        metadata={META_STATUS: status},
    )


def _declares_json(response: httpx.Response) -> bool:
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _unreadable_json_error(describe: str, response: httpx.Response, text: str) -> OsopHttpError:
    try:
        json.loads(text)
        problem = "it could not be decoded"
    except ValueError as error:
        problem = str(error)
    status = response.status_code
    return OsopHttpError(
        f"{describe} answered HTTP {status} with a body that is not valid JSON although its "
        f"Content-Type says JSON ({problem}; {len(text)} characters received), so the answer "
        "was probably cut short; it was not used.",
        status=status,
        headers=safe_headers(response.headers),
        metadata={META_STATUS: status},
    )


def _partial_batch_error(
    error: OsopHttpError, receipt: BatchReceipt, accepted: list[int], index: int, total: int
) -> OsopHttpError:
    if accepted == list(range(len(accepted))) and accepted:
        chunks_accepted = (
            f"Chunks 1 to {len(accepted)} of {total} were accepted before chunk {index + 1} failed"
        )
    elif accepted:
        # Chunks in flight together: some after the failed one may have been accepted too.
        numbers = ", ".join(str(number + 1) for number in accepted)
        chunks_accepted = f"Chunk {index + 1} of {total} failed; chunks {numbers} were accepted"
    else:
        chunks_accepted = None
    if chunks_accepted:
        note = (
            f" {chunks_accepted} (batch ids {receipt.batch_ids!r}); sending again reuses their "
            "Idempotency-Keys."
        )
    else:
        note = f" It was chunk {index + 1} of {total}; nothing was accepted."
    metadata = {
        META_CHUNKS: receipt.chunks,
        META_BATCH_IDS: receipt.batch_ids,
        META_ITEMS_SENT: receipt.items_sent,
    }
    return error.with_context(note, metadata)
