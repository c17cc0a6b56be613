"""The contenders of the benchmark, each run as a cold child process by :mod:`benchmarks.run`."""
