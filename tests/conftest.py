import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tillplug.sim import SimServer

# Bounded everywhere: CI has 2 cores and every loop in a test must end.
settings.register_profile("default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")

SYSTEM_TESTS = Path(__file__).parent / "system"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/system/ is a system test: `pytest -m "not system"` is the everyday loop."""
    for item in items:
        if SYSTEM_TESTS in item.path.parents:
            item.add_marker(pytest.mark.system)


@pytest.fixture
def late_reactions_sim() -> Iterator[SimServer]:
    """An engine that applies a deduction's reaction 1.5 s late (the hostile dialect's timing)."""
    with SimServer() as sim:
        httpx.post(sim.url + "/_sim/dialect", json={"reactions": "delayed"}, timeout=10).raise_for_status()
        yield sim
