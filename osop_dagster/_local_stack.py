"""Starts what the command line needs on a bare machine: Postgres, a Dagster home, the API.

Everything started here is stopped when its context exits, also on Ctrl-C or SIGTERM (the
command line turns SIGTERM into :class:`SystemExit` so that ``finally`` blocks run).
"""

import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from osop_dagster import constants
from osop_dagster._embedded_postgres import EmbeddedPostgres, closed_parent
from osop_dagster._postgres_url import parse_postgres_url
from osop_dagster.errors import OsopConfigError

STATE_DIR_NAME = ".osop_dagster"
DATABASE_NAME = "osop"
ENV_STORAGE_URL = "OSOP_DAGSTER_STORAGE_URL"
"""Read by ``dagster.yaml``: the psycopg2 spelling of the Postgres URL for Dagster's storage."""


@dataclass(frozen=True)
class LocalPostgres:
    """The Postgres server in use and whether this process started it."""

    url: str
    embedded: bool


@contextmanager
def local_postgres(state_dir: Path) -> Iterator[LocalPostgres]:
    """``OSOP_POSTGRES_URL`` when set, else an embedded server kept under ``state_dir``."""
    configured = os.environ.get(constants.ENV_POSTGRES_URL)
    if configured:
        yield LocalPostgres(url=configured, embedded=False)
        return

    with EmbeddedPostgres(embedded_data_dir(state_dir), database=DATABASE_NAME) as url:
        yield LocalPostgres(url=url, embedded=True)


def embedded_data_dir(state_dir: Path) -> Path:
    """Where the embedded server keeps its data: ``state_dir/postgres`` when it can.

    PostgreSQL does not run as root, so under root it runs as another OS user, which must be
    able to enter every parent folder. A project below a folder closed to other users (such as
    ``/root``) keeps its server data in a temp folder of its own instead.
    """
    preferred = state_dir.resolve() / "postgres"
    if os.geteuid() != 0 or closed_parent(preferred) is None:
        return preferred
    digest = hashlib.sha256(str(preferred).encode("utf-8")).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"osop_dagster-{digest}"
    fallback.mkdir(mode=0o755, exist_ok=True)
    dg.get_dagster_logger().info(
        "Keeping the embedded PostgreSQL data in %s: %s is closed to other users.",
        fallback,
        closed_parent(preferred),
    )
    return fallback / "postgres"


def instance_environment(project_dir: Path, state_dir: Path, postgres_url: str) -> dict[str, str]:
    """Environment for a Dagster instance whose storage is ``postgres_url``.

    ``DAGSTER_HOME`` is a folder under ``state_dir`` holding a copy of the project's
    ``dagster.yaml``; Dagster needs it writable for compute logs even with Postgres storage.
    """
    template = project_dir / "dagster.yaml"
    if not template.is_file():
        raise OsopConfigError(
            f"No dagster.yaml in {project_dir}: run this command from the osop_dagster project "
            "folder, or pass --project-dir."
        )
    home = state_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, home / "dagster.yaml")
    parsed = parse_postgres_url(postgres_url)
    return {
        "DAGSTER_HOME": str(home),
        ENV_STORAGE_URL: parsed.sqlalchemy_url,
        constants.ENV_POSTGRES_URL: parsed.psycopg_url,
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Sets environment variables for the duration of the context, then restores them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class ReferenceApi:
    """The reference API service started for a demo, with the environment that reaches it."""

    base_url: str
    environment: dict[str, str]


@contextmanager
def reference_api(state_dir: Path, secret_refs: list[str], records: int) -> Iterator[ReferenceApi]:
    """Starts the reference API on a free loopback port with fresh, random client credentials.

    The credentials reach the pipeline through the environment variables named by the
    workflow's ``secret_ref`` fields, in the ``client_id:client_secret`` form.
    """
    from osop_reference_api import ReferenceApiProcess

    client_id = "osop-demo"
    client_secret = secrets.token_urlsafe(24)
    state_dir.mkdir(parents=True, exist_ok=True)
    database = state_dir / "reference_api.sqlite3"
    database.unlink(missing_ok=True)
    with ReferenceApiProcess(
        database, records=records, client_id=client_id, client_secret=client_secret
    ) as service:
        environment = {constants.ENV_API_BASE_URL: service.base_url}
        environment.update({ref: f"{client_id}:{client_secret}" for ref in secret_refs})
        yield ReferenceApi(base_url=service.base_url, environment=environment)


def get_instance() -> dg.DagsterInstance:
    """The Dagster instance of the current ``DAGSTER_HOME``."""
    return dg.DagsterInstance.get()
