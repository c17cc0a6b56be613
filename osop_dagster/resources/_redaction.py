"""Masking of credentials before anything reaches a log line, an error message or metadata.

Three kinds of secret can travel with an HTTP call: values in well-known places (the
``Authorization`` header, ``access_token`` in a token answer, ``?api_key=`` in a URL), and values
the process learned at run time (an access token, a client secret) that a server might echo back
anywhere. The first kind is masked by name; the second by value, through a registry that the token
client fills as it learns secrets.
"""

import base64
import binascii
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

MASK: Final = "***"

# Headers that carry credentials or session state; they are dropped from error details and masked
# in debug logs.
SENSITIVE_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-amz-security-token",
    }
)

# Names of JSON keys, form fields and query parameters whose values are credentials.
_SENSITIVE_NAME = re.compile(
    r"(^|[_\-.])(access|refresh|id|auth|bearer|session)?[_\-]?token$"
    r"|secret|passw|api[_\-]?key|signature|^sig$|credential|authorization",
    re.IGNORECASE,
)

# Secrets shorter than this are not scrubbed by value: replacing every "ab" in a body would
# destroy the text and hide nothing worth hiding.
_MIN_SCRUB_LENGTH: Final = 6

_known_secrets: set[str] = set()
_known_secrets_lock = threading.Lock()


# HTTP Basic credentials (RFC 7617): base64 of "user-id:password". They hold the client secret in
# a form that value scrubbing cannot see, and a token endpoint may quote the header back in its
# error answer, so any such credential in a text is masked by its shape.
_BASIC_CREDENTIALS = re.compile(r"\b(Basic\s+)([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])", re.I)


def _mask_basic(match: re.Match[str]) -> str:
    try:
        decoded = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return f"{match.group(1)}{MASK}" if b":" in decoded else match.group(0)


def register_secret(value: str) -> None:
    """Remember a secret value so that :func:`scrub` removes it from any text in this process."""
    if len(value) >= _MIN_SCRUB_LENGTH:
        with _known_secrets_lock:
            _known_secrets.add(value)


def scrub(text: str) -> str:
    """Replace every registered secret value and HTTP Basic credential in ``text`` with the mask."""
    with _known_secrets_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _BASIC_CREDENTIALS.sub(_mask_basic, text)


def is_sensitive_name(name: str) -> bool:
    """Whether a header, field or parameter name denotes a credential."""
    return name.lower() in SENSITIVE_HEADERS or bool(_SENSITIVE_NAME.search(name))


def mask_url(url: httpx.URL | str) -> str:
    """Return the URL with its password and credential-like query values masked."""
    parts = urlsplit(str(url))
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{MASK}@{hostport}"
    fields = []
    for field in parts.query.split("&") if parts.query else []:
        name, equals, _value = field.partition("=")
        fields.append(f"{name}={MASK}" if equals and is_sensitive_name(unquote(name)) else field)
    masked = urlunsplit((parts.scheme, netloc, parts.path, "&".join(fields), parts.fragment))
    return scrub(masked)


def safe_headers(headers: httpx.Headers | Mapping[str, str]) -> dict[str, str]:
    """Return the headers without the ones that carry credentials, for error details."""
    items = headers.multi_items() if isinstance(headers, httpx.Headers) else headers.items()
    return {name: scrub(value) for name, value in items if name.lower() not in SENSITIVE_HEADERS}


def masked_headers(headers: httpx.Headers | Mapping[str, str]) -> dict[str, str]:
    """Return every header with credential values masked, for debug logs."""
    items = headers.multi_items() if isinstance(headers, httpx.Headers) else headers.items()
    return {name: MASK if is_sensitive_name(name) else scrub(value) for name, value in items}


def mask_data(value: Any) -> Any:
    """Return a copy of a JSON-like value with credential-named keys masked, recursively."""
    if isinstance(value, Mapping):
        return {
            key: MASK if isinstance(key, str) and is_sensitive_name(key) else mask_data(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_data(item) for item in value]
    if isinstance(value, str):
        return scrub(value)
    return value


def preview(value: Any, limit: int = 2000) -> str:
    """Render a body for a message or log: masked, JSON where possible, at most ``limit`` chars."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            text = scrub(value)
        else:
            text = json.dumps(mask_data(_head(value)), ensure_ascii=False, default=str)
    else:
        text = json.dumps(mask_data(_head(value)), ensure_ascii=False, default=str)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


_PREVIEW_ITEMS = 5


def _head(value: Any) -> Any:
    # A preview of a page of a thousand records need not mask and render all of them.
    if isinstance(value, list):
        head = [_head(item) for item in value[:_PREVIEW_ITEMS]]
        if len(value) > _PREVIEW_ITEMS:
            head.append(f"... {len(value) - _PREVIEW_ITEMS} more items")
        return head
    if isinstance(value, Mapping):
        return {key: _head(item) for key, item in value.items()}
    return value


def mask_form(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return form fields with credential values masked, for debug logs."""
    return [(name, MASK if is_sensitive_name(name) else scrub(value)) for name, value in pairs]


# httpx logs every request at INFO with the full URL, and httpcore logs raw answer headers at
# DEBUG; both bypass the masking above. Filters on a logger do not reach its children's records,
# so each logger that writes is named.
_LIBRARY_LOGGERS: Final = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


class SecretScrubbingFilter(logging.Filter):
    """Masks URLs and known secret values in the records of the HTTP libraries' loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with credentials masked; never drops a record."""
        args = record.args
        if isinstance(args, tuple):
            args = tuple(mask_url(arg) if isinstance(arg, httpx.URL) else arg for arg in args)
        try:
            message = str(record.msg) % args if args else str(record.msg)
        except (TypeError, ValueError, KeyError):
            message = str(record.msg)
        record.msg, record.args = scrub(message), ()
        return True


def install_library_log_filters() -> None:
    """Attach :class:`SecretScrubbingFilter` to the httpx and httpcore loggers, once."""
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(item, SecretScrubbingFilter) for item in logger.filters):
            logger.addFilter(SecretScrubbingFilter())


install_library_log_filters()
