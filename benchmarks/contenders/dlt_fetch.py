"""dlt's ``rest_api`` source fetching the same pages; runs in its own virtualenv.

Only the fetch phase is compared: the resource is iterated directly, without a pipeline, so
dlt's normalisation and loading are not counted against it. The token comes from one plain
request before the clock starts; dlt then presents it as a bearer token.
"""

import os
import time
from typing import Any

import httpx
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from dlt.sources.rest_api import rest_api_source

from benchmarks._protocol import ENV_CLIENT_SECRET, phase, read_spec, write_result


def main() -> None:
    """Walk every page once through dlt and write the result."""
    spec = read_spec()
    answer = httpx.post(
        f"{spec['base_url']}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(spec["client_id"], os.environ[ENV_CLIENT_SECRET]),
        timeout=60.0,
        trust_env=False,
    )
    answer.raise_for_status()
    token = answer.json()["access_token"]

    started = time.perf_counter()
    endpoint: dict[str, Any] = {
        "path": "api/v2/records",
        "paginator": "header_link",
        "data_selector": "data",
    }
    if spec["page_size"]:
        endpoint["params"] = {"per_page": spec["page_size"]}
    source = rest_api_source(
        {
            "client": {"base_url": spec["base_url"], "auth": BearerTokenAuth(token)},
            "resources": [{"name": "records", "endpoint": endpoint}],
        }
    )
    fetched = 0
    for item in source.resources["records"]:
        fetched += len(item) if isinstance(item, list) else 1
    fetch_seconds = time.perf_counter() - started

    page_size = spec["page_size"] or 100
    write_result(
        spec,
        {
            "updated": 0,
            "verified": None,
            "records_fetched": fetched,
            "inner_seconds": round(fetch_seconds, 4),
            "phases": {"fetch": phase(fetch_seconds, -(-fetched // page_size), fetched)},
        },
    )


if __name__ == "__main__":
    main()
