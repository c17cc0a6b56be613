"""End-to-end performance benchmark of osop_dagster against a plain script and the server's limit.

Run it from the project folder: ``python -m benchmarks.run --records 100000 --repeat 3``.
"""
