"""The reference API's data: one SQLite file in WAL mode.

The service reads and writes through one :class:`RecordStore`; tests open their own on the same
file to see what a run changed (WAL lets them read while the service writes). Record ids are
``1..N`` with no gaps, because the store only ever inserts when it seeds.

Tables: ``records`` (the data set), ``batches`` and ``batch_records`` (every batch update and
the records it claimed to update), ``idempotency_keys`` (stored answers of batch updates) and
``meta`` (the seed and size of the data set).
"""

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from types import TracebackType
from typing import Any, Final, Literal, Self

from osop_reference_api.seed import RECORD_STATUSES, iter_seed_rows

RECORD_COLUMNS: Final = (
    "id",
    "title",
    "status",
    "age_days",
    "owner",
    "amount",
    "created_at",
    "updated_at",
    "version",
    "last_batch_id",
)
"""Fields of a record, in the order the API renders them."""

WRITABLE_FIELDS: Final = ("status", "title", "owner", "amount")
"""Fields a batch update may change; every other field in an update is ignored."""

RejectReason = Literal[
    "not_found",
    "version_conflict",
    "invalid_status",
    "invalid_value",
    "duplicate_id",
    "rejected_by_fault",
]
"""Why a batch update refused one record (the last reason only while a fault switch is on)."""

IDEMPOTENCY_KEY_TTL_SECONDS: Final = 24 * 3600
"""How long a stored batch answer can be replayed, as payment APIs commonly do."""

_SCHEMA: Final = (
    """CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        status TEXT NOT NULL,
        age_days INTEGER NOT NULL,
        owner TEXT NOT NULL,
        amount REAL NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL,
        last_batch_id TEXT
    )""",
    """CREATE TABLE batches (
        batch_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        requested INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        rejected TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE batch_records (
        batch_id TEXT NOT NULL,
        record_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (batch_id, record_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        request_sha256 TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
# Indexes are built after the bulk insert: loading into an indexed table is several times slower.
_INDEXES: Final = (
    "CREATE INDEX records_status ON records (status)",
    "CREATE INDEX records_last_batch ON records (last_batch_id) WHERE last_batch_id IS NOT NULL",
)
_TABLES: Final = ("records", "batches", "batch_records", "idempotency_keys", "meta")

# SQLite renders each record as JSON itself, so a page costs one string join in Python instead
# of a dict and an encoder pass per record.
_RECORD_JSON_SQL: Final = (
    "json_object('id', id, 'title', title, 'status', status, 'age_days', age_days, "
    "'owner', owner, 'amount', amount, 'created_at', created_at, 'updated_at', updated_at, "
    "'version', version, 'last_batch_id', last_batch_id)"
)
_PAGE_SQL: Final = f"SELECT id, {_RECORD_JSON_SQL} FROM records WHERE id > ? ORDER BY id LIMIT ?"
_PAGE_BY_STATUS_SQL: Final = (
    f"SELECT id, {_RECORD_JSON_SQL} FROM records WHERE status = ? AND id > ? ORDER BY id LIMIT ?"
)
_RECORD_SQL: Final = f"SELECT {_RECORD_JSON_SQL} FROM records WHERE id = ?"
_UPDATE_SQL: Final = (
    "UPDATE records SET status = coalesce(?, status), title = coalesce(?, title), "
    "owner = coalesce(?, owner), amount = coalesce(?, amount), version = version + 1, "
    "updated_at = ?, last_batch_id = ? WHERE id = ?"
)

# The filters tests may pass to count() and ids_where(), each a SQL condition on one parameter.
_FILTERS: Final[Mapping[str, str]] = {
    "status": "status = ?",
    "owner": "owner = ?",
    "version": "version = ?",
    "last_batch_id": "last_batch_id IS ?",
    "age_days": "age_days = ?",
    "age_days_gt": "age_days > ?",
    "age_days_lt": "age_days < ?",
}
_NO_MORE_ROWS: Final = 2**62
_MAX_ANCHORS: Final = 10_000


@dataclass(frozen=True)
class Page:
    """One page of records, already rendered as JSON objects.

    Attributes:
        items: One JSON object text per record, in id order.
        last_id: The id of the last record on the page, or ``None`` for an empty page.
        has_more: Whether records follow the page (with the same filter).
    """

    items: list[str]
    last_id: int | None
    has_more: bool


class IdempotencyKeyReusedError(ValueError):
    """An idempotency key came back with a different request body than the one it first had."""


class RecordStore:
    """The SQLite file behind the reference API, and a window into it for tests.

    Args:
        path: The database file; created when missing (empty until :meth:`seed`).
        busy_timeout_ms: How long a write waits for another connection's write to finish.

    Example:
        >>> with RecordStore(tmp_path / "api.sqlite3") as store:  # doctest: +SKIP
        ...     store.seed(count=100, seed=7)
        ...     store.count(status="pending", age_days_gt=30)
        25
    """

    def __init__(self, path: str | PathLike[str], *, busy_timeout_ms: int = 5000) -> None:
        self.path = str(path)
        # Autocommit mode: every transaction below is opened and closed explicitly.
        self._conn = sqlite3.connect(self.path, isolation_level=None, cached_statements=256)
        # The busy timeout comes first so that switching to WAL waits for other connections.
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA cache_size = -65536")
        self._own_writes = 0
        self._cache_key: tuple[int, int] = (-1, -1)
        self._totals: dict[str | None, int] = {}
        self._anchors: dict[tuple[str | None, int], int] = {}
        self._dense: bool | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        self._conn.close()

    # -- seeding ------------------------------------------------------------------------------

    def seed(self, count: int, seed: int) -> None:
        """Replace every table with a fresh data set of ``count`` records made from ``seed``.

        Batches, stored idempotent answers and record changes are all discarded. The whole
        replacement is one transaction, so readers see either the old or the new data set.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in _TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                iter_seed_rows(count, seed),
            )
            for statement in _INDEXES:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", (("records", str(count)), ("seed", str(seed)))
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("ANALYZE")
        self._wrote()

    def dataset(self) -> tuple[int, int] | None:
        """The ``(records, seed)`` the file was seeded with, or ``None`` when it never was."""
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if has_meta is None:
            return None
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if "records" not in meta or "seed" not in meta:
            return None
        return int(meta["records"]), int(meta["seed"])

    # -- reading, for tests -------------------------------------------------------------------

    def get(self, record_id: int) -> dict[str, Any] | None:
        """The record with this id as the API would render it, or ``None`` when there is none."""
        row = self._conn.execute(
            f"SELECT {', '.join(RECORD_COLUMNS)} FROM records WHERE id = ?", (record_id,)
        ).fetchone()
        return None if row is None else dict(zip(RECORD_COLUMNS, row, strict=True))

    def count(self, **filters: Any) -> int:
        """How many records match every filter (see :meth:`ids_where` for the names)."""
        where, params = _where(filters)
        return int(self._conn.execute(f"SELECT count(*) FROM records{where}", params).fetchone()[0])

    def ids_where(self, **filters: Any) -> list[int]:
        """Ids of the records matching every filter, ascending.

        Filters: ``status``, ``owner``, ``version``, ``last_batch_id`` (``None`` matches never
        updated), ``age_days``, ``age_days_gt``, ``age_days_lt``.

        Raises:
            TypeError: A filter name is not one of those.
        """
        where, params = _where(filters)
        rows = self._conn.execute(f"SELECT id FROM records{where} ORDER BY id", params)
        return [row[0] for row in rows]

    def updated_by_batch(self, batch_id: str) -> list[int]:
        """Ids of the records whose latest update came from this batch, ascending."""
        return self.ids_where(last_batch_id=batch_id)

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        """A stored batch: its summary and the ids it claimed to update, or ``None``."""
        row = self._conn.execute(
            "SELECT status, requested, updated, rejected, created_at FROM batches "
            "WHERE batch_id = ?",
            (batch_id,),
        ).fetchone()
        if row is None:
            return None
        claimed = self._conn.execute(
            "SELECT record_id FROM batch_records WHERE batch_id = ? ORDER BY record_id",
            (batch_id,),
        )
        return {
            "batch_id": batch_id,
            "status": row[0],
            "requested": row[1],
            "updated": row[2],
            "rejected": json.loads(row[3]),
            "created_at": row[4],
            "record_ids": [r[0] for r in claimed],
        }

    def batch_ids(self) -> list[str]:
        """Ids of every stored batch, oldest first."""
        rows = self._conn.execute("SELECT batch_id FROM batches ORDER BY created_at, rowid")
        return [row[0] for row in rows]

    # -- reading, for the service -------------------------------------------------------------

    def record_json(self, record_id: int) -> str | None:
        """One record rendered as a JSON object, or ``None`` when there is none."""
        row = self._conn.execute(_RECORD_SQL, (record_id,)).fetchone()
        return None if row is None else row[0]

    def page(self, after_id: int, limit: int, status: str | None = None) -> Page:
        """Up to ``limit`` records with ids above ``after_id`` (keyset pagination)."""
        if status is None:
            rows = self._conn.execute(_PAGE_SQL, (after_id, limit + 1)).fetchall()
        else:
            rows = self._conn.execute(_PAGE_BY_STATUS_SQL, (status, after_id, limit + 1)).fetchall()
        has_more = len(rows) > limit
        if has_more:
            rows.pop()
        last_id = rows[-1][0] if rows else None
        return Page(items=[row[1] for row in rows], last_id=last_id, has_more=has_more)

    def page_at_offset(self, offset: int, limit: int, status: str | None = None) -> Page:
        """Up to ``limit`` records starting at position ``offset`` of the (filtered) list.

        Sequential walks cost one keyset query per page: the store remembers where each page
        it served ended, so the next offset maps straight to an id.
        """
        self._refresh_cache()
        after_id = self._after_id_for_offset(offset, status)
        page = self.page(after_id, limit, status)
        if page.last_id is not None:
            if len(self._anchors) >= _MAX_ANCHORS:
                self._anchors.clear()
            self._anchors[(status, offset + len(page.items))] = page.last_id
        return page

    def total(self, status: str | None = None) -> int:
        """How many records there are (with this status), cached until the data changes."""
        self._refresh_cache()
        cached = self._totals.get(status)
        if cached is None:
            if status is None:
                cached = int(self._conn.execute("SELECT count(*) FROM records").fetchone()[0])
            else:
                cached = self.count(status=status)
            self._totals[status] = cached
        return cached

    def _after_id_for_offset(self, offset: int, status: str | None) -> int:
        if offset <= 0:
            return 0
        anchor = self._anchors.get((status, offset))
        if anchor is not None:
            return anchor
        if status is None and self._ids_are_dense():
            return offset
        if status is None:
            sql, params = "SELECT id FROM records ORDER BY id LIMIT 1 OFFSET ?", (offset - 1,)
        else:
            sql = "SELECT id FROM records WHERE status = ? ORDER BY id LIMIT 1 OFFSET ?"
            params = (status, offset - 1)
        row = self._conn.execute(sql, params).fetchone()
        return _NO_MORE_ROWS if row is None else int(row[0])

    def _ids_are_dense(self) -> bool:
        if self._dense is None:
            highest = self._conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]
            self._dense = highest == self.total()
        return self._dense

    def _refresh_cache(self) -> None:
        # data_version moves when another connection commits (a test editing the file), and
        # _own_writes when this one does: either way the cached totals and offsets are stale.
        data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        key = (int(data_version), self._own_writes)
        if key != self._cache_key:
            self._cache_key = key
            self._totals.clear()
            self._anchors.clear()
            self._dense = None

    def _wrote(self) -> None:
        self._own_writes += 1

    # -- batch updates ------------------------------------------------------------------------

    def stored_answer(self, key: str, request_sha256: str) -> str | None:
        """The stored answer of an earlier batch sent with this idempotency key, if any.

        Raises:
            IdempotencyKeyReusedError: The key was used before with a different request body.
        """
        row = self._conn.execute(
            "SELECT request_sha256, response FROM idempotency_keys "
            "WHERE key = ? AND created_at > ?",
            (key, time.time() - IDEMPOTENCY_KEY_TTL_SECONDS),
        ).fetchone()
        if row is None:
            return None
        if row[0] != request_sha256:
            raise IdempotencyKeyReusedError(
                f"The idempotency key {key!r} was first used with a different request body."
            )
        return str(row[1])

    def apply_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        batch_id: str,
        now: str,
        idempotency: tuple[str, str] | None = None,
        refused: Collection[int] = frozenset(),
    ) -> dict[str, Any]:
        """Apply a batch update in one transaction and return the API's answer.

        Args:
            items: Update requests, each a mapping with an integer ``id``; the caller has
                checked that shape.
            batch_id: The id to stamp on every updated record.
            now: The timestamp to store as ``updated_at``.
            idempotency: ``(key, request_sha256)`` to store the answer under, if a key was sent.
            refused: Ids to reject as ``rejected_by_fault`` when nothing else is wrong with them.

        Returns:
            The answer body: batch id, counts, rejections and per-record results.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            answer = self._apply_batch(items, batch_id=batch_id, now=now, refused=refused)
            if idempotency is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?)",
                    (idempotency[0], idempotency[1], json.dumps(answer), time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._wrote()
        return answer

    def _apply_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        batch_id: str,
        now: str,
        refused: Collection[int],
    ) -> dict[str, Any]:
        conn = self._conn
        ids = [item["id"] for item in items]
        versions = dict(
            conn.execute(
                "SELECT id, version FROM records WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            ).fetchall()
        )

        updates: list[tuple[Any, ...]] = []
        claimed: list[tuple[str, int, int]] = []
        rejected: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        seen: set[int] = set()
        for item in items:
            record_id = item["id"]
            stored_version = versions.get(record_id)
            reason = _rejection(item, stored_version, record_id in seen)
            if reason is None and record_id in refused:
                reason = "rejected_by_fault"
            seen.add(record_id)
            if reason is not None:
                rejected.append({"id": record_id, "reason": reason})
                results.append({"id": record_id, "status": "rejected", "version": stored_version})
                continue
            assert stored_version is not None  # _rejection() refuses unknown ids
            new_version = stored_version + 1
            fields = tuple(item.get(name) for name in WRITABLE_FIELDS)
            updates.append((*fields, now, batch_id, record_id))
            claimed.append((batch_id, record_id, new_version))
            results.append({"id": record_id, "status": "updated", "version": new_version})

        conn.executemany(_UPDATE_SQL, updates)
        conn.executemany("INSERT INTO batch_records VALUES (?, ?, ?)", claimed)
        conn.execute(
            "INSERT INTO batches VALUES (?, 'completed', ?, ?, ?, ?)",
            (batch_id, len(items), len(updates), json.dumps(rejected), now),
        )
        return {
            "batch_id": batch_id,
            "status": "completed",
            "requested": len(items),
            "updated": len(updates),
            "rejected": rejected,
            "results": results,
        }

    def verify_batches(self, batch_ids: Iterable[str]) -> dict[str, Any]:
        """Re-check every record the batches claimed to update, as the status endpoint answers.

        A record verifies while it still carries the batch as ``last_batch_id``.

        Raises:
            KeyError: Some batch ids are unknown; the error's argument lists them.
        """
        summaries: list[dict[str, Any]] = []
        missing: list[str] = []
        checked = 0
        mismatched: list[int] = []
        for batch_id in batch_ids:
            summary = self._conn.execute(
                "SELECT status, requested, updated, rejected FROM batches WHERE batch_id = ?",
                (batch_id,),
            ).fetchone()
            if summary is None:
                missing.append(batch_id)
                continue
            summaries.append(
                {
                    "batch_id": batch_id,
                    "status": summary[0],
                    "requested": summary[1],
                    "updated": summary[2],
                    "rejected": json.loads(summary[3]),
                }
            )
            rows = self._conn.execute(
                "SELECT b.record_id, r.last_batch_id IS b.batch_id FROM batch_records AS b "
                "LEFT JOIN records AS r ON r.id = b.record_id WHERE b.batch_id = ? "
                "ORDER BY b.record_id",
                (batch_id,),
            ).fetchall()
            checked += len(rows)
            mismatched.extend(record_id for record_id, ok in rows if not ok)
        if missing:
            raise KeyError(missing)
        return {
            "batches": summaries,
            "records_checked": checked,
            "records_verified": checked - len(mismatched),
            "mismatched_ids": sorted(set(mismatched)),
            "verified": not mismatched,
        }


def request_fingerprint(body: Any) -> str:
    """A digest of a parsed JSON body that ignores key order and whitespace."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _rejection(
    item: Mapping[str, Any], stored_version: int | None, duplicate: bool
) -> RejectReason | None:
    if duplicate:
        return "duplicate_id"
    if stored_version is None:
        return "not_found"
    if "version" in item:
        version = item["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            return "invalid_value"
        if version != stored_version:
            return "version_conflict"
    if "status" in item and item["status"] not in RECORD_STATUSES:
        return "invalid_status"
    for name in ("title", "owner"):
        if name in item and not (isinstance(item[name], str) and item[name].strip()):
            return "invalid_value"
    if "amount" in item:
        amount = item["amount"]
        is_number = isinstance(amount, int | float) and not isinstance(amount, bool)
        if not is_number or not math.isfinite(amount):
            return "invalid_value"
    return None


def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    unknown = sorted(set(filters) - set(_FILTERS))
    if unknown:
        raise TypeError(
            f"Unknown record filter(s) {unknown!r}; expected some of {sorted(_FILTERS)!r}."
        )
    if not filters:
        return "", []
    conditions = [_FILTERS[name] for name in filters]
    return " WHERE " + " AND ".join(conditions), list(filters.values())


__all__ = [
    "RECORD_COLUMNS",
    "WRITABLE_FIELDS",
    "IdempotencyKeyReusedError",
    "Page",
    "RecordStore",
    "RejectReason",
    "request_fingerprint",
]
