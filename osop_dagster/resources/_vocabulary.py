"""The base of every node type's ``runtime`` vocabulary."""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from osop_dagster.constants import RUNTIME_SCHEMA_KEYS


class RuntimeVocabulary(BaseModel):
    """A node type's ``runtime`` keys: frozen, and strict about misspellings.

    The OSOP schema declares one pool of runtime keys for all node types (``engine`` for
    databases, ``model`` for agents, ...). Keys of that pool that a node type does not use, and
    ``x-`` extensions, are dropped before validation; any other unknown key is reported, so that
    ``metod: PATCH`` never passes silently.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_foreign_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        return {
            key: value
            for key, value in data.items()
            if key in cls.model_fields
            or not (key in RUNTIME_SCHEMA_KEYS or str(key).startswith("x-"))
        }
