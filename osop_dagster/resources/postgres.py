"""The run-time side of OSOP ``db`` nodes: one audit row per run and node, in Postgres.

The audit table (``osop_audit`` unless ``runtime.table`` names another) is created on first use::

    id           bigserial PRIMARY KEY     the node's output, ``audit_id``
    workflow_id  text NOT NULL
    node_id      text NOT NULL
    run_id       text NOT NULL             the Dagster run
    created_at   timestamptz NOT NULL DEFAULT now()
    figures      jsonb NOT NULL            a bounded summary of the node's inputs
    UNIQUE (run_id, node_id)

A retried step updates its row instead of adding one, so ``audit_id`` is stable within a run.
"""

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dagster
import psycopg
import stamina
from psycopg import sql
from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from osop_dagster._postgres_url import PostgresUrl, parse_postgres_url, scrub, validate_identifier
from osop_dagster._summary import summarise
from osop_dagster.constants import (
    ENV_POSTGRES_URL,
    META_AUDIT_ID,
    META_DATABASE,
    META_DURATION_MS,
    META_ENGINE,
    META_TABLE,
)
from osop_dagster.errors import OsopConfigError, OsopDatabaseError
from osop_dagster.resources._vocabulary import RuntimeVocabulary

DEFAULT_AUDIT_TABLE = "osop_audit"
POSTGRES_ENGINES = frozenset({"postgres", "postgresql"})
"""Spellings of the one engine ``db`` nodes run on; URLs say ``postgresql``."""


class DbRuntime(RuntimeVocabulary):
    """The ``runtime`` block of an OSOP ``db`` node.

    Vocabulary:
        engine: ``postgres``, the one engine supported.
        connection: A ``postgresql://`` URL without credentials, used when the Postgres
            resource has no URL of its own (``OSOP_POSTGRES_URL``).
        table: The audit table, optionally schema-qualified (``audit.osop_audit``); lowercase
            identifiers only. Created, with its schema, when missing.

    Other runtime keys the OSOP schema declares are accepted and ignored; any other key is an
    error.
    """

    # A connection string may hold a password; validation messages must never echo it.
    model_config = ConfigDict(hide_input_in_errors=True)

    engine: Literal["postgres"]
    connection: str | None = None
    table: str = DEFAULT_AUDIT_TABLE

    @model_validator(mode="wrap")
    @classmethod
    def _mask_connection_in_errors(
        cls, data: Any, handler: ModelWrapValidatorHandler["DbRuntime"]
    ) -> "DbRuntime":
        # `hide_input_in_errors` hides the input from the error's text only; callers that list
        # `errors()` would still find the URL, password and all, under "input".
        try:
            return handler(data)
        except ValidationError as error:
            details: list[Any] = []
            for detail in error.errors(include_url=False):
                if detail["loc"][:1] == ("connection",) and isinstance(detail["input"], str):
                    detail["input"] = _masked(detail["input"])
                details.append(detail)
            raise ValidationError.from_exception_data(
                error.title, details, hide_input=True
            ) from None

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_supported(cls, engine: Any) -> Any:
        if not isinstance(engine, str) or engine.lower() not in POSTGRES_ENGINES:
            raise ValueError(
                f"Expected runtime.engine 'postgres', got {engine!r}; it is the only database "
                "engine osop_dagster runs."
            )
        return "postgres"

    @field_validator("connection")
    @classmethod
    def _connection_has_no_password(cls, connection: str | None) -> str | None:
        if connection is None:
            return None
        try:
            parsed = parse_postgres_url(connection)
        except OsopConfigError as exc:
            raise ValueError(f"runtime.connection: {exc}") from exc
        if parsed.has_password:
            raise ValueError(_password_in_yaml(parsed))
        return connection

    @field_validator("table")
    @classmethod
    def _table_is_identifier(cls, table: str) -> str:
        parts = table.split(".")
        if len(parts) > 2:
            raise ValueError(f"Expected runtime.table as 'table' or 'schema.table', got {table!r}.")
        for part in parts:
            try:
                validate_identifier(part, what="runtime.table name")
            except OsopConfigError as exc:
                raise ValueError(str(exc)) from exc
        return table

    @property
    def table_identifier(self) -> sql.Identifier:
        """The table, quoted for SQL."""
        return sql.Identifier(*self.table.split("."))


@dataclass(frozen=True)
class DbResult:
    """What a ``db`` node produced.

    Attributes:
        value: The audit row's ``id``.
        metadata: Facts for the materialization (table, database, whether the row was new).
    """

    value: int
    metadata: dict[str, Any]


class OsopPostgresResource(dagster.ConfigurableResource):
    """Writes the audit rows of OSOP ``db`` nodes to Postgres with psycopg 3.

    The server is ``url`` when set (wire it to ``OSOP_POSTGRES_URL``); otherwise the node's
    ``runtime.connection``, which must not carry a password.

    Attributes:
        url: A ``postgresql://`` URL; may carry credentials.
        connect_timeout_sec: Time limit of one connection attempt.
        connect_attempts: Attempts at the write before the step fails; with the default backoff
            the six default attempts span about six seconds, enough for a server restart.
    """

    url: str | None = Field(default=None, description="Postgres URL, e.g. from OSOP_POSTGRES_URL.")
    connect_timeout_sec: int = Field(default=5, gt=0, description="Limit of one connect attempt.")
    connect_attempts: int = Field(
        default=6, ge=1, description="Attempts at the write in all, about 6 s with the default."
    )

    def resolve_url(self, *, node_id: str, runtime: DbRuntime) -> PostgresUrl:
        """Choose the server of a node: the resource's URL, else a credential-free YAML one.

        Raises:
            OsopConfigError: When no URL is configured, or the YAML one carries a password.
        """
        if self.url:
            return parse_postgres_url(self.url)
        if runtime.connection is None:
            raise OsopConfigError(
                f"Node {node_id!r} writes to Postgres but no server is configured: set "
                f"{ENV_POSTGRES_URL} to a postgresql:// URL."
            )
        parsed = parse_postgres_url(runtime.connection)
        if parsed.has_password:
            raise OsopConfigError(f"Node {node_id!r}: {_password_in_yaml(parsed)}")
        return parsed

    def write_audit(
        self,
        *,
        node_id: str,
        workflow_id: str,
        run_id: str,
        runtime: DbRuntime,
        inputs: Mapping[str, Any],
        log: logging.Logger,
    ) -> DbResult:
        """Insert or refresh the audit row of (run, node) and return its ``id``.

        Args:
            node_id: The OSOP node.
            workflow_id: The OSOP workflow.
            run_id: The Dagster run; with ``node_id`` it identifies the row.
            runtime: The node's parsed runtime block.
            inputs: The node's resolved input values, summarised into ``figures``.
            log: Where the one INFO line per write goes.

        Raises:
            OsopConfigError: When no usable server is configured.
            OsopDatabaseError: When connecting or writing fails; the message has no password.
        """
        target = self.resolve_url(node_id=node_id, runtime=runtime)
        figures = summarise(inputs)
        started = time.monotonic()

        # The upsert is idempotent per (run, node), so the whole write may be retried when the
        # server goes away between connecting and committing, as during a restart.
        try:
            for attempt in self._retrying():
                with (
                    attempt,
                    psycopg.connect(
                        target.psycopg_url, connect_timeout=self.connect_timeout_sec
                    ) as conn,
                    conn.transaction(),
                ):
                    _ensure_table(conn, runtime)
                    row = conn.execute(
                        sql.SQL(
                            "INSERT INTO {table} (workflow_id, node_id, run_id, figures) "
                            "VALUES (%s, %s, %s, %s::jsonb) "
                            "ON CONFLICT (run_id, node_id) DO UPDATE "
                            "SET workflow_id = EXCLUDED.workflow_id, figures = EXCLUDED.figures "
                            "RETURNING id, (xmax = 0) AS inserted"
                        ).format(table=runtime.table_identifier),
                        (workflow_id, node_id, run_id, json.dumps(figures)),
                    ).fetchone()
        except psycopg.OperationalError as exc:
            raise OsopDatabaseError(
                f"Node {node_id!r}: could not write to Postgres at {target.target} after "
                f"{self.connect_attempts} attempt(s): {_driver_message(exc, target)} Check that "
                f"the server runs and that {ENV_POSTGRES_URL} points at it, then re-execute the "
                "run from this step.",
                metadata={META_DATABASE: target.target},
            ) from exc
        except psycopg.Error as exc:
            raise OsopDatabaseError(
                f"Node {node_id!r}: writing the audit row to table {runtime.table!r} on "
                f"{target.target} failed: {_driver_message(exc, target)}",
                metadata={META_DATABASE: target.target, META_TABLE: runtime.table},
            ) from exc

        assert row is not None  # RETURNING always yields the written row
        audit_id, inserted = int(row[0]), bool(row[1])
        duration_ms = round((time.monotonic() - started) * 1000)
        log.info(
            "Audit row %d %s in %s on %s for node %r, %d ms",
            audit_id,
            "inserted" if inserted else "updated",
            runtime.table,
            target.target,
            node_id,
            duration_ms,
        )
        return DbResult(
            value=audit_id,
            metadata={
                META_AUDIT_ID: audit_id,
                META_ENGINE: runtime.engine,
                META_TABLE: runtime.table,
                META_DATABASE: target.target,
                META_DURATION_MS: duration_ms,
                "osop/audit_row": "inserted" if inserted else "updated",
            },
        )

    def _retrying(self) -> Any:
        """Attempts at one write: connection failures and lost connections are retried."""
        return stamina.retry_context(
            on=psycopg.OperationalError,
            attempts=self.connect_attempts,
            wait_initial=0.2,
            wait_max=4.0,
            wait_jitter=0.2,
        )


def _masked(connection: str) -> str:
    try:
        return parse_postgres_url(connection).masked
    except OsopConfigError:
        # Not a URL this product reads: nothing in it can be shown safely.
        return "***"


def _password_in_yaml(parsed: PostgresUrl) -> str:
    return (
        f"runtime.connection {parsed.masked!r} carries a password, and workflow files must not "
        f"hold credentials. Remove it from the file and set {ENV_POSTGRES_URL} to the full URL "
        "instead."
    )


def _ensure_table(conn: psycopg.Connection[Any], runtime: DbRuntime) -> None:
    qualified = runtime.table_identifier.as_string(conn)
    found = conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()
    if found is not None and found[0] is not None:
        return
    # Two first steps may race to create the table; the lock, held to the end of the
    # transaction, makes the second one find it.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (qualified,))
    if "." in runtime.table:
        schema = runtime.table.split(".")[0]
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {table} ("
            "id bigserial PRIMARY KEY, "
            "workflow_id text NOT NULL, "
            "node_id text NOT NULL, "
            "run_id text NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now(), "
            "figures jsonb NOT NULL, "
            "UNIQUE (run_id, node_id))"
        ).format(table=runtime.table_identifier)
    )


def _driver_message(exc: psycopg.Error, target: PostgresUrl) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = scrub(text, target.psycopg_url)
    return text if text.endswith((".", "?", "!")) else f"{text}."
