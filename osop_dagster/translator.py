"""Maps OSOP workflows and nodes to the Dagster vocabulary: asset keys, groups, kinds, owners."""

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

from osop_dagster import constants
from osop_dagster.model import OsopEdge, OsopNode, OsopWorkflow

# Dagster accepts letters, digits and underscores in group and op names; tag keys and values
# allow dots and dashes too, and at most 63 characters.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_TAG_MAX = 63
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def python_name(text: str) -> str:
    """Turns an OSOP id such as ``rest-api-workflow`` into a Dagster name, ``rest_api_workflow``."""
    name = _NAME_UNSAFE.sub("_", text).strip("_") or "unnamed"
    return f"_{name}" if name[0].isdigit() else name


def _tag_text(text: str) -> str:
    return _TAG_UNSAFE.sub("_", text).strip("_.-")[:_TAG_MAX]


class OsopTranslator:
    """Decides how OSOP workflows and nodes appear in Dagster.

    Subclass it and override a ``get_*`` method to change one aspect, for example to put every
    workflow's assets under a common key prefix, then pass the instance to
    :func:`~osop_dagster.build_osop_definitions`.
    """

    def get_asset_key(self, workflow: OsopWorkflow, node: OsopNode, output: str) -> dg.AssetKey:
        """The key of the asset holding ``output``: ``[workflow id, output name]``.

        A node without outputs gets one asset, named after the node; ``output`` is then the node
        id. When alternative branches produce the same output, the branch a run always reaches
        (or else the first in the file) owns that key, and the others are keyed
        ``[workflow id, node id, output name]``.
        """
        owner = workflow.producers.get(output, node.id)
        if owner != node.id:
            return dg.AssetKey([workflow.id, node.id, output])
        return dg.AssetKey([workflow.id, output])

    def get_group_name(self, workflow: OsopWorkflow) -> str:
        """One asset group per workflow, named after its id."""
        return python_name(workflow.id)

    def get_op_name(self, workflow: OsopWorkflow, node: OsopNode) -> str:
        """The name of the Dagster op that runs ``node``."""
        return f"{python_name(workflow.id)}__{python_name(node.id)}"

    def get_job_name(self, workflow: OsopWorkflow) -> str:
        """The name of the job that materializes every runnable asset of the workflow."""
        return f"{python_name(workflow.id)}_job"

    def get_sensor_name(self, workflow: OsopWorkflow, edge: OsopEdge) -> str:
        """The name of the sensor that runs an error or fallback edge."""
        return (
            f"{python_name(workflow.id)}__{python_name(edge.from_node)}_{edge.mode}_to_"
            f"{python_name(edge.to_node)}_{edge.index + 1}"
        )

    def get_description(self, node: OsopNode, not_runnable_reason: str | None) -> str:
        """The node's purpose, description and explanation, and why it cannot run, if it cannot."""
        parts = [node.purpose]
        if node.description:
            parts.append(node.description)
        explain = node.explain
        if isinstance(explain, str):
            parts.append(explain)
        elif explain is not None:
            parts.extend(text for text in (explain.what, explain.why, explain.result) if text)
        if not_runnable_reason:
            parts.append(f"Not materializable: {not_runnable_reason}")
        return "\n\n".join(parts)

    def get_kinds(self, node: OsopNode) -> set[str]:
        """Kinds shown as badges: the node type plus the engine or program that runs it."""
        kinds = {node.type}
        runtime = node.runtime or {}
        engine = runtime.get("engine")
        if isinstance(engine, str) and engine:
            kinds.add(engine.lower())
        command = runtime.get("command")
        if node.type == "cli" and isinstance(command, str) and command.split():
            kinds.add(command.split()[0].rsplit("/", 1)[-1].lower())
        if node.type == "api":
            kinds.add("http")
        # Dagster shows at most three kinds per asset.
        return set(sorted(kinds)[:3])

    def get_owners(self, workflow: OsopWorkflow, node: OsopNode) -> list[str]:
        """Owners from the node or the workflow; a plain name becomes a Dagster team."""
        owner = node.owner or workflow.owner
        if not owner:
            return []
        if _EMAIL.match(owner):
            return [owner]
        team = python_name(owner)
        return [f"team:{team}"]

    def get_run_tags(self, workflow: OsopWorkflow) -> dict[str, str]:
        """Tags of the workflow's runs and ops, so that runs can be filtered by workflow."""
        return {constants.TAG_WORKFLOW_ID: _tag_text(workflow.id)}

    def get_tags(self, workflow: OsopWorkflow, node: OsopNode) -> dict[str, str]:
        """The workflow's tags as Dagster tags, plus the workflow id."""
        tags = self.get_run_tags(workflow)
        for tag in workflow.tags or []:
            key = _tag_text(tag)
            if key:
                tags[key] = ""
        return tags

    def get_metadata(self, workflow: OsopWorkflow, node: OsopNode) -> dict[str, Any]:
        """What a user browsing the lineage needs: node, method, endpoint, engine, source line.

        Secrets never appear here: only the runtime keys listed below are copied, and URLs lose
        any user information they carry.
        """
        runtime: Mapping[str, Any] = node.runtime or {}
        metadata: dict[str, Any] = {
            constants.META_WORKFLOW_ID: workflow.id,
            constants.META_NODE_ID: node.id,
            constants.META_NODE_TYPE: node.type,
        }
        if isinstance(runtime.get("method"), str):
            metadata[constants.META_METHOD] = runtime["method"].upper()
        endpoint = _endpoint(runtime)
        if endpoint:
            metadata[constants.META_ENDPOINT] = endpoint
        if isinstance(runtime.get("engine"), str):
            metadata[constants.META_ENGINE] = runtime["engine"]
        if node.type == "cli" and isinstance(runtime.get("command"), str):
            metadata[constants.META_COMMAND] = runtime["command"]
        line = workflow.line_of(("nodes", node.index))
        with warnings.catch_warnings():
            # Code references are marked beta; one warning per node would flood every load.
            warnings.simplefilter("ignore", dg.BetaWarning)
            metadata["dagster/code_references"] = dg.CodeReferencesMetadataValue(
                code_references=[
                    dg.LocalFileCodeReference(
                        file_path=os.path.abspath(workflow.source_path),
                        line_number=line or 1,
                        label="OSOP node",
                    )
                ]
            )
        return metadata

    def get_code_version(self, node: OsopNode) -> str:
        """Changes whenever the node's definition in the file changes."""
        return node.definition_fingerprint()


def _endpoint(runtime: Mapping[str, Any]) -> str:
    url = runtime.get("url")
    endpoint = runtime.get("endpoint")
    base = url if isinstance(url, str) else ""
    path = endpoint if isinstance(endpoint, str) else ""
    # Drop "user:password@" so credentials written into a URL never reach the UI.
    base = re.sub(r"//[^/@]*@", "//", base)
    return f"{base.rstrip('/')}{path}" if base and path.startswith("/") else base + path
