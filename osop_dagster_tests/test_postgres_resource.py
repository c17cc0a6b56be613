import logging
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from osop_dagster._postgres_url import (
    mask_url,
    parse_postgres_url,
    with_database,
)
from osop_dagster._summary import MAX_FIGURES_BYTES, summarise
from osop_dagster.constants import META_AUDIT_ID, META_DATABASE
from osop_dagster.errors import OsopConfigError, OsopDatabaseError
from osop_dagster.resources.postgres import DbRuntime, OsopPostgresResource

LOG = logging.getLogger("osop_dagster_tests.postgres")
SEED_RUNTIME = {"engine": "postgres", "connection": "postgresql://audit:5432/logs"}
HOSTILE = "'); DROP TABLE osop_audit; --"


@pytest.fixture
def resource(postgres_url: str) -> OsopPostgresResource:
    return OsopPostgresResource(url=postgres_url, connect_attempts=1)


@pytest.fixture
def conn(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


def write(
    resource: OsopPostgresResource,
    *,
    run_id: str = "run-1",
    node_id: str = "log_audit",
    workflow_id: str = "rest-api-workflow",
    inputs: dict[str, Any] | None = None,
    **runtime: Any,
) -> Any:
    return resource.write_audit(
        node_id=node_id,
        workflow_id=workflow_id,
        run_id=run_id,
        runtime=DbRuntime(**{**SEED_RUNTIME, **runtime}),
        inputs=inputs if inputs is not None else {"update_response": {"status": 200}},
        log=LOG,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_write_creates_the_table_and_returns_the_row_id(
    resource: OsopPostgresResource, conn: psycopg.Connection[Any]
) -> None:
    result = write(resource, table="audit_created", run_id="run-create")

    row = conn.execute(
        "SELECT id, workflow_id, node_id, run_id, created_at FROM audit_created"
    ).fetchone()
    assert row is not None
    assert row[0] == result.value == result.metadata[META_AUDIT_ID]
    assert row[1:4] == ("rest-api-workflow", "log_audit", "run-create")
    assert row[4] is not None
    assert (
        "@127.0.0.1" in result.metadata[META_DATABASE] or "unix:" in result.metadata[META_DATABASE]
    )


def test_retry_keeps_one_row_per_run_and_node(
    resource: OsopPostgresResource, conn: psycopg.Connection[Any]
) -> None:
    first = write(resource, table="audit_retry", inputs={"update_response": {"updated": 1}})
    again = write(resource, table="audit_retry", inputs={"update_response": {"updated": 2}})
    other_run = write(resource, table="audit_retry", run_id="run-2")

    rows = conn.execute("SELECT id, run_id, figures FROM audit_retry ORDER BY id").fetchall()
    assert first.value == again.value != other_run.value
    assert len(rows) == 2
    assert rows[0][2] == {"update_response": {"updated": 2}}
    assert first.metadata["osop/audit_row"] == "inserted"
    assert again.metadata["osop/audit_row"] == "updated"


def test_hostile_strings_are_stored_verbatim(
    resource: OsopPostgresResource, conn: psycopg.Connection[Any]
) -> None:
    write(
        resource,
        table="audit_hostile",
        node_id=HOSTILE,
        workflow_id=HOSTILE,
        run_id=HOSTILE,
        inputs={"note": HOSTILE, "quote": 'O\'Brien "x" $1 %s'},
    )

    row = conn.execute("SELECT workflow_id, node_id, run_id, figures FROM audit_hostile").fetchone()
    assert row == (HOSTILE, HOSTILE, HOSTILE, {"note": HOSTILE, "quote": 'O\'Brien "x" $1 %s'})


def test_schema_qualified_table_is_created(
    resource: OsopPostgresResource, conn: psycopg.Connection[Any]
) -> None:
    result = write(resource, table="osop_audit_schema.entries")

    found = conn.execute("SELECT id FROM osop_audit_schema.entries").fetchone()
    assert found == (result.value,)


def test_seed_inputs_are_summarised_without_secrets(
    resource: OsopPostgresResource, conn: psycopg.Connection[Any]
) -> None:
    inputs = {
        "update_response": {
            "status": 200,
            "updated_ids": [1, 2, 3],
            "access_token": "made-up-token-123",
            "details": {"a": 1, "b": 2},
        },
        "verification_result": {"verified": True, "mismatches": []},
    }

    write(resource, table="audit_figures", inputs=inputs)

    row = conn.execute("SELECT figures FROM audit_figures").fetchone()
    assert row == (
        {
            "update_response": {"status": 200, "updated_ids_count": 3, "details_fields": 2},
            "verification_result": {"verified": True, "mismatches_count": 0},
        },
    )
    assert "made-up-token-123" not in str(row)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"records": [1, 2]}, {"records_count": 2}),
        ({"n": 3, "ok": None, "ratio": 0.5}, {"n": 3, "ok": None, "ratio": 0.5}),
        ({"client_secret": "x", "Authorization": "y", "db_password": "z"}, {}),
        ({"r": {"apiToken": "t", "kept": "k"}}, {"r": {"kept": "k"}}),
        ({"nan": float("nan")}, {"nan": "nan"}),
        ({"text": "a\x00b"}, {"text": "ab"}),
    ],
)
def test_summary_table(inputs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert summarise(inputs) == expected


def test_summary_is_bounded() -> None:
    inputs = {f"field_{index}": "v" * 200 for index in range(200)}

    figures = summarise(inputs)

    assert figures["_truncated"] is True
    assert len(str(figures)) < MAX_FIGURES_BYTES + 500


@pytest.mark.parametrize(
    "connection",
    [
        "postgresql://audit:made-up-pw@db/logs",
        "postgres://db/logs?password=made-up-pw",
    ],
)
def test_password_in_yaml_connection_fails_validation_without_showing_it(connection: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DbRuntime(engine="postgres", connection=connection)

    assert "made-up-pw" not in str(caught.value)
    assert "carries a password" in str(caught.value)
    assert "OSOP_POSTGRES_URL" in str(caught.value)


def test_password_in_yaml_connection_is_refused_at_run_time_too() -> None:
    """A runtime built without validation still never connects with YAML credentials."""
    runtime = DbRuntime.model_construct(
        engine="postgres", connection="postgresql://audit:made-up-pw@db/logs", table="osop_audit"
    )

    with pytest.raises(OsopConfigError) as caught:
        OsopPostgresResource().resolve_url(node_id="log_audit", runtime=runtime)

    assert "made-up-pw" not in str(caught.value)
    assert "Node 'log_audit': runtime.connection 'postgresql://audit:***@db/logs'" in str(
        caught.value
    )


def test_yaml_connection_must_be_a_postgres_url() -> None:
    with pytest.raises(ValidationError, match=r"runtime\.connection: Expected a Postgres URL"):
        DbRuntime(engine="postgres", connection="audit_db")


def test_yaml_connection_without_credentials_is_used_when_no_url_is_set() -> None:
    chosen = OsopPostgresResource().resolve_url(
        node_id="log_audit", runtime=DbRuntime(**SEED_RUNTIME)
    )

    assert chosen.target == "audit:5432/logs"


def test_resource_url_wins_over_yaml_connection(postgres_url: str) -> None:
    chosen = OsopPostgresResource(url=postgres_url).resolve_url(
        node_id="log_audit", runtime=DbRuntime(**SEED_RUNTIME)
    )

    assert chosen.psycopg_url == parse_postgres_url(postgres_url).psycopg_url


def test_no_server_configured_is_a_config_error() -> None:
    with pytest.raises(OsopConfigError, match="set OSOP_POSTGRES_URL"):
        OsopPostgresResource().resolve_url(
            node_id="log_audit", runtime=DbRuntime(engine="postgres")
        )


def test_unreachable_server_error_is_masked() -> None:
    url = f"postgresql://osop:made-up-pw@127.0.0.1:{closed_port()}/logs"
    resource = OsopPostgresResource(url=url, connect_attempts=2, connect_timeout_sec=2)

    with pytest.raises(OsopDatabaseError) as caught:
        write(resource)

    message = str(caught.value)
    assert "made-up-pw" not in message
    assert "made-up-pw" not in repr(caught.value.metadata)
    assert "Node 'log_audit'" in message
    assert "osop@127.0.0.1" in message
    assert "after 2 attempt(s)" in message


def test_statement_failure_is_a_database_error(
    resource: OsopPostgresResource, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE TABLE audit_wrong_shape (id int)")

    with pytest.raises(OsopDatabaseError, match="writing the audit row to table 'audit_wrong"):
        write(resource, table="audit_wrong_shape")


@pytest.mark.parametrize(
    ("runtime", "fragment"),
    [
        ({"engine": "mysql"}, "Expected runtime.engine 'postgres', got 'mysql'"),
        ({"engine": "postgres", "table": "audit; DROP"}, "lowercase SQL identifier"),
        ({"engine": "postgres", "table": "Audit"}, "got 'Audit'"),
        ({"engine": "postgres", "table": "a.b.c"}, "'table' or 'schema.table', got 'a.b.c'"),
        ({"engine": "postgres", "table": "x" * 64}, "at most 63 characters"),
        ({"engine": "postgres", "tabel": "x"}, "tabel"),
    ],
)
def test_bad_db_runtime_fails_validation(runtime: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DbRuntime(**runtime)

    assert fragment in str(caught.value)


def test_schema_runtime_keys_are_accepted() -> None:
    assert DbRuntime(engine="postgres", url="x", command="y").table == "osop_audit"


@pytest.mark.parametrize(
    ("url", "psycopg_url", "sqlalchemy_url"),
    [
        (
            "postgres://u:p%40ss@db:6543/app?sslmode=require",
            "postgresql://u:p%40ss@db:6543/app?sslmode=require",
            "postgresql+psycopg2://u:p%40ss@db:6543/app?sslmode=require",
        ),
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg",
            "postgresql://postgres:@/postgres?host=/tmp/pg",
            "postgresql+psycopg2://postgres:@/postgres?host=/tmp/pg",
        ),
        (
            "postgresql+psycopg2://postgres@127.0.0.1/x",
            "postgresql://postgres@127.0.0.1/x",
            "postgresql+psycopg2://postgres@127.0.0.1/x",
        ),
    ],
)
def test_url_spellings(url: str, psycopg_url: str, sqlalchemy_url: str) -> None:
    parsed = parse_postgres_url(url)

    assert (parsed.psycopg_url, parsed.sqlalchemy_url) == (psycopg_url, sqlalchemy_url)


def test_url_masking_and_database_swap() -> None:
    assert mask_url("postgresql://u:secret@h/d?password=two") == (
        "postgresql://u:***@h/d?password=***"
    )
    assert with_database("postgresql://postgres:@/postgres?host=/tmp/pg", "osop") == (
        "postgresql://postgres:@/osop?host=/tmp/pg"
    )
    assert parse_postgres_url("postgresql://postgres:@/x?host=/tmp/pg").target == (
        "postgres@unix:/tmp/pg/x"
    )


def test_non_postgres_url_is_refused_without_its_password() -> None:
    with pytest.raises(OsopConfigError) as caught:
        parse_postgres_url("mysql://u:made-up@h/d")

    assert "made-up" not in str(caught.value)
