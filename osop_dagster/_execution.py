"""Runs one planned OSOP node through the resource that carries its semantics."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import dagster as dg
import pydantic

from osop_dagster.errors import OsopConfigError
from osop_dagster.model import OsopNode
from osop_dagster.resources._redaction import mask_url

_ROOT_RUN_TAG: Final = "dagster/root_run_id"

RESOURCE_KEYS: Final = {"api": "osop_http", "cli": "osop_shell", "db": "osop_postgres"}
"""Resource key of each runnable node type."""


@dataclass(frozen=True)
class NodePlan:
    """Everything fixed at definition time about running one node."""

    workflow_id: str
    node: OsopNode
    runtime: pydantic.BaseModel
    token_input: str | None
    """The input holding the access token lease, for ``bearer_token`` nodes."""
    auth: str | None
    secret_ref: str | None
    receipt_input: str | None = None
    """The input holding a batch write's receipt, when the node asks about its batches."""
    token_node: tuple[str, pydantic.BaseModel] | None = None
    """Id and runtime of the ``oauth2`` node whose token this node presents."""


@dataclass(frozen=True)
class NodeResult:
    """A node's output value and the metadata its materializations carry."""

    value: Any
    metadata: dict[str, Any]


def execute_node(
    context: dg.AssetExecutionContext, plan: NodePlan, inputs: Mapping[str, Any]
) -> NodeResult:
    """Runs ``plan``'s node with its resolved ``inputs`` and returns its output."""
    from osop_dagster.resources.http import RetrySettings

    node = plan.node
    resource = getattr(context.resources, RESOURCE_KEYS[node.type])
    log = context.log

    if node.type == "api":
        retry = RetrySettings.from_node(node.retry_policy, node.timeout_sec)
        if plan.auth == "oauth2" and plan.secret_ref:
            result = resource.authenticate(
                node_id=node.id,
                runtime=plan.runtime,
                secret_ref=plan.secret_ref,
                timeout_sec=node.timeout_sec,
                retry=retry,
                log=log,
            )
        elif plan.receipt_input and not _batch_ids(inputs.get(plan.receipt_input)):
            # Nothing was sent, so there is nothing to ask about: an empty day is not a failure.
            log.info("Node %r: the batch sent nothing, so there is nothing to verify.", node.id)
            return NodeResult(
                value={"skipped": True, "reason": "the batch sent nothing", "batch_ids": []},
                metadata={},
            )
        else:
            token = inputs[plan.token_input] if plan.token_input else None
            if token is not None and plan.token_node is not None:
                _check_token_url(resource, plan, token)
            data_inputs = {
                name: value for name, value in inputs.items() if name != plan.token_input
            }
            result = resource.call(
                node_id=node.id,
                runtime=plan.runtime,
                inputs=data_inputs,
                token=token,
                timeout_sec=node.timeout_sec,
                retry=retry,
                idempotency_prefix=_idempotency_prefix(context, plan),
                log=log,
                # Pages are encoded as they arrive: the records never sit in memory as objects.
                as_text=len(node.output_names) == 1,
            )
    elif node.type == "cli":
        result = resource.run(
            node_id=node.id,
            runtime=plan.runtime,
            inputs=inputs,
            timeout_sec=node.timeout_sec,
            log=log,
        )
    else:
        result = resource.write_audit(
            node_id=node.id,
            workflow_id=plan.workflow_id,
            run_id=context.run.run_id,
            runtime=plan.runtime,
            inputs=inputs,
            log=log,
        )
    return NodeResult(value=result.value, metadata=dict(result.metadata))


def _check_token_url(resource: Any, plan: NodePlan, lease: Mapping[str, Any]) -> None:
    """Refuses a lease whose token endpoint is not the one the workflow's token node asks.

    A renewal sends the client credentials to the lease's token URL, and the lease is read
    from asset storage: it must not be able to send them anywhere else.
    """
    assert plan.token_node is not None  # checked by the caller
    token_node_id, token_runtime = plan.token_node
    expected = resource.token_url(node_id=token_node_id, runtime=token_runtime)
    if isinstance(lease, Mapping) and lease.get("token_url") == expected:
        return
    found = lease.get("token_url") if isinstance(lease, Mapping) else None
    raise OsopConfigError(
        f"Node {plan.node.id!r}: the access token it received names the token endpoint "
        f"{mask_url(str(found))!r}, but node {token_node_id!r} asks {mask_url(expected)!r}; "
        f"client credentials are sent only to the workflow's own endpoint. Materialize "
        f"{token_node_id!r} again."
    )


def _idempotency_prefix(context: dg.AssetExecutionContext, plan: NodePlan) -> str:
    """The prefix of the node's idempotency keys: the same for a run and its re-executions.

    Re-executions and recovery runs share their failed run's root run id, so a chunk that run
    already applied is answered from the server's record; an unrelated later run sending the
    same records gets keys of its own.
    """
    root = context.run.tags.get(_ROOT_RUN_TAG, context.run.run_id)
    return f"{plan.workflow_id}/{plan.node.id}/{root}"


def _batch_ids(receipt: Any) -> list[Any]:
    ids = receipt.get("batch_ids") if isinstance(receipt, Mapping) else None
    return ids if isinstance(ids, list) else []
