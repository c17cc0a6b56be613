import importlib
import logging
import shutil
from pathlib import Path

import dagster as dg
import pytest

from osop_dagster import constants
from osop_dagster.definitions import INVALID_GROUP, build_osop_definitions
from osop_dagster.io_manager import OsopJsonIOManager

BROKEN = """\
osop_version: "2.0"
id: broken
name: Broken
nodes:
  - id: fetch
    type: api
    purpose: Fetch
    runtime: {url: "https://api.example.com", method: FETCH}
edges:
  - {from: fetch, to: fetch, mode: loop}
"""


@pytest.fixture
def folder(tmp_path: Path, repo_root: Path, shared_dir: Path) -> Path:
    """The example workflow, a valid corpus workflow, and a broken file side by side."""
    shutil.copy(repo_root / "workflows" / "rest-api-workflow.osop.yaml", tmp_path)
    shutil.copy(shared_dir / "osop-corpus" / "osop-spec_examples_cicd-deploy.osop.yaml", tmp_path)
    (tmp_path / "broken.osop.yaml").write_text(BROKEN)
    return tmp_path


def test_folder_loads_every_good_workflow_beside_a_broken_one(folder: Path) -> None:
    defs = build_osop_definitions(folder)
    keys = defs.resolve_all_asset_keys()

    assert dg.AssetKey(["rest-api-workflow", "records_list"]) in keys
    assert any(key.path[0] == "cicd_deploy" for key in keys)
    assert defs.resolve_job_def("rest_api_workflow_job") is not None
    assert {schedule.name for schedule in defs.schedules} == {"rest_api_workflow_job_schedule"}


def test_broken_file_shows_in_the_catalog_with_its_located_problem(folder: Path) -> None:
    defs = build_osop_definitions(folder)
    spec = next(spec for spec in defs.resolve_all_asset_specs() if spec.group_name == INVALID_GROUP)

    assert spec.key == dg.AssetKey(["osop_invalid", "broken_osop_yaml"])
    assert "broken.osop.yaml, line 8, node 'fetch'" in spec.description
    assert "'FETCH'" in spec.description
    assert spec.metadata[constants.META_EXECUTABLE] is False


def test_broken_file_is_logged_as_one_error_per_problem(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        build_osop_definitions(folder)

    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "broken.osop.yaml, line 8, node 'fetch'" in errors[0].getMessage()


def test_code_location_reads_the_folder_from_the_environment(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(constants.ENV_WORKFLOWS_DIR, str(folder))
    import osop_dagster.code_location as code_location

    defs = importlib.reload(code_location).defs
    assert dg.AssetKey(["osop_invalid", "broken_osop_yaml"]) in defs.resolve_all_asset_keys()


def test_postgres_url_reaches_the_resource_as_an_env_var_not_a_value(
    monkeypatch: pytest.MonkeyPatch, repo_root: Path
) -> None:
    """The Postgres URL may carry a password: the UI and run config only see the variable."""
    monkeypatch.setenv(constants.ENV_POSTGRES_URL, "postgresql://u:hunter2-secret@db:5432/x")
    defs = build_osop_definitions(repo_root / "workflows")

    resource = defs.resources["osop_postgres"]
    assert isinstance(resource.url, dg.EnvVar)
    assert "hunter2-secret" not in repr(resource)


def test_ids_that_clash_as_dagster_names_reject_the_later_file(folder: Path) -> None:
    clash = (
        (folder / "rest-api-workflow.osop.yaml")
        .read_text()
        .replace("id: rest-api-workflow", "id: rest_api_workflow")
    )
    (folder / "z-clash.osop.yaml").write_text(clash)
    (folder / "broken.osop.yml").write_text(BROKEN)

    defs = build_osop_definitions(folder)

    invalid = {
        spec.key.path[-1]: spec.description
        for spec in defs.resolve_all_asset_specs()
        if spec.group_name == INVALID_GROUP
    }
    assert set(invalid) == {"broken_osop_yaml", "broken_osop_yml", "z_clash_osop_yaml"}
    assert "gives the same Dagster names" in invalid["z_clash_osop_yaml"]
    assert defs.resolve_job_def("rest_api_workflow_job") is not None


def test_output_and_node_names_need_not_be_identifiers(tmp_path: Path) -> None:
    (tmp_path / "spaced.osop.yaml").write_text(
        """\
osop_version: "2.0"
id: spaced
name: Spaced
nodes:
  - {id: "make list", type: cli, purpose: Make, runtime: {command: "jq -n '[1, 2]'"},
     outputs: ["records list"]}
  - {id: récords, type: cli, purpose: Count, runtime: {command: "jq 'length'"},
     inputs: ["records list"], outputs: ["a/b:c"]}
edges:
  - {from: "make list", to: récords}
"""
    )
    defs = build_osop_definitions(tmp_path)

    result = defs.resolve_job_def("spaced_job").execute_in_process(
        resources={"io_manager": OsopJsonIOManager(base_dir=str(tmp_path / "storage"))}
    )
    assert result.success
    assert result.asset_value(dg.AssetKey(["spaced", "a/b:c"])) == 2


def test_programs_besides_jq_are_allowed_only_through_the_environment(
    monkeypatch: pytest.MonkeyPatch, repo_root: Path
) -> None:
    monkeypatch.delenv(constants.ENV_ALLOWED_PROGRAMS, raising=False)
    assert build_osop_definitions(repo_root / "workflows").resources[
        "osop_shell"
    ].allowed_programs == ["jq"]

    monkeypatch.setenv(constants.ENV_ALLOWED_PROGRAMS, "python3, gzip")
    assert build_osop_definitions(repo_root / "workflows").resources[
        "osop_shell"
    ].allowed_programs == ["jq", "python3", "gzip"]
