"""The reference API as a Starlette application.

Endpoints (all JSON):

- ``POST /oauth/token``: OAuth 2.0 client-credentials grant (RFC 6749 sections 4.4, 5.1, 5.2).
- ``GET /api/v2/records``: records by id, paginated by page number, offset or opaque cursor,
  with an RFC 8288 ``Link: <...>; rel="next"`` header while more remain.
- ``GET /api/v2/records/{id}``: one record.
- ``PATCH /api/v2/records/batch``: batch update in one transaction, with optimistic concurrency
  (``version``) and ``Idempotency-Key`` replay.
- ``GET /api/v2/records/batch/status``: re-checks the records that batches claimed to update.
- ``GET /health``; ``/_admin/...`` for tests (request counters, reseeding, revoking tokens,
  fault switches), open to 127.0.0.1 only.

Fault switches (issue #3) make the running service misbehave on demand, without a restart:

- ``PUT /_admin/faults`` with ``{"faults": [<switch>, ...]}`` replaces every switch (counts
  restart) and answers ``{"faults": [<switch as normalised, with "seen" and "fired">, ...]}``;
  a malformed body answers 422 ``invalid_body`` and leaves the switches as they were.
- ``GET /_admin/faults`` answers the same report; ``DELETE /_admin/faults`` turns all off.

``seen`` counts the calls a switch looked at, ``fired`` the times it acted. Switches are consulted
in the order given and the first that answers a call ends it; later switches do not see that call.
Endpoint groups: ``token`` (``POST /oauth/token``), ``records`` (``GET /api/v2/records`` and
``/api/v2/records/{id}``), ``batch`` (``PATCH /api/v2/records/batch``), ``status``
(``GET /api/v2/records/batch/status``). Switches that pick calls take ``after`` (calls let through
first, default 0), ``every`` (act on every k-th call after those, default 1) and ``count`` (most
firings, default 1; ``null`` for no limit). ``when="before"`` acts before the request is processed
(nothing applied), ``when="after"`` on the answer of a processed request (batch applied, token
issued). The kinds, with their defaults::

    {"kind": "token_expiry", "uses": null, "ttl": null, "announce": true}
        Tokens issued while on expire after `uses` authorised requests and/or `ttl` seconds;
        `announce` puts `ttl` into expires_in. fired = such tokens found expired.
    {"kind": "invalid_token", "group": "batch", "after": 0, "every": 1, "count": 1}
        401 invalid_token (e.g. on the 3rd batch call: after=2; from then on: count=null).
    {"kind": "rate_limit", "group": <required>, "after": 0, "every": 1, "count": 1,
     "retry_after": 1, "retry_after_form": "seconds" | "http_date"}
        429 rate_limited with Retry-After.
    {"kind": "server_error", "group": <required>, ..., "status": 503, "retry_after": null,
     "retry_after_form": "seconds"}
        A 5xx answer (500-599), with Retry-After when retry_after is set.
    {"kind": "delay", "group": <required>, ..., "seconds": <required, 0-30>, "when": "before"}
        Waits before processing (a delayed batch is still applied after the wait, even when the
        client has gone) or, with "after", between processing and answering.
    {"kind": "reset", "group": <required>, ..., "when": "before", "how": "close" | "rst"}
        Drops the connection without any answer: "close" sends FIN (httpx raises
        RemoteProtocolError), "rst" sends RST (httpx raises ReadError).
    {"kind": "truncate", "group": <required>, ..., "fraction": 0.5}
        A 2xx answer cut to `fraction` of its bytes, with a matching Content-Length.
    {"kind": "repeat_cursor", "after": 0, "every": 1, "count": 1}
        On records pages that have a next page, next_cursor and Link point at the same page.
    {"kind": "reject", "ids": [], "fraction": 0.0, "seed": 0}
        The batch rejects otherwise valid records with reason "rejected_by_fault": the listed
        ids, plus a share `fraction` of ids picked by a digest of (seed, id), the same on every
        retry. fired = records so rejected.

An idempotent batch applied before its answer is delayed or dropped is stored under its
``Idempotency-Key`` in the same transaction, so a retry with that key replays the stored answer.

Every database call runs on the event loop's thread through one connection: SQLite serialises
writers anyway, a page costs about a millisecond, and staying on one thread makes each batch
trivially atomic with respect to every other request.
"""

import base64
import binascii
import hmac
import json
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args
from urllib.parse import parse_qsl, unquote_plus

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from osop_reference_api.faults import (
    REJECTED_BY_FAULT,
    EndpointGroup,
    FaultBoard,
    FaultSpecError,
    TokenOverrides,
)
from osop_reference_api.seed import RECORD_STATUSES, format_timestamp
from osop_reference_api.store import (
    IdempotencyKeyReusedError,
    RecordStore,
    request_fingerprint,
)

logger = logging.getLogger("osop_reference_api")

ENV_CLIENT_ID: Final = "OSOP_REFERENCE_CLIENT_ID"
ENV_CLIENT_SECRET: Final = "OSOP_REFERENCE_CLIENT_SECRET"

SCOPE_READ: Final = "records:read"
SCOPE_WRITE: Final = "records:write"
SUPPORTED_SCOPES: Final = (SCOPE_READ, SCOPE_WRITE)

StatName = Literal[
    "token_requests",
    "tokens_issued",
    "token_failures",
    "record_pages",
    "record_gets",
    "batch_calls",
    "batch_replays",
    "status_calls",
    "unauthorized",
    "health",
]
"""Request counters reported by ``GET /_admin/stats``."""

_LOOPBACK: Final = frozenset({"127.0.0.1", "::1"})
_MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255
_PURGE_EVERY: Final = 1000


@dataclass(frozen=True)
class ServiceConfig:
    """How the reference API behaves.

    Attributes:
        db_path: The SQLite file holding the data set.
        client_id: The one OAuth client the service knows.
        client_secret: That client's secret; never logged.
        records: Size of the seeded data set.
        seed: Seed of the data set.
        token_ttl: Lifetime of access tokens, in seconds.
        max_batch_size: Most records one batch update may carry; more answers 413.
        default_per_page: Page size when the request names none.
        max_per_page: Largest page served; larger requests are clamped, as many APIs do.
        max_body_bytes: Largest batch request body; more answers 413.
    """

    db_path: str
    client_id: str
    client_secret: str = field(repr=False)
    records: int = 10_000
    seed: int = 7
    token_ttl: float = 3600.0
    max_batch_size: int = 1000
    default_per_page: int = 100
    max_per_page: int = 1000
    max_body_bytes: int = 8 * 1024 * 1024


class ApiError(Exception):
    """An error answer: status, OAuth-style ``error`` code, description and extra fields."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> JSONResponse:
        """Render the error as the service's JSON error body."""
        body = {"error": self.error, "error_description": self.description, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class _Token:
    expires_at: float
    scopes: frozenset[str]
    # Set only for tokens issued under the token_expiry fault switch.
    uses_left: int | None = None
    on_expire: Callable[[], None] | None = None


class TokenRegistry:
    """Access tokens issued by the service, kept in memory until they expire.

    Args:
        ttl: Lifetime of each token, in seconds.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._tokens: dict[str, _Token] = {}
        self._issued = 0

    def issue(self, scopes: frozenset[str], overrides: TokenOverrides | None = None) -> str:
        """Create a random token valid for :attr:`ttl` seconds, or as ``overrides`` say."""
        self._issued += 1
        if self._issued % _PURGE_EVERY == 0:
            self._purge()
        token = secrets.token_urlsafe(32)
        entry = _Token(time.monotonic() + self.ttl, scopes)
        if overrides is not None:
            if overrides.ttl is not None:
                entry.expires_at = time.monotonic() + overrides.ttl
            entry.uses_left = overrides.uses
            entry.on_expire = overrides.on_expire
        self._tokens[token] = entry
        return token

    def scopes_of(self, token: str) -> frozenset[str] | None:
        """The scopes of a live token, or ``None`` for an unknown or expired one.

        Each call counts as one use of a token issued with a use limit.
        """
        entry = self._tokens.get(token)
        if entry is None:
            return None
        if time.monotonic() >= entry.expires_at or entry.uses_left == 0:
            self._expire(token, entry)
            return None
        if entry.uses_left is not None:
            entry.uses_left -= 1
        return entry.scopes

    def revoke_all(self) -> int:
        """Forget every token, as if all had expired; returns how many were live."""
        self._purge()
        live = len(self._tokens)
        self._tokens.clear()
        return live

    def live(self) -> int:
        """How many tokens are still valid."""
        self._purge()
        return len(self._tokens)

    def live_tokens(self) -> list[str]:
        """The tokens still valid, for leak tests on the local machine."""
        self._purge()
        return list(self._tokens)

    def _purge(self) -> None:
        now = time.monotonic()
        for token, entry in [(t, e) for t, e in self._tokens.items() if now >= e.expires_at]:
            self._expire(token, entry)

    def _expire(self, token: str, entry: _Token) -> None:
        del self._tokens[token]
        if entry.on_expire is not None:
            entry.on_expire()


class _Service:
    """State shared by the handlers: configuration, store, tokens and counters."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.tokens = TokenRegistry(config.token_ttl)
        self.stats: Counter[str] = Counter()
        self.faults = FaultBoard()
        self._store: RecordStore | None = None

    @property
    def store(self) -> RecordStore:
        if self._store is None:
            raise RuntimeError("The reference API's store is used outside the app's lifespan.")
        return self._store

    def open(self) -> None:
        store = RecordStore(self.config.db_path)
        if store.dataset() is None:
            store.seed(self.config.records, self.config.seed)
        self._store = store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def count(self, name: StatName) -> None:
        self.stats[name] += 1

    async def answer(
        self,
        request: Request,
        group: EndpointGroup,
        handler: Callable[[Request, "_Service"], Awaitable[Response]],
    ) -> Response:
        """Run an endpoint between the fault switches' two checkpoints."""
        early = await self.faults.before(request, group)
        if early is not None:
            return early
        return await self.faults.after(group, await handler(request, self))

    def require_token(self, request: Request, scope: str) -> None:
        """Check the bearer token of a request (RFC 6750 section 3)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.count("unauthorized")
            raise _invalid_token("The request carries no bearer token.")
        scopes = self.tokens.scopes_of(token)
        if scopes is None:
            self.count("unauthorized")
            raise _invalid_token("The access token is unknown or has expired.")
        if scope not in scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"This endpoint needs the scope {scope!r}.",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
                scope=scope,
            )


def _invalid_token(description: str) -> ApiError:
    return ApiError(
        401,
        "invalid_token",
        description,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def _service(request: Request) -> _Service:
    service: _Service = request.app.state.service
    return service


# -- OAuth 2.0 token endpoint -------------------------------------------------------------------


def _client_from_basic(header: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(header.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as error:
        raise _invalid_client("The Basic credentials are not valid base64.") from error
    client_id, colon, client_secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("The Basic credentials lack the ':' between id and secret.")
    # RFC 6749 section 2.3.1: both parts are form-encoded before they are joined.
    return unquote_plus(client_id), unquote_plus(client_secret)


def _invalid_client(description: str) -> ApiError:
    return ApiError(
        401,
        "invalid_client",
        description,
        headers={"WWW-Authenticate": 'Basic realm="osop-reference-api"'},
    )


async def _token(request: Request) -> Response:
    service = _service(request)
    service.count("token_requests")
    early = await service.faults.before(request, "token")
    if early is not None:
        return early
    try:
        response = await _issue_token(request, service)
    except ApiError:
        service.count("token_failures")
        raise
    service.count("tokens_issued")
    return await service.faults.after("token", response)


async def _issue_token(request: Request, service: _Service) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ApiError(
            400,
            "invalid_request",
            "The token request must be form-encoded "
            f"(application/x-www-form-urlencoded), got {content_type or 'no content type'!r}.",
        )
    pairs = parse_qsl((await request.body()).decode("latin-1"), keep_blank_values=True)
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            # RFC 6749 section 3.2: request parameters must not be included more than once.
            raise ApiError(400, "invalid_request", f"The parameter {name!r} appears twice.")
        form[name] = value

    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    uses_basic = scheme.lower() == "basic"
    uses_body = "client_id" in form or "client_secret" in form
    if uses_basic and uses_body:
        raise ApiError(
            400,
            "invalid_request",
            "The client authenticated twice (HTTP Basic and body parameters); use one.",
        )
    grant_type = form.get("grant_type")
    if not grant_type:
        raise ApiError(400, "invalid_request", "The parameter 'grant_type' is missing.")

    if uses_basic:
        client_id, client_secret = _client_from_basic(credentials)
    elif uses_body:
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
    else:
        raise _invalid_client("The request carries no client credentials.")
    config = service.config
    id_ok = hmac.compare_digest(client_id.encode(), config.client_id.encode())
    secret_ok = hmac.compare_digest(client_secret.encode(), config.client_secret.encode())
    if not (id_ok and secret_ok):
        logger.warning("Refused a token request: wrong client credentials.")
        raise _invalid_client("The client credentials are wrong.")

    if grant_type != "client_credentials":
        raise ApiError(
            400,
            "unsupported_grant_type",
            f"Only the 'client_credentials' grant is supported, got {grant_type!r}.",
        )
    requested = form.get("scope", "").split()
    unknown = [scope for scope in requested if scope not in SUPPORTED_SCOPES]
    if unknown:
        raise ApiError(
            400,
            "invalid_scope",
            f"Unknown scope(s) {unknown!r}; expected some of {list(SUPPORTED_SCOPES)!r}.",
        )
    scopes = frozenset(requested or SUPPORTED_SCOPES)

    overrides = service.faults.token_overrides()
    token = service.tokens.issue(scopes, overrides)
    lifetime = config.token_ttl
    if overrides is not None and overrides.ttl is not None and overrides.announce:
        lifetime = overrides.ttl
    body = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": math.ceil(lifetime),
        "scope": " ".join(s for s in SUPPORTED_SCOPES if s in scopes),
    }
    # RFC 6749 section 5.1: token answers must not be cached.
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


# -- records ------------------------------------------------------------------------------------


def _int_param(
    params: Mapping[str, str], name: str, *, default: int, minimum: int, maximum: int | None = None
) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ApiError(
            400,
            "invalid_request",
            f"The parameter {name!r} must be an integer of at least {minimum}, got {raw!r}.",
        )
    return value if maximum is None else min(value, maximum)


def _encode_cursor(last_id: int, status: str | None) -> str:
    payload = json.dumps({"after": last_id, "status": status}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, status: str | None) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after = payload["after"]
        cursor_status = payload["status"]
    except (ValueError, TypeError, KeyError, binascii.Error) as error:
        raise ApiError(
            400, "invalid_cursor", "The cursor is not one this service issued."
        ) from error
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise ApiError(400, "invalid_cursor", "The cursor is not one this service issued.")
    if cursor_status != status:
        raise ApiError(
            400,
            "invalid_cursor",
            f"The cursor was issued for status={cursor_status!r}, not status={status!r}.",
        )
    return after


def _page_style(params: Mapping[str, str]) -> Literal["page", "offset", "cursor"]:
    styles: list[Literal["page", "offset", "cursor"]] = []
    if "page" in params or "per_page" in params:
        styles.append("page")
    if "offset" in params:
        styles.append("offset")
    if "cursor" in params:
        styles.append("cursor")
    if len(styles) > 1:
        raise ApiError(
            400,
            "invalid_request",
            f"Pagination styles are mixed ({' and '.join(styles)}); use one of page/per_page, "
            "offset/limit or cursor/limit.",
        )
    if styles:
        return styles[0]
    # A bare `limit` starts a cursor walk; no parameters at all mean page 1.
    return "cursor" if "limit" in params else "page"


async def _list_records(request: Request) -> Response:
    service = _service(request)
    service.count("record_pages")
    return await service.answer(request, "records", _records_page)


async def _records_page(request: Request, service: _Service) -> Response:
    service.require_token(request, SCOPE_READ)
    config = service.config
    params = request.query_params

    status = params.get("status")
    if status is not None and status not in RECORD_STATUSES:
        raise ApiError(
            400,
            "invalid_request",
            f"Unknown status {status!r}; expected one of {list(RECORD_STATUSES)!r}.",
        )
    style = _page_style(params)
    store = service.store
    pagination: dict[str, Any] = {
        "page": None,
        "per_page": None,
        "total": store.total(status),
        "total_pages": None,
        "next_cursor": None,
    }
    next_url: str | None = None

    if style == "cursor":
        limit = _int_param(
            params, "limit", default=config.default_per_page, minimum=1, maximum=config.max_per_page
        )
        after = _decode_cursor(params["cursor"], status) if "cursor" in params else 0
        page = store.page(after, limit, status)
        pagination["per_page"] = limit
        if page.has_more and page.last_id is not None:
            # The repeat_cursor fault points the next link back at this very page.
            repeat = service.faults.repeats_page()
            cursor = _encode_cursor(after if repeat else page.last_id, status)
            pagination["next_cursor"] = cursor
            next_url = str(request.url.include_query_params(cursor=cursor, limit=limit))
    else:
        if style == "page":
            limit = _int_param(
                params,
                "per_page",
                default=config.default_per_page,
                minimum=1,
                maximum=config.max_per_page,
            )
            number = _int_param(params, "page", default=1, minimum=1)
            offset = (number - 1) * limit
            pagination["page"] = number
        else:
            limit = _int_param(
                params,
                "limit",
                default=config.default_per_page,
                minimum=1,
                maximum=config.max_per_page,
            )
            offset = _int_param(params, "offset", default=0, minimum=0)
            pagination["offset"] = offset
            pagination["limit"] = limit
        page = store.page_at_offset(offset, limit, status)
        pagination["per_page"] = limit
        pagination["total_pages"] = math.ceil(pagination["total"] / limit)
        if page.has_more:
            step = 0 if service.faults.repeats_page() else 1
            if style == "page":
                following = request.url.include_query_params(page=number + step, per_page=limit)
            else:
                following = request.url.include_query_params(
                    offset=offset + step * limit, limit=limit
                )
            next_url = str(following)

    body = (
        '{"data":['
        + ",".join(page.items)
        + '],"pagination":'
        + json.dumps(pagination, separators=(",", ":"))
        + "}"
    )
    headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else None
    return Response(body.encode(), media_type="application/json", headers=headers)


async def _get_record(request: Request) -> Response:
    service = _service(request)
    service.count("record_gets")
    return await service.answer(request, "records", _one_record)


async def _one_record(request: Request, service: _Service) -> Response:
    service.require_token(request, SCOPE_READ)
    record_id: int = request.path_params["record_id"]
    record = service.store.record_json(record_id)
    if record is None:
        raise ApiError(404, "not_found", f"There is no record with id {record_id!r}.")
    return Response(record.encode(), media_type="application/json")


# -- batch updates ------------------------------------------------------------------------------


def _batch_items(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise ApiError(
            422,
            "invalid_body",
            'The body must be a JSON object with a "records" list, '
            f"got {type(body).__name__} {_preview(body)}.",
        )
    items: list[dict[str, Any]] = body["records"]
    for index, item in enumerate(items):
        record_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(record_id, int) or isinstance(record_id, bool):
            raise ApiError(
                422,
                "invalid_body",
                f"records[{index}] must be an object with an integer 'id', got {_preview(item)}.",
                index=index,
            )
    return items


def _preview(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def _batch_update(request: Request) -> Response:
    service = _service(request)
    service.count("batch_calls")
    return await service.answer(request, "batch", _apply_batch)


async def _apply_batch(request: Request, service: _Service) -> Response:
    service.require_token(request, SCOPE_WRITE)
    config = service.config

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"The batch body must be application/json, got {content_type or 'none'!r}.",
        )
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > config.max_body_bytes
    raw = b"" if too_large else await request.body()
    if too_large or len(raw) > config.max_body_bytes:
        size = int(declared) if too_large else len(raw)
        raise ApiError(
            413,
            "payload_too_large",
            f"The body has {size} bytes; the limit is {config.max_body_bytes}.",
            max_body_bytes=config.max_body_bytes,
        )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}.") from error
    items = _batch_items(body)
    if len(items) > config.max_batch_size:
        raise ApiError(
            413,
            "batch_too_large",
            f"The batch has {len(items)} records; the limit is {config.max_batch_size}. "
            "Split it into several batches.",
            max_batch_size=config.max_batch_size,
        )

    key = request.headers.get("idempotency-key")
    idempotency: tuple[str, str] | None = None
    if key is not None:
        if not key or len(key) > _MAX_IDEMPOTENCY_KEY_LENGTH:
            raise ApiError(
                400,
                "invalid_request",
                f"The Idempotency-Key must have 1 to {_MAX_IDEMPOTENCY_KEY_LENGTH} characters, "
                f"got {len(key)}.",
            )
        fingerprint = request_fingerprint(body)
        try:
            stored = service.store.stored_answer(key, fingerprint)
        except IdempotencyKeyReusedError as error:
            raise ApiError(422, "idempotency_key_reused", str(error)) from error
        if stored is not None:
            service.count("batch_replays")
            return Response(
                stored.encode(),
                media_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        idempotency = (key, fingerprint)

    batch_id = f"b_{secrets.token_hex(8)}"
    answer = service.store.apply_batch(
        items,
        batch_id=batch_id,
        now=format_timestamp(datetime.now(UTC)),
        idempotency=idempotency,
        refused=service.faults.rejected_ids(item["id"] for item in items),
    )
    service.faults.count_rejections(
        sum(1 for entry in answer["rejected"] if entry["reason"] == REJECTED_BY_FAULT)
    )
    logger.info(
        "Batch %s: %d requested, %d updated, %d rejected.",
        batch_id,
        answer["requested"],
        answer["updated"],
        len(answer["rejected"]),
    )
    return JSONResponse(answer)


async def _batch_status(request: Request) -> Response:
    service = _service(request)
    service.count("status_calls")
    return await service.answer(request, "status", _verify_batches)


async def _verify_batches(request: Request, service: _Service) -> Response:
    service.require_token(request, SCOPE_READ)

    batch_ids: list[str] = []
    for value in request.query_params.getlist("batch_id"):
        batch_ids.extend(part.strip() for part in value.split(",") if part.strip())
    if not batch_ids:
        raise ApiError(
            400,
            "invalid_request",
            "Name at least one batch: /api/v2/records/batch/status?batch_id=b_...",
        )
    try:
        report = service.store.verify_batches(dict.fromkeys(batch_ids))
    except KeyError as error:
        missing = error.args[0]
        raise ApiError(
            404, "batch_not_found", f"Unknown batch id(s) {missing!r}.", batch_ids=missing
        ) from error
    return JSONResponse(report)


# -- health and administration ------------------------------------------------------------------


async def _health(request: Request) -> Response:
    _service(request).count("health")
    return JSONResponse({"status": "ok"})


def _require_loopback(request: Request) -> _Service:
    client = request.client
    if client is None or client.host not in _LOOPBACK:
        raise ApiError(403, "forbidden", "Administration is open to the local machine only.")
    return _service(request)


async def _admin_stats(request: Request) -> Response:
    service = _require_loopback(request)
    dataset = service.store.dataset()
    return JSONResponse(
        {
            "requests": {name: service.stats[name] for name in get_args(StatName)},
            "tokens_live": service.tokens.live(),
            "records": service.store.total(),
            "dataset": None if dataset is None else {"records": dataset[0], "seed": dataset[1]},
        }
    )


async def _admin_reset(request: Request) -> Response:
    service = _require_loopback(request)
    service.stats.clear()
    return JSONResponse({"status": "ok"})


async def _admin_reseed(request: Request) -> Response:
    service = _require_loopback(request)
    raw = await request.body()
    try:
        options = json.loads(raw) if raw.strip() else {}
    except ValueError as error:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}.") from error
    current = service.store.dataset() or (service.config.records, service.config.seed)
    records = options.get("records", current[0]) if isinstance(options, dict) else None
    seed = options.get("seed", current[1]) if isinstance(options, dict) else None
    if not isinstance(records, int) or records < 0 or not isinstance(seed, int):
        raise ApiError(
            422,
            "invalid_body",
            'Expected an optional JSON object {"records": <int >= 0>, "seed": <int>}, '
            f"got {_preview(options)}.",
        )
    started = time.perf_counter()
    service.store.seed(records, seed)
    logger.info(
        "Reseeded %d records (seed %d) in %.2f s.", records, seed, time.perf_counter() - started
    )
    return JSONResponse({"status": "ok", "records": records, "seed": seed})


async def _admin_tokens(request: Request) -> Response:
    # A stand-in's convenience: tests look for these values in everything a run wrote.
    service = _require_loopback(request)
    return JSONResponse({"tokens": service.tokens.live_tokens()})


async def _admin_revoke_tokens(request: Request) -> Response:
    service = _require_loopback(request)
    return JSONResponse({"status": "ok", "revoked": service.tokens.revoke_all()})


async def _admin_faults(request: Request) -> Response:
    service = _require_loopback(request)
    if request.method == "PUT":
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise ApiError(400, "invalid_json", f"The body is not valid JSON: {error}.") from error
        try:
            service.faults.configure(body)
        except FaultSpecError as error:
            raise ApiError(422, "invalid_body", str(error)) from error
        logger.info("Fault switches set: %s.", json.dumps(service.faults.report()))
    elif request.method == "DELETE":
        cleared = service.faults.clear()
        if cleared:
            logger.info("Cleared %d fault switch(es).", cleared)
    return JSONResponse({"faults": service.faults.report()})


# -- application --------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return ApiError(
        exc.status_code,
        error,
        f"{request.method} {request.url.path} is not served here ({exc.detail}).",
        headers=exc.headers,
    ).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("Unexpected failure on %s %s.", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "server_error", "The service failed unexpectedly; see its log.").response()


def create_app(config: ServiceConfig) -> Starlette:
    """Build the reference API application.

    The store opens when the application starts (and seeds the file if it holds no data set)
    and closes when it stops, so the app must run under a server that sends lifespan events.

    Args:
        config: Credentials, data set and limits.

    Returns:
        The ASGI application.
    """
    service = _Service(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.open()
        try:
            yield
        finally:
            service.close()

    routes = [
        Route("/oauth/token", _token, methods=["POST"]),
        Route("/api/v2/records", _list_records, methods=["GET"]),
        Route("/api/v2/records/batch", _batch_update, methods=["PATCH"]),
        Route("/api/v2/records/batch/status", _batch_status, methods=["GET"]),
        Route("/api/v2/records/{record_id:int}", _get_record, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/_admin/stats", _admin_stats, methods=["GET"]),
        Route("/_admin/reset", _admin_reset, methods=["POST"]),
        Route("/_admin/reseed", _admin_reseed, methods=["POST"]),
        Route("/_admin/revoke-tokens", _admin_revoke_tokens, methods=["POST"]),
        Route("/_admin/tokens", _admin_tokens, methods=["GET"]),
        Route("/_admin/faults", _admin_faults, methods=["GET", "PUT", "DELETE"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, 500: _server_error},
    )
    app.state.service = service
    return app


__all__ = [
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "SUPPORTED_SCOPES",
    "ApiError",
    "ServiceConfig",
    "StatName",
    "TokenRegistry",
    "create_app",
]
