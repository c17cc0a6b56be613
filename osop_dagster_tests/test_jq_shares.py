import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from osop_dagster._json_text import JsonText
from osop_dagster.constants import META_DURATION_MS
from osop_dagster.errors import OsopShellError
from osop_dagster.resources._jq_shares import maps_each_item, plan_shares
from osop_dagster.resources.shell import CliRuntime, OsopShellResource

LOG = logging.getLogger("osop_dagster_tests.jq_shares")
SEED_FILTER = '[.[] | select(.status == "pending" and .age_days > 30)]'


@pytest.mark.parametrize(
    "filter_text",
    [
        SEED_FILTER,
        "map(.id)",
        '[ .[] | select(.note == "]") | {id, note: "[x"} ]',
        "[.[] | .tags[] | ascii_upcase]",
        "[.[] | first(.a, .b)]",
    ],
)
def test_filters_that_see_one_item_at_a_time_are_split(filter_text: str) -> None:
    assert maps_each_item(filter_text)


@pytest.mark.parametrize(
    "filter_text",
    [
        "[.[] | .a] | length",
        "[.[] | .a] + [.[] | .b]",
        "map(.a) + [1]",
        ".[]",
        "[.[] | input]",
        "[.[] | debug]",
        "[.[] | $__loc__]",
        '[.[] | "id \\(.id)"]',
        "[.[] | .a # a comment ]\n]",
        '[.[] | "unclosed]',
        "length",
    ],
)
def test_other_filters_run_whole(filter_text: str) -> None:
    assert not maps_each_item(filter_text)


def test_shares_keep_every_run_in_order_in_a_multiple_of_the_processes() -> None:
    lengths = [100 + 37 * n for n in range(50)]

    shares = plan_shares(lengths, processes=2)

    assert [index for share in shares for index in share] == list(range(50))
    assert len(shares) % 2 == 0
    sizes = [sum(lengths[index] for index in share) for share in shares]
    assert max(sizes) <= 2 * min(sizes)


def test_a_stored_list_is_read_a_share_at_a_time(tmp_path: Path) -> None:
    """A file-backed text reads only the runs asked for; the file may be replaced meanwhile."""
    items = records(2_500)
    path = tmp_path / "records.json"
    path.write_bytes(JsonText.from_list(items, run_items=1000).data)

    stored = JsonText.from_file(path)
    # The IO manager replaces a file as a whole when the asset is written again.
    (tmp_path / "next.json").write_bytes(b"[]")
    os.replace(tmp_path / "next.json", path)

    assert stored.run_lengths() is not None and len(stored.run_lengths() or []) == 3
    assert json.loads(stored.share(1, 3)) == items[1000:]
    assert json.loads(stored.share(0, 1)) == items[:1000]
    assert stored.value() == items
    assert stored.size() == len(stored.data)


def records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": n,
            "status": ("pending", "done", "processed", "pending")[n % 4],
            "age_days": n % 90 if n % 1000 else str(n % 90),
            "note": f'record {n} with a note, a quote " and a newline \n',
        }
        for n in range(count)
    ]


def run_jq(filter_text: str, document: Any, processes: int, **resource: Any) -> Any:
    shell = OsopShellResource(jq_processes=processes, **resource)
    return shell.run(
        node_id="filter",
        runtime=CliRuntime(command=f"jq '{filter_text}'"),
        inputs={"records_list": document},
        timeout_sec=60,
        log=LOG,
    )


@pytest.mark.parametrize("filter_text", [SEED_FILTER, "map(.id)", "[.[] | .id, .status]"])
def test_shares_give_what_one_process_gives(filter_text: str, tmp_path: Path) -> None:
    """Value, counts and type census are those of the whole list in one process."""
    path = tmp_path / "records.json"
    path.write_bytes(JsonText.from_list(records(20_000), run_items=500).data)
    text = JsonText.from_file(path)
    assert text.size() > 1024 * 1024

    split = run_jq(filter_text, text, processes=2)
    whole = run_jq(filter_text, text, processes=1)

    assert isinstance(split.value, JsonText)
    assert split.value.value() == whole.value
    drop = {META_DURATION_MS}
    assert {k: v for k, v in split.metadata.items() if k not in drop} == {
        k: v for k, v in whole.metadata.items() if k not in drop
    }
    assert split.metadata["osop/mixed_type_fields"] == {"age_days": {"number": 19980, "string": 20}}


def test_the_first_failing_item_in_list_order_names_the_error() -> None:
    items = records(20_000)
    items[15_000]["id"] = "late"
    items[12_000]["id"] = {"early": True}
    text = JsonText.from_list(items, run_items=500)

    with pytest.raises(OsopShellError) as split:
        run_jq("map(.id + 1)", text, processes=2)
    with pytest.raises(OsopShellError) as whole:
        run_jq("map(.id + 1)", text, processes=1)

    assert str(split.value) == str(whole.value)
    assert "object" in str(split.value)


def test_shares_are_bounded_by_the_output_limit() -> None:
    text = JsonText.from_list(records(20_000), run_items=500)

    with pytest.raises(OsopShellError, match="produced more than 100000 bytes"):
        run_jq("map(.)", text, processes=2, max_output_bytes=100_000)


def test_the_stored_result_is_plain_json_in_the_line_layout() -> None:
    text = JsonText.from_list(records(20_000), run_items=500)

    result = run_jq("map(.id)", text, processes=2)

    assert isinstance(result.value, JsonText)
    assert json.loads(result.value.data) == list(range(20_000))
    assert result.value.data.startswith(b"[\n") and result.value.data.endswith(b"\n]")


def test_shares_that_never_end_are_killed_at_the_time_limit() -> None:
    text = JsonText.from_list(records(20_000), run_items=500)
    shell = OsopShellResource(jq_processes=2)

    with pytest.raises(OsopShellError, match="did not finish within 1 s"):
        shell.run(
            node_id="filter",
            runtime=CliRuntime(command="jq '[.[] | until(false; .)]'"),
            inputs={"records_list": text},
            timeout_sec=1,
            log=LOG,
        )


def test_a_failed_share_stops_the_shares_after_it() -> None:
    """The first item fails: a later share that would never end is stopped, not waited for."""
    text = JsonText.from_list(records(40_000), run_items=500)
    filter_text = (
        'map(if .id == 0 then error("first item is bad") '
        "elif .id > 30000 then until(false; .) else . end)"
    )
    shell = OsopShellResource(jq_processes=2)

    with pytest.raises(OsopShellError, match="first item is bad"):
        shell.run(
            node_id="filter",
            runtime=CliRuntime(command=f"jq '{filter_text}'"),
            inputs={"records_list": text},
            timeout_sec=60,
            log=LOG,
        )


def test_the_output_cap_counts_the_same_bytes_in_one_process_and_in_shares() -> None:
    """Text outside ASCII counts as UTF-8 either way, not as escapes in one of them."""
    items = [{"t": "漢字かな交じり文の記録" * 3, "n": n} for n in range(12_000)]
    text = JsonText.from_list(items, run_items=500)
    utf8_size = len(json.dumps([item["t"] for item in items], ensure_ascii=False).encode())
    cap = utf8_size + 10_000

    split = run_jq("map(.t)", text, processes=2, max_output_bytes=cap)
    whole = run_jq("map(.t)", text, processes=1, max_output_bytes=cap)

    assert split.value.value() == whole.value
