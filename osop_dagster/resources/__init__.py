"""Dagster resources that carry the run-time semantics of OSOP node types."""
