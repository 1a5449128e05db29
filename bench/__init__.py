"""The benchmark suite: `python -m bench` (not part of the pass/fail test run)."""
