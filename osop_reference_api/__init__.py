"""A local stand-in for the REST API of the example workflow, for tests, demos and benchmarks."""
