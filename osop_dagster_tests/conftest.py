import shutil
from pathlib import Path

import pytest

# Fixtures that start real local servers live in their own modules; importing them here makes
# them visible to every test module.
from osop_dagster_tests.fixtures.postgres import postgres_url
from osop_dagster_tests.fixtures.reference_api import fresh_reference_api, reference_api

__all__ = ["fresh_reference_api", "postgres_url", "reference_api"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout of this project."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``shared/`` folder that lies beside every checkout and CI clone."""
    shared = REPO_ROOT.parent / "shared"
    if not (shared / "osop-spec" / "osop.schema.json").is_file():
        pytest.fail(f"The shared test data is missing: expected {shared} beside the checkout.")
    return shared


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the files a user runs the commands from, with no state yet."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO_ROOT / name, project)
    shutil.copytree(REPO_ROOT / "workflows", project / "workflows")
    return project
