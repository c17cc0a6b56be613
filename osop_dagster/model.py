"""The OSOP workflow document as typed, immutable models.

The models encode the constraints of the OSOP 2.x workflow schema: required fields, closed
vocabularies as ``Literal``, strict types (a number is never read as text or the reverse) and
unknown keys refused, except keys starting with ``x-`` wherever the schema keeps them, and any key
where the schema leaves an object open. Kept keys land in each model's ``extensions``.

Build a workflow with :func:`osop_dagster.loader.load_workflow`, which also knows the lines of the
file; validating a plain mapping with :meth:`OsopWorkflow.model_validate` works too, but problems
then carry no line numbers.
"""

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    PrivateAttr,
    Tag,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from osop_dagster.errors import SpecProblem

NodeType = Literal[
    "human", "agent", "api", "cli", "db", "git", "docker", "cicd", "mcp", "system", "infra", "data"
]
"""What kind of work a node stands for."""

EdgeMode = Literal[
    "sequential",
    "conditional",
    "parallel",
    "loop",
    "event",
    "fallback",
    "error",
    "timeout",
    "spawn",
    "switch",
]
"""How control passes along an edge."""

TriggerType = Literal["cron", "webhook", "git_push", "manual", "event"]
RetryStrategy = Literal["fixed", "exponential_backoff"]
JoinMode = Literal["wait_all", "wait_any", "wait_n"]

NODE_TYPES: tuple[str, ...] = get_args(NodeType)
EDGE_MODES: tuple[str, ...] = get_args(EdgeMode)

CONDITIONAL_EDGE_MODES: frozenset[str] = frozenset(
    {"conditional", "switch", "loop", "fallback", "error", "timeout"}
)
"""Edge modes that are followed only when something happens: a condition, a failure, a repeat.

An edge in one of these modes, or any edge with a ``when``, may be skipped in a run; every other
edge (``sequential``, ``parallel``, ``spawn``, ``event``) is always followed.
"""

EXTENSIONS_KEY = "__extensions__"
"""Internal name under which kept unknown keys reach the ``extensions`` field."""


def _check_number(value: Any) -> int | float:
    # JSON Schema's "number": an int or a float, never a boolean, never text that looks numeric.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "expected a number")
    # YAML's .nan passes every comparison as false, so it would slip past each bound below.
    if value != value:
        raise PydanticCustomError("nan_number", "expected a number, got .nan (not a number)")
    return value


def _check_non_negative(value: Any) -> int | float:
    number = _check_number(value)
    if number < 0:
        raise PydanticCustomError("non_negative", "expected a number of at least 0")
    return number


Number = Annotated[int | float, PlainValidator(_check_number)]
NonNegativeNumber = Annotated[int | float, PlainValidator(_check_non_negative)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(ge=1)]


def _object_or_scalar(value: Any) -> str:
    # Called on raw input when validating and on the model instance when serialising.
    return "object" if isinstance(value, dict | BaseModel) else "scalar"


def _scalar_or_object(scalar: Any, mapping: Any) -> Any:
    """A schema ``oneOf`` of a scalar and an object, validated by the branch the value fits.

    The annotation is built at run time, which type checkers cannot follow: fields using it
    carry ``type: ignore[valid-type]``. Tagged members need ``Union[...]``, not ``|`` (UP007).
    """
    members = (Annotated[scalar, Tag("scalar")], Annotated[mapping, Tag("object")])
    return Annotated[Union[members], Discriminator(_object_or_scalar)]  # noqa: UP007


class _OsopModel(BaseModel):
    """Base of every OSOP model: strict, immutable, unknown keys refused or kept by the schema.

    Subclasses set ``osop_open`` when the schema accepts any extra key, and clear
    ``osop_extensions`` when the schema does not accept ``x-`` keys either.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    osop_open: ClassVar[bool] = False
    osop_extensions: ClassVar[bool] = True

    extensions: dict[str, Any] = Field(default_factory=dict, validation_alias=EXTENSIONS_KEY)
    """Keys the schema lets through without naming them (``x-`` keys, or any key where open)."""

    @classmethod
    def _coerce_input(cls, data: Any) -> Any:
        """Turn a shorthand spelling into the mapping form; the default keeps data unchanged."""
        return data

    @classmethod
    def osop_keys(cls) -> tuple[str, ...]:
        """The keys this object accepts in a workflow file, in the schema's order."""
        keys = []
        for name, field in cls.model_fields.items():
            if name != "extensions":
                alias = field.validation_alias
                keys.append(alias if isinstance(alias, str) else name)
        return tuple(keys)

    @model_validator(mode="before")
    @classmethod
    def _split_extensions(cls, data: Any) -> Any:
        data = cls._coerce_input(data)
        if not isinstance(data, dict):
            return data

        known = set(cls.osop_keys())
        kept: dict[str, Any] = {}
        extensions: dict[str, Any] = {}
        unknown: list[Any] = []
        for key, value in data.items():
            if not isinstance(key, str):
                unknown.append(key)
            elif key in known:
                kept[key] = value
            elif cls.osop_open or (cls.osop_extensions and key.startswith("x-")):
                extensions[key] = value
            else:
                unknown.append(key)

        if unknown:
            raise PydanticCustomError(
                "unknown_key",
                "unknown key {key!r}",
                {
                    "key": unknown[0],
                    "keys": unknown,
                    "allowed": cls.osop_keys(),
                    "x_allowed": cls.osop_extensions,
                },
            )
        kept[EXTENSIONS_KEY] = extensions
        return kept


def _check_runtime_auth(value: dict[str, Any]) -> dict[str, Any]:
    # Schema: an object with only `type` and `secret_ref` (strings) and `x-` keys.
    allowed = ("type", "secret_ref")
    unknown = [key for key in value if key not in allowed and not str(key).startswith("x-")]
    if unknown:
        raise PydanticCustomError(
            "unknown_key",
            "unknown key {key!r}",
            {"key": unknown[0], "keys": unknown, "allowed": allowed, "x_allowed": True},
        )
    for key in allowed:
        if key in value and not isinstance(value[key], str):
            raise PydanticCustomError(
                "string_type", "expected a string in {key!r}", {"key": key, "nested": key}
            )
    return value


class OsopRuntime(TypedDict, total=False):
    """The keys of ``runtime`` that the schema types; any other key is kept as written."""

    __pydantic_config__ = ConfigDict(strict=True, extra="allow")  # type: ignore[misc]

    provider: str
    model: str
    os: str
    image: str
    command: str
    endpoint: str
    repo: str
    action: str
    branch: str
    engine: str
    table: str
    environment: str
    method: str
    url: str
    system_prompt: str
    temperature: Number
    max_tokens: int
    tools: list[str]
    headers: dict[str, str]
    body_template: _scalar_or_object(str, dict[str, Any])  # type: ignore[valid-type]
    auth: Annotated[dict[str, Any], AfterValidator(_check_runtime_auth)]
    tool: str
    config_path: str
    connection: str
    source: dict[str, Any]
    destination: dict[str, Any]


class OsopExplain(_OsopModel):
    """A structured explanation: why a step exists, what it does, what it yields."""

    why: str | None = None
    what: str | None = None
    result: str | None = None


Explain = _scalar_or_object(str, OsopExplain)


class IoSpec(_OsopModel):
    """One input or output of a node; a bare string in the file is its name."""

    osop_open: ClassVar[bool] = True

    name: str
    schema_: str | None = Field(default=None, validation_alias="schema")
    required: bool = False
    description: str | None = None
    explain: Explain | None = None  # type: ignore[valid-type]

    @classmethod
    def _coerce_input(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, dict):
            raise PydanticCustomError("io_type", "expected a name or a mapping with a 'name' key")
        return data


class OsopRetryPolicy(_OsopModel):
    """How often and how patiently a failed node is tried again."""

    max_retries: NonNegativeNumber = 0
    strategy: RetryStrategy = "fixed"
    backoff_sec: NonNegativeNumber | None = None


class OsopIdempotency(_OsopModel):
    """Whether a node may safely run twice, and the key that makes it so."""

    enabled: bool = False
    key: str | None = None


class OsopHandoff(_OsopModel):
    """What a node passes to the next one (agent workflows)."""

    osop_open: ClassVar[bool] = True

    summary_for_next_node: str | None = None
    expected_output: str | None = None
    escalation: str | None = None
    from_node: str | None = Field(default=None, validation_alias="from")
    context_keys: list[str] = Field(default_factory=list)


class OsopNodeObservability(_OsopModel):
    """Logging and metrics of one node."""

    log: bool = True
    metrics: list[Literal["duration_ms", "retry_count", "success_rate", "cost_units"]] = Field(
        default_factory=list
    )


class OsopNodeSecurity(_OsopModel):
    """Permissions and secrets of one node; the schema keeps any further key.

    ``auth`` and ``secret_ref`` are not named by the schema, but this product reads them (the
    authentication scheme and the name of the secret holding credentials), so they must be text.
    """

    osop_open: ClassVar[bool] = True

    permissions: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    credentials: list[str] = Field(default_factory=list)
    risk_level: str | None = None
    access_control: str | None = None
    data_classification: str | None = None
    encryption: str | None = None
    model_governance: _scalar_or_object(str, dict[str, Any]) | None = None  # type: ignore
    auth: str | None = None
    secret_ref: str | None = None


class OsopApprovalGate(_OsopModel):
    """A human approval a node waits for."""

    osop_open: ClassVar[bool] = True

    required: bool = False
    approver_role: str | None = None
    approvers: list[str] = Field(default_factory=list)
    timeout_hours: Number | None = None
    bypass_allowed: bool | None = None
    mandatory: bool | None = None


class OsopSpawnPolicy(_OsopModel):
    """Limits on the child agents a node may start."""

    osop_extensions: ClassVar[bool] = False

    max_children: PositiveInt | None = None
    child_tools: list[str] = Field(default_factory=list)
    can_spawn_children: bool = False


class OsopNode(_OsopModel):
    """One step of a workflow.

    ``runtime`` is kept as written (a plain mapping): the keys the schema types are checked here,
    the vocabulary of each node type is checked where the node is compiled.
    """

    osop_open: ClassVar[bool] = True

    id: NonEmptyStr
    name: str | None = None
    type: NodeType
    subtype: str | None = None
    role: str | None = None
    owner: str | None = None
    purpose: NonEmptyStr
    description: str | None = None
    cost: dict[str, Any] | None = None
    message_contract: dict[str, Any] | None = None
    runtime: OsopRuntime = Field(default_factory=lambda: OsopRuntime())
    inputs: list[IoSpec] = Field(default_factory=list)
    outputs: list[IoSpec] = Field(default_factory=list)
    success_criteria: list[str] = Field(default_factory=list)
    failure_modes: list[str] = Field(default_factory=list)
    retry_policy: OsopRetryPolicy | None = None
    timeout_sec: NonNegativeNumber | None = None
    idempotency: OsopIdempotency | None = None
    handoff: OsopHandoff | None = None
    explain: Explain | None = None  # type: ignore[valid-type]
    observability: OsopNodeObservability | None = None
    security: OsopNodeSecurity | None = None
    approval_gate: _scalar_or_object(bool, OsopApprovalGate) | None = None  # type: ignore
    parent: str | None = None
    spawn_policy: OsopSpawnPolicy | None = None
    workflow_ref: str | None = None
    workflow_inputs: dict[str, Any] | None = None

    _index: int = PrivateAttr(default=-1)

    @property
    def index(self) -> int:
        """Position of the node in the file's ``nodes`` list, from 0."""
        return self._index

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the node's inputs, in file order."""
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the node's outputs, in file order."""
        return tuple(spec.name for spec in self.outputs)

    def definition_fingerprint(self) -> str:
        """A stable hash of the node's own definition: 16 hex digits, same text same hash."""
        definition = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        canonical = json.dumps(
            definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class OsopSwitchCase(_OsopModel):
    """One row of a switch edge: the value to match and the node to go to."""

    osop_open: ClassVar[bool] = True

    value: Any = None
    to: str


class OsopEdge(_OsopModel):
    """A connection from one node to another; ``condition`` in the file is read as ``when``."""

    from_node: str = Field(validation_alias="from")
    to_node: str = Field(validation_alias="to")
    mode: EdgeMode = "sequential"
    when: str | None = None
    explain: Explain | None = None  # type: ignore[valid-type]
    label: str | None = None
    spawn_count: PositiveInt = 1
    for_each: str | None = None
    iterator_var: str | None = None
    join_mode: JoinMode = "wait_all"
    join_count: PositiveInt | None = None
    cases: list[OsopSwitchCase] = Field(default_factory=list)
    default_to: str | None = None

    _index: int = PrivateAttr(default=-1)

    @classmethod
    def osop_keys(cls) -> tuple[str, ...]:
        """The keys an edge accepts, including the ``condition`` alias of ``when``."""
        return (*super().osop_keys(), "condition")

    @classmethod
    def _coerce_input(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "condition" not in data:
            return data
        condition = data["condition"]
        if "when" in data and data["when"] != condition:
            raise PydanticCustomError(
                "when_conflict",
                "the edge has both 'when' and 'condition', with different expressions",
                {"key": "condition", "when": data["when"], "condition": condition},
            )
        return {**{k: v for k, v in data.items() if k != "condition"}, "when": condition}

    @property
    def index(self) -> int:
        """Position of the edge in the file's ``edges`` list, from 0."""
        return self._index

    @property
    def is_conditional(self) -> bool:
        """Whether a run may skip this edge: it has a ``when`` or a conditional mode."""
        return self.when is not None or self.mode in CONDITIONAL_EDGE_MODES

    def targets(self) -> tuple[str, ...]:
        """Every node the edge may lead to: ``to``, the switch cases and ``default_to``."""
        extra = [case.to for case in self.cases]
        if self.default_to is not None:
            extra.append(self.default_to)
        return (self.to_node, *extra)

    def describe(self) -> str:
        """The edge as users see it in messages, numbered from 1: ``edge 3 (a -> b)``."""
        return f"edge {self._index + 1} ({self.from_node} -> {self.to_node})"


class OsopTrigger(_OsopModel):
    """What starts the workflow: a schedule, a webhook, a push, a person or an event."""

    type: TriggerType
    config: dict[str, Any] | None = None


class OsopWorkflowType(_OsopModel):
    """The family the workflow belongs to."""

    primary: str
    secondary: list[str] = Field(default_factory=list)


class OsopMetadata(_OsopModel):
    """Free-form facts about the workflow definition."""

    osop_open: ClassVar[bool] = True

    created_at: str | None = None
    updated_at: str | None = None
    version: str | None = None
    change_summary: str | None = None


class OsopMessageContract(_OsopModel):
    """The shape of the messages one node sends another."""

    id: str
    producer: str
    consumer: str
    kind: Literal["task", "result", "state", "error", "event"]
    format: Literal["json", "text"]
    schema_ref: str | None = None
    semantics: dict[str, Any] | None = None


class OsopTestCase(_OsopModel):
    """A test the workflow file declares for itself."""

    id: str
    type: Literal["unit", "integration", "e2e", "simulation"]
    target_node: str | None = None
    run: Literal["full_workflow"] | None = None
    input: dict[str, Any] | None = None
    expect: dict[str, Any] | None = None
    mocks: dict[str, Any] | None = None
    failure_injection: dict[str, Any] | None = None


class OsopSecurityPolicy(_OsopModel):
    """Workflow-wide security settings."""

    secrets_provider: str | None = None
    default_permissions: list[str] = Field(default_factory=list)
    approval_required_for: list[str] = Field(default_factory=list)


class OsopObservabilityPolicy(_OsopModel):
    """Workflow-wide logging and tracing settings."""

    osop_open: ClassVar[bool] = True

    emit_events: bool = True
    trace_id_required: bool = True
    default_log_level: Literal["debug", "info", "warn", "error"] = "info"
    log_level: str | None = None
    tracing: _scalar_or_object(bool, dict[str, Any]) | None = None  # type: ignore[valid-type]
    audit_trail: _scalar_or_object(str | bool, dict[str, Any]) | None = None  # type: ignore


class OsopEvolutionOutput(_OsopModel):
    """How proposed changes to the workflow are delivered."""

    mode: Literal["pull_request", "patch_only"] = "pull_request"
    require_human_approval: bool = True


class OsopEvolutionPolicy(_OsopModel):
    """Whether and how the workflow may propose changes to itself."""

    enabled: bool = False
    strategy: Literal["ai_assisted", "manual"] = "ai_assisted"
    feedback_sources: list[Literal["logs", "metrics", "human_feedback"]] = Field(
        default_factory=list
    )
    output: OsopEvolutionOutput | None = None


class OsopLedgerPolicy(_OsopModel):
    """Where execution records are kept."""

    osop_open: ClassVar[bool] = True

    enabled: bool = True
    store: str | None = None
    storage: str | None = None
    artifact_store: str | None = None


class OsopWorkflow(_OsopModel):
    """A whole OSOP workflow file: nodes, edges and workflow-wide settings."""

    osop_version: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?$")]
    id: NonEmptyStr
    name: NonEmptyStr
    description: str | None = None
    owner: str | None = None
    visibility: Literal["public", "private"] | None = None
    tags: list[str] = Field(default_factory=list)
    status: Literal["draft", "active", "deprecated", "template"] = "active"
    usage: Literal["plan", "execution", "template", "reference"] = "execution"
    workflow_type: OsopWorkflowType | None = None
    extends: str | None = None
    metadata: OsopMetadata | None = None
    schemas: dict[str, dict[str, Any]] | None = None
    roles: list[str] = Field(default_factory=list)
    triggers: list[OsopTrigger] = Field(default_factory=list)
    variables: dict[str, Any] | None = None
    imports: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    platforms: list[Literal["linux", "windows", "macos", "ios", "android", "web", "any"]] = Field(
        default_factory=list
    )
    conformance_level: Annotated[int, Field(ge=0, le=3)] | None = None
    version: str | None = None
    timeout_sec: NonNegativeNumber | None = None
    nodes: Annotated[list[OsopNode], Field(min_length=1)]
    edges: Annotated[list[OsopEdge], Field(min_length=1)]
    message_contracts: list[OsopMessageContract] = Field(default_factory=list)
    tests: list[OsopTestCase] = Field(default_factory=list)
    views: list[Literal["graph", "story", "role", "debug", "agent"]] = Field(default_factory=list)
    security: OsopSecurityPolicy | None = None
    observability: OsopObservabilityPolicy | None = None
    evolution: OsopEvolutionPolicy | None = None
    ledger: OsopLedgerPolicy | None = None

    _source_path: str = PrivateAttr(default="<workflow>")
    _lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)
    # Derived lookups, computed once: the model is frozen, and the compiler asks for them per
    # node and per dependency, which would otherwise cost quadratic time and more.
    _derived: dict[str, Any] = PrivateAttr(default_factory=dict)

    def _memo(self, name: str, compute: Callable[[], Any]) -> Any:
        if name not in self._derived:
            self._derived[name] = compute()
        return self._derived[name]

    @model_validator(mode="after")
    def _bind(self, info: ValidationInfo) -> "OsopWorkflow":
        # Positions and file facts are not part of the definition, so they live in private
        # attributes: they never reach the fingerprint or a comparison of two workflows.
        for index, node in enumerate(self.nodes):
            node._index = index
        for index, edge in enumerate(self.edges):
            edge._index = index
        context = info.context or {}
        self._source_path = str(context.get("source_path", self._source_path))
        self._lines = dict(context.get("lines", {}))
        return self

    @property
    def source_path(self) -> str:
        """The file the workflow was loaded from."""
        return self._source_path

    def node(self, node_id: str) -> OsopNode:
        """The node with this id.

        Raises:
            KeyError: No node has this id.
        """
        by_id: dict[str, OsopNode] = self._memo("nodes", self._index_nodes)
        try:
            return by_id[node_id]
        except KeyError:
            raise KeyError(f"Workflow {self.id!r} has no node {node_id!r}.") from None

    def _index_nodes(self) -> dict[str, OsopNode]:
        by_id: dict[str, OsopNode] = {}
        for node in self.nodes:
            by_id.setdefault(node.id, node)
        return by_id

    @property
    def all_producers(self) -> dict[str, tuple[str, ...]]:
        """Every output name with the ids of the nodes producing it, in file order."""
        return dict(self._memo("all_producers", self._all_producers))

    def _all_producers(self) -> dict[str, tuple[str, ...]]:
        producers: dict[str, list[str]] = {}
        for node in self.nodes:
            for name in node.output_names:
                producers.setdefault(name, []).append(node.id)
        return {name: tuple(ids) for name, ids in producers.items()}

    @property
    def producers(self) -> dict[str, str]:
        """Output name to the id of the node producing it.

        When alternative branches produce the same name (see the loader's rules), the node
        reached without a condition wins, else the first in the file.
        """
        return dict(self._memo("producers", self._producers))

    def _producers(self) -> dict[str, str]:
        conditional = self.conditionally_reached()
        result: dict[str, str] = {}
        for name, ids in self.all_producers.items():
            unconditional = [node_id for node_id in ids if node_id not in conditional]
            result[name] = (unconditional or list(ids))[0]
        return result

    def incoming(self, node_id: str) -> Iterator[OsopEdge]:
        """The edges leading to a node, including switch cases and defaults."""
        by_target: dict[str, list[OsopEdge]] = self._memo("incoming", self._index_incoming)
        return iter(by_target.get(node_id, ()))

    def _index_incoming(self) -> dict[str, list[OsopEdge]]:
        by_target: dict[str, list[OsopEdge]] = {}
        for edge in self.edges:
            for target in dict.fromkeys(edge.targets()):
                by_target.setdefault(target, []).append(edge)
        return by_target

    def conditionally_reached(self) -> frozenset[str]:
        """Ids of nodes that a run reaches only through edges it may skip.

        Such a node has at least one incoming edge and every incoming edge is conditional.
        """
        return frozenset(self._memo("conditionally_reached", self._conditionally_reached))

    def _conditionally_reached(self) -> frozenset[str]:
        reached = set()
        for node in self.nodes:
            edges = list(self.incoming(node.id))
            if edges and all(edge.is_conditional for edge in edges):
                reached.add(node.id)
        return frozenset(reached)

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        """The 1-based line of a location such as ``("nodes", 2, "runtime", "method")``.

        Falls back to the nearest enclosing location with a known line; ``when`` of an edge
        also finds its ``condition`` spelling.
        """
        loc = tuple(loc)
        while True:
            if loc in self._lines:
                return self._lines[loc]
            if loc and loc[-1] == "when" and (*loc[:-1], "condition") in self._lines:
                return self._lines[(*loc[:-1], "condition")]
            if not loc:
                return None
            loc = loc[:-1]

    def problem(
        self, node_id: str, loc: tuple[str | int, ...], message: str, fix: str = ""
    ) -> SpecProblem:
        """A problem located at ``loc`` inside a node, e.g. ``("runtime", "method")``."""
        node = self.node(node_id)
        return SpecProblem(
            path=self.source_path,
            line=self.line_of(("nodes", node.index, *loc)),
            where=f"node {node_id!r}",
            message=message,
            fix=fix,
        )

    def edge_problem(
        self, edge: OsopEdge, loc: tuple[str | int, ...], message: str, fix: str = ""
    ) -> SpecProblem:
        """A problem located at ``loc`` inside an edge, e.g. ``("when",)``."""
        return SpecProblem(
            path=self.source_path,
            line=self.line_of(("edges", edge.index, *loc)),
            where=edge.describe(),
            message=message,
            fix=fix,
        )
