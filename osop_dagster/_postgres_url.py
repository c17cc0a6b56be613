"""One Postgres URL from the user, spelled the two ways the product needs it.

psycopg 3 (the product's own tables) takes the plain ``postgresql://`` form. Dagster's storage
goes through SQLAlchemy, which picks psycopg 3 for that plain form since SQLAlchemy 2.1, and
Dagster's ``NOTIFY`` statement then fails on psycopg 3's server-side parameters; so the storage
URL names the psycopg 2 driver explicitly. Both spellings accept the unix-socket form
``postgresql://postgres:@/postgres?host=/some/dir`` that the embedded server hands out.
"""

import re
from dataclasses import dataclass
from urllib.parse import (
    SplitResult,
    parse_qsl,
    quote,
    unquote,
    urlencode,
    urlsplit,
    urlunsplit,
)

import psycopg
from psycopg import errors, sql

from osop_dagster.errors import OsopConfigError, OsopDatabaseError

_SCHEME = re.compile(r"^(?P<scheme>postgres(?:ql)?)(?:\+(?P<driver>[a-z0-9_]+))?$")

# Query keys that carry secrets in a libpq URL; their values are masked and refused in YAML.
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})

_MASK = "***"

# An unquoted-style identifier: quoting keeps it verbatim, so lowercase avoids case surprises.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class PostgresUrl:
    """A user's Postgres URL, parsed once.

    Attributes:
        psycopg_url: The plain ``postgresql://`` URL for psycopg 3.
        sqlalchemy_url: The ``postgresql+psycopg2://`` URL for dagster-postgres storage.
        masked: The URL with any password replaced by ``***``, for messages and logs.
        target: ``user@host:port/dbname`` (or the socket folder for ``host``), for messages.
        dbname: The database the URL names, or ``None`` when it names none.
        has_password: Whether the URL carries a non-empty password.
    """

    psycopg_url: str
    sqlalchemy_url: str
    masked: str
    target: str
    dbname: str | None
    has_password: bool


def parse_postgres_url(url: str) -> PostgresUrl:
    """Parse a ``postgresql://`` or ``postgres://`` URL into the spellings the product uses.

    A driver suffix (``postgresql+psycopg2://``) is accepted and dropped.

    Raises:
        OsopConfigError: When ``url`` is not a Postgres URL; the message never shows a password.
    """
    parts = urlsplit(url.strip())
    match = _SCHEME.match(parts.scheme.lower())
    if match is None or (not parts.netloc and not parts.query):
        raise OsopConfigError(
            f"Expected a Postgres URL such as 'postgresql://user@host:5432/dbname', got "
            f"{_mask_parts(parts)!r}. Write the URL with the postgresql:// scheme."
        )

    plain = urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
    return PostgresUrl(
        psycopg_url=plain,
        sqlalchemy_url=urlunsplit(
            ("postgresql+psycopg2", parts.netloc, parts.path, parts.query, "")
        ),
        masked=_mask_parts(parts._replace(scheme="postgresql")),
        target=_describe(parts),
        dbname=unquote(parts.path.lstrip("/")) or None,
        has_password=bool(parts.password) or _query_has_secret(parts.query),
    )


def mask_url(url: str) -> str:
    """Return ``url`` with its password (in the user part or the query) replaced by ``***``."""
    return _mask_parts(urlsplit(url))


def with_database(url: str, dbname: str) -> str:
    """Return the plain psycopg URL of ``url`` naming database ``dbname`` instead."""
    parts = urlsplit(parse_postgres_url(url).psycopg_url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def validate_identifier(name: str, *, what: str) -> str:
    """Check that ``name`` is a plain lowercase SQL identifier and return it.

    Args:
        name: The identifier to check.
        what: What the identifier names, for the message, e.g. ``"database name"``.

    Raises:
        OsopConfigError: When ``name`` is not ``[a-z_][a-z0-9_]*`` of at most 63 characters.
    """
    if not _IDENTIFIER.match(name):
        raise OsopConfigError(
            f"Expected the {what} to be a lowercase SQL identifier (letters, digits and "
            f"underscores, not starting with a digit, at most 63 characters), got {name!r}."
        )
    return name


def ensure_database(url: str, dbname: str, *, connect_timeout_sec: int = 5) -> bool:
    """Create database ``dbname`` on the server of ``url`` unless it exists.

    Connects to the server's ``postgres`` maintenance database with the URL's user.

    Returns:
        ``True`` when the database was created, ``False`` when it already existed.

    Raises:
        OsopConfigError: When ``url`` or ``dbname`` is malformed.
        OsopDatabaseError: When the server cannot be reached or refuses to create it.
    """
    validate_identifier(dbname, what="database name")
    maintenance = with_database(url, "postgres")
    try:
        with psycopg.connect(
            maintenance, autocommit=True, connect_timeout=connect_timeout_sec
        ) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if found:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except errors.DuplicateDatabase:
                # Another process created it between the check and the statement.
                return False
            return True
    except psycopg.Error as exc:
        raise OsopDatabaseError(
            f"Could not create database {dbname!r} on {parse_postgres_url(url).target}: "
            f"{scrub(str(exc).strip(), url)}"
        ) from exc


def drop_database(url: str, dbname: str, *, connect_timeout_sec: int = 5) -> None:
    """Drop database ``dbname`` on the server of ``url`` if it exists, ending its sessions.

    Raises:
        OsopConfigError: When ``url`` or ``dbname`` is malformed.
        OsopDatabaseError: When the server cannot be reached or refuses to drop it.
    """
    validate_identifier(dbname, what="database name")
    try:
        with psycopg.connect(
            with_database(url, "postgres"), autocommit=True, connect_timeout=connect_timeout_sec
        ) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
    except psycopg.Error as exc:
        raise OsopDatabaseError(
            f"Could not drop database {dbname!r} on {parse_postgres_url(url).target}: "
            f"{scrub(str(exc).strip(), url)}"
        ) from exc


def scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from ``text`` (a driver message), wherever it appears."""
    parts = urlsplit(url)
    secrets = [parts.password or ""]
    secrets += [value for key, value in parse_qsl(parts.query) if key in _SECRET_QUERY_KEYS]
    for secret in secrets:
        for spelling in {secret, unquote(secret)}:
            if spelling:
                text = text.replace(spelling, _MASK)
    return text


def _query_has_secret(query: str) -> bool:
    return any(key in _SECRET_QUERY_KEYS and value for key, value in parse_qsl(query))


def _mask_parts(parts: SplitResult) -> str:
    netloc = parts.netloc
    if parts.password:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{_MASK}@{hostinfo}"
    query = urlencode(
        [
            (key, _MASK if key in _SECRET_QUERY_KEYS and value else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="/*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _describe(parts: SplitResult) -> str:
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query.get("host") or "localhost"
    try:
        port = parts.port or query.get("port")
    except ValueError:
        # A malformed port is the server's to report; the description stays readable.
        port = None
    user = parts.username or query.get("user")
    if host.startswith("/"):
        host = f"unix:{host}"
    where = f"{host}:{port}" if port else host
    dbname = unquote(parts.path.lstrip("/")) or query.get("dbname") or user or "postgres"
    return f"{unquote(user)}@{where}/{dbname}" if user else f"{where}/{dbname}"
