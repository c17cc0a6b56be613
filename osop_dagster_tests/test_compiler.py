import textwrap
from pathlib import Path

import dagster as dg
import pytest

from osop_dagster import constants
from osop_dagster.compiler import build_osop_assets, dependency_graph
from osop_dagster.definitions import build_osop_resources
from osop_dagster.errors import OsopSpecError
from osop_dagster.io_manager import OsopJsonIOManager
from osop_dagster.loader import load_workflow, load_workflow_text
from osop_dagster.model import OsopWorkflow

SEED_OUTPUTS = [
    "access_token",
    "records_list",
    "filtered_records",
    "update_response",
    "verification_result",
    "audit_id",
]


@pytest.fixture(scope="module")
def seed(repo_root: Path) -> OsopWorkflow:
    return load_workflow(repo_root / "workflows" / "rest-api-workflow.osop.yaml")


def _workflow(body: str) -> OsopWorkflow:
    return load_workflow_text(textwrap.dedent(body), path="inline.osop.yaml")


def _specs(compiled) -> dict[dg.AssetKey, dg.AssetSpec]:
    specs = {}
    for item in compiled.assets:
        if isinstance(item, dg.AssetSpec):
            specs[item.key] = item
        else:
            specs.update({spec.key: spec for spec in item.specs})
    return specs


def test_seed_outputs_become_assets_with_input_lineage(seed: OsopWorkflow) -> None:
    compiled = build_osop_assets(seed)
    specs = _specs(compiled)

    assert set(specs) == {dg.AssetKey(["rest-api-workflow", name]) for name in SEED_OUTPUTS}
    deps = {
        key.path[-1]: {dep.asset_key.path[-1] for dep in spec.deps} for key, spec in specs.items()
    }
    assert deps == {
        "access_token": set(),
        "records_list": {"access_token"},
        "filtered_records": {"records_list"},
        "update_response": {"filtered_records", "access_token"},
        "verification_result": {"update_response", "access_token"},
        "audit_id": {"update_response", "verification_result"},
    }
    assert compiled.not_runnable == {}
    assert all(isinstance(item, dg.AssetsDefinition) for item in compiled.assets)


def test_seed_assets_carry_description_kinds_metadata_and_group(seed: OsopWorkflow) -> None:
    specs = _specs(build_osop_assets(seed))
    token = specs[dg.AssetKey(["rest-api-workflow", "access_token"])]
    records = specs[dg.AssetKey(["rest-api-workflow", "filtered_records"])]
    audit = specs[dg.AssetKey(["rest-api-workflow", "audit_id"])]

    assert token.group_name == "rest_api_workflow"
    assert token.description.startswith("Obtain OAuth2 access token")
    assert token.kinds == {"api", "http"}
    assert token.metadata[constants.META_METHOD] == "POST"
    assert token.metadata[constants.META_ENDPOINT] == "https://api.service.com/oauth/token"
    assert "Select only pending records older than 30 days" in records.description
    assert records.kinds == {"cli", "jq"}
    assert audit.kinds == {"db", "postgres"}
    assert audit.metadata[constants.META_ENGINE] == "postgres"
    assert token.tags[constants.TAG_WORKFLOW_ID] == "rest-api-workflow"


def test_seed_job_selects_every_asset_and_runs_in_process(seed: OsopWorkflow) -> None:
    compiled = build_osop_assets(seed)
    defs = dg.Definitions(
        assets=compiled.assets, jobs=[compiled.job], resources=build_osop_resources()
    )
    job = defs.resolve_job_def("rest_api_workflow_job")

    assert job.executor_def is dg.in_process_executor
    selected = {key.path[-1] for key in job.asset_layer.selected_asset_keys}
    assert selected == set(SEED_OUTPUTS)


def test_code_version_changes_only_with_the_node_definition(repo_root: Path) -> None:
    text = (repo_root / "workflows" / "rest-api-workflow.osop.yaml").read_text()
    before = _specs(build_osop_assets(load_workflow_text(text, path="a.osop.yaml")))
    edited = text.replace("timeout_sec: 60", "timeout_sec: 90")
    after = _specs(build_osop_assets(load_workflow_text(edited, path="a.osop.yaml")))

    changed = {
        key.path[-1] for key in before if before[key].code_version != after[key].code_version
    }
    assert changed == {"update_response"}


def test_node_with_several_outputs_is_one_multi_asset() -> None:
    workflow = _workflow(
        """
        osop_version: "2.0"
        id: multi
        name: Multi
        nodes:
          - id: split
            type: cli
            purpose: Split
            runtime: {command: "jq '{left: .[0], right: .[1]}'"}
            outputs: [left, right]
          - id: use
            type: cli
            purpose: Use
            runtime: {command: "jq '.'"}
            inputs: [right]
            outputs: [used]
        edges:
          - {from: split, to: use}
        """
    )
    compiled = build_osop_assets(workflow)
    split = next(
        item
        for item in compiled.assets
        if isinstance(item, dg.AssetsDefinition) and dg.AssetKey(["multi", "left"]) in item.keys
    )
    assert split.keys == {dg.AssetKey(["multi", "left"]), dg.AssetKey(["multi", "right"])}


def test_node_without_outputs_gets_an_asset_named_after_it() -> None:
    workflow = _workflow(
        """
        osop_version: "2.0"
        id: bare
        name: Bare
        nodes:
          - {id: first, type: cli, purpose: First, runtime: {command: "jq '1'"}, outputs: [one]}
          - {id: notify, type: cli, purpose: Notify, runtime: {command: "jq '2'"}}
        edges:
          - {from: first, to: notify}
        """
    )
    specs = _specs(build_osop_assets(workflow))
    notify = specs[dg.AssetKey(["bare", "notify"])]
    assert [dep.asset_key for dep in notify.deps] == [dg.AssetKey(["bare", "one"])]


def test_unexecutable_nodes_and_their_downstream_stay_browsable() -> None:
    workflow = _workflow(
        """
        osop_version: "2.0"
        id: review
        name: Review
        nodes:
          - {id: fetch, type: cli, purpose: Fetch, runtime: {command: "jq '[1]'"}, outputs: [items]}
          - {id: approve, type: human, purpose: Approve, inputs: [items], outputs: [approval]}
          - {id: apply, type: cli, purpose: Apply, runtime: {command: "jq '.'"}, inputs: [approval]}
        edges:
          - {from: fetch, to: approve}
          - {from: approve, to: apply}
        """
    )
    compiled = build_osop_assets(workflow)

    assert set(compiled.not_runnable) == {"approve", "apply"}
    assert "does not execute 'human' nodes" in compiled.not_runnable["approve"]
    assert "depends on node 'approve'" in compiled.not_runnable["apply"]
    specs = _specs(compiled)
    approval = specs[dg.AssetKey(["review", "approval"])]
    assert "Not materializable" in approval.description
    assert approval.metadata[constants.META_EXECUTABLE] is False
    defs = dg.Definitions(
        assets=compiled.assets, jobs=[compiled.job], resources=build_osop_resources()
    )
    selected = defs.resolve_job_def("review_job")
    assert {key.path[-1] for key in selected.asset_layer.selected_asset_keys} == {"items"}


def test_recovery_and_rework_edges_add_no_dependency() -> None:
    workflow = _workflow(
        """
        osop_version: "2.0"
        id: loops
        name: Loops
        nodes:
          - {id: plan, type: cli, purpose: Plan, runtime: {command: "jq '1'"}}
          - {id: review, type: cli, purpose: Review, runtime: {command: "jq '2'"}}
        edges:
          - {from: plan, to: review}
          - {from: review, to: plan, mode: conditional, when: "rework"}
          - {from: review, to: plan, mode: error, when: "true"}
        """
    )
    assert dependency_graph(workflow) == {"plan": [], "review": ["plan"]}


def test_cron_trigger_becomes_a_stopped_schedule() -> None:
    workflow = _workflow(
        """
        osop_version: "2.0"
        id: nightly
        name: Nightly
        triggers:
          - {type: cron, config: {cron: "0 6 * * *", timezone: Europe/Paris}}
        nodes:
          - {id: step, type: cli, purpose: Step, runtime: {command: "jq '1'"}}
        edges:
          - {from: step, to: step, mode: loop}
        """
    )
    compiled = build_osop_assets(workflow)
    (schedule,) = compiled.schedules
    assert "drawn but not executed: edge 1 (step -> step) (loop)" in compiled.job.description
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.execution_timezone == "Europe/Paris"
    assert schedule.job_name == "nightly_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


@pytest.mark.parametrize(
    ("node_or_trigger", "fragment"),
    [
        (
            "nodes:\n  - {id: call, type: api, purpose: Call, "
            "runtime: {url: 'https://x.test', method: FETCH}}",
            "line 5",
        ),
        (
            "triggers:\n  - {type: cron, config: {cron: 'every day'}}\n"
            "nodes:\n  - {id: call, type: cli, purpose: Call, runtime: {command: \"jq '.'\"}}",
            "cron trigger is not valid",
        ),
        (
            "triggers:\n  - {type: cron, config: {}}\n"
            "nodes:\n  - {id: call, type: cli, purpose: Call, runtime: {command: \"jq '.'\"}}",
            "config.cron",
        ),
    ],
)
def test_runtime_and_trigger_mistakes_are_located_errors(
    node_or_trigger: str, fragment: str
) -> None:
    text = (
        'osop_version: "2.0"\nid: bad\nname: Bad\n'
        + node_or_trigger
        + "\nedges:\n  - {from: call, to: call, mode: loop}\n"
    )
    workflow = load_workflow_text(text, path="bad.osop.yaml")
    with pytest.raises(OsopSpecError) as raised:
        build_osop_assets(workflow)
    assert "bad.osop.yaml" in str(raised.value)
    assert fragment in str(raised.value)


def test_every_valid_corpus_file_compiles(shared_dir: Path) -> None:
    """Any workflow the loader accepts can be browsed: it compiles into definitions."""
    loaded = 0
    for path in sorted((shared_dir / "osop-corpus").iterdir()):
        try:
            workflow = load_workflow(path)
        except OsopSpecError:
            continue
        compiled = build_osop_assets(workflow)
        defs = dg.Definitions(
            assets=compiled.assets,
            jobs=[compiled.job] if compiled.job else [],
            resources=build_osop_resources(),
        )
        defs.resolve_asset_graph()
        loaded += 1
    assert loaded >= 20


def test_conditional_edge_skips_its_target_and_downstream_when_false(tmp_path: Path) -> None:
    workflow = _workflow(
        """
        osop_version: "2.0"
        id: gated
        name: Gated
        nodes:
          - {id: count, type: cli, purpose: Count, runtime: {command: "jq -n '{n: 5}'"},
             outputs: [tally]}
          - {id: small, type: cli, purpose: Small, runtime: {command: "jq -n '\\"small\\"'"},
             outputs: [small_note]}
          - {id: large, type: cli, purpose: Large, runtime: {command: "jq -n '\\"large\\"'"},
             outputs: [large_note]}
          - {id: after_large, type: cli, purpose: After, runtime: {command: "jq '.'"},
             inputs: [large_note], outputs: [echo]}
        edges:
          - {from: count, to: small, mode: conditional, when: "tally.n < 10"}
          - {from: count, to: large, mode: conditional, when: "tally.n >= 10"}
          - {from: large, to: after_large}
        """
    )
    compiled = build_osop_assets(workflow)
    resources = {**build_osop_resources(), "io_manager": OsopJsonIOManager(base_dir=str(tmp_path))}
    defs = dg.Definitions(assets=compiled.assets, jobs=[compiled.job], resources=resources)

    result = defs.resolve_job_def("gated_job").execute_in_process()

    assert result.success
    materialized = {event.asset_key.path[-1] for event in result.get_asset_materialization_events()}
    assert materialized == {"tally", "small_note"}
    assert result.asset_value(dg.AssetKey(["gated", "small_note"])) == "small"
