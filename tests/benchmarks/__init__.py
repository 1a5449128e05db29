"""The benchmark suite: `python -m tests.benchmarks` (not part of the pass/fail test run)."""
