"""Run OSOP workflow files as observable, recoverable Dagster pipelines.

Example:
    .. code-block:: python

        # definitions.py of a Dagster code location
        from osop_dagster import build_osop_definitions

        defs = build_osop_definitions("workflows")
"""

from osop_dagster.compiler import CompiledWorkflow, build_osop_assets
from osop_dagster.definitions import build_osop_definitions, build_osop_resources
from osop_dagster.errors import (
    OsopAuthError,
    OsopConfigError,
    OsopDatabaseError,
    OsopError,
    OsopExecutionError,
    OsopHttpError,
    OsopShellError,
    OsopSpecError,
    SpecProblem,
)
from osop_dagster.io_manager import OsopJsonIOManager
from osop_dagster.loader import load_workflow, load_workflow_folder, load_workflow_text
from osop_dagster.model import OsopEdge, OsopNode, OsopWorkflow
from osop_dagster.resources.http import ApiRuntime, OsopHttpResource
from osop_dagster.resources.postgres import DbRuntime, OsopPostgresResource
from osop_dagster.resources.shell import CliRuntime, OsopShellResource
from osop_dagster.translator import OsopTranslator

__all__ = [
    "ApiRuntime",
    "CliRuntime",
    "CompiledWorkflow",
    "DbRuntime",
    "OsopAuthError",
    "OsopConfigError",
    "OsopDatabaseError",
    "OsopEdge",
    "OsopError",
    "OsopExecutionError",
    "OsopHttpError",
    "OsopHttpResource",
    "OsopJsonIOManager",
    "OsopNode",
    "OsopPostgresResource",
    "OsopShellError",
    "OsopShellResource",
    "OsopSpecError",
    "OsopTranslator",
    "OsopWorkflow",
    "SpecProblem",
    "build_osop_assets",
    "build_osop_definitions",
    "build_osop_resources",
    "load_workflow",
    "load_workflow_folder",
    "load_workflow_text",
]
