import json
import logging
import shlex
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from osop_dagster._json_text import JsonText
from osop_dagster.constants import (
    META_DURATION_MS,
    META_EXIT_CODE,
    META_MIXED_TYPE_FIELDS,
    META_RECORD_COUNT,
    META_RECORDS_IN,
)
from osop_dagster.errors import OsopShellError
from osop_dagster.resources import shell
from osop_dagster.resources.shell import CliRuntime, OsopShellResource, parse_jq_argv

SEED_COMMAND = "jq '[.[] | select(.status == \"pending\" and .age_days > 30)]'"
LOG = logging.getLogger("osop_dagster_tests.shell")
PYTHON = sys.executable


def run(
    command: str,
    inputs: dict[str, Any],
    *,
    resource: OsopShellResource | None = None,
    node_timeout: float | None = None,
    **runtime: Any,
) -> shell.ShellResult:
    return (resource or OsopShellResource()).run(
        node_id="step",
        runtime=CliRuntime(command=command, **runtime),
        inputs=inputs,
        timeout_sec=node_timeout,
        log=LOG,
    )


def python_command(code: str) -> str:
    return shlex.join([PYTHON, "-c", code])


def test_seed_filter_keeps_pending_records_older_than_30_days() -> None:
    records = [
        {"id": 1, "status": "pending", "age_days": 31},
        {"id": 2, "status": "pending", "age_days": 30},
        {"id": 3, "status": "done", "age_days": 90},
        {"id": 4, "status": "pending"},
        {"id": 5, "age_days": 45},
        {"id": 6, "status": "pending", "age_days": 30.5},
    ]

    result = run(SEED_COMMAND, {"records_list": records})

    assert [record["id"] for record in result.value] == [1, 6]
    assert result.metadata[META_RECORDS_IN] == 6
    assert result.metadata[META_RECORD_COUNT] == 2
    assert result.metadata[META_EXIT_CODE] == 0


def test_seed_filter_keeps_jq_type_order_and_reports_mixed_types() -> None:
    """Strings sort above numbers in jq; the data is reported, never "fixed"."""
    records = [
        {"id": 1, "status": "pending", "age_days": "9"},
        {"id": 2, "status": "pending", "age_days": 5},
        {"id": 3, "status": "pending", "age_days": None},
    ]

    result = run(SEED_COMMAND, {"records_list": records})

    assert result.value == [{"id": 1, "status": "pending", "age_days": "9"}]
    assert result.metadata[META_MIXED_TYPE_FIELDS] == {
        "age_days": {"string": 1, "number": 1, "null": 1}
    }


def test_seed_filter_on_empty_list_yields_empty_list() -> None:
    result = run(SEED_COMMAND, {"records_list": []})

    assert result.value == []
    assert result.metadata[META_RECORD_COUNT] == 0


def test_jq_stream_yields_list_single_result_yields_value_and_none_yields_null() -> None:
    assert run("jq '.[]'", {"x": [1, 2, 3]}).value == [1, 2, 3]
    assert run("jq '.[0]'", {"x": [1, 2, 3]}).value == 1
    assert run("jq 'empty'", {"x": [1]}).value is None


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("jq -c .", {"filter": ".", "compact": True}),
        ("jq -cr .a", {"filter": ".a", "compact": True, "raw_output": True}),
        ("jq --slurp -n 'input'", {"filter": "input", "slurp": True, "null_input": True}),
        ("jq --arg who bob '.'", {"filter": ".", "args": {"who": "bob"}}),
        ("jq --argjson n '[1,2]' '$n'", {"filter": "$n", "args": {"n": [1, 2]}}),
        ("jq -- -1", {"filter": "-1"}),
    ],
)
def test_jq_options_are_parsed(command: str, expected: dict[str, Any]) -> None:
    invocation = parse_jq_argv(shlex.split(command))

    for name, value in expected.items():
        assert getattr(invocation, name) == value


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("jq --tab .", "jq option '--tab' is not supported"),
        ("jq -S .", "jq option '-S' is not supported"),
        ("jq -x .", "jq option '-x' is not supported"),
        ("jq", "has no filter"),
        ("jq . records.json", "names input files ['records.json']"),
        ("jq --arg name", "needs a name and a value"),
        ("jq --argjson n '{bad' .", "--argjson n expects JSON, got '{bad'"),
        ("jq '.[", "cannot be split into words"),
        ("", "The command is empty"),
    ],
)
def test_bad_commands_fail_validation(command: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CliRuntime(command=command)

    assert fragment in str(caught.value)


def test_jq_arguments_reach_the_filter() -> None:
    records = [{"age": 10}, {"age": 40}]
    command = "jq --argjson min 30 --arg tag old '[.[] | select(.age > $min) | .tag = $tag]'"

    assert run(command, {"records": records}).value == [{"age": 40, "tag": "old"}]


def test_slurp_wraps_the_document_and_null_input_ignores_it() -> None:
    assert run("jq -s 'length'", {"doc": {"a": 1}}).value == 1
    assert run("jq -n '[1, 2]'", {"doc": {"a": 1}}).value == [1, 2]


def test_text_output_renders_like_jq() -> None:
    raw = run("jq -r '.[]'", {"doc": ["a", "b"]}, output_format="text")
    compact = run("jq -c '.'", {"doc": {"a": [1, 2]}}, output_format="text")

    assert raw.value == "a\nb\n"
    assert compact.value == '{"a":[1,2]}\n'


def test_jq_runtime_error_names_node_filter_and_message() -> None:
    with pytest.raises(OsopShellError) as caught:
        run("jq '.items[]'", {"doc": None})

    message = str(caught.value)
    assert "Node 'step'" in message
    assert "'.items[]'" in message
    assert "Cannot iterate over null" in message


def test_jq_compile_error_fails_validation() -> None:
    with pytest.raises(ValidationError, match=r"The jq filter '\.\[\] \|' does not compile"):
        CliRuntime(command="jq '.[] |'")


def test_compiled_filter_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_compile = shell.jq.compile

    def counting_compile(text: str, **kwargs: Any) -> Any:
        calls.append(text)
        return real_compile(text, **kwargs)

    shell.compile_jq.cache_clear()
    monkeypatch.setattr(shell.jq, "compile", counting_compile)
    command = "jq --argjson n 1 '[.[] | select(. > $n)]'"

    for values in ([1, 2], [3, 0], [5]):
        run(command, {"doc": values})

    assert calls == ["[.[] | select(. > $n)]"]
    run("jq --argjson n 2 '[.[] | select(. > $n)]'", {"doc": [3]})
    assert len(calls) == 2


def test_several_inputs_become_an_object_by_name_unless_one_is_chosen() -> None:
    inputs = {"a": [1], "b": {"x": 2}}

    assert run("jq '.b.x'", inputs).value == 2
    assert run("jq 'length'", inputs, input="a").value == 1


def test_unknown_runtime_input_fails_with_the_choices() -> None:
    with pytest.raises(OsopShellError, match=r"runtime.input names 'c', expected one of"):
        run("jq .", {"a": 1, "b": 2}, input="c")


def test_schema_runtime_keys_are_ignored_and_others_refused() -> None:
    assert CliRuntime(command="jq .", os="linux", image="x").command == "jq ."

    with pytest.raises(ValidationError, match="commandd"):
        CliRuntime(command="jq .", commandd="cat")


def test_program_not_allowed_is_refused() -> None:
    with pytest.raises(OsopShellError, match=r"program 'cat', which is not allowed"):
        run("cat", {"doc": [1]})


def test_allowed_program_reads_input_as_json_on_stdin() -> None:
    command = python_command(
        "import json, sys; records = json.load(sys.stdin); print(json.dumps(records[::-1]))"
    )
    resource = OsopShellResource(allowed_programs=[PYTHON])

    result = run(command, {"doc": [{"id": 1}, {"id": 2}]}, resource=resource)

    assert result.value == [{"id": 2}, {"id": 1}]
    assert result.metadata[META_EXIT_CODE] == 0
    assert result.metadata[META_RECORDS_IN] == 2


def test_record_data_is_never_on_the_command_line() -> None:
    secret_marker = "record-value-4f2a"
    command = python_command(
        "import json, sys; print(json.dumps({'argv': sys.argv, 'stdin': sys.stdin.read()}))"
    )
    resource = OsopShellResource(allowed_programs=[PYTHON])

    result = run(command, {"doc": [{"note": secret_marker}]}, resource=resource)

    assert result.value["argv"] == ["-c"]
    assert secret_marker not in json.dumps(result.value["argv"])
    assert json.loads(result.value["stdin"]) == [{"note": secret_marker}]


def test_cat_echoes_input_and_several_json_documents_become_a_list() -> None:
    resource = OsopShellResource(allowed_programs=["cat", PYTHON])
    printer = python_command("print(1); print('[2]'); print('{\"a\": 3}')")

    assert run("cat", {"doc": {"a": 1}}, resource=resource).value == {"a": 1}
    assert run(printer, {}, resource=resource).value == [1, [2], {"a": 3}]


def test_non_json_output_fails_unless_text_is_asked_for() -> None:
    resource = OsopShellResource(allowed_programs=[PYTHON])
    command = python_command("print('hello there')")

    with pytest.raises(OsopShellError, match="not JSON"):
        run(command, {}, resource=resource)
    assert run(command, {}, resource=resource, output_format="text").value == "hello there\n"


def test_non_zero_exit_reports_code_and_stderr_tail() -> None:
    command = python_command(
        "import sys; sys.stderr.write('x' * 5000 + 'the real cause'); sys.exit(3)"
    )

    with pytest.raises(OsopShellError) as caught:
        run(command, {}, resource=OsopShellResource(allowed_programs=[PYTHON]))

    message = str(caught.value)
    assert "exited with code 3" in message
    assert message.endswith("the real cause")
    assert message.count("x") <= shell.STDERR_TAIL_BYTES
    assert caught.value.metadata[META_EXIT_CODE] == 3


def test_timeout_kills_the_program() -> None:
    command = python_command("import time; time.sleep(30)")

    resource = OsopShellResource(allowed_programs=[PYTHON])

    with pytest.raises(OsopShellError, match=r"ran longer than 0\.5 s and was killed"):
        run(command, {}, resource=resource, node_timeout=0.5, timeout_sec=20)


def test_runtime_timeout_applies_when_node_sets_none() -> None:
    command = python_command("import time; time.sleep(30)")

    resource = OsopShellResource(allowed_programs=[PYTHON], default_timeout_sec=20)

    with pytest.raises(OsopShellError, match=r"ran longer than 0\.5 s"):
        run(command, {}, resource=resource, timeout_sec=0.5)


def test_output_over_the_cap_fails() -> None:
    command = python_command("import sys; sys.stdout.write('7' * 100000)")
    resource = OsopShellResource(allowed_programs=[PYTHON], max_output_bytes=1000)

    with pytest.raises(OsopShellError, match="printed more than 1000 bytes"):
        run(command, {}, resource=resource)


def test_missing_program_fails_with_a_sentence() -> None:
    resource = OsopShellResource(allowed_programs=["osop-no-such-program"])

    with pytest.raises(OsopShellError, match="could not start"):
        run("osop-no-such-program", {}, resource=resource)


def test_one_info_line_per_step(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOG.name):
        run(SEED_COMMAND, {"records_list": [{"status": "pending", "age_days": 40}]})

    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert len(lines) == 1
    assert "program jq (binding), exit code 0" in lines[0]


def test_numbers_written_as_strings_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    records = [{"status": "pending", "age_days": "9"}, {"status": "pending", "age_days": 40}]

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        run(SEED_COMMAND, {"records_list": records})

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "['age_days'] hold numbers in some records and strings in others" in warnings[0]


def test_jq_filter_that_never_ends_is_stopped_at_the_time_limit() -> None:
    """The binding cannot be interrupted, so the filter runs in a child that can be killed."""
    with pytest.raises(OsopShellError, match=r"did not finish within 0\.5 s"):
        run("jq -n 'last(range(1e15))'", {}, node_timeout=0.5)


def test_jq_output_over_the_cap_fails_the_step() -> None:
    resource = OsopShellResource(max_output_bytes=1000)
    with pytest.raises(OsopShellError, match="produced more than 1000 bytes"):
        run("jq -n '[range(100000)]'", {}, resource=resource)


@pytest.mark.parametrize(
    ("command", "document"),
    [
        (SEED_COMMAND, [{"id": 1, "status": "pending", "age_days": "9"}, {"id": 2, "age_days": 5}]),
        ("jq -s 'length'", {"a": 1}),
        ("jq '.[] | .id'", [{"id": "x"}, {"id": 2.5}, {"id": 12345678901234567890}]),
        ("jq -n '[1, 2]'", {"a": 1}),
    ],
    ids=["seed", "slurp", "stream", "null_input"],
)
def test_stored_json_text_gives_what_the_decoded_value_gives(command: str, document: Any) -> None:
    """A JsonText input goes to jq as text; results and figures equal the Python-value path."""
    text = JsonText(json.dumps(document, separators=(",", ":")).encode())

    from_value = run(command, {"records_list": document})
    from_text = run(command, {"records_list": text})

    assert from_text.value == from_value.value
    drop = {META_DURATION_MS}
    assert {k: v for k, v in from_text.metadata.items() if k not in drop} == {
        k: v for k, v in from_value.metadata.items() if k not in drop
    }


def test_a_program_gets_stored_json_text_on_stdin_unchanged() -> None:
    text = JsonText(b'{"b":1,"a":[true,null]}')
    echo = python_command("import sys; sys.stdout.write(sys.stdin.read())")

    resource = OsopShellResource(allowed_programs=[PYTHON])
    result = run(echo, {"doc": text}, resource=resource, output_format="text")

    assert result.value == '{"b":1,"a":[true,null]}'
