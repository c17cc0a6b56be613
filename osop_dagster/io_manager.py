"""Stores OSOP asset values as JSON files, one per asset, written atomically."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from osop_dagster._json_text import JsonText, encode
from osop_dagster.constants import META_LOAD_AS_TEXT
from osop_dagster.errors import OsopExecutionError


class OsopJsonIOManager(dg.ConfigurableIOManager):
    """Keeps every OSOP output as compact JSON under ``<base_dir>/<asset key path>.json``.

    OSOP values are JSON by nature (API bodies, records, jq results), so JSON keeps them readable
    and safe to load, unlike pickles. A value is written to a temporary file that replaces the
    old one only once complete: a failed run never leaves a half-written asset behind. Lists are
    written in the line layout of :mod:`osop_dagster._json_text`, a run of items to a line, so
    that a reader can split them without parsing. An input whose definition metadata sets
    ``osop/load_as_text`` receives the stored text as a
    :class:`~osop_dagster._json_text.JsonText` instead of the decoded value.

    Attributes:
        base_dir: Folder for the files; by default ``osop`` under the Dagster instance's storage
            directory.
    """

    base_dir: str | None = None

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        if self.base_dir:
            base = Path(self.base_dir)
        else:
            try:
                instance = context.step_context.instance
            except dg.DagsterInvariantViolationError:
                # Outside a run (Definitions.load_asset_value) there is no step, but an instance.
                instance = context.instance
            base = Path(instance.storage_directory()) / "osop"
        *folders, name = context.asset_key.path
        return base.joinpath(*folders, f"{name}.json")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Writes ``obj`` as JSON, atomically; a list one run of items to a line."""
        path = self._path(context)
        try:
            if isinstance(obj, JsonText):
                text = obj
            elif isinstance(obj, list):
                text = JsonText.from_list(obj)
            else:
                text = JsonText(encode(obj))
        except (TypeError, ValueError) as error:
            raise OsopExecutionError(
                f"The value of asset {context.asset_key.to_user_string()!r} cannot be stored as "
                f"JSON: {error}."
            ) from error

        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as handle:
            for piece in text.pieces():
                written += handle.write(piece)
        os.replace(handle.name, path)
        context.add_output_metadata({"osop/stored_bytes": written})

    def load_input(self, context: dg.InputContext) -> Any:
        """Reads the JSON value of the upstream asset, or its text for inputs that ask for it."""
        path = self._path(context)
        if not path.is_file():
            raise OsopExecutionError(
                f"Asset {context.asset_key.to_user_string()!r} has no stored value at {path}; "
                "materialize it first."
            )
        if context.definition_metadata.get(META_LOAD_AS_TEXT):
            return JsonText.from_file(path)
        with path.open("rb") as handle:
            return json.load(handle)
