"""A local stand-in for the example workflow's REST API, for tests, demos and benchmarks.

It serves OAuth 2.0 client-credentials tokens, paginated records, batch updates with optimistic
concurrency and idempotency keys, and batch verification, on 127.0.0.1 only, over a seeded
SQLite file that tests can inspect with :class:`RecordStore`.

Example:
    >>> from osop_reference_api import ReferenceApiProcess
    >>> with ReferenceApiProcess("/tmp/api.sqlite3", records=2000) as api:  # doctest: +SKIP
    ...     print(api.base_url)
    http://127.0.0.1:40123
"""

from osop_reference_api._process import ReferenceApiProcess, ReferenceApiStartupError
from osop_reference_api._server import serve
from osop_reference_api.app import (
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ServiceConfig,
    create_app,
)
from osop_reference_api.seed import is_selected_by_workflow, iter_seed_rows
from osop_reference_api.store import RecordStore

__all__ = [
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "RecordStore",
    "ReferenceApiProcess",
    "ReferenceApiStartupError",
    "ServiceConfig",
    "create_app",
    "is_selected_by_workflow",
    "iter_seed_rows",
    "serve",
]
