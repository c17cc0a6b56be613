"""Load OSOP workflow files into :class:`~osop_dagster.model.OsopWorkflow`, strictly.

Loading reads the text with the strict parsers of :mod:`osop_dagster._strict_yaml`, validates it
against the typed model, then checks the graph. Every problem becomes a
:class:`~osop_dagster.errors.SpecProblem` naming the file, line, node or edge, what was expected
and what was found; they are raised together as one :class:`~osop_dagster.errors.OsopSpecError`.

Graph rules beyond the schema:

- Node ids are unique, and every edge (``to``, ``from``, switch cases, ``default_to``) names a node.
- The edges a run always follows (no ``when``, mode not in
  :data:`~osop_dagster.model.CONDITIONAL_EDGE_MODES`) form no cycle: such a cycle never ends.
  A loop closed by a conditional, loop, fallback, error or timeout edge is fine.
- Two nodes that a run always reaches never produce the same output. Nodes reached only through
  conditional edges are alternative branches and may produce the name another node produces.
- Every input of an executable node (``api``, ``cli``, ``db``) is produced by some node, or is
  declared by the file as a workflow parameter: a key of ``variables`` or a ``${name}``
  placeholder in some node's ``runtime``. Inputs of people and agents are context and free.
- No node needs, through its inputs, an output that depends on its own output.
- An executable node retries at most :data:`~osop_dagster.constants.MAX_NODE_RETRIES` times,
  a whole number, waits at most :data:`~osop_dagster.constants.MAX_NODE_BACKOFF_SEC` seconds
  between attempts, and has a ``timeout_sec`` above 0 and at most
  :data:`~osop_dagster.constants.MAX_NODE_TIMEOUT_SEC`: each of these could hold a run for ever.
"""

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from osop_dagster._strict_yaml import LineMap, Location, StrictYamlError, load_json, load_yaml
from osop_dagster.constants import (
    MAX_NODE_BACKOFF_SEC,
    MAX_NODE_RETRIES,
    MAX_NODE_TIMEOUT_SEC,
    MAX_WORKFLOW_FILE_BYTES,
    WORKFLOW_SUFFIXES,
)
from osop_dagster.errors import OsopSpecError, SpecProblem
from osop_dagster.model import OsopNode, OsopWorkflow

EXECUTABLE_NODE_TYPES: frozenset[str] = frozenset({"api", "cli", "db"})
"""Node types this product runs; their inputs must come from somewhere the file names."""

# More problems than this in one file only bury the first, which usually explains the rest.
MAX_PROBLEMS_PER_FILE = 20

_REQUIRED_TOP_KEYS = "'osop_version', 'id', 'name', 'nodes' and 'edges'"
_PLACEHOLDER = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}")
_TYPE_NAMES = {
    "string_type": "text (a string)",
    "int_type": "a whole number",
    "float_type": "a number",
    "number_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "typed_dict_type": "a mapping",
    "io_type": "a name or a mapping with a 'name' key",
}


def load_workflow(path: str | os.PathLike[str]) -> OsopWorkflow:
    """Load one workflow file (``.osop.yaml``, ``.osop.yml`` or ``.osop.json``).

    Example:
        >>> workflow = load_workflow("workflows/rest-api-workflow.osop.yaml")  # doctest: +SKIP
        >>> workflow.producers["access_token"]  # doctest: +SKIP
        'authenticate'

    Raises:
        OsopSpecError: The file cannot be read or is not a valid workflow; the message names
            every problem found, with its line.
    """
    source = os.fspath(path)
    try:
        size = os.stat(source).st_size
        if size > MAX_WORKFLOW_FILE_BYTES:
            raise OsopSpecError([_too_large(source, size)])
        # A device or a pipe reports size 0: read no more than the limit allows either way.
        with open(source, "rb") as handle:
            data = handle.read(MAX_WORKFLOW_FILE_BYTES + 1)
        if len(data) > MAX_WORKFLOW_FILE_BYTES:
            raise OsopSpecError([_too_large(source, len(data))])
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OsopSpecError(
            [
                SpecProblem(
                    source,
                    None,
                    "",
                    f"the file cannot be read ({reason})",
                    "Check the path and the file's permissions.",
                )
            ]
        ) from None

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise OsopSpecError(
            [
                SpecProblem(
                    source,
                    line,
                    "",
                    f"the file is not UTF-8 text: byte {data[error.start]:#04x} cannot be decoded",
                    "Save the file as UTF-8.",
                )
            ]
        ) from None
    return load_workflow_text(text, path=source)


def load_workflow_text(text: str, *, path: str) -> OsopWorkflow:
    """Load a workflow from text; ``path`` names it in messages and picks JSON or YAML.

    Raises:
        OsopSpecError: The text is not a valid workflow.
    """
    size = len(text.encode("utf-8"))
    if size > MAX_WORKFLOW_FILE_BYTES:
        raise OsopSpecError([_too_large(path, size)])

    parse = load_json if path.lower().endswith(".json") else load_yaml
    try:
        data, lines = parse(text)
    except StrictYamlError as error:
        raise OsopSpecError([SpecProblem(path, error.line, "", error.message, error.fix)]) from None

    if data is None:
        raise OsopSpecError(
            [
                SpecProblem(
                    path,
                    None,
                    "",
                    f"the file is empty; expected a mapping with {_REQUIRED_TOP_KEYS}",
                    "Write the workflow into the file, or remove the file.",
                )
            ]
        )
    if not isinstance(data, dict):
        raise OsopSpecError(
            [
                SpecProblem(
                    path,
                    lines.get(()),
                    "",
                    f"expected a mapping with {_REQUIRED_TOP_KEYS} at the top of the file, "
                    f"got {_describe(data)}",
                )
            ]
        )

    context = {"source_path": path, "lines": lines}
    try:
        workflow = OsopWorkflow.model_validate(data, context=context)
    except ValidationError as error:
        raise OsopSpecError(_translate(error, data, lines, path)) from None

    problems = graph_problems(workflow)
    if problems:
        raise OsopSpecError(problems[:MAX_PROBLEMS_PER_FILE])
    return workflow


def workflow_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The workflow files directly inside a folder, sorted by name."""
    return sorted(
        (
            entry
            for entry in Path(folder).iterdir()
            if entry.is_file() and entry.name.lower().endswith(WORKFLOW_SUFFIXES)
        ),
        key=lambda entry: entry.name,
    )


def load_workflow_folder(
    folder: str | os.PathLike[str],
) -> tuple[list[OsopWorkflow], list[OsopSpecError]]:
    """Load every workflow file in a folder; a bad file never hides the good ones.

    Files are read in name order. A workflow whose id an earlier file already uses is refused.

    Returns:
        The valid workflows and one error per refused file.

    Raises:
        OsopSpecError: The folder itself cannot be read.
    """
    try:
        files = workflow_files(folder)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OsopSpecError(
            [
                SpecProblem(
                    os.fspath(folder),
                    None,
                    "",
                    f"the workflow folder cannot be read ({reason})",
                    "Check that the folder exists and is readable.",
                )
            ]
        ) from None

    workflows: list[OsopWorkflow] = []
    errors: list[OsopSpecError] = []
    owners: dict[str, str] = {}
    for file in files:
        try:
            workflow = load_workflow(file)
        except OsopSpecError as error:
            errors.append(error)
            continue
        if workflow.id in owners:
            problem = SpecProblem(
                workflow.source_path,
                workflow.line_of(("id",)),
                "",
                f"the workflow id {workflow.id!r} is already used by {owners[workflow.id]}",
                "Give every workflow file its own id.",
            )
            errors.append(OsopSpecError([problem]))
            continue
        owners[workflow.id] = workflow.source_path
        workflows.append(workflow)
    return workflows, errors


def _too_large(path: str, size: int) -> SpecProblem:
    return SpecProblem(
        path,
        None,
        "",
        f"the file holds {size} bytes, more than the {MAX_WORKFLOW_FILE_BYTES} a workflow file "
        "may hold",
        "Split the workflow, or check that this is the intended file.",
    )


# Graph rules.


def graph_problems(workflow: OsopWorkflow) -> list[SpecProblem]:
    """Problems of the workflow's graph that the schema cannot express; empty when sound."""
    problems = _node_and_edge_problems(workflow) + _limit_problems(workflow)
    if problems:
        # Later rules walk the graph, which needs unique ids and edges between known nodes.
        return problems
    problems += _cycle_problems(workflow)
    problems += _output_problems(workflow)
    problems += _input_problems(workflow)
    if not problems:
        problems += _data_cycle_problems(workflow)
    return problems


def _node_and_edge_problems(workflow: OsopWorkflow) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    first: dict[str, OsopNode] = {}
    for node in workflow.nodes:
        if node.id in first:
            earlier = first[node.id]
            problems.append(
                SpecProblem(
                    workflow.source_path,
                    workflow.line_of(("nodes", node.index, "id")),
                    f"node {node.index + 1}",
                    f"the node id {node.id!r} is already used by node {earlier.index + 1} "
                    f"(line {workflow.line_of(('nodes', earlier.index, 'id'))})",
                    "Give every node its own id.",
                )
            )
        else:
            first[node.id] = node

    for edge in workflow.edges:
        ends: list[tuple[Location, str]] = [(("from",), edge.from_node), (("to",), edge.to_node)]
        ends += [(("cases", i, "to"), case.to) for i, case in enumerate(edge.cases)]
        if edge.default_to is not None:
            ends.append((("default_to",), edge.default_to))
        for loc, node_id in ends:
            if node_id not in first:
                problems.append(
                    workflow.edge_problem(
                        edge,
                        loc,
                        f"'{loc[-1]}' names the node {node_id!r}, but no node has that id"
                        f"{_did_you_mean(node_id, first)}",
                        "Use the id of an existing node, or add the missing node.",
                    )
                )
    return problems


def _limit_problems(workflow: OsopWorkflow) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    for node in workflow.nodes:
        if node.type not in EXECUTABLE_NODE_TYPES:
            continue
        policy = node.retry_policy
        retries = None if policy is None else policy.max_retries
        # Comparing first keeps an infinite value away from int().
        if retries is not None and (retries > MAX_NODE_RETRIES or retries != int(retries)):
            problems.append(
                workflow.problem(
                    node.id,
                    ("retry_policy", "max_retries"),
                    f"retry_policy.max_retries is {retries!r}; expected a whole number from 0 to "
                    f"{MAX_NODE_RETRIES}, since every retry repeats the call and its wait",
                    f"Set max_retries to at most {MAX_NODE_RETRIES}; re-run the workflow later "
                    "to ride out a longer outage.",
                )
            )
        backoff = None if policy is None else policy.backoff_sec
        if backoff is not None and not backoff <= MAX_NODE_BACKOFF_SEC:
            problems.append(
                workflow.problem(
                    node.id,
                    ("retry_policy", "backoff_sec"),
                    f"retry_policy.backoff_sec is {backoff!r}; expected at most "
                    f"{MAX_NODE_BACKOFF_SEC} seconds between two attempts",
                    f"Set backoff_sec to {MAX_NODE_BACKOFF_SEC} or less.",
                )
            )
        timeout = node.timeout_sec
        if timeout is not None and not 0 < timeout <= MAX_NODE_TIMEOUT_SEC:
            problems.append(
                workflow.problem(
                    node.id,
                    ("timeout_sec",),
                    f"timeout_sec is {timeout!r}; expected a number of seconds above 0 and at "
                    f"most {MAX_NODE_TIMEOUT_SEC}, since a step without a time limit can hang "
                    "for ever",
                    "Set the time the step may take, e.g. timeout_sec: 60.",
                )
            )
    return problems


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """A cycle as a list of node ids (first repeated at the end), or None; no recursion."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in graph:
        if root in state:
            continue
        path = [root]
        stack = [iter(graph[root])]
        state[root] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return [*path[path.index(step) :], step]
            elif step not in state:
                state[step] = 1
                path.append(step)
                stack.append(iter(graph.get(step, [])))
    return None


def _cycle_problems(workflow: OsopWorkflow) -> list[SpecProblem]:
    graph: dict[str, list[str]] = {node.id: [] for node in workflow.nodes}
    for edge in workflow.edges:
        if not edge.is_conditional:
            graph[edge.from_node].append(edge.to_node)
    cycle = _find_cycle(graph)
    if cycle is None:
        return []

    closing = next(
        edge
        for edge in workflow.edges
        if not edge.is_conditional and (edge.from_node, edge.to_node) == (cycle[-2], cycle[-1])
    )
    return [
        workflow.edge_problem(
            closing,
            (),
            f"the edges {' -> '.join(cycle)} form a cycle that a run always follows, so it "
            "would never finish",
            "Remove one of these edges, or give the edge that goes back a 'when' condition or "
            "a mode such as loop, fallback or error.",
        )
    ]


def _output_problems(workflow: OsopWorkflow) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    conditional = workflow.conditionally_reached()
    for name, node_ids in workflow.all_producers.items():
        always = [node_id for node_id in node_ids if node_id not in conditional]
        for node_id in always[1:]:
            node = workflow.node(node_id)
            first = workflow.node(always[0])
            problems.append(
                workflow.problem(
                    node_id,
                    ("outputs", node.output_names.index(name)),
                    f"the output {name!r} is also produced by node {first.id!r} (line "
                    f"{workflow.line_of(('nodes', first.index, 'outputs'))}), and a run reaches "
                    "both nodes, so it is unclear which value later nodes get",
                    "Rename one of the outputs, or reach one node only through a conditional "
                    "edge if they are alternatives.",
                )
            )
    return problems


def _declared_parameters(workflow: OsopWorkflow) -> set[str]:
    names = set(workflow.variables or {})
    for node in workflow.nodes:
        for text in _strings(node.runtime):
            for token in _PLACEHOLDER.findall(text):
                names.update((token, token.rsplit(".", 1)[-1]))
    return names


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _input_problems(workflow: OsopWorkflow) -> list[SpecProblem]:
    produced = workflow.all_producers
    parameters = _declared_parameters(workflow)
    problems: list[SpecProblem] = []
    for node in workflow.nodes:
        if node.type not in EXECUTABLE_NODE_TYPES:
            continue
        for index, name in enumerate(node.input_names):
            if name in produced or name in parameters:
                continue
            problems.append(
                workflow.problem(
                    node.id,
                    ("inputs", index),
                    f"the input {name!r} is not an output of any node and not a workflow "
                    f"parameter{_did_you_mean(name, produced)}",
                    "Add it to the outputs of the node that makes it, or declare it under "
                    "'variables' if it is given when the workflow starts.",
                )
            )
    return problems


def _data_cycle_problems(workflow: OsopWorkflow) -> list[SpecProblem]:
    producers = workflow.producers
    graph: dict[str, list[str]] = {
        node.id: [producers[name] for name in node.input_names if name in producers]
        for node in workflow.nodes
    }
    cycle = _find_cycle(graph)
    if cycle is None:
        return []
    # The graph points from consumer to producer; show it in the order data flows.
    flow = list(reversed(cycle))
    return [
        workflow.problem(
            cycle[0],
            ("inputs",),
            f"the inputs and outputs of nodes {' -> '.join(flow)} depend on each other in a "
            "circle, so no node of the circle can start",
            "Remove one of these inputs, or produce it from a node outside the circle.",
        )
    ]


# Translation of validation errors into problems.


def _translate(
    error: ValidationError, data: dict[str, Any], lines: LineMap, path: str
) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    seen: set[tuple[int | None, str, str]] = set()
    for detail in error.errors(include_url=False):
        loc, missing = _real_location(detail["loc"], data, detail["type"])
        line_loc = loc
        context = detail.get("ctx") or {}
        if isinstance(context.get("key"), str):
            line_loc = (*loc, context["key"])
        line = _line_of(lines, line_loc)
        where = _where(loc, data)
        message, fix = _explain(detail, loc, missing)
        key = (line, where, message)
        if key not in seen:
            seen.add(key)
            problems.append(SpecProblem(path, line, where, message, fix))
    return problems[:MAX_PROBLEMS_PER_FILE]


def _real_location(loc: tuple[Any, ...], data: Any, kind: str) -> tuple[Location, str | None]:
    """Keep only the parts of a validation location that exist in the file's data.

    Union branch tags and internal names are dropped; for a missing key, its name is returned
    separately and the location stops at the object that lacks it.
    """
    real: list[str | int] = []
    current = data
    for part in loc:
        if isinstance(current, dict) and part in current:
            real.append(part)
            current = current[part]
        elif isinstance(current, dict) and part == "when" and "condition" in current:
            real.append("condition")
            current = current["condition"]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            real.append(part)
            current = current[part]
    missing = str(loc[-1]) if kind == "missing" and loc else None
    return tuple(real), missing


def _line_of(lines: LineMap, loc: Location) -> int | None:
    while loc not in lines and loc:
        loc = loc[:-1]
    return lines.get(loc)


def _where(loc: Location, data: dict[str, Any]) -> str:
    if len(loc) < 2 or loc[0] not in ("nodes", "edges") or not isinstance(loc[1], int):
        return ""
    item = data[loc[0]][loc[1]]
    if loc[0] == "nodes":
        node_id = item.get("id") if isinstance(item, dict) else None
        return f"node {node_id!r}" if isinstance(node_id, str) else f"node {loc[1] + 1}"
    if (
        isinstance(item, dict)
        and isinstance(item.get("from"), str)
        and isinstance(item.get("to"), str)
    ):
        return f"edge {loc[1] + 1} ({item['from']} -> {item['to']})"
    return f"edge {loc[1] + 1}"


def _field(loc: Location) -> str:
    """The name of the key at fault, e.g. ``'runtime.method'`` or ``'tags[2]'``."""
    # Inside a node or edge the prefix is already in the "where" part of the message.
    parts = loc[2:] if len(loc) >= 2 and loc[0] in ("nodes", "edges") else loc
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(choice) for choice in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(detail: Mapping[str, Any], loc: Location, missing: str | None) -> tuple[str, str]:
    kind = detail["type"]
    context = detail.get("ctx") or {}
    found = detail.get("input")
    field = _field(loc)
    subject = f"'{field}'" if field else "the workflow"

    if kind == "missing":
        owner = {"nodes": "the node", "edges": "the edge"}.get(str(loc[0]) if loc else "", "")
        owner = f"{subject}" if field else (owner or "the workflow")
        return f"{owner} has no {missing!r}, which is required", f"Add '{missing}: ...'."
    if kind == "unknown_key":
        allowed = ", ".join(context["allowed"])
        extra = " or a key starting with 'x-'" if context["x_allowed"] else ""
        where = f" in {subject}" if field else ""
        return (
            f"unknown key {context['key']!r}{where}; expected one of {allowed}{extra}"
            f"{_did_you_mean(context['key'], context['allowed'])}",
            "Fix the spelling, remove the key, or prefix it with 'x-' to keep it as an extension."
            if context["x_allowed"]
            else "Fix the spelling or remove the key.",
        )
    if kind == "literal_error":
        expected = context.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        return (
            f"{subject} must be one of {expected}, got {_describe(found)}"
            f"{_did_you_mean(found, choices)}",
            "Use one of the listed values.",
        )
    if kind in _TYPE_NAMES or kind.endswith("_type"):
        if kind == "string_type" and context.get("nested"):
            subject = f"'{field}.{context['nested']}'"
            found = found.get(context["nested"]) if isinstance(found, dict) else found
        expected = _TYPE_NAMES.get(kind, kind.removesuffix("_type"))
        fix = ""
        if kind == "string_type" and isinstance(found, bool | int | float):
            fix = "Put the value in quotes."
        elif kind == "list_type" and not isinstance(found, list):
            fix = "Write it as a list, e.g. one '- item' per line or [a, b]."
        return f"{subject} must be {expected}, got {_describe(found)}", fix
    if kind == "string_too_short":
        return f"{subject} must not be empty", "Write a value."
    if kind == "too_short":
        return (
            f"{subject} must list at least {context.get('min_length', 1)} item(s), got none",
            f"Add at least one entry under '{field}'.",
        )
    if kind == "string_pattern_mismatch" and field == "osop_version":
        return (
            f"'osop_version' must be a version such as '1.0' or '2.0.1', got {_describe(found)}",
            'Write the version as major.minor in quotes, e.g. osop_version: "2.0".',
        )
    if kind == "string_pattern_mismatch":
        return f"{subject} must match {context.get('pattern')!r}, got {_describe(found)}", ""
    if kind in ("greater_than_equal", "less_than_equal", "non_negative"):
        bound = context.get("ge", context.get("le", 0))
        relation = "at most" if kind == "less_than_equal" else "at least"
        return f"{subject} must be {relation} {bound}, got {_describe(found)}", ""
    if kind == "when_conflict":
        return (
            f"the edge has both 'when' ({context['when']!r}) and 'condition' "
            f"({context['condition']!r}), two different conditions",
            "Keep only one of them; 'condition' is the older spelling of 'when'.",
        )
    return f"{subject}: {detail['msg']}", ""
