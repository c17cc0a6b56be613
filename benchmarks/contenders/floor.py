"""The floor: the seed workflow's job as a plain script, no orchestration.

What a competent engineer would write by hand: one httpx client, pages fetched one after
another by following the ``Link: rel="next"`` header, the workflow's jq filter through the jq
binding, chunked PATCHes of the same size (each with an ``Idempotency-Key``, so that the server
does the same work as for osop_dagster), the status check, and one audit row through psycopg.
"""

import json
import os
import time
import uuid
from typing import Any

import httpx
import jq
import psycopg

from benchmarks._protocol import ENV_CLIENT_SECRET, JQ_FILTER, phase, read_spec, write_result


def main() -> None:
    """Run the job once, as the spec says, and write the result."""
    spec = read_spec()
    page_size: int | None = spec["page_size"]
    chunk_size: int = spec["batch_size"]
    started = time.perf_counter()

    with httpx.Client(base_url=spec["base_url"], timeout=120.0, trust_env=False) as client:
        answer = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(spec["client_id"], os.environ[ENV_CLIENT_SECRET]),
        )
        answer.raise_for_status()
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

        fetch_started = time.perf_counter()
        records: list[dict[str, Any]] = []
        pages = 0
        url: str | None = "/api/v2/records"
        params = {"per_page": page_size} if page_size else None
        while url is not None:
            response = client.get(url, params=params)
            response.raise_for_status()
            pages += 1
            records.extend(response.json()["data"])
            following = response.links.get("next")
            url = following["url"] if following else None
            params = None
        fetch_seconds = time.perf_counter() - fetch_started

        filter_started = time.perf_counter()
        selected = jq.compile(JQ_FILTER).input_value(records).first()
        filter_seconds = time.perf_counter() - filter_started

        batch_started = time.perf_counter()
        batch_ids: list[str] = []
        updated = 0
        for start in range(0, len(selected), chunk_size):
            response = client.patch(
                "/api/v2/records/batch",
                json={"records": selected[start : start + chunk_size]},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            response.raise_for_status()
            receipt = response.json()
            batch_ids.append(receipt["batch_id"])
            updated += receipt["updated"]
        batch_seconds = time.perf_counter() - batch_started

        status_started = time.perf_counter()
        response = client.get(
            "/api/v2/records/batch/status", params=[("batch_id", b) for b in batch_ids]
        )
        response.raise_for_status()
        verification = response.json()
        status_seconds = time.perf_counter() - status_started

    audit_started = time.perf_counter()
    figures = {
        "records": len(records),
        "selected": len(selected),
        "updated": updated,
        "verified": verification["verified"],
    }
    with psycopg.connect(spec["postgres_url"]) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor_audit "
            "(id bigserial PRIMARY KEY, figures jsonb NOT NULL)"
        )
        connection.execute(
            "INSERT INTO bench_floor_audit (figures) VALUES (%s) RETURNING id",
            (json.dumps(figures),),
        ).fetchone()
    audit_seconds = time.perf_counter() - audit_started

    write_result(
        spec,
        {
            "updated": updated,
            "verified": verification["verified"],
            "records_fetched": len(records),
            "records_json_bytes": len(json.dumps(records, separators=(",", ":")).encode()),
            "inner_seconds": round(time.perf_counter() - started, 4),
            "phases": {
                "fetch": phase(fetch_seconds, pages, len(records)),
                "filter": phase(filter_seconds, 0, len(records)),
                "batch": phase(batch_seconds, len(batch_ids), len(selected)),
                "status": phase(status_seconds, 1, verification["records_checked"]),
                "audit": phase(audit_seconds, 0, 1),
            },
        },
    )


if __name__ == "__main__":
    main()
