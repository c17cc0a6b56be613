"""Deterministic record data for the reference API.

The same ``(count, seed)`` always yields the same records, byte for byte, so tests can predict
what the example workflow must select. Records are dealt in blocks of 20 whose order is shuffled
by the seed: each block holds 5 records that are ``pending`` and older than 30 days (exactly a
quarter of every full block), 2 that are ``pending`` but young, and 13 in other states whose age
is spread over both sides of the 30-day boundary. Ages of exactly 30 and 31 days occur on purpose,
since ``age_days > 30`` is the workflow's filter.
"""

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final, Literal

RecordStatus = Literal["pending", "active", "processed", "closed"]
"""The states a record can be in; the only values ``status`` accepts."""

RECORD_STATUSES: Final[tuple[RecordStatus, ...]] = ("pending", "active", "processed", "closed")

SEED_REFERENCE_TIME: Final = datetime(2026, 1, 1, tzinfo=UTC)
"""The moment the seeded ages are measured from; fixed so that data never depends on the clock."""

BLOCK_SIZE: Final = 20
PENDING_OLD_PER_BLOCK: Final = 5
PENDING_YOUNG_PER_BLOCK: Final = 2
AGE_BOUNDARY_DAYS: Final = 30
MAX_AGE_DAYS: Final = 720

SeedRow = tuple[int, str, str, int, str, float, str, str, int, None]
"""One record in table column order: id, title, status, age_days, owner, amount, created_at,
updated_at, version, last_batch_id."""

_Category = Literal["pending_old", "pending_young", "other"]

_BLOCK_PATTERN: Final[tuple[_Category, ...]] = (
    ("pending_old",) * PENDING_OLD_PER_BLOCK
    + ("pending_young",) * PENDING_YOUNG_PER_BLOCK
    + ("other",) * (BLOCK_SIZE - PENDING_OLD_PER_BLOCK - PENDING_YOUNG_PER_BLOCK)
)
_OTHER_STATUSES: Final = ("active", "processed", "closed")
_KINDS: Final = ("Invoice", "Refund", "Order", "Ticket", "Claim", "Renewal", "Shipment", "Quote")
_OWNERS: Final = (
    "billing",
    "finance",
    "logistics",
    "ops-north",
    "ops-south",
    "support",
    "sales-emea",
    "sales-apac",
)
_SECONDS_PER_DAY: Final = 86_400


def format_timestamp(moment: datetime) -> str:
    """Render a UTC moment the way the API does: ISO 8601, whole seconds, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age_for(category: _Category, rng: random.Random, first_block: bool, slot: int) -> int:
    # The first block pins the boundary cases so that even tiny data sets contain them.
    if category == "pending_old":
        if first_block and slot == 0:
            return AGE_BOUNDARY_DAYS + 1
        if rng.random() < 0.1:
            return AGE_BOUNDARY_DAYS + 1
        return rng.randint(AGE_BOUNDARY_DAYS + 2, MAX_AGE_DAYS)
    if category == "pending_young":
        if (first_block and slot == 0) or rng.random() < 0.25:
            return AGE_BOUNDARY_DAYS
        return rng.randint(0, AGE_BOUNDARY_DAYS - 1)
    draw = rng.random()
    if draw < 0.05:
        return AGE_BOUNDARY_DAYS
    if draw < 0.10:
        return AGE_BOUNDARY_DAYS + 1
    return rng.randint(0, MAX_AGE_DAYS)


def iter_seed_rows(count: int, seed: int) -> Iterator[SeedRow]:
    """Yield ``count`` records with ids ``1..count``, determined only by ``count`` and ``seed``.

    Args:
        count: How many records to produce; 0 or more.
        seed: Any integer; the same seed gives the same records.

    Yields:
        One tuple per record, in table column order (see :data:`SeedRow`).

    Raises:
        ValueError: ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"The record count must be 0 or more, got {count!r}.")

    rng = random.Random(seed)
    reference_seconds = SEED_REFERENCE_TIME.timestamp()
    record_id = 0
    block_number = 0
    while record_id < count:
        pattern = list(_BLOCK_PATTERN)
        rng.shuffle(pattern)
        seen: dict[_Category, int] = {"pending_old": 0, "pending_young": 0, "other": 0}
        for category in pattern:
            record_id += 1
            if record_id > count:
                return
            slot = seen[category]
            seen[category] = slot + 1

            age_days = _age_for(category, rng, block_number == 0, slot)
            if category == "other":
                status: RecordStatus = rng.choice(_OTHER_STATUSES)
            else:
                status = "pending"
            created_seconds = reference_seconds - age_days * _SECONDS_PER_DAY
            created_seconds -= rng.randrange(_SECONDS_PER_DAY)
            # Updated somewhere between creation and the reference time.
            updated_seconds = created_seconds + rng.random() * (reference_seconds - created_seconds)
            kind = rng.choice(_KINDS)

            yield (
                record_id,
                f"{kind} {record_id:07d}",
                status,
                age_days,
                rng.choice(_OWNERS),
                round(rng.uniform(5, 25_000), 2),
                format_timestamp(datetime.fromtimestamp(created_seconds, UTC)),
                format_timestamp(datetime.fromtimestamp(updated_seconds, UTC)),
                1,
                None,
            )
        block_number += 1


def is_selected_by_workflow(status: str, age_days: int) -> bool:
    """Whether the example workflow's filter (``pending`` and older than 30 days) keeps a record."""
    return status == "pending" and age_days > AGE_BOUNDARY_DAYS


__all__ = [
    "AGE_BOUNDARY_DAYS",
    "RECORD_STATUSES",
    "SEED_REFERENCE_TIME",
    "RecordStatus",
    "SeedRow",
    "format_timestamp",
    "is_selected_by_workflow",
    "iter_seed_rows",
]
