"""Builds a Dagster code location from a folder of OSOP workflow files."""

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from osop_dagster import constants
from osop_dagster.compiler import CompiledWorkflow, build_osop_assets
from osop_dagster.errors import OsopSpecError, SpecProblem
from osop_dagster.io_manager import OsopJsonIOManager
from osop_dagster.loader import load_workflow, load_workflow_folder
from osop_dagster.model import OsopWorkflow
from osop_dagster.resources.http import OsopHttpResource
from osop_dagster.resources.postgres import OsopPostgresResource
from osop_dagster.resources.shell import OsopShellResource
from osop_dagster.translator import OsopTranslator, python_name

INVALID_GROUP = "osop_invalid_workflows"


def build_osop_resources() -> dict[str, Any]:
    """The resources that run OSOP nodes, configured from the environment.

    ``OSOP_API_BASE_URL`` replaces the base URL of every ``api`` node, ``OSOP_POSTGRES_URL``
    names the Postgres server of ``db`` nodes and ``OSOP_ALLOWED_PROGRAMS`` lists the programs
    besides ``jq`` that ``cli`` nodes may run. The Postgres URL is passed as a
    :class:`dagster.EnvVar`, so its password never shows in the UI or in run config.
    """
    postgres_url = (
        dg.EnvVar(constants.ENV_POSTGRES_URL)
        if os.environ.get(constants.ENV_POSTGRES_URL)
        else None
    )
    return {
        "osop_http": OsopHttpResource(base_url=os.environ.get(constants.ENV_API_BASE_URL) or None),
        "osop_shell": OsopShellResource(allowed_programs=_allowed_programs()),
        "osop_postgres": OsopPostgresResource(url=postgres_url),
        "io_manager": OsopJsonIOManager(),
    }


def _allowed_programs() -> list[str]:
    extra = os.environ.get(constants.ENV_ALLOWED_PROGRAMS, "")
    return ["jq", *(name.strip() for name in extra.split(",") if name.strip())]


def build_osop_definitions(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    translator: OsopTranslator | None = None,
    resources: Mapping[str, Any] | None = None,
) -> dg.Definitions:
    """Loads OSOP workflow files into Dagster definitions: assets, one job each, schedules.

    A broken file does not hide the others: it is logged as an error, one sentence per problem,
    and shown in the asset catalog as an asset of the group ``osop_invalid_workflows`` whose
    description says what to fix.

    Args:
        source: A folder of workflow files, one file, or several files.
        translator: Decides keys, groups and descriptions; :class:`OsopTranslator` by default.
        resources: Replaces some or all of :func:`build_osop_resources`.

    Example:
        .. code-block:: python

            from osop_dagster import build_osop_definitions

            defs = build_osop_definitions("workflows")
    """
    with _collector_paused():
        return _build_definitions(source, translator or OsopTranslator(), resources)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses Python's cycle collector while a code location is built.

    Building creates hundreds of thousands of objects that live as long as the code location;
    each full collection meanwhile walks all of them for nothing, which is a sixth of the build
    time at 200 workflows. Reference counting still frees everything that is dropped, and the
    collector resumes, as it was, when the build ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build_definitions(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    translator: OsopTranslator,
    resources: Mapping[str, Any] | None,
) -> dg.Definitions:
    workflows, errors = _load(source)

    compiled: list[CompiledWorkflow] = []
    claimed: dict[str, OsopWorkflow] = {}
    for workflow in workflows:
        try:
            item = build_osop_assets(workflow, translator)
            _claim_names(workflow, translator, claimed)
            compiled.append(item)
        except OsopSpecError as error:
            errors.append(error)
        except dg.DagsterInvalidDefinitionError as error:
            # A safety net: whatever Dagster refuses in one file must not hide the others.
            problem = SpecProblem(workflow.source_path, None, "", f"Dagster refused it: {error}")
            errors.append(OsopSpecError([problem]))

    logger = dg.get_dagster_logger()
    for error in errors:
        for problem in error.problems:
            logger.error("Skipping an invalid OSOP workflow file: %s", problem)

    return dg.Definitions(
        assets=[
            *(asset for item in compiled for asset in item.assets),
            *_invalid_file_specs(errors),
        ],
        jobs=[item.job for item in compiled if item.job is not None],
        schedules=[schedule for item in compiled for schedule in item.schedules],
        sensors=[sensor for item in compiled for sensor in item.sensors],
        resources={**build_osop_resources(), **(resources or {})},
        executor=dg.in_process_executor,
    )


def _claim_names(
    workflow: OsopWorkflow, translator: OsopTranslator, claimed: dict[str, OsopWorkflow]
) -> None:
    """Reserves the workflow's group name; ids such as ``a-b`` and ``a_b`` would share it."""
    name = translator.get_group_name(workflow)
    other = claimed.setdefault(name, workflow)
    if other is not workflow:
        raise OsopSpecError(
            [
                SpecProblem(
                    path=workflow.source_path,
                    line=workflow.line_of(("id",)),
                    where="",
                    message=(
                        f"the workflow id {workflow.id!r} gives the same Dagster names (group "
                        f"{name!r}, job {translator.get_job_name(workflow)!r}) as the id "
                        f"{other.id!r} in {other.source_path}"
                    ),
                    fix="Rename one of the two workflow ids.",
                )
            ]
        )


def _load(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> tuple[list[OsopWorkflow], list[OsopSpecError]]:
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        workflows, errors = load_workflow_folder(source)
        return list(workflows), list(errors)
    paths = [source] if isinstance(source, str | os.PathLike) else list(source)
    workflows, errors = [], []
    for path in paths:
        try:
            workflows.append(load_workflow(path))
        except OsopSpecError as error:
            errors.append(error)
    return workflows, errors


def _invalid_file_specs(errors: list[OsopSpecError]) -> list[dg.AssetSpec]:
    specs: list[dg.AssetSpec] = []
    names: set[str] = set()
    for error in errors:
        base = python_name(Path(error.path).name)
        name = next(
            candidate
            for candidate in (base, *(f"{base}_{number}" for number in range(2, len(errors) + 2)))
            if candidate not in names
        )
        names.add(name)
        specs.append(
            dg.AssetSpec(
                key=dg.AssetKey(["osop_invalid", name]),
                group_name=INVALID_GROUP,
                description=(
                    "This workflow file could not be loaded, so none of its assets exist. Fix it "
                    "and reload the code location:\n\n"
                    + "\n".join(f"- {problem}" for problem in error.problems)
                ),
                metadata={
                    constants.META_SOURCE_FILE: error.path,
                    constants.META_EXECUTABLE: False,
                },
                kinds={"osop"},
            )
        )
    return specs
