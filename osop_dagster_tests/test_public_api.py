import ast
from pathlib import Path

import osop_dagster
import osop_dagster.resources


def _imported_names(module_file: str) -> set[str]:
    tree = ast.parse(Path(module_file).read_text())
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_package_all_is_sorted_and_matches_its_imports() -> None:
    """Every name the package imports is public, and ``__all__`` lists exactly those, sorted."""
    assert osop_dagster.__all__ == sorted(osop_dagster.__all__)
    assert set(osop_dagster.__all__) == _imported_names(osop_dagster.__file__)
    assert all(hasattr(osop_dagster, name) for name in osop_dagster.__all__)


def test_resources_all_is_sorted_and_matches_its_imports() -> None:
    names = osop_dagster.resources.__all__
    assert names == sorted(names)
    assert set(names) == _imported_names(osop_dagster.resources.__file__)
