"""Dagster resources that carry the run-time semantics of OSOP node types.

- :class:`OsopHttpResource` runs ``api`` nodes with httpx: OAuth2 client credentials, bearer
  tokens, pagination, chunked batch writes, retries.
- :class:`OsopShellResource` runs ``cli`` nodes: ``jq`` through its Python binding, other
  programs from an argument list when allowed.
- :class:`OsopPostgresResource` runs ``db`` nodes on Postgres with psycopg: the audit row.
"""

from osop_dagster.resources.http import ApiRuntime, OsopHttpResource
from osop_dagster.resources.postgres import DbRuntime, OsopPostgresResource
from osop_dagster.resources.shell import CliRuntime, OsopShellResource

__all__ = [
    "ApiRuntime",
    "CliRuntime",
    "DbRuntime",
    "OsopHttpResource",
    "OsopPostgresResource",
    "OsopShellResource",
]
