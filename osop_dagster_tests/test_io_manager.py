import json
from pathlib import Path

import dagster as dg
import pytest

from osop_dagster._json_text import JsonText
from osop_dagster.constants import META_LOAD_AS_TEXT
from osop_dagster.io_manager import OsopJsonIOManager


@dg.asset(key=["flow", "records"])
def records() -> list[dict[str, object]]:
    return [{"id": 1, "title": "café"}, {"id": 2, "title": None}]


@dg.asset(key=["flow", "count"], ins={"rows": dg.AssetIn(key=["flow", "records"])})
def count(rows: list[dict[str, object]]) -> int:
    return len(rows)


@dg.asset(key=["flow", "unstorable"])
def unstorable() -> object:
    return {"when": object()}


def test_values_round_trip_as_compact_json_files(tmp_path: Path) -> None:
    manager = OsopJsonIOManager(base_dir=str(tmp_path))
    result = dg.materialize([records, count], resources={"io_manager": manager})

    assert result.success
    assert result.asset_value(["flow", "count"]) == 2
    stored = (tmp_path / "flow" / "records.json").read_text(encoding="utf-8")
    assert stored == '[\n{"id":1,"title":"café"},{"id":2,"title":null}\n]'
    assert json.loads((tmp_path / "flow" / "count.json").read_text()) == 2
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind


def test_a_value_that_is_not_json_fails_and_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "flow" / "unstorable.json"
    target.parent.mkdir(parents=True)
    target.write_text('{"previous":true}')
    manager = OsopJsonIOManager(base_dir=str(tmp_path))

    with pytest.raises(Exception, match="cannot be stored as JSON"):
        dg.materialize([unstorable], resources={"io_manager": manager})
    assert target.read_text() == '{"previous":true}'


def test_default_location_is_the_instance_storage(tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize(
            [records], instance=instance, resources={"io_manager": OsopJsonIOManager()}
        )
        assert result.success
        assert (Path(instance.storage_directory()) / "osop" / "flow" / "records.json").is_file()


@dg.asset(
    key=["flow", "raw"],
    ins={"rows": dg.AssetIn(key=["flow", "records"], metadata={META_LOAD_AS_TEXT: True})},
)
def raw(rows: JsonText) -> int:
    assert isinstance(rows, JsonText)
    return len(rows.data)


def test_an_input_that_asks_for_text_gets_the_stored_bytes(tmp_path: Path) -> None:
    manager = OsopJsonIOManager(base_dir=str(tmp_path))
    result = dg.materialize([records, raw], resources={"io_manager": manager})

    stored = (tmp_path / "flow" / "records.json").read_bytes()
    assert result.asset_value(["flow", "raw"]) == len(stored)
    assert JsonText(stored).value() == records()


def test_long_lists_are_written_a_run_of_items_to_a_line_and_read_back_whole(
    tmp_path: Path,
) -> None:
    """Every newline of a stored list lies between two items; the file stays plain JSON."""
    items = [{"id": n, "note": "line\nbreak" if n % 2 else None} for n in range(2500)]
    text = JsonText.from_list(items, run_items=1000)

    assert [run.count(b'"id"') for run in text.runs() or []] == [1000, 1000, 500]
    assert json.loads(text.data) == items
    assert JsonText(text.data).runs() == text.runs()
    assert text.size() == len(text.data)


def test_text_of_a_stored_list_comes_back_in_the_same_runs(tmp_path: Path) -> None:
    @dg.asset(key=["flow", "many"])
    def many() -> list[int]:
        return list(range(2500))

    @dg.asset(ins={"rows": dg.AssetIn(key=["flow", "many"], metadata={META_LOAD_AS_TEXT: True})})
    def run_lengths(rows: JsonText) -> list[int]:
        return [run.count(b",") + 1 for run in rows.runs() or []]

    manager = OsopJsonIOManager(base_dir=str(tmp_path))
    result = dg.materialize([many, run_lengths], resources={"io_manager": manager})

    assert result.asset_value("run_lengths") == [1000, 1000, 500]
    assert json.loads((tmp_path / "flow" / "many.json").read_bytes()) == list(range(2500))


@pytest.mark.parametrize("value", [[], {"a": [1, 2]}, "text", None])
def test_values_that_are_not_long_lists_read_back_as_text_unchanged(
    tmp_path: Path, value: object
) -> None:
    @dg.asset(key=["flow", "value"])
    def stored() -> object:
        return value

    @dg.asset(ins={"doc": dg.AssetIn(key=["flow", "value"], metadata={META_LOAD_AS_TEXT: True})})
    def echoed(doc: JsonText) -> object:
        return doc.value()

    manager = OsopJsonIOManager(base_dir=str(tmp_path))
    result = dg.materialize([stored, echoed], resources={"io_manager": manager})

    assert result.asset_value("echoed") == value


def test_a_stored_value_loads_outside_a_run_from_the_instance_storage(tmp_path: Path) -> None:
    """Definitions.load_asset_value works with the default location too."""
    defs = dg.Definitions(assets=[records], resources={"io_manager": OsopJsonIOManager()})
    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:
        assert dg.materialize([records], instance=instance, resources=defs.resources).success

        loaded = defs.load_asset_value(["flow", "records"], instance=instance)

    assert loaded == records()
