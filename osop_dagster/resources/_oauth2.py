"""OAuth 2.0 client credentials grant (RFC 6749 section 4.4) and bearer authentication.

The access token is the output of a pipeline node, yet its value must never reach asset
storage. :func:`fetch_token` therefore returns a *lease*: a JSON document that says where the
token came from and when it expires, with a fingerprint but without the token. The token itself
stays in a process-level cache keyed by (token URL, secret reference). :class:`BearerAuth` takes
a lease and uses the cached token while it is fresh; in another process, or once the token
expired, it asks the token endpoint again with the same client credentials.
"""

import base64
import hashlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import quote_plus

import httpx

from osop_dagster._json_text import decode
from osop_dagster.constants import ENV_ALLOW_INSECURE_HTTP, META_STATUS
from osop_dagster.errors import OsopAuthError, OsopConfigError, OsopHttpError
from osop_dagster.resources._redaction import mask_url, preview, register_secret, safe_headers
from osop_dagster.resources._retry import RetryableAnswer, is_retryable_status, parse_retry_after

LEASE_KIND: Final = "osop/oauth2-client-credentials-lease"

ClientAuth = Literal["client_secret_basic", "client_secret_post"]

# A token this close to its expiry is renewed before use, so that it does not expire in flight
# (for short-lived tokens, half their lifetime instead).
EXPIRY_SKEW_SEC: Final = 30.0

# RFC 6749 section 5.2 errors that say the credentials themselves are wrong; asking again with
# the same credentials cannot succeed.
_CREDENTIAL_ERRORS: Final = frozenset({"invalid_client", "unauthorized_client", "invalid_grant"})


@dataclass(frozen=True)
class ClientCredentials:
    """An OAuth2 client's id and secret; the secret never shows in ``repr``."""

    client_id: str
    client_secret: str = field(repr=False)


def load_client_credentials(
    secret_ref: str, environ: Mapping[str, str] | None = None
) -> ClientCredentials:
    """Read the client credentials that ``secret_ref`` names from the environment.

    ``<REF>`` holds ``client_id:client_secret`` (split at the first colon), or
    ``<REF>_CLIENT_ID`` and ``<REF>_CLIENT_SECRET`` hold the two parts.

    Raises:
        OsopConfigError: Neither form is set, or the value is malformed. The message names the
            variables, never their values.
    """
    env = os.environ if environ is None else environ
    combined = env.get(secret_ref)
    id_var, secret_var = f"{secret_ref}_CLIENT_ID", f"{secret_ref}_CLIENT_SECRET"
    if combined:
        client_id, colon, client_secret = combined.partition(":")
        if not colon or not client_id or not client_secret:
            raise OsopConfigError(
                f"The environment variable {secret_ref} must hold 'client_id:client_secret' "
                "(two non-empty parts separated by a colon), but it does not; set it again, or "
                f"set {id_var} and {secret_var} instead."
            )
        credentials = ClientCredentials(client_id, client_secret)
    elif env.get(id_var) or env.get(secret_var):
        missing = [name for name in (id_var, secret_var) if not env.get(name)]
        if missing:
            raise OsopConfigError(
                f"The environment variable {missing[0]} is not set, while its companion is; "
                f"set both {id_var} and {secret_var}."
            )
        credentials = ClientCredentials(env[id_var], env[secret_var])
    else:
        raise OsopConfigError(
            f"The client credentials for secret reference {secret_ref!r} are missing: set the "
            f"environment variable {secret_ref} to 'client_id:client_secret', or set {id_var} "
            f"and {secret_var}."
        )
    register_secret(credentials.client_secret)
    return credentials


def is_loopback_host(host: str) -> bool:
    """Whether a URL host names this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def insecure_http_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``OSOP_ALLOW_INSECURE_HTTP`` lets credentials travel over plain http."""
    env = os.environ if environ is None else environ
    return env.get(ENV_ALLOW_INSECURE_HTTP, "").strip().lower() in ("1", "true", "yes")


def require_secure_transport(
    url: httpx.URL | str, what: str, *, allow_insecure: bool | None = None
) -> None:
    """Refuse to send a credential over plain http to a host other than this machine.

    On the network, plain http shows the credential to anyone on the path; TLS (with the
    certificate verified, as the HTTP resource does by default) keeps it between the two ends.

    Args:
        url: Where the credential would go.
        what: The credential, for the message, e.g. ``"the client credentials of 'REF'"``.
        allow_insecure: Overrides ``OSOP_ALLOW_INSECURE_HTTP`` when not ``None``.

    Raises:
        OsopConfigError: The URL is plain http to another machine and nothing allows it.
    """
    parsed = httpx.URL(url) if isinstance(url, str) else url
    if parsed.scheme != "http" or is_loopback_host(parsed.host):
        return
    allowed = insecure_http_allowed() if allow_insecure is None else allow_insecure
    if allowed:
        return
    raise OsopConfigError(
        f"Refusing to send {what} over plain http to {parsed.host!r} ({mask_url(parsed)}): "
        "anyone on the network path could read them. Use an https:// URL; only for a test "
        f"network, set the environment variable {ENV_ALLOW_INSECURE_HTTP}=1 to allow it."
    )


def decode_body(response: httpx.Response, content: bytes) -> Any:
    """Parse an answer's body: JSON when it is JSON, text otherwise, ``None`` when empty."""
    if not content.strip():
        return None
    content_type = response.headers.get("Content-Type", "").lower()
    looks_json = "json" in content_type or content.lstrip()[:1] in (b"{", b"[")
    if looks_json:
        try:
            return decode(content)
        except ValueError:
            pass
    return content.decode(response.encoding or "utf-8", errors="replace")


def fingerprint(token: str) -> str:
    """A short, non-reversible name for a token, to tell tokens apart in logs and metadata."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _now() -> float:
    """The wall clock; a seam for tests that let time pass."""
    return time.time()


@dataclass(frozen=True)
class _CachedToken:
    value: str = field(repr=False)
    token_type: str
    obtained_at: float
    expires_at: float | None

    def fresh(self, now: float) -> bool:
        if self.expires_at is None:
            return True
        # Keep a margin so that a token does not expire in flight, but never more than half
        # its life: a token issued for 20 s is still worth presenting right after issue.
        margin = min(EXPIRY_SKEW_SEC, (self.expires_at - self.obtained_at) / 2)
        return self.expires_at - margin > now


_cache: dict[tuple[str, str], _CachedToken] = {}
_cache_lock = threading.Lock()
# Held by the one request that renews a token; re-entrant, in case a flow nests.
_RENEWAL = threading.RLock()


def cached_token(token_url: str, secret_ref: str) -> _CachedToken | None:
    """The cached token for this endpoint and client, when one is present and fresh."""
    with _cache_lock:
        token = _cache.get((token_url, secret_ref))
    return token if token is not None and token.fresh(_now()) else None


def forget_token(token_url: str, secret_ref: str) -> None:
    """Drop the cached token, e.g. after the API refused it."""
    with _cache_lock:
        _cache.pop((token_url, secret_ref), None)


def clear_token_cache() -> None:
    """Forget every cached token, as a new process would (used by tests)."""
    with _cache_lock:
        _cache.clear()


def build_token_request(
    token_url: str,
    credentials: ClientCredentials,
    *,
    client_auth: ClientAuth,
    scope: str | None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Request:
    """Build the access token request of RFC 6749 section 4.4.2.

    Raises:
        OsopConfigError: The token URL is plain http to another machine (see
            :func:`require_secure_transport`).
    """
    require_secure_transport(token_url, "client credentials")
    form: dict[str, str] = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    request_headers = {"Accept": "application/json", **(headers or {})}
    if client_auth == "client_secret_basic":
        # RFC 6749 section 2.3.1: id and secret are form-urlencoded before they are joined and
        # base64-encoded, so a colon or non-ASCII character in either survives the round trip.
        userpass = f"{quote_plus(credentials.client_id)}:{quote_plus(credentials.client_secret)}"
        encoded = base64.b64encode(userpass.encode()).decode()
        # An API quoting the header back may drop the "Basic " in front: mask the value itself.
        register_secret(encoded)
        request_headers["Authorization"] = f"Basic {encoded}"
    else:
        form["client_id"] = credentials.client_id
        form["client_secret"] = credentials.client_secret
    return httpx.Request("POST", token_url, data=form, headers=request_headers)


@dataclass(frozen=True)
class IssuedToken:
    """A token endpoint's successful answer (RFC 6749 section 5.1), parsed."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: float | None
    scope: str | None


def parse_token_response(response: httpx.Response, body: Any, *, secret_ref: str) -> IssuedToken:
    """Read a token endpoint's answer; raise on an error answer (RFC 6749 section 5.2).

    Args:
        response: The answer, for its status and headers.
        body: Its body, parsed from JSON where it was JSON.
        secret_ref: The secret reference, the one name messages may show.

    Raises:
        OsopAuthError: The server refused the client credentials (final).
        RetryableAnswer: A transient status (429, 5xx) that another attempt may get past.
        OsopHttpError: Any other failure, e.g. ``invalid_scope`` or an unreadable answer.
    """
    where = f"The token endpoint {mask_url(response.request.url)}"

    if response.status_code != 200:
        error_code = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        said = f"error {error_code!r}" if error_code else "no OAuth2 error code"
        if description:
            said = f"{said}: {preview(str(description), 300)}"
        details: dict[str, Any] = {
            "status": response.status_code,
            "body": preview(body, 1000),
            "headers": safe_headers(response.headers),
            "metadata": {META_STATUS: response.status_code},
        }
        if error_code in _CREDENTIAL_ERRORS or response.status_code == 401:
            raise OsopAuthError(
                f"{where} refused the client credentials of secret reference {secret_ref!r} "
                f"with HTTP {response.status_code} ({said}). Check the credentials stored under "
                f"{secret_ref!r}; retrying with the same ones cannot succeed.",
                **details,
            )
        error = OsopHttpError(
            f"{where} answered HTTP {response.status_code} ({said}) for secret reference "
            f"{secret_ref!r}.",
            **details,
        )
        if is_retryable_status(response.status_code):
            raise RetryableAnswer(
                error, wait_sec=parse_retry_after(response.headers.get("Retry-After"))
            )
        raise error

    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise OsopHttpError(
            f"{where} answered HTTP 200 without an access_token string; expected a JSON object "
            "as in RFC 6749 section 5.1.",
            status=200,
            headers=safe_headers(response.headers),
        )
    register_secret(body["access_token"])
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise OsopHttpError(
            f"{where} issued a token of type {token_type!r}; expected 'bearer' (RFC 6750), "
            "the only type this client can present.",
            status=200,
        )
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
    ):
        raise OsopHttpError(
            f"{where} answered expires_in={expires_in!r}; expected a number of seconds.",
            status=200,
        )
    scope = body.get("scope")
    return IssuedToken(
        access_token=body["access_token"],
        token_type=token_type,
        expires_in=None if expires_in is None else float(expires_in),
        scope=scope if isinstance(scope, str) else None,
    )


def store_token(
    token_url: str,
    secret_ref: str,
    issued: IssuedToken,
    *,
    client_auth: ClientAuth,
    requested_scope: str | None,
    obtained_at: float | None = None,
) -> dict[str, Any]:
    """Cache an issued token for this process and return its lease."""
    obtained = _now() if obtained_at is None else obtained_at
    expires_at = None if issued.expires_in is None else obtained + issued.expires_in
    with _cache_lock:
        _cache[(token_url, secret_ref)] = _CachedToken(
            issued.access_token, issued.token_type, obtained, expires_at
        )
    return {
        "kind": LEASE_KIND,
        "token_url": token_url,
        "secret_ref": secret_ref,
        "client_auth": client_auth,
        "scope": issued.scope if issued.scope is not None else requested_scope,
        "requested_scope": requested_scope,
        "token_type": issued.token_type,
        "obtained_at": _iso(obtained),
        "expires_at": None if expires_at is None else _iso(expires_at),
        "fingerprint": fingerprint(issued.access_token),
    }


def is_lease(value: Any) -> bool:
    """Whether a value is a token lease made by :func:`store_token`."""
    return isinstance(value, Mapping) and value.get("kind") == LEASE_KIND


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class BearerAuth(httpx.Auth):
    """Sends ``Authorization: Bearer`` with the token a lease stands for.

    The cached token is used while fresh. Otherwise (another process, or an expired token) the
    flow first asks the lease's token endpoint for a new token with the same client
    credentials, and logs a WARNING. An answer of 401 is not retried here: it reaches the
    workflow, whose error edges decide what to do.
    """

    def __init__(self, lease: Mapping[str, Any], *, log: logging.Logger) -> None:
        if not is_lease(lease):
            raise OsopConfigError(
                "The token input is not an access token lease from an oauth2 node; expected a "
                f"mapping with kind {LEASE_KIND!r}. Connect the node to the output of its "
                "oauth2 node."
            )
        self.lease = dict(lease)
        self.log = log
        self.renewed = False
        self.presented_fingerprint: str | None = self.lease.get("fingerprint")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach the bearer token, renewing it first when the cache has no fresh one."""
        # The lease comes from asset storage; the node executing this checked its token URL
        # against the workflow's token node before any client credentials can go there.
        token_url, secret_ref = self.lease["token_url"], self.lease["secret_ref"]
        # Checked before any token is fetched: a refused API should not cost a token request.
        require_secure_transport(request.url, "an access token")
        cached = cached_token(token_url, secret_ref)
        if cached is None:
            # Pages or chunks in flight together find the token gone at once: one renews it
            # while the others wait, then take the renewed one from the cache.
            with _RENEWAL:
                cached = cached_token(token_url, secret_ref)
                if cached is None:
                    token = yield from self._renew(request, token_url, secret_ref)
        if cached is not None:
            token = cached.value
        self.presented_fingerprint = fingerprint(token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _renew(
        self, request: httpx.Request, token_url: str, secret_ref: str
    ) -> Generator[httpx.Request, httpx.Response, str]:
        """Asks the token endpoint for a new token and caches it."""
        credentials = load_client_credentials(secret_ref)
        token_request = build_token_request(
            token_url,
            credentials,
            client_auth=self.lease.get("client_auth", "client_secret_basic"),
            scope=self.lease.get("requested_scope"),
            headers={"User-Agent": request.headers.get("User-Agent", "")},
        )
        token_response = yield token_request
        token_body = decode_body(token_response, token_response.read())
        try:
            issued = parse_token_response(token_response, token_body, secret_ref=secret_ref)
        except RetryableAnswer as answer:
            # The real request has not been sent yet, so trying again is always safe.
            answer.reached_server = False
            raise
        lease = store_token(
            token_url,
            secret_ref,
            issued,
            client_auth=self.lease.get("client_auth", "client_secret_basic"),
            requested_scope=self.lease.get("requested_scope"),
        )
        self.renewed = True
        self.log.warning(
            "The access token for secret reference %r was renewed at %s: this process held "
            "no fresh copy of the leased token %s. New token %s, expires %s.",
            secret_ref,
            mask_url(token_url),
            self.lease.get("fingerprint"),
            lease["fingerprint"],
            lease["expires_at"] or "never",
        )
        token = issued.access_token
        return token
