"""The server's limit: the same pages and the same PATCHes, sent by a saturating async client.

Bounded concurrency (``spec["concurrency"]`` requests in flight) shows how fast the reference
service itself goes on this machine; the client does nothing but fetch, select and send.
"""

import asyncio
import math
import os
import time
import uuid
from typing import Any

import httpx

from benchmarks._protocol import ENV_CLIENT_SECRET, phase, read_spec, write_result


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    page_size: int = spec["page_size"] or 100
    chunk_size: int = spec["batch_size"]
    gate = asyncio.Semaphore(spec["concurrency"])
    limits = httpx.Limits(max_connections=spec["concurrency"])
    async with httpx.AsyncClient(
        base_url=spec["base_url"], timeout=120.0, limits=limits, trust_env=False
    ) as client:
        answer = await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(spec["client_id"], os.environ[ENV_CLIENT_SECRET]),
        )
        answer.raise_for_status()
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

        async def page(number: int) -> dict[str, Any]:
            async with gate:
                response = await client.get(
                    "/api/v2/records", params={"page": number, "per_page": page_size}
                )
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                return body

        fetch_started = time.perf_counter()
        first = await page(1)
        total_pages = max(1, math.ceil(first["pagination"]["total"] / page_size))
        rest = await asyncio.gather(*(page(n) for n in range(2, total_pages + 1)))
        records = [item for body in (first, *rest) for item in body["data"]]
        fetch_seconds = time.perf_counter() - fetch_started

        selected = [r for r in records if r["status"] == "pending" and r["age_days"] > 30]

        async def send(chunk: list[dict[str, Any]]) -> dict[str, Any]:
            async with gate:
                response = await client.patch(
                    "/api/v2/records/batch",
                    json={"records": chunk},
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
                response.raise_for_status()
                receipt: dict[str, Any] = response.json()
                return receipt

        batch_started = time.perf_counter()
        chunks = [selected[i : i + chunk_size] for i in range(0, len(selected), chunk_size)]
        receipts = await asyncio.gather(*(send(chunk) for chunk in chunks))
        batch_seconds = time.perf_counter() - batch_started

        response = await client.get(
            "/api/v2/records/batch/status",
            params=[("batch_id", receipt["batch_id"]) for receipt in receipts],
        )
        response.raise_for_status()
        verification = response.json()

    return {
        "updated": sum(receipt["updated"] for receipt in receipts),
        "verified": verification["verified"],
        "records_fetched": len(records),
        "phases": {
            "fetch": phase(fetch_seconds, total_pages, len(records)),
            "batch": phase(batch_seconds, len(chunks), len(selected)),
        },
    }


def main() -> None:
    """Run the saturating client once and write the result."""
    spec = read_spec()
    started = time.perf_counter()
    result = asyncio.run(_run(spec))
    result["inner_seconds"] = round(time.perf_counter() - started, 4)
    write_result(spec, result)


if __name__ == "__main__":
    main()
