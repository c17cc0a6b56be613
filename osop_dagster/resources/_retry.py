"""Retry policy for API calls: which failures are worth another attempt, and how long to wait.

A failure is retried only when a new attempt can succeed and cannot do harm:

- the request never reached the server (connection refused, connect or pool timeout): always;
- the server answered 429 or a 5xx other than 501, or the connection broke after sending: only
  when replaying is safe, that is for GET, HEAD, OPTIONS, PUT and DELETE (idempotent by RFC 9110),
  or for a request that carries an ``Idempotency-Key`` the server can deduplicate on;
- any other answer (4xx, 501) is final.

A ``Retry-After`` answer header replaces the computed backoff, up to a cap: a server that asks for
a longer pause fails the step at once rather than holding a worker for minutes.
"""

import email.utils
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Self, TypeVar

import httpx
import stamina
from pydantic import BaseModel, ConfigDict, Field

from osop_dagster.constants import META_ATTEMPTS
from osop_dagster.errors import OsopConfigError, OsopHttpError
from osop_dagster.resources._redaction import scrub

T = TypeVar("T")

IDEMPOTENCY_HEADER = "Idempotency-Key"

REPLAY_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# Errors raised before a single byte of the request left the client.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RetrySettings(BaseModel):
    """How often and how patiently one node retries its HTTP requests.

    Built from the node's ``retry_policy`` and ``timeout_sec`` with :meth:`from_node`.

    Attributes:
        max_retries: Retries after the first attempt; 0 means a single attempt.
        backoff_sec: Pause before the first retry.
        strategy: ``fixed`` waits ``backoff_sec`` every time; ``exponential_backoff`` doubles the
            pause after each retry, up to ``max_backoff_sec``, with a little random jitter.
        timeout_sec: Timeout of each request (connect, read, write, pool), or ``None`` for the
            resource default.
        max_backoff_sec: Longest pause between two attempts.
        max_retry_after_sec: Longest ``Retry-After`` the client waits out; a longer one is final.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=0, ge=0)
    backoff_sec: float = Field(default=1.0, ge=0)
    strategy: Literal["fixed", "exponential_backoff"] = "fixed"
    timeout_sec: float | None = Field(default=None, gt=0)
    max_backoff_sec: float = Field(default=60.0, ge=0)
    max_retry_after_sec: float = Field(default=120.0, ge=0)

    @classmethod
    def from_node(
        cls,
        retry_policy: Mapping[str, Any] | None,
        timeout_sec: float | None = None,
        *,
        node_id: str = "",
    ) -> Self:
        """Build the settings from an OSOP node's ``retry_policy`` mapping and ``timeout_sec``.

        Raises:
            OsopConfigError: The policy holds a value of the wrong kind, e.g. ``max_retries: 1.5``.
        """
        policy = dict(retry_policy or {})
        where = f"Node {node_id!r}: " if node_id else ""
        max_retries = policy.get("max_retries", 0)
        if isinstance(max_retries, float) and max_retries.is_integer():
            max_retries = int(max_retries)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise OsopConfigError(
                f"{where}retry_policy.max_retries must be a whole number of at least 0, "
                f"got {max_retries!r}."
            )
        backoff = policy.get("backoff_sec", 1.0)
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
            raise OsopConfigError(
                f"{where}retry_policy.backoff_sec must be a number of seconds of at least 0, "
                f"got {backoff!r}."
            )
        strategy = policy.get("strategy", "fixed")
        if strategy not in ("fixed", "exponential_backoff"):
            raise OsopConfigError(
                f"{where}retry_policy.strategy must be 'fixed' or 'exponential_backoff', "
                f"got {strategy!r}."
            )
        if timeout_sec is not None and (
            isinstance(timeout_sec, bool)
            or not isinstance(timeout_sec, int | float)
            or timeout_sec <= 0
        ):
            raise OsopConfigError(
                f"{where}timeout_sec must be a number of seconds above 0, got {timeout_sec!r}."
            )
        return cls(
            max_retries=max_retries,
            backoff_sec=float(backoff),
            strategy=strategy,
            timeout_sec=None if timeout_sec is None else float(timeout_sec),
        )

    @property
    def attempts(self) -> int:
        """The number of attempts, the first one included."""
        return self.max_retries + 1


class RetryableAnswer(Exception):
    """A transient failure status; carries the error to raise if no attempt is left.

    A signal between the code that reads an answer and :func:`call_with_retries`, which turns
    it into its ``error`` once no attempt is left; it never leaves this package.

    Attributes:
        error: The error describing this answer.
        wait_sec: Seconds the server asked to wait (``Retry-After``), if it did.
        reached_server: Whether the request was processed far enough to have effects; a token
            request issued on the way to the real request did not reach it.
        reason: What went wrong in a few words, for the WARNING of a retry; ``HTTP <status>``
            when not given.
    """

    def __init__(
        self,
        error: OsopHttpError,
        *,
        wait_sec: float | None,
        reached_server: bool = True,
        reason: str | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait_sec = wait_sec
        self.reached_server = reached_server
        self.reason = reason


def is_retryable_status(status: int) -> bool:
    """Whether an answer with this status may succeed when the request is sent again."""
    # 501 says the server does not support the method at all; asking again cannot help.
    return status == 429 or (status >= 500 and status != 501)


def is_replay_safe(method: str, headers: httpx.Headers | Mapping[str, str]) -> bool:
    """Whether sending the request twice has the same effect as sending it once."""
    header_names = {name.lower() for name in headers}
    return method.upper() in REPLAY_SAFE_METHODS or IDEMPOTENCY_HEADER.lower() in header_names


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Read a ``Retry-After`` header (seconds or an HTTP date) as seconds from now.

    Returns ``None`` when the header is absent or unreadable, so that the normal backoff applies.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def call_with_retries(
    operation: Callable[[], T],
    *,
    settings: RetrySettings,
    replay_safe: bool,
    describe: str,
    log: logging.Logger,
) -> tuple[T, int]:
    """Run ``operation`` until it succeeds, fails finally, or runs out of attempts.

    Args:
        operation: Sends one request and returns its result; raises :class:`RetryableAnswer`
            for a transient status and lets httpx transport errors through.
        settings: The node's retry settings.
        replay_safe: Whether the request may be sent twice (see :func:`is_replay_safe`).
        describe: ``"<METHOD> <masked URL>"`` for log lines and messages.
        log: Receives one WARNING per retry.

    Returns:
        The operation's result and the number of attempts it took.

    Raises:
        OsopHttpError: The last failure, saying how many attempts were made.
    """
    attempts_made = 0

    def retry_decision(exc: Exception) -> bool | float:
        if isinstance(exc, RetryableAnswer):
            if exc.reached_server and not replay_safe:
                return False
            if exc.wait_sec is None:
                return True
            # Past the cap the answer is final: the step fails and the error says why.
            return exc.wait_sec if exc.wait_sec <= settings.max_retry_after_sec else False
        if isinstance(exc, _NOT_SENT_ERRORS):
            return True
        if isinstance(exc, httpx.TransportError):
            return replay_safe
        return False

    exponential = settings.strategy == "exponential_backoff"
    # Jitter for both strategies, so that clients failing together do not retry together.
    jitter = min(1.0, settings.backoff_sec / 4)
    retrying = stamina.retry_context(
        on=retry_decision,
        attempts=settings.attempts,
        # The attempt count bounds the loop; each request has its own timeout.
        timeout=None,
        wait_initial=settings.backoff_sec,
        wait_max=settings.max_backoff_sec if exponential else settings.backoff_sec + jitter,
        wait_jitter=jitter,
        wait_exp_base=2 if exponential else 1,
    )
    try:
        for attempt in retrying:
            with attempt:
                attempts_made = attempt.num
                try:
                    return operation(), attempts_made
                except (RetryableAnswer, httpx.TransportError) as exc:
                    decision = retry_decision(exc)
                    if decision is not False and attempt.num < settings.attempts:
                        log.warning(
                            "%s failed on attempt %d of %d (%s); retrying in %s.",
                            describe,
                            attempt.num,
                            settings.attempts,
                            _reason(exc),
                            "the backoff"
                            if decision is True
                            else f"the {decision:.0f} s the server asked for",
                        )
                    raise
    except RetryableAnswer as exc:
        raise _with_attempts(exc.error, attempts_made, exc, settings) from None
    except httpx.TransportError as exc:
        raise _transport_error(exc, describe, attempts_made, replay_safe) from None
    raise AssertionError("stamina.retry_context ended without a result or an error")


def _reason(exc: Exception) -> str:
    if isinstance(exc, RetryableAnswer):
        return exc.reason or f"HTTP {exc.error.status}"
    return type(exc).__name__


def _with_attempts(
    error: OsopHttpError, attempts: int, answer: RetryableAnswer, settings: RetrySettings
) -> OsopHttpError:
    if answer.wait_sec is not None and answer.wait_sec > settings.max_retry_after_sec:
        note = (
            f" The server asked to wait {answer.wait_sec:.0f} s (Retry-After), more than the "
            f"{settings.max_retry_after_sec:.0f} s the client waits; try again later."
        )
    elif attempts > 1:
        note = f" Gave up after {attempts} attempts."
    else:
        note = ""
    return error.with_context(note, {META_ATTEMPTS: attempts})


def _transport_error(
    exc: httpx.TransportError, describe: str, attempts: int, replay_safe: bool
) -> OsopHttpError:
    kind = type(exc).__name__
    detail = scrub(str(exc)) or "no detail"
    if attempts > 1:
        tail = f" Gave up after {attempts} attempts."
    elif not replay_safe and not isinstance(exc, _NOT_SENT_ERRORS):
        tail = (
            " The request may have reached the server, and it is not safe to send twice "
            f"(no {IDEMPOTENCY_HEADER} header), so it was not retried."
        )
    else:
        tail = ""
    return OsopHttpError(
        f"{describe} got no answer: {kind} ({detail}).{tail}",
        status=None,
        metadata={META_ATTEMPTS: attempts},
    )
