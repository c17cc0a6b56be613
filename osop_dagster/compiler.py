"""Compiles an OSOP workflow graph into Dagster assets, a job and schedules.

Every output of a node is one asset; a node with several outputs is one multi-asset, and a node
without outputs gets one asset named after it. Data dependencies come from ``inputs`` (each input
names the output of another node); edges that order execution without carrying data add plain
dependencies. Recovery edges (``error``, ``fallback``, ``timeout``) and ``loop`` back-edges do not
add dependencies: they describe what happens when a run goes wrong or repeats, not the order of a
healthy run.

Nodes whose semantics osop_dagster does not execute (``human``, ``agent``, ``git`` ...), nodes
lacking what they need to run, and everything downstream of them still appear in the lineage as
asset specs that cannot be materialized, with the reason in their description, so that any valid
OSOP file can be browsed.
"""

import dataclasses
import graphlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pydantic

from osop_dagster import constants
from osop_dagster._execution import RESOURCE_KEYS, NodePlan, execute_node
from osop_dagster._json_text import resolve
from osop_dagster._summary import summarise
from osop_dagster.errors import (
    OsopError,
    OsopExecutionError,
    OsopHttpError,
    OsopSpecError,
    SpecProblem,
)
from osop_dagster.model import OsopEdge, OsopNode, OsopWorkflow
from osop_dagster.resources.http import ApiRuntime
from osop_dagster.resources.postgres import POSTGRES_ENGINES, DbRuntime
from osop_dagster.resources.shell import CliRuntime
from osop_dagster.sensors import (
    RECOVERY_EDGE_MODES,
    RecoveryPlan,
    build_recovery_sensor,
    compile_condition,
    recovery_selection,
)
from osop_dagster.translator import OsopTranslator

RUNNABLE_NODE_TYPES = frozenset({"api", "cli", "db"})
ORDERING_EDGE_MODES = frozenset(
    {"sequential", "conditional", "parallel", "switch", "spawn", "event"}
)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CRON_KEYS = ("cron", "schedule")
_IDLE_EDGE_MODES = frozenset({"loop", "timeout"})
_DAGSTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")
REJECTION_CHECK = "no_rejected_records"
# Names pydantic gives the members of `X | Y` fields in error locations.
_UNION_MEMBER_NAMES = frozenset({"PaginationSettings", "BatchSettings", "str", "int", "dict"})
_REJECTED_IN_CHECK = 100


@dataclass(frozen=True)
class CompiledWorkflow:
    """What one workflow file contributes to a code location."""

    workflow: OsopWorkflow
    assets: list[dg.AssetsDefinition | dg.AssetSpec]
    # The type `dagster.define_asset_job` returns is not exported by `dagster`.
    job: Any
    """The workflow's job, or ``None`` when no node can be materialized."""
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]
    """One run-failure sensor per error or fallback edge between runnable nodes."""
    not_runnable: dict[str, str]
    """Node id -> why the node cannot be materialized."""


def build_osop_assets(
    workflow: OsopWorkflow, translator: OsopTranslator | None = None
) -> CompiledWorkflow:
    """Compiles one loaded workflow into assets, its job and its schedules.

    Args:
        workflow: A workflow returned by :func:`~osop_dagster.load_workflow`.
        translator: Decides keys, groups and descriptions; :class:`OsopTranslator` by default.

    Raises:
        OsopSpecError: A node's ``runtime`` or a trigger does not fit the vocabulary that
            osop_dagster executes, for example an unknown HTTP method.
    """
    translator = translator or OsopTranslator()
    upstream = dependency_graph(workflow)
    not_runnable = _find_not_runnable(workflow, upstream)
    plans, problems = _plan_runnable_nodes(workflow, not_runnable)
    problems.extend(_name_clashes(workflow, translator))
    schedules, schedule_problems = _build_schedules(workflow, translator)
    problems.extend(schedule_problems)
    recoveries, recovery_problems = _plan_recoveries(workflow, translator, plans, upstream)
    problems.extend(recovery_problems)
    gates, gate_problems = _plan_gates(workflow, plans)
    problems.extend(gate_problems)
    if problems:
        raise OsopSpecError(problems)

    assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
    runnable_keys: list[dg.AssetKey] = []
    for node in workflow.nodes:
        deps = [
            translator.get_asset_key(workflow, workflow.node(upstream_id), name)
            for upstream_id in upstream[node.id]
            for name in output_names(workflow.node(upstream_id))
        ]
        if node.id in plans:
            # Dagster builds outputs only from specs without deps (see `_node_asset`), so the
            # specs of a runnable node are made without them rather than copied without them.
            specs = _node_specs(workflow, node, translator, None, [])
            asset = _node_asset(
                workflow, node, plans[node.id], specs, deps, translator, gates.get(node.id, [])
            )
            assets.append(asset)
            runnable_keys.extend(spec.key for spec in specs)
        else:
            assets.extend(_node_specs(workflow, node, translator, not_runnable.get(node.id), deps))

    job = None
    if runnable_keys:
        job = dg.define_asset_job(
            name=translator.get_job_name(workflow),
            selection=dg.AssetSelection.assets(*runnable_keys),
            description=_job_description(workflow, plans),
            tags=translator.get_run_tags(workflow),
            executor_def=dg.in_process_executor,
        )
    sensors = [
        build_recovery_sensor(workflow, plan, job, translator.get_sensor_name(workflow, plan.edge))
        for plan in recoveries
        if job is not None
    ]
    if job is None:
        schedules = []
    return CompiledWorkflow(workflow, assets, job, schedules, sensors, not_runnable)


def output_names(node: OsopNode) -> list[str]:
    """The asset names of a node: its outputs, or its id when it declares none."""
    return list(node.output_names) or [node.id]


def _job_description(workflow: OsopWorkflow, plans: Mapping[str, NodePlan]) -> str:
    """What the job runs, and which edges of the file it does not execute."""
    idle = [
        f"{edge.describe()} ({edge.mode})"
        for edge in workflow.edges
        if edge.mode in _IDLE_EDGE_MODES
        or (
            edge.mode in RECOVERY_EDGE_MODES | {"conditional"}
            and (edge.from_node not in plans or edge.to_node not in plans)
        )
    ]
    text = f"Materializes the runnable assets of the OSOP workflow {workflow.name!r}."
    if idle:
        text += " These edges are drawn but not executed: " + "; ".join(idle) + "."
    return text


def _name_clashes(workflow: OsopWorkflow, translator: OsopTranslator) -> list[SpecProblem]:
    """Node ids that differ only in characters Dagster names cannot hold clash as op names."""
    problems = []
    seen: dict[str, OsopNode] = {}
    for node in workflow.nodes:
        name = translator.get_op_name(workflow, node)
        first = seen.setdefault(name, node)
        if first is not node:
            problems.append(
                workflow.problem(
                    node.id,
                    ("id",),
                    f"the node ids {first.id!r} and {node.id!r} both become the Dagster op name "
                    f"{name!r}",
                    fix="Rename one of them.",
                )
            )
    return problems


def _find_not_runnable(workflow: OsopWorkflow, upstream: Mapping[str, list[str]]) -> dict[str, str]:
    """Why each node that cannot be materialized cannot, visiting upstream nodes first."""
    reasons: dict[str, str] = {}
    for node_id in graphlib.TopologicalSorter(upstream).static_order():
        node = workflow.node(node_id)
        reason = _own_reason(workflow, node)
        if reason is None:
            for upstream_id in upstream[node_id]:
                if upstream_id in reasons:
                    reason = f"it depends on node {upstream_id!r}, which cannot be materialized."
                    break
        if reason is not None:
            reasons[node.id] = reason
    return reasons


def _own_reason(workflow: OsopWorkflow, node: OsopNode) -> str | None:
    if node.type not in RUNNABLE_NODE_TYPES:
        return (
            f"osop_dagster does not execute {node.type!r} nodes; they appear in the lineage only."
        )
    runtime = node.runtime or {}
    for name in node.input_names:
        if name not in workflow.producers:
            return f"its input {name!r} is not produced by any node of this workflow."
    if node.type == "api":
        url, endpoint = runtime.get("url"), runtime.get("endpoint")
        if not url and not (isinstance(endpoint, str) and "://" in endpoint):
            return "its runtime has no 'url' to call."
        auth = _auth(node)
        if auth not in (None, "none", "oauth2", "bearer_token"):
            # TODO(#4): API keys and HTTP Basic from secret references.
            return f"security.auth {auth!r} is not supported yet; use oauth2 or bearer_token."
        if auth == "oauth2" and not _secret_ref(node):
            return "security.auth is oauth2 but security.secret_ref names no credentials."
        if auth == "bearer_token" and _token_input(workflow, node) is None:
            return (
                "security.auth is bearer_token but no input is an access token of an oauth2 node."
            )
    if node.type == "cli" and not runtime.get("command"):
        return "its runtime has no 'command' to run."
    if node.type == "db" and str(runtime.get("engine", "")).lower() not in POSTGRES_ENGINES:
        engine = runtime.get("engine")
        return f"osop_dagster runs db nodes on engine 'postgres' only, not {engine!r}."
    return None


def _auth(node: OsopNode) -> str | None:
    return node.security.auth if node.security is not None else None


def _secret_ref(node: OsopNode) -> str | None:
    return node.security.secret_ref if node.security is not None else None


def _token_input(workflow: OsopWorkflow, node: OsopNode) -> str | None:
    for name in node.input_names:
        producer = workflow.producers.get(name)
        if producer is not None and _auth(workflow.node(producer)) == "oauth2":
            return name
    return None


def dependency_graph(workflow: OsopWorkflow) -> dict[str, list[str]]:
    """The upstream node ids of every node: producers of its inputs, then ordering edges.

    Data dependencies never form a cycle (the loader rejects that). An ordering edge that would
    close one, such as a conditional "rework" edge back to an earlier node, describes a
    repetition rather than an order and adds no dependency.
    """
    upstream: dict[str, list[str]] = {node.id: [] for node in workflow.nodes}
    for node in workflow.nodes:
        for name in node.input_names:
            producer = workflow.producers.get(name)
            if producer is not None and producer != node.id and producer not in upstream[node.id]:
                upstream[node.id].append(producer)

    for edge in workflow.edges:
        if edge.mode not in ORDERING_EDGE_MODES:
            continue
        for target in edge.targets():
            if target == edge.from_node or edge.from_node in upstream[target]:
                continue
            if target not in _ancestors(upstream, edge.from_node):
                upstream[target].append(edge.from_node)
    return upstream


def _ancestors(upstream: Mapping[str, list[str]], node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for parent in upstream[stack.pop()]:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _plan_runnable_nodes(
    workflow: OsopWorkflow, not_runnable: Mapping[str, str]
) -> tuple[dict[str, NodePlan], list[SpecProblem]]:
    """Validates the runtime vocabulary of every runnable node and plans its execution."""
    plans: dict[str, NodePlan] = {}
    problems: list[SpecProblem] = []
    for node in workflow.nodes:
        if node.id in not_runnable:
            continue
        model: type[pydantic.BaseModel] = {"api": ApiRuntime, "cli": CliRuntime, "db": DbRuntime}[
            node.type
        ]
        raw = dict(node.runtime or {})
        receipt_input = None
        if node.type == "api" and "query" not in raw:
            receipt_input = _receipt_input(workflow, node)
            if receipt_input is not None:
                raw["query"] = {"batch_id": f"${{{receipt_input}.batch_ids}}"}
        try:
            runtime = model.model_validate(raw)
        except pydantic.ValidationError as error:
            problems.extend(_runtime_problems(workflow, node, error, model))
            continue
        plans[node.id] = NodePlan(
            workflow_id=workflow.id,
            node=node,
            runtime=runtime,
            token_input=_token_input(workflow, node),
            auth=_auth(node),
            secret_ref=_secret_ref(node),
            receipt_input=receipt_input,
        )
    for node_id, plan in plans.items():
        producer = workflow.producers.get(plan.token_input or "")
        if producer in plans:
            token_node = (producer, plans[producer].runtime)
            plans[node_id] = dataclasses.replace(plan, token_node=token_node)
    return plans, problems


def _plan_recoveries(
    workflow: OsopWorkflow,
    translator: OsopTranslator,
    plans: Mapping[str, NodePlan],
    upstream: Mapping[str, list[str]],
) -> tuple[list[RecoveryPlan], list[SpecProblem]]:
    """One recovery plan per error or fallback edge whose two ends can run."""
    recoveries: list[RecoveryPlan] = []
    problems: list[SpecProblem] = []
    for edge in workflow.edges:
        if edge.mode not in RECOVERY_EDGE_MODES:
            continue
        if edge.from_node not in plans or edge.to_node not in plans:
            continue
        condition = _edge_condition(workflow, edge, problems) if edge.when else None
        if edge.when and condition is None:
            continue

        def keys(node_ids: Sequence[str]) -> list[dg.AssetKey]:
            return [
                translator.get_asset_key(workflow, workflow.node(node_id), output)
                for node_id in node_ids
                if node_id in plans
                for output in output_names(workflow.node(node_id))
            ]

        if edge.mode == "fallback":
            # The fallback takes the failed node's place: it runs, then what depends on it.
            rerun = _downstream(upstream, edge.to_node)
        else:
            # An error edge repairs a cause (a token), then the failed node runs again.
            rerun = [edge.from_node, *_downstream(upstream, edge.from_node)]
        recoveries.append(
            RecoveryPlan(
                workflow_id=workflow.id,
                edge=edge,
                condition=condition,
                source_step=translator.get_op_name(workflow, workflow.node(edge.from_node)),
                source_outputs=tuple(output_names(workflow.node(edge.from_node))),
                asset_selection=recovery_selection(keys([edge.to_node]), keys(rerun)),
            )
        )
    return recoveries, problems


def _plan_gates(
    workflow: OsopWorkflow, plans: Mapping[str, NodePlan]
) -> tuple[dict[str, list[tuple[OsopEdge, Any]]], list[SpecProblem]]:
    """The compiled conditions of the ``conditional`` edges into each runnable node."""
    gates: dict[str, list[tuple[OsopEdge, Any]]] = {}
    problems: list[SpecProblem] = []
    for edge in workflow.edges:
        if edge.mode != "conditional" or not edge.when:
            continue
        if edge.from_node not in plans or edge.to_node not in plans:
            continue
        program = _edge_condition(workflow, edge, problems)
        if program is not None:
            gates.setdefault(edge.to_node, []).append((edge, program))
    return gates, problems


def _edge_condition(workflow: OsopWorkflow, edge: OsopEdge, problems: list[SpecProblem]) -> Any:
    """The compiled CEL program of the edge's ``when``; ``None``, with a problem, if invalid."""
    try:
        return compile_condition(str(edge.when))
    except ValueError as error:
        problems.append(
            workflow.edge_problem(
                edge,
                ("when",),
                f"the condition {edge.when!r} is not valid CEL: {_first_line(error)}",
                fix="Write it in CEL, e.g. update_response.status == 401.",
            )
        )
        return None


def _first_line(error: Exception) -> str:
    return str(error).strip().split("\n")[0].rstrip(".")


def _downstream(upstream: Mapping[str, list[str]], node_id: str) -> list[str]:
    """Every node that depends on ``node_id``, upstream ones first."""
    order = graphlib.TopologicalSorter(upstream).static_order()
    reached = {node_id}
    found = []
    for candidate in order:
        if any(parent in reached for parent in upstream[candidate]) and candidate not in reached:
            reached.add(candidate)
            found.append(candidate)
    return found


def _receipt_input(workflow: OsopWorkflow, node: OsopNode) -> str | None:
    """The input of a GET that is the answer of a batch write, if any.

    The example workflow verifies its batch update with a GET on the batches' status, leaving
    implicit which batches: by default such a GET asks about the write's batches
    (``query: {batch_id: ${input.batch_ids}}``), unless the node sets ``runtime.query``. A batch
    write is an ``api`` node with a write method that sends data from another node (not a
    token request).
    """
    if str((node.runtime or {}).get("method", "GET")).upper() != "GET":
        return None
    for name in node.input_names:
        producer = workflow.producers.get(name)
        if producer is not None and _is_batch_write(workflow, workflow.node(producer)):
            return name
    return None


def _is_batch_write(workflow: OsopWorkflow, node: OsopNode) -> bool:
    method = str((node.runtime or {}).get("method", "")).upper()
    if node.type != "api" or method not in _WRITE_METHODS or _auth(node) == "oauth2":
        return False
    token = _token_input(workflow, node)
    return any(name != token for name in node.input_names)


def _runtime_problems(
    workflow: OsopWorkflow,
    node: OsopNode,
    error: pydantic.ValidationError,
    model: type[pydantic.BaseModel],
) -> list[SpecProblem]:
    problems: dict[tuple[str | int, ...], SpecProblem] = {}
    # A model that hides its input (a connection URL may hold a password) is not quoted.
    hide_input = bool(model.model_config.get("hide_input_in_errors"))
    for detail in error.errors(include_url=False):
        # Union members show up in the location ("literal['auto','none']"); users never wrote
        # them, so the problem is reported once, at the key they did write.
        loc = tuple(part for part in detail["loc"] if not _is_union_member(part))
        if loc in problems:
            continue
        key = ".".join(["runtime", *(str(part) for part in loc)])
        if detail["type"] == "extra_forbidden":
            message = f"{key} is not a key osop_dagster knows for {node.type!r} nodes"
            fix = "Check its spelling; the README lists the runtime keys of each node type."
        else:
            text = str(detail["msg"]).removeprefix("Value error, ").split("\n")[0]
            message = f"{key} is invalid: {text.rstrip('.')}"
            found = detail.get("input")
            if not hide_input and not isinstance(found, dict | list) and "found" not in text:
                message = f"{message} (found {found!r})"
            fix = ""
        problems[loc] = workflow.problem(node.id, ("runtime", *loc), message, fix=fix)
    return list(problems.values())


def _is_union_member(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part in _UNION_MEMBER_NAMES)


def _build_schedules(
    workflow: OsopWorkflow, translator: OsopTranslator
) -> tuple[list[dg.ScheduleDefinition], list[SpecProblem]]:
    schedules: list[dg.ScheduleDefinition] = []
    problems: list[SpecProblem] = []
    cron_triggers = [
        (index, trigger)
        for index, trigger in enumerate(workflow.triggers or [])
        if trigger.type == "cron"
    ]
    for number, (index, trigger) in enumerate(cron_triggers):
        config: Mapping[str, Any] = trigger.config or {}
        expression = next((config[key] for key in _CRON_KEYS if key in config), None)
        loc = ("triggers", index, "config")
        if not isinstance(expression, str):
            problems.append(
                SpecProblem(
                    path=workflow.source_path,
                    line=workflow.line_of(loc),
                    where=f"trigger {index + 1}",
                    message=(
                        "a cron trigger needs config.cron with a cron expression, "
                        f"found {expression!r}"
                    ),
                    fix='Write for example `config: {cron: "0 6 * * *", timezone: UTC}`.',
                )
            )
            continue
        timezone = config.get("timezone", "UTC")
        if not isinstance(timezone, str):
            problems.append(
                SpecProblem(
                    path=workflow.source_path,
                    line=workflow.line_of((*loc, "timezone")),
                    where=f"trigger {index + 1}",
                    message=f"config.timezone must be a time zone name, found {timezone!r}",
                    fix="Write for example `timezone: Europe/Paris`.",
                )
            )
            continue
        suffix = "" if len(cron_triggers) == 1 else f"_{number + 1}"
        try:
            schedules.append(
                dg.ScheduleDefinition(
                    name=f"{translator.get_job_name(workflow)}_schedule{suffix}",
                    cron_schedule=expression,
                    job_name=translator.get_job_name(workflow),
                    execution_timezone=timezone,
                    default_status=dg.DefaultScheduleStatus.STOPPED,
                    description=f"Cron trigger {index + 1} of {workflow.source_path}.",
                )
            )
        except dg.DagsterInvalidDefinitionError as error:
            problems.append(
                SpecProblem(
                    path=workflow.source_path,
                    line=workflow.line_of(loc),
                    where=f"trigger {index + 1}",
                    message=f"the cron trigger is not valid: {error}",
                )
            )
    return schedules, problems


def _node_specs(
    workflow: OsopWorkflow,
    node: OsopNode,
    translator: OsopTranslator,
    not_runnable_reason: str | None,
    deps: Sequence[dg.AssetKey],
) -> list[dg.AssetSpec]:
    metadata = translator.get_metadata(workflow, node)
    metadata[constants.META_EXECUTABLE] = not_runnable_reason is None
    return [
        dg.AssetSpec(
            key=translator.get_asset_key(workflow, node, output),
            deps=deps,
            description=translator.get_description(node, not_runnable_reason),
            metadata=metadata,
            group_name=translator.get_group_name(workflow),
            code_version=translator.get_code_version(node),
            owners=translator.get_owners(workflow, node),
            tags=translator.get_tags(workflow, node),
            kinds=translator.get_kinds(node),
        )
        for output in output_names(node)
    ]


def _node_asset(
    workflow: OsopWorkflow,
    node: OsopNode,
    plan: NodePlan,
    specs: Sequence[dg.AssetSpec],
    deps: Sequence[dg.AssetKey],
    translator: OsopTranslator,
    gates: Sequence[tuple[OsopEdge, Any]],
) -> dg.AssetsDefinition:
    # Inputs become keyword arguments; OSOP names need not be Python identifiers.
    parameters = {name: f"in_{index}" for index, name in enumerate(node.input_names)}
    # A conditional edge reads the outputs of its source, which then load as inputs too.
    for edge, _ in gates:
        for output in output_names(workflow.node(edge.from_node)):
            parameters.setdefault(output, f"in_{len(parameters)}")
    # A shell step reads its input as JSON text (jq parses it itself): no decoding in between.
    as_text = {constants.META_LOAD_AS_TEXT: True} if node.type == "cli" else None
    ins = {
        parameter: dg.AssetIn(
            key=translator.get_asset_key(workflow, workflow.node(workflow.producers[name]), name)
            if name in workflow.producers
            else translator.get_asset_key(workflow, workflow.node(name), name),
            metadata=as_text,
        )
        for name, parameter in parameters.items()
    }
    # Output names must be identifiers, which OSOP output names need not be.
    outputs = {
        output: (f"out_{index}", spec)
        for index, (output, spec) in enumerate(zip(output_names(node), specs, strict=True))
    }
    # Dagster builds outputs that carry values only from specs without deps: data deps come
    # back as `ins`, edges that carry no data as `deps`. A gated node may yield nothing.
    outs = {
        name: dg.AssetOut.from_spec(spec, dagster_type=Any, is_required=not gates)
        for name, spec in outputs.values()
    }
    data_keys = {asset_in.key for asset_in in ins.values()}
    # A key listed twice is one dependency, as an AssetSpec's deps would count it.
    order_only = [key for key in dict.fromkeys(deps) if key not in data_keys]
    check = _rejection_check(workflow, node, specs[0].key)

    @dg.multi_asset(
        name=translator.get_op_name(workflow, node),
        outs=outs,
        ins=ins,
        deps=order_only,
        check_specs=[check] if check else None,
        required_resource_keys={RESOURCE_KEYS[node.type]},
        op_tags=translator.get_run_tags(workflow),
    )
    @_known_signature
    def _materialize(context: dg.AssetExecutionContext, **kwargs: Any) -> Iterator[dg.Output]:
        values_in = {name: kwargs[parameter] for name, parameter in parameters.items()}
        if gates and not _any_gate_open(gates, {k: resolve(v) for k, v in values_in.items()}):
            context.log.info(
                "Skipping node %r: no condition of its conditional edges holds (%s).",
                node.id,
                "; ".join(str(edge.when) for edge, _ in gates),
            )
            return
        inputs = {name: values_in[name] for name in node.input_names}
        try:
            result = execute_node(context, plan, inputs)
        except OsopExecutionError as error:
            raise dg.Failure(description=str(error), metadata=_failure_metadata(error)) from error
        except OsopError as error:
            raise dg.Failure(description=str(error)) from error

        values = _split_outputs(node, result.value)
        for output, (name, _) in outputs.items():
            yield dg.Output(
                values[output],
                output_name=name,
                metadata={**result.metadata, **_value_metadata(values[output])},
            )
        if check is not None:
            yield _rejection_result(check, result.value)

    return _materialize


def _materialize_prototype(context: dg.AssetExecutionContext, **kwargs: Any) -> Iterator[dg.Output]:
    yield from ()


_MATERIALIZE_SIGNATURE = inspect.signature(_materialize_prototype)


def _known_signature(function: Callable[..., Any]) -> Callable[..., Any]:
    function.__signature__ = _MATERIALIZE_SIGNATURE
    return function


def _rejection_check(
    workflow: OsopWorkflow, node: OsopNode, key: dg.AssetKey
) -> dg.AssetCheckSpec | None:
    """Batch writes get a check that fails when the API rejected some of the records sent."""
    # Dagster names the check's output after the asset key, which must then be an identifier.
    if not _is_batch_write(workflow, node) or not _DAGSTER_NAME.match(key.to_python_identifier()):
        return None
    return dg.AssetCheckSpec(
        name=REJECTION_CHECK,
        asset=key,
        description=(
            "Fails when the API rejected records of the batch; the ids and reasons are in the "
            "check's metadata and in the asset's 'rejected' list."
        ),
    )


def _rejection_result(check: dg.AssetCheckSpec, value: Any) -> dg.AssetCheckResult:
    rejected = value.get("rejected", []) if isinstance(value, Mapping) else []
    sent = value.get("items_sent", 0) if isinstance(value, Mapping) else 0
    return dg.AssetCheckResult(
        check_name=check.name,
        asset_key=check.asset_key,
        passed=not rejected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"The API rejected {len(rejected)} of {sent} records sent."
            if rejected
            else f"The API accepted all {sent} records sent."
        ),
        metadata={
            constants.META_REJECTED_COUNT: len(rejected),
            constants.META_REJECTED: rejected[:_REJECTED_IN_CHECK],
        },
    )


def _any_gate_open(gates: Sequence[tuple[OsopEdge, Any]], values: Mapping[str, Any]) -> bool:
    for edge, program in gates:
        try:
            if program.execute(dict(values)):
                return True
        except (RuntimeError, ValueError, TypeError) as error:
            raise dg.Failure(
                description=(
                    f"The condition {edge.when!r} of {edge.describe()} could not be evaluated: "
                    f"{error}. It can use the outputs of {edge.from_node!r} and the node's "
                    f"inputs: {sorted(values)}."
                )
            ) from error
    return False


def _failure_metadata(error: OsopExecutionError) -> dict[str, Any]:
    """The error's metadata, plus what error-edge conditions read of a failed API call."""
    metadata = dict(error.metadata)
    if isinstance(error, OsopHttpError):
        metadata[constants.META_STATUS] = error.status
        metadata[constants.META_ERROR_HEADERS] = dict(error.headers)
        body = error.body
        metadata[constants.META_ERROR_BODY] = (
            body if isinstance(body, dict | list) else dg.MetadataValue.text(str(body or ""))
        )
    return metadata


def _split_outputs(node: OsopNode, value: Any) -> dict[str, Any]:
    names = output_names(node)
    if len(names) == 1:
        return {names[0]: value}
    value = resolve(value)
    if not isinstance(value, Mapping) or not all(name in value for name in names):
        found = sorted(value) if isinstance(value, Mapping) else type(value).__name__
        raise dg.Failure(
            description=(
                f"Node {node.id!r} declares the outputs {names}, so its result must be an object "
                f"with those keys; found {found!r}."
            )
        )
    return {name: value[name] for name in names}


def _value_metadata(value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {constants.META_RECORD_COUNT: len(value)}
    if isinstance(value, Mapping):
        return {constants.META_SUMMARY: summarise(value)}
    return {}
