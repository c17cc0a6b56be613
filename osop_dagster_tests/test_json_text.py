import datetime
import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from osop_dagster import _json_text
from osop_dagster._json_text import OUTSIDE_JSON, JsonText, decode, encode, resolve
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


def _typed(value: Any) -> Any:
    """``value`` with the exact type of every part spelled out (a marked float is no float)."""
    if isinstance(value, dict):
        return ("dict", [(key, _typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(item) for item in value])
    return (type(value).__name__, repr(value))


def _read_by_json(content: bytes) -> Any:
    try:
        value = json.loads(content, **OUTSIDE_JSON)
    except (ValueError, RecursionError) as error:
        return ("error", type(error).__name__)
    return _typed(value)


def _read_fast(content: bytes) -> Any:
    try:
        value = decode(content)
    except (ValueError, RecursionError) as error:
        return ("error", type(error).__name__)
    return _typed(value)


@pytest.mark.parametrize(
    "content",
    [
        b"[9223372036854775807, -9223372036854775808, 18446744073709551615]",
        b"[-9223372036854775809, 18446744073709551616, 123456789012345678901234567890]",
        b'{"id": "00000000000000000000001", "n": 1.2345678901234567890e5}',
        b"[1e400, -1e400, 1e-400, NaN, Infinity, -Infinity, -0, -0.0, 2.5e-324]",
        b'{"a": 1, "a": 2, "s": "\\ud800", "z": "\\u0000"}',
        b"\xef\xbb\xbf[1]",
        '{"é": 1}'.encode("utf-16"),
        b'{"a": "\xff"}',
        b"[1,]",
        b"[" * 1100 + b"]" * 1100,
        b"[" * 1000 + b"]" * 1000,
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
        b"[" * 300 + b"]" * 300,
        b"[" + b",".join([b'{"id":1,"tags":[]}'] * 600) + b"]",
        b"",
    ],
    ids=[
        "64-bit edges",
        "beyond 64 bits",
        "long digit runs that are not integers",
        "non-finite and tiny numbers",
        "repeated key and escapes",
        "byte order mark",
        "UTF-16",
        "invalid UTF-8",
        "trailing comma",
        "deep nesting",
        "nesting orjson reads but json does not",
        "objects nested as deep",
        "nesting both read",
        "many openings, shallow",
        "empty",
    ],
)
def test_outside_json_reads_as_json_with_the_marking_hooks(content: bytes) -> None:
    assert _read_fast(content) == _read_by_json(content)


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(value=_JSON_VALUES, ascii_only=st.booleans())
def test_outside_json_reads_any_json_text_as_json_does(value: Any, ascii_only: bool) -> None:
    content = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")

    assert _read_fast(content) == _read_by_json(content)


def test_a_text_above_the_fast_path_size_is_read_by_json_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_by_orjson: list[bytes] = []
    orjson_loads = _json_text.orjson.loads

    def counting_loads(content: bytes) -> Any:
        read_by_orjson.append(content)
        return orjson_loads(content)

    monkeypatch.setattr(_json_text, "FAST_DECODE_MAX_BYTES", 16)
    monkeypatch.setattr(_json_text.orjson, "loads", counting_loads)

    assert decode(b"[1, 2]") == [1, 2]
    assert decode(b'[{"id": 1, "status": "pending"}]') == [{"id": 1, "status": "pending"}]
    assert read_by_orjson == [b"[1, 2]"]
