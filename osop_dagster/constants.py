"""Names shared across osop_dagster: metadata keys, tags, environment variables, defaults."""

from typing import Final

# Workflow files the loader recognises, by suffix.
WORKFLOW_SUFFIXES: Final = (".osop.yaml", ".osop.yml", ".osop.json")

# Environment variables.
ENV_WORKFLOWS_DIR: Final = "OSOP_WORKFLOWS_DIR"
"""Folder of workflow files the code location loads; the project's ``workflows/`` by default."""
ENV_API_BASE_URL: Final = "OSOP_API_BASE_URL"
"""Replaces ``runtime.url`` of every ``api`` node, e.g. to point a workflow at staging."""
ENV_POSTGRES_URL: Final = "OSOP_POSTGRES_URL"
"""Postgres server for ``db`` nodes and, in the command line, for Dagster's own storage."""

# Metadata keys on asset specs and materializations.
META_NODE_ID: Final = "osop/node_id"
META_NODE_TYPE: Final = "osop/node_type"
META_WORKFLOW_ID: Final = "osop/workflow_id"
META_SOURCE_FILE: Final = "osop/source_file"
META_METHOD: Final = "osop/method"
META_ENDPOINT: Final = "osop/endpoint"
META_ENGINE: Final = "osop/engine"
META_COMMAND: Final = "osop/command"
META_EXECUTABLE: Final = "osop/executable"
META_RECORD_COUNT: Final = "osop/record_count"
META_STATUS: Final = "osop/http_status"
META_REQUESTS: Final = "osop/requests"
META_PAGES: Final = "osop/pages"
META_DURATION_MS: Final = "osop/duration_ms"

# Tags.
TAG_WORKFLOW_ID: Final = "osop/workflow_id"
