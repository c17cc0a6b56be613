"""Run OSOP workflow files as observable, recoverable Dagster pipelines."""
