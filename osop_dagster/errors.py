"""Errors raised by osop_dagster.

Every error the product raises on purpose derives from :class:`OsopError`::

    OsopError
    ├── OsopSpecError          a workflow file is broken; raised when definitions load
    ├── OsopConfigError        the environment lacks a setting or secret a node needs
    └── OsopExecutionError     a node failed while running; carries metadata for the UI
        ├── OsopHttpError      an API call failed (status, method, masked URL)
        │   └── OsopAuthError  the credentials were refused; never retried
        ├── OsopShellError     a shell step failed (exit code, tail of stderr)
        └── OsopDatabaseError  a database step failed

Inside a run, the compiled assets turn an :class:`OsopExecutionError` into a
:class:`dagster.Failure` with the same description and metadata. Messages are full sentences
and never contain a secret value: they may name a secret reference, never what it holds.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class OsopError(Exception):
    """Base class of every error raised by osop_dagster."""


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a workflow file, located as precisely as the file allows.

    Attributes:
        path: The workflow file.
        line: 1-based line of the offending value, when known.
        where: The node or edge at fault, e.g. ``node 'get_records'`` or ``edge 3
            (batch_update -> authenticate)``; empty for problems of the whole file.
        message: What was expected and what was found, as one or two sentences.
        fix: How to fix it, when known.
    """

    path: str
    line: int | None
    where: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        location = self.path if self.line is None else f"{self.path}, line {self.line}"
        subject = f"{location}, {self.where}" if self.where else location
        text = f"{subject}: {self.message}"
        if self.fix:
            text = f"{text.rstrip('.')}. {self.fix}"
        return text if text.endswith(".") else f"{text}."


class OsopSpecError(OsopError):
    """A workflow file cannot be loaded: the text names each problem with its location."""

    def __init__(self, problems: Sequence[SpecProblem]) -> None:
        if not problems:
            raise ValueError("OsopSpecError needs at least one problem.")
        self.problems: tuple[SpecProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    @property
    def path(self) -> str:
        """The workflow file of the first problem."""
        return self.problems[0].path


class OsopConfigError(OsopError):
    """A setting or secret that a node needs is missing or malformed in the environment."""


class OsopExecutionError(OsopError):
    """A node failed while running.

    Attributes:
        metadata: Facts for the Dagster UI (status, attempts, exit code, ...); never secrets.
    """

    def __init__(self, message: str, *, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metadata: dict[str, Any] = dict(metadata or {})


class OsopHttpError(OsopExecutionError):
    """An API call failed: a final error status, or retries ran out.

    Attributes:
        status: The HTTP status of the last answer, or ``None`` when no answer came.
        body: The start of the last answer's body with credentials masked, for error edges.
        headers: The last answer's headers, sensitive ones removed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.status = status
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})

    def with_context(self, note: str, metadata: Mapping[str, Any]) -> "OsopHttpError":
        """The same error, of the same type, with ``note`` appended and ``metadata`` added."""
        return type(self)(
            f"{self}{note}",
            status=self.status,
            body=self.body,
            headers=self.headers,
            metadata={**self.metadata, **metadata},
        )


class OsopAuthError(OsopHttpError):
    """The authorization server refused the client credentials; retrying cannot help."""


class OsopShellError(OsopExecutionError):
    """A shell step exited non-zero, timed out, or produced output that is not JSON."""


class OsopDatabaseError(OsopExecutionError):
    """A database step could not connect or its statement failed."""
