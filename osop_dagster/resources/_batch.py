"""Batch writes: a list input sent in chunks, each with a key that makes a resend harmless."""

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from osop_dagster.resources._api_runtime import BatchSettings
from osop_dagster.resources._pagination import get_path


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Split ``items`` into consecutive lists of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def shape_item(item: Any, settings: BatchSettings, assigned: Mapping[str, Any]) -> Any:
    """Keep the listed fields of a record and set the assigned ones over its own values."""
    if not isinstance(item, Mapping):
        return item
    kept = (
        {name: item[name] for name in settings.fields if name in item}
        if settings.fields is not None
        else dict(item)
    )
    kept.update(assigned)
    return kept


_Answer = TypeVar("_Answer")


def send_in_order(
    send: Callable[[int, list[Any]], _Answer],
    pieces: Iterable[list[Any]],
    concurrency: int,
) -> Iterator[tuple[int, list[Any], _Answer | BaseException]]:
    """Send each piece, up to ``concurrency`` at once, and yield the outcomes in piece order.

    An outcome is the answer or the exception its sending raised. After the first exception no
    further piece is sent, but the pieces already in flight are awaited and yielded, so the
    caller learns which of them the server accepted.
    """
    if concurrency <= 1:
        for index, piece in enumerate(pieces):
            try:
                yield index, piece, send(index, piece)
            except Exception as error:  # handed to the caller, which re-raises it
                yield index, piece, error
                return
        return

    numbered = enumerate(pieces)
    in_flight: deque[tuple[int, list[Any], Future[_Answer]]] = deque()
    failed = False
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="osop-chunk") as pool:
        while True:
            # A failure anywhere in the window stops sending, not only one at its head.
            failed = failed or any(
                future.done() and future.exception() is not None for _, _, future in in_flight
            )
            while not failed and len(in_flight) < concurrency:
                following = next(numbered, None)
                if following is None:
                    break
                index, piece = following
                in_flight.append((index, piece, pool.submit(send, index, piece)))
            if not in_flight:
                return
            index, piece, future = in_flight.popleft()
            error = future.exception()
            failed = failed or error is not None
            yield index, piece, future.result() if error is None else error


def idempotency_key(prefix: str, node_id: str, index: int, content: bytes) -> str:
    """A key that names one chunk of one node's write in one run, whatever the attempt.

    The same prefix, node, chunk index and encoded chunk always give the same key, so a server
    that deduplicates on ``Idempotency-Key`` applies a resent chunk once; chunks are encoded
    from stored records, in their stored order, so a re-execution encodes them alike. Hashing
    keeps the key short and ASCII whatever the prefix holds.
    """
    material = "\x1f".join((prefix, node_id, str(index), hashlib.sha256(content).hexdigest()))
    return "osop-" + hashlib.sha256(material.encode()).hexdigest()[:40]


@dataclass
class BatchReceipt:
    """What the chunks of one batch write answered, merged into the node's output."""

    status: int | None = None
    items_sent: int = 0
    chunks: int = 0
    batch_ids: list[Any] = field(default_factory=list)
    updated: int = 0
    rejected: list[Any] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)

    def add(self, status: int, body: Any, sent: int, settings: BatchSettings) -> None:
        """Fold one chunk's answer in."""
        self.status = status
        self.items_sent += sent
        self.chunks += 1
        self.responses.append(body)
        batch_id = get_path(body, settings.receipt_path, None)
        if batch_id is not None:
            self.batch_ids.append(batch_id)
        updated = get_path(body, settings.updated_path, None)
        if isinstance(updated, int) and not isinstance(updated, bool):
            self.updated += updated
        rejected = get_path(body, settings.rejected_path, None)
        if isinstance(rejected, list):
            self.rejected.extend(rejected)

    def as_output(self) -> dict[str, Any]:
        """The receipt as the node's JSON output."""
        return {
            "status": self.status,
            "items_sent": self.items_sent,
            "chunks": self.chunks,
            "batch_ids": self.batch_ids,
            "updated": self.updated,
            "rejected": self.rejected,
            "responses": self.responses,
        }
