import datetime
import json
from typing import Any

import httpx
import pytest

from osop_dagster._json_text import JsonText, encode, resolve
from osop_dagster.resources._oauth2 import decode_body


@pytest.mark.parametrize(
    "value",
    [
        {"id": 1, "title": "café ☕", "tags": ["a", None, True], "ratio": 0.1, "big": 1e300},
        [2**63 - 1, -(2**63), 2**70, -(2**90)],
        {1: "int key", "nested": {"deep": [{"x": 1.5}]}},
        'line\nbreak \u2028 and a lone quote "',
        None,
    ],
    ids=["record", "integers beyond 64 bits", "non-string keys", "text", "null"],
)
def test_encoding_matches_compact_json_exactly(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    assert encode(value) == expected


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_numbers_read_from_an_answer_are_refused_not_written_as_null(
    constant: str,
) -> None:
    body = decode_body(httpx.Response(200), f'{{"data": [{{"score": {constant}}}]}}'.encode())

    with pytest.raises(ValueError, match="Out of range float values"):
        encode(body)


def test_values_json_cannot_hold_are_refused() -> None:
    with pytest.raises(TypeError):
        encode({"when": datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)})
    with pytest.raises(TypeError):
        encode({"ids": {1, 2}})


def test_resolve_decodes_only_json_text() -> None:
    assert resolve(JsonText(b'{"a":[1,2]}')) == {"a": [1, 2]}
    assert resolve({"a": 1}) == {"a": 1}
    listed = JsonText.from_runs([b"1,2", b"", b"3"])
    assert listed.data == b"[\n1,2,\n3\n]" and listed.value() == [1, 2, 3]
    assert repr(listed) == "JsonText(10 bytes)"
