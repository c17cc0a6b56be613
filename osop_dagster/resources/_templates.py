"""``${input_name.path}`` templates in api node runtimes, resolved against the node's inputs."""

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

from osop_dagster.errors import OsopExecutionError
from osop_dagster.resources._api_runtime import TEMPLATE
from osop_dagster.resources._pagination import get_path

_MISSING: Final = object()


def resolve(path: str, inputs: Mapping[str, Any], node_id: str) -> Any:
    """The value a template path names: an input, then keys and list indexes inside it."""
    name, _, rest = path.partition(".")
    if name not in inputs and name == "inputs" and rest:
        # `${inputs.x}` is a spelling found in published OSOP files.
        name, _, rest = rest.partition(".")
    if name not in inputs:
        raise OsopExecutionError(
            f"Node {node_id!r}: the template ${{{path}}} names the input {name!r}, which the "
            f"node does not receive; its inputs are {sorted(inputs)!r}."
        )
    value = inputs[name]
    if rest:
        value = get_path(value, rest, _MISSING)
        if value is _MISSING:
            raise OsopExecutionError(
                f"Node {node_id!r}: the template ${{{path}}} found no value at {rest!r} in the "
                f"input {name!r}; check the path against what the upstream node produced."
            )
    return value


def render(value: Any, inputs: Mapping[str, Any], node_id: str) -> Any:
    """Replace templates in a value; a string that is one template takes the value whole."""
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value.strip())
        if whole:
            return resolve(whole.group(1).strip(), inputs, node_id)
        return render_text(value, inputs, node_id)
    if isinstance(value, Mapping):
        return {key: render(item, inputs, node_id) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, inputs, node_id) for item in value]
    return value


def render_text(text: str, inputs: Mapping[str, Any], node_id: str, *, quote: bool = False) -> str:
    """Replace templates inside a string with the text of their values.

    With ``quote``, each value is percent-encoded as one URL path segment, so that a value
    holding ``/`` or ``?`` cannot change which resource the URL names.
    """

    def text_of(match: re.Match[str]) -> str:
        value = resolve(match.group(1).strip(), inputs, node_id)
        rendered = value if isinstance(value, str) else json.dumps(value, default=str)
        return urllib.parse.quote(rendered, safe="") if quote else rendered

    return TEMPLATE.sub(text_of, text)


def render_query(
    query: Mapping[str, Any], inputs: Mapping[str, Any], node_id: str
) -> list[tuple[str, str]]:
    """Query parameters from the runtime's ``query``: lists repeat, ``None`` drops out."""
    params: list[tuple[str, str]] = []
    for name, template in query.items():
        value = render(template, inputs, node_id)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, Mapping | list):
                raise OsopExecutionError(
                    f"Node {node_id!r}: query parameter {name!r} got a nested value "
                    f"({type(item).__name__}); expected text, a number, a boolean or a list of "
                    "those. Point the template at a scalar field."
                )
            params.append((name, query_text(item)))
    return params


def query_text(value: Any) -> str:
    """A scalar as query or form text; booleans as JSON spells them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
