"""Fault switches: failures the reference API injects on demand, for recovery tests.

Tests set switches through ``PUT /_admin/faults`` while the service runs; the application
consults the :class:`FaultBoard` at two points of every endpoint:

- before handling (``when="before"``): the request is not processed at all when a switch answers
  (429, 5xx, 401, a dropped connection); a delay only postpones the processing;
- after handling (``when="after"``): the request was processed (a batch applied, a token issued)
  and only the answer is lost, late or damaged.

Switches are consulted in the order they were given; the first one that answers ends the request,
so the switches after it do not see that call. The JSON shapes are documented in
:mod:`osop_reference_api.app`.
"""

import asyncio
import contextvars
import hashlib
import json
import math
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final, Literal, get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

EndpointGroup = Literal["token", "records", "batch", "status"]
"""Endpoints a switch can target: ``POST /oauth/token``, ``GET /api/v2/records`` and
``/api/v2/records/{id}``, ``PATCH /api/v2/records/batch``, ``GET /api/v2/records/batch/status``."""

FaultKind = Literal[
    "token_expiry",
    "invalid_token",
    "rate_limit",
    "server_error",
    "delay",
    "reset",
    "truncate",
    "repeat_cursor",
    "reject",
]
"""The switches the service knows."""

Phase = Literal["before", "after"]
"""Whether a switch acts before the request is processed or after, on its answer."""

ResetHow = Literal["close", "rst"]
"""How a connection is dropped: a plain close (FIN) or an abortive reset (RST)."""

RetryAfterForm = Literal["seconds", "http_date"]
"""The two forms of ``Retry-After`` (RFC 9110 section 10.2.3)."""

REJECTED_BY_FAULT: Final = "rejected_by_fault"
"""The rejection reason of records the ``reject`` switch refuses."""

_MAX_DELAY_SECONDS: Final = 30.0
_ANSWERS_BEFORE: Final = frozenset({"invalid_token", "rate_limit", "server_error"})

# The transport of the connection serving the current request, set by bind_connection(); a
# context variable because every request runs in its own task.
_CONNECTION: contextvars.ContextVar[asyncio.BaseTransport | None] = contextvars.ContextVar(
    "osop_reference_connection", default=None
)


class FaultSpecError(ValueError):
    """A fault switch in ``PUT /_admin/faults`` is malformed."""


@dataclass(frozen=True)
class TokenOverrides:
    """Limits the ``token_expiry`` switch puts on the tokens issued while it is on.

    Attributes:
        ttl: Lifetime in seconds instead of the configured one, or ``None`` to keep it.
        uses: How many requests the token authorises before it expires, or ``None``.
        announce: Whether ``expires_in`` in the token answer reports ``ttl``.
        on_expire: Called once when such a token is found expired.
    """

    ttl: float | None
    uses: int | None
    announce: bool
    on_expire: Callable[[], None]


@dataclass
class _Switch:
    """One active switch: its normalised settings and what it has done since it was set."""

    kind: FaultKind
    settings: dict[str, Any]
    seen: int = 0
    fired: int = 0
    groups: frozenset[str] = field(default_factory=frozenset)

    @property
    def phase(self) -> Phase | None:
        when: Phase | None = self.settings.get("when")
        if when is not None:
            return when
        if self.kind in _ANSWERS_BEFORE:
            return "before"
        return "after" if self.kind == "truncate" else None

    def hit(self) -> bool:
        """Count one call the switch sees; whether it fires on it."""
        self.seen += 1
        position = self.seen - int(self.settings["after"])
        count: int | None = self.settings["count"]
        if position <= 0 or position % int(self.settings["every"]) != 0:
            return False
        if count is not None and self.fired >= count:
            return False
        self.fired += 1
        return True

    def report(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings, "seen": self.seen, "fired": self.fired}


class _Reader:
    """Reads and checks the fields of one switch object, naming the switch in every error."""

    def __init__(self, index: int, body: Mapping[str, Any]) -> None:
        self.where = f"faults[{index}] ({body.get('kind')!r})"
        self.body = dict(body)
        self.body.pop("kind", None)
        self.settings: dict[str, Any] = {}

    def _take(self, name: str, default: Any) -> Any:
        return self.body.pop(name, default)

    def fail(self, name: str, expected: str, value: Any) -> FaultSpecError:
        return FaultSpecError(f"{self.where}: {name!r} must be {expected}, got {value!r}.")

    def integer(
        self, name: str, default: int | None, *, minimum: int, optional: bool = False
    ) -> None:
        value = self._take(name, default)
        if value is None and optional:
            self.settings[name] = None
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            expected = f"an integer of at least {minimum}" + (" or null" if optional else "")
            raise self.fail(name, expected, value)
        self.settings[name] = value

    def number(
        self,
        name: str,
        default: float | None,
        *,
        low: float,
        high: float,
        optional: bool = False,
    ) -> None:
        value = self._take(name, default)
        if value is None and optional:
            self.settings[name] = None
            return
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or not low <= value <= high:
            expected = f"a number from {low} to {high}" + (" or null" if optional else "")
            raise self.fail(name, expected, value)
        self.settings[name] = float(value)

    def boolean(self, name: str, default: bool) -> None:
        value = self._take(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, "true or false", value)
        self.settings[name] = value

    def choice(self, name: str, default: str | None, choices: Iterable[str]) -> None:
        options = list(choices)
        value = self._take(name, default)
        if value not in options:
            raise self.fail(name, f"one of {options!r}", value)
        self.settings[name] = value

    def id_list(self, name: str) -> None:
        value = self._take(name, [])
        valid = isinstance(value, list) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        )
        if not valid:
            raise self.fail(name, "a list of integer record ids", value)
        self.settings[name] = sorted(set(value))

    def trigger(self, *, count: int | None = 1) -> None:
        self.integer("after", 0, minimum=0)
        self.integer("every", 1, minimum=1)
        self.integer("count", count, minimum=1, optional=True)

    def finish(self) -> dict[str, Any]:
        if self.body:
            raise FaultSpecError(
                f"{self.where}: unknown field(s) {sorted(self.body)!r}; expected some of "
                f"{['kind', *self.settings]!r}."
            )
        return self.settings


def _parse_switch(index: int, body: Any) -> _Switch:
    if not isinstance(body, dict):
        raise FaultSpecError(f"faults[{index}] must be a JSON object, got {body!r}.")
    kind = body.get("kind")
    if kind not in get_args(FaultKind):
        raise FaultSpecError(
            f"faults[{index}]: 'kind' must be one of {list(get_args(FaultKind))!r}, got {kind!r}."
        )
    read = _Reader(index, body)
    groups = list(get_args(EndpointGroup))
    if kind == "token_expiry":
        read.integer("uses", None, minimum=1, optional=True)
        read.number("ttl", None, low=0.001, high=86_400, optional=True)
        read.boolean("announce", True)
        if read.settings["uses"] is None and read.settings["ttl"] is None:
            raise FaultSpecError(f"{read.where}: give 'uses', 'ttl' or both.")
        return _Switch(kind, read.finish(), groups=frozenset({"token"}))
    if kind == "reject":
        read.id_list("ids")
        read.number("fraction", 0.0, low=0.0, high=1.0)
        read.integer("seed", 0, minimum=0)
        return _Switch(kind, read.finish(), groups=frozenset({"batch"}))
    if kind == "repeat_cursor":
        read.trigger()
        return _Switch(kind, read.finish(), groups=frozenset({"records"}))

    read.choice("group", "batch" if kind == "invalid_token" else None, groups)
    read.trigger()
    if kind == "rate_limit":
        read.integer("retry_after", 1, minimum=0)
        read.choice("retry_after_form", "seconds", get_args(RetryAfterForm))
    elif kind == "server_error":
        read.integer("status", 503, minimum=500)
        if read.settings["status"] > 599:
            raise read.fail("status", "a 5xx status", read.settings["status"])
        read.integer("retry_after", None, minimum=0, optional=True)
        read.choice("retry_after_form", "seconds", get_args(RetryAfterForm))
    elif kind == "delay":
        read.number("seconds", None, low=0.0, high=_MAX_DELAY_SECONDS)
        read.choice("when", "before", get_args(Phase))
    elif kind == "reset":
        read.choice("when", "before", get_args(Phase))
        read.choice("how", "close", get_args(ResetHow))
    elif kind == "truncate":
        read.number("fraction", 0.5, low=0.0, high=0.99)
    return _Switch(kind, read.finish(), groups=frozenset({read.settings["group"]}))


def parse_faults(body: Any) -> list[_Switch]:
    """Check the body of ``PUT /_admin/faults``: ``{"faults": [<switch>, ...]}``.

    Raises:
        FaultSpecError: The body or one switch is malformed; the message says which and why.
    """
    if not isinstance(body, dict) or not isinstance(body.get("faults"), list):
        raise FaultSpecError(
            'The body must be a JSON object {"faults": [<switch>, ...]}, '
            f"got {json.dumps(body)[:80]}."
        )
    unknown = sorted(set(body) - {"faults"})
    if unknown:
        raise FaultSpecError(f"Unknown top-level field(s) {unknown!r}; expected only 'faults'.")
    switches = [_parse_switch(index, item) for index, item in enumerate(body["faults"])]
    for kind in ("token_expiry", "reject"):
        # Both act on every call while on, so a second one could only blur the counts.
        if sum(1 for switch in switches if switch.kind == kind) > 1:
            raise FaultSpecError(f"Give at most one {kind!r} switch; merge their settings.")
    return switches


def bind_connection(app: ASGIApp, transport: asyncio.BaseTransport) -> ASGIApp:
    """Wrap an ASGI app so that requests on this connection can drop it (``reset`` switch).

    The service's server calls this once per accepted connection.
    """

    async def bound(scope: Scope, receive: Receive, send: Send) -> None:
        token = _CONNECTION.set(transport)
        try:
            await app(scope, receive, send)
        finally:
            _CONNECTION.reset(token)

    return bound


def _fault_answer(
    status: int, error: str, description: str, kind: FaultKind, headers: Mapping[str, str]
) -> JSONResponse:
    body = {"error": error, "error_description": description, "fault": kind}
    return JSONResponse(body, status_code=status, headers=dict(headers))


def _retry_after(seconds: int, form: RetryAfterForm) -> str:
    if form == "seconds":
        return str(seconds)
    # HTTP dates have whole seconds; rounding up keeps the wait at least `seconds` long.
    return formatdate(math.ceil(time.time()) + seconds, usegmt=True)


def _is_rejected(record_id: int, fraction: float, seed: int) -> bool:
    # A digest rather than random.Random: the same record is refused on every retry, like a
    # record the real API would always refuse.
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class FaultBoard:
    """The active fault switches and how often each fired."""

    def __init__(self) -> None:
        self._switches: list[_Switch] = []

    def configure(self, body: Any) -> None:
        """Replace every switch with those in a ``PUT /_admin/faults`` body; counts restart.

        Raises:
            FaultSpecError: The body is malformed; the switches stay as they were.
        """
        self._switches = parse_faults(body)

    def clear(self) -> int:
        """Turn every switch off; returns how many were on."""
        cleared = len(self._switches)
        self._switches = []
        return cleared

    def report(self) -> list[dict[str, Any]]:
        """Each switch's settings with ``seen`` (calls it saw) and ``fired`` (times it acted)."""
        return [switch.report() for switch in self._switches]

    def _active(self, kind: FaultKind, group: EndpointGroup) -> Iterable[_Switch]:
        return (s for s in self._switches if s.kind == kind and group in s.groups)

    # -- hooks the endpoints call -------------------------------------------------------------

    async def before(self, request: Request, group: EndpointGroup) -> Response | None:
        """Act before a request is processed; an answer returned here replaces the real one."""
        for switch in self._switches:
            if group not in switch.groups or switch.phase != "before":
                continue
            if not switch.hit():
                continue
            answer = await self._act(request, switch, group)
            if answer is not None:
                return answer
        return None

    async def after(self, group: EndpointGroup, response: Response) -> Response:
        """Act on the answer of a processed request: delay, drop or truncate it."""
        if response.status_code >= 300:
            return response
        for switch in self._switches:
            if group not in switch.groups or switch.phase != "after":
                continue
            if not switch.hit():
                continue
            if switch.kind == "delay":
                await asyncio.sleep(switch.settings["seconds"])
            elif switch.kind == "reset":
                return await _drop_connection(switch.settings["how"])
            elif switch.kind == "truncate":
                response = _truncated(response, switch.settings["fraction"])
        return response

    async def _act(
        self, request: Request, switch: _Switch, group: EndpointGroup
    ) -> Response | None:
        settings = switch.settings
        if switch.kind == "delay":
            if group == "batch":
                # Read the body first: once the impatient client leaves, the body is gone and
                # the request could not be processed after the delay as a slow server would.
                await request.body()
            await asyncio.sleep(settings["seconds"])
            return None
        if switch.kind == "reset":
            return await _drop_connection(settings["how"])
        if switch.kind == "invalid_token":
            return _fault_answer(
                401,
                "invalid_token",
                "The access token is unknown or has expired (injected fault).",
                switch.kind,
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        headers: dict[str, str] = {}
        if settings["retry_after"] is not None:
            headers["Retry-After"] = _retry_after(
                settings["retry_after"], settings["retry_after_form"]
            )
        if switch.kind == "rate_limit":
            return _fault_answer(
                429,
                "rate_limited",
                f"Too many requests (injected fault); retry after {settings['retry_after']} s.",
                switch.kind,
                headers,
            )
        return _fault_answer(
            settings["status"],
            "server_error",
            f"The service failed with status {settings['status']} (injected fault).",
            switch.kind,
            headers,
        )

    def token_overrides(self) -> TokenOverrides | None:
        """Limits for a token about to be issued, when a ``token_expiry`` switch is on."""
        for switch in self._active("token_expiry", "token"):
            switch.seen += 1
            return TokenOverrides(
                ttl=switch.settings["ttl"],
                uses=switch.settings["uses"],
                announce=switch.settings["announce"],
                on_expire=_fire_callback(switch),
            )
        return None

    def repeats_page(self) -> bool:
        """Whether the next-page link of this records page must point at the page itself."""
        return any(switch.hit() for switch in self._active("repeat_cursor", "records"))

    def rejected_ids(self, ids: Iterable[int]) -> set[int]:
        """The ids of a batch that a ``reject`` switch refuses (if they are otherwise valid)."""
        refused: set[int] = set()
        for switch in self._active("reject", "batch"):
            switch.seen += 1
            listed = set(switch.settings["ids"])
            fraction, seed = switch.settings["fraction"], switch.settings["seed"]
            refused.update(
                record_id
                for record_id in ids
                if record_id in listed or _is_rejected(record_id, fraction, seed)
            )
        return refused

    def count_rejections(self, rejected: int) -> None:
        """Record how many records the ``reject`` switch refused in one batch."""
        for switch in self._active("reject", "batch"):
            switch.fired += rejected
            return


def _fire_callback(switch: _Switch) -> Callable[[], None]:
    def fire() -> None:
        switch.fired += 1

    return fire


async def _drop_connection(how: ResetHow) -> Response:
    transport = _CONNECTION.get()
    if transport is None:
        return _fault_answer(
            500,
            "fault_unsupported",
            "The reset fault needs the service's own server (python -m osop_reference_api), "
            "which lets a request reach its connection.",
            "reset",
            {},
        )
    if how == "rst":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger on with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let the server see the connection lost, so it writes nothing of the answer below.
    await asyncio.sleep(0)
    return Response(status_code=204)


def _truncated(response: Response, fraction: float) -> Response:
    body = bytes(response.body)
    # Keep at least one byte and drop at least one, so the document is always incomplete.
    cut = min(max(1, int(len(body) * fraction)), max(len(body) - 1, 0))
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "content-type")
    }
    return Response(
        body[:cut],
        status_code=response.status_code,
        headers=headers,
        media_type=response.media_type or "application/json",
    )


__all__ = [
    "REJECTED_BY_FAULT",
    "EndpointGroup",
    "FaultBoard",
    "FaultKind",
    "FaultSpecError",
    "Phase",
    "ResetHow",
    "RetryAfterForm",
    "TokenOverrides",
    "bind_connection",
    "parse_faults",
]
