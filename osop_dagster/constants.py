"""Names shared across osop_dagster: metadata keys, tags, environment variables, defaults."""

from typing import Final

# Workflow files the loader recognises, by suffix.
WORKFLOW_SUFFIXES: Final = (".osop.yaml", ".osop.yml", ".osop.json")

# Environment variables.
ENV_WORKFLOWS_DIR: Final = "OSOP_WORKFLOWS_DIR"
"""Folder of workflow files the code location loads; the project's ``workflows/`` by default."""
ENV_API_BASE_URL: Final = "OSOP_API_BASE_URL"
"""Replaces ``runtime.url`` of every ``api`` node, e.g. to point a workflow at staging."""
ENV_ALLOWED_PROGRAMS: Final = "OSOP_ALLOWED_PROGRAMS"
"""Comma-separated programs besides ``jq`` that ``cli`` nodes may run, e.g. ``python3,gzip``."""
ENV_POSTGRES_URL: Final = "OSOP_POSTGRES_URL"
"""Postgres server for ``db`` nodes and, in the command line, for Dagster's own storage."""
ENV_ALLOW_INSECURE_HTTP: Final = "OSOP_ALLOW_INSECURE_HTTP"
"""Set to ``1`` to let client credentials and tokens travel over plain http to any host."""

# Loggers.
HTTP_LOGGER_NAME: Final = "osop_dagster.http"
"""Process logger of every HTTP request: one INFO line each, headers and bodies at DEBUG."""

# Metadata keys on asset specs and materializations.
META_LOAD_AS_TEXT: Final = "osop/load_as_text"
"""Set on an input's definition: the IO manager hands over the stored JSON text, undecoded."""
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
META_ERROR_HEADERS: Final = "osop/error_headers"
"""Headers of a failed API call's last answer, sensitive ones removed; for error edges."""
META_ERROR_BODY: Final = "osop/error_body"
"""Start of a failed API call's last answer, credentials masked; for error edges."""
META_SUMMARY: Final = "osop/summary"
"""Scalars and list sizes of an object-valued output, credentials left out."""
META_EXIT_CODE: Final = "osop/exit_code"
META_RECORDS_IN: Final = "osop/records_in"
"""Records a ``cli`` node received; ``osop/record_count`` holds how many it kept."""
META_MIXED_TYPE_FIELDS: Final = "osop/mixed_type_fields"
"""Record fields whose values have several JSON types, which jq compares by type first."""
META_TABLE: Final = "osop/table"
META_DATABASE: Final = "osop/database"
"""Where a ``db`` node wrote, as ``user@host:port/dbname``; never a password."""
META_AUDIT_ID: Final = "osop/audit_id"

# Metadata keys of api nodes.
META_URL: Final = "osop/url"
"""The URL an api node called, credentials masked."""
META_ATTEMPTS: Final = "osop/attempts"
"""HTTP attempts made, retries included."""
META_RESPONSE_BYTES: Final = "osop/response_bytes"
META_ITEMS_SENT: Final = "osop/items_sent"
META_CHUNKS: Final = "osop/chunks"
META_BATCH_IDS: Final = "osop/batch_ids"
META_UPDATED_COUNT: Final = "osop/updated_count"
META_REJECTED_COUNT: Final = "osop/rejected_count"
META_REJECTED: Final = "osop/rejected"
"""The first rejected items of a batch write, as the API reported them."""
META_WARNINGS: Final = "osop/warnings"
META_TOKEN_TYPE: Final = "osop/token_type"
META_TOKEN_SCOPE: Final = "osop/token_scope"
META_TOKEN_EXPIRES_AT: Final = "osop/token_expires_at"
META_TOKEN_FINGERPRINT: Final = "osop/token_fingerprint"
"""First 12 hex digits of the token's SHA-256: tells tokens apart, reveals nothing."""
META_TOKEN_RENEWED: Final = "osop/token_renewed"

# Runtime keys the OSOP schema declares for every node ($defs.node.runtime). A resource's runtime
# model accepts these and ignores the ones it does not use; any other key is a spelling mistake.
RUNTIME_SCHEMA_KEYS: Final = frozenset(
    {
        "action",
        "auth",
        "body_template",
        "branch",
        "command",
        "config_path",
        "connection",
        "destination",
        "endpoint",
        "engine",
        "environment",
        "headers",
        "image",
        "max_tokens",
        "method",
        "model",
        "os",
        "provider",
        "repo",
        "source",
        "system_prompt",
        "table",
        "temperature",
        "tool",
        "tools",
        "url",
    }
)

# Tags.
TAG_WORKFLOW_ID: Final = "osop/workflow_id"

# Workflow files larger than this are refused before parsing; real workflows are a few KiB.
MAX_WORKFLOW_FILE_BYTES: Final = 1024 * 1024

# Limits on the nodes osop_dagster runs (api, cli, db), checked when a workflow file loads. The
# OSOP schema bounds none of these, but a node that retries a thousand times or waits a day
# between attempts holds a run for ever; a longer outage is better met by running again later.
MAX_NODE_RETRIES: Final = 10
"""Largest ``retry_policy.max_retries`` of a runnable node."""
MAX_NODE_BACKOFF_SEC: Final = 300
"""Largest ``retry_policy.backoff_sec`` of a runnable node, in seconds."""
MAX_NODE_TIMEOUT_SEC: Final = 86_400
"""Largest ``timeout_sec`` of a runnable node, in seconds (one day)."""
