"""The ``runtime`` vocabulary of OSOP ``api`` nodes, and the templates its values may hold."""

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from osop_dagster.resources._vocabulary import RuntimeVocabulary

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

WRITE_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH"})

MAX_CONCURRENCY = 32
"""Most requests one node may keep in flight, whatever its settings say."""

# ``${input_name.path.to.value}``: an input name, then keys or list indexes separated by dots.
TEMPLATE = re.compile(r"\$\{([^{}]*)\}")
_TEMPLATE_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")


def template_paths(value: Any) -> list[str]:
    """Every ``${...}`` path inside a string, or inside the strings of a nested value."""
    if isinstance(value, str):
        return [match.group(1).strip() for match in TEMPLATE.finditer(value)]
    if isinstance(value, Mapping):
        return [path for item in value.values() for path in template_paths(item)]
    if isinstance(value, list | tuple):
        return [path for item in value for path in template_paths(item)]
    return []


def _check_templates(value: Any) -> Any:
    for path in template_paths(value):
        if not _TEMPLATE_PATH.match(path):
            raise ValueError(
                f"The template ${{{path}}} is not a dotted path; expected "
                "${input_name} or ${input_name.key.0.key}."
            )
    return value


class _Vocabulary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class PaginationSettings(_Vocabulary):
    """How a GET walks through the pages of a collection.

    Attributes:
        style: ``page_number`` sends ``page_param`` = 1, 2, ...; ``offset`` sends
            ``offset_param`` = 0, n, 2n, ... (n = items received so far); ``cursor`` sends the
            cursor found at ``cursor_path`` in each answer; ``link`` follows the
            ``Link: <...>; rel="next"`` answer header.
        items_path: Dotted path of the item list in each answer; by default the answer itself
            when it is a list, else the first list under ``data``, ``items``, ``records`` or
            ``results``.
        page_param: Page number parameter (``page_number``).
        start_page: First page number (``page_number``).
        size_param: Page size parameter; ``per_page`` for ``page_number``, ``limit`` otherwise.
        page_size: Page size to ask for; unset leaves the server's default.
        offset_param: Offset parameter (``offset``).
        cursor_param: Cursor parameter (``cursor``).
        cursor_path: Dotted path of the next cursor in an answer (``cursor``); by default the
            first of ``next_cursor``, ``pagination.next_cursor``, ``meta.next_cursor``.
        total_path: Dotted path of the total item count; when present, paging stops once that
            many items arrived, and a total that changes between pages is reported.
        max_pages: Most pages to fetch; more fails the step. Unset uses the resource's limit.
        concurrency: Pages in flight at once. Above 1, once the first answer gives the total
            (``total_path``), the other pages of a ``page_number`` or ``offset`` walk are fetched
            ahead and kept in order; other styles fetch one page after another. The resource's
            ``max_concurrency`` caps it.
    """

    style: Literal["page_number", "offset", "cursor", "link"]
    items_path: str | None = None
    page_param: str = "page"
    start_page: int = 1
    size_param: str | None = None
    page_size: int | None = Field(default=None, gt=0)
    offset_param: str = "offset"
    cursor_param: str = "cursor"
    cursor_path: str | None = None
    total_path: str | None = None
    max_pages: int | None = Field(default=None, gt=0)
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)

    @property
    def effective_size_param(self) -> str:
        """The page size parameter, with the style's default filled in."""
        if self.size_param:
            return self.size_param
        return "per_page" if self.style == "page_number" else "limit"


class BatchSettings(_Vocabulary):
    """How a write sends a list input in chunks, one request per chunk.

    Attributes:
        input: The input holding the list; by default the node's only list-valued input.
        size: Items per request.
        body_key: Each request's body is ``{body_key: [items of the chunk]}``.
        fields: Record fields to send; by default the whole record. List the id field too.
        set: Fields set on every item sent, over the record's own values; templates allowed.
        receipt_path: Dotted path, in each chunk's answer, of the id collected into the
            output's ``batch_ids``.
        rejected_path: Dotted path, in each chunk's answer, of the list of rejected items.
        updated_path: Dotted path, in each chunk's answer, of the count summed into ``updated``.
        concurrency: Chunks in flight at once. Chunks may then be applied out of order; each
            keeps its own ``Idempotency-Key``, and a failure lists the chunks accepted. The
            resource's ``max_concurrency`` caps it.
    """

    input: str | None = None
    size: int = Field(default=500, gt=0)
    body_key: str = "records"
    fields: list[str] | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    receipt_path: str = "batch_id"
    rejected_path: str = "rejected"
    updated_path: str = "updated"
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)

    _set_templates = field_validator("set")(_check_templates)


class TokenSettings(_Vocabulary):
    """How an ``oauth2`` node asks for its token (RFC 6749 section 4.4).

    Attributes:
        client_auth: ``client_secret_basic`` sends the client credentials in an HTTP Basic
            ``Authorization`` header (RFC 6749 section 2.3.1); ``client_secret_post`` sends
            them as ``client_id`` and ``client_secret`` form fields.
        scope: Space-separated scopes to request; unset asks for the client's default.
    """

    client_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    scope: str | None = None


class AuthSettings(_Vocabulary):
    """The OSOP schema's ``runtime.auth``: a static credential read from the environment.

    Attributes:
        type: ``bearer`` (or ``bearer_token``) sends ``Authorization: Bearer <value of the
            secret_ref variable>``; ``oauth2`` marks a token node, like ``security.auth``.
        secret_ref: Name of the environment variable holding the credential.
    """

    type: Literal["bearer", "bearer_token", "oauth2", "none"] = "none"
    secret_ref: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_extensions(cls, data: Any) -> Any:
        # The schema allows x- extension keys here and nothing else.
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if not str(key).startswith("x-")}
        return data


class ApiRuntime(RuntimeVocabulary):
    """The ``runtime`` keys of an OSOP ``api`` node.

    Other keys the OSOP schema declares for node runtimes (``provider``, ``engine``, ...) and
    ``x-`` extensions are accepted and ignored; any other key is reported as a mistake.

    Attributes:
        url: Base URL, e.g. ``https://api.example.com``. Replaced by the resource's ``base_url``,
            and both by the variable named in ``base_url_env`` when that is set.
        endpoint: Path appended to ``url`` (``/api/v2/records``); an absolute URL is used as is,
            keeping only its path and query when the base URL is replaced. Templates allowed.
        method: ``GET``, ``POST``, ``PUT``, ``PATCH`` or ``DELETE`` (any case); ``GET`` if unset.
        headers: Static headers; values may hold ``${...}`` templates.
        query: Query parameters. A value may be a template ``${input_name.path.to.value}``
            resolved against the node's inputs; a list becomes a repeated parameter and
            ``null`` leaves the parameter out.
        body: JSON body, with templates. A string that is exactly one template takes the
            referenced value whole (a list stays a list).
        body_template: The OSOP schema's name for ``body``; give one or the other.
        form: Form fields (``application/x-www-form-urlencoded``), with templates.
        base_url_env: Name of an environment variable that, when set, replaces ``url``.
        pagination: ``auto`` (default) follows ``Link: rel="next"`` when the server sends it
            and keeps the item list of each page; ``none`` keeps the single answer; or a
            :class:`PaginationSettings` object.
        batch: ``auto`` (default) sends a POST, PUT or PATCH whose inputs hold a list (and that
            has no ``body`` or ``form``) in chunks; ``none`` never does; or a
            :class:`BatchSettings` object.
        expect_status: Statuses counted as success; by default any 2xx.
        output: Dotted path, in the answer, of the value kept as the node's output; by default
            the whole answer, or for pages the items of every page in order.
        token: For ``oauth2`` token nodes, the :class:`TokenSettings`.
        auth: The OSOP schema's ``runtime.auth``, see :class:`AuthSettings`.
    """

    model_config = ConfigDict(strict=True)

    url: str | None = None
    endpoint: str | None = None
    method: HttpMethod = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    body: Any = None
    body_template: Any = None
    form: dict[str, Any] | None = None
    base_url_env: str | None = None
    pagination: Literal["auto", "none"] | PaginationSettings = "auto"
    batch: Literal["auto", "none"] | BatchSettings = "auto"
    expect_status: list[int] | None = None
    output: str | None = None
    token: TokenSettings = Field(default_factory=TokenSettings)
    auth: AuthSettings | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper_case_method(cls, method: Any) -> Any:
        return method.upper() if isinstance(method, str) else method

    @field_validator("headers", "query", "body", "body_template", "form", "endpoint")
    @classmethod
    def _templates_are_paths(cls, value: Any) -> Any:
        return _check_templates(value)

    @field_validator("expect_status")
    @classmethod
    def _statuses_exist(cls, statuses: list[int] | None) -> list[int] | None:
        for status in statuses or ():
            if not 100 <= status <= 599:
                raise ValueError(f"expect_status holds {status!r}; expected statuses 100 to 599.")
        return statuses

    @model_validator(mode="after")
    def _one_body(self) -> "ApiRuntime":
        given = [
            name for name in ("body", "body_template", "form") if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"Only one request body may be given, got {' and '.join(given)}; keep one."
            )
        if isinstance(self.pagination, PaginationSettings) and self.method != "GET":
            raise ValueError(
                f"pagination applies to GET requests, but the method is {self.method}; remove "
                "pagination or make the node a GET."
            )
        if isinstance(self.batch, BatchSettings) and self.method not in WRITE_METHODS:
            raise ValueError(
                f"batch applies to POST, PUT and PATCH, but the method is {self.method}; remove "
                "batch or change the method."
            )
        if given and isinstance(self.batch, BatchSettings):
            raise ValueError(
                f"A batch write builds its own body from the chunk, so {given[0]} cannot be set "
                "with batch; remove one of them."
            )
        return self

    @property
    def body_value(self) -> Any:
        """The JSON body template, from ``body`` or its schema alias ``body_template``."""
        return self.body if self.body is not None else self.body_template
