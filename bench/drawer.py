"""How soon a cash drawer shut reaches the event stream as ``drawer_state``.

    python -m bench.drawer [--cycles 10]

Against emupos (the independent ESC/POS emulator in ``.venv-emu``, as the tests use it): the
daemon kicks the drawer, the emulator's drawer is shut through its control API, and the time
from that call to the ``drawer_state`` event's own time is the latency.  The sensor is read with
DLE EOT 1 every ``tillplug.spool.drawer.WATCH_EVERY`` seconds while the printer is idle, so the
figure is bounded by that interval plus a round trip.  Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.emulator import Emulator
from tillplug.commands.virtual.till import VirtualTill
from tillplug.spool.drawer import WATCH_EVERY


def measure(cycles: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="tillplug-bench-drawer-"))
    emulator = Emulator(work / "emupos")
    try:
        printer = {"name": "p1", "connection": emulator.url, "lane": 1, "profile": "TM-T20II"}
        printer |= {"drawer_sensor": True, "drawer_open_level": "high"}
        with VirtualTill(work / "till", printers=[printer]) as till:

            def told() -> list[dict[str, Any]]:
                return [e for e in till.events() if e["type"] == "drawer_state"]

            def told_count(n: int) -> Callable[[], bool]:
                return lambda: len(told()) == n

            assert till.wait_for(told_count(1), 15), "the drawer was never read"
            latencies = []
            for _ in range(cycles):
                seen = len(told())
                till.api.post("/v1/drawer/open", json={})
                assert till.wait_for(told_count(seen + 1), 10), "the drawer did not open"
                started = time.time()
                emulator.api.post("/devices/front/drawer/close")
                assert till.wait_for(told_count(seen + 2), 10), "the close was not seen"
                latencies.append(told()[-1]["at"] - started)
            return latencies
    finally:
        emulator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    latencies = measure(args.cycles)
    print(
        f"drawer shut → drawer_state, {len(latencies)} cycles: median {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms (sensor read every {WATCH_EVERY * 1000:.0f} ms while idle)"
    )


if __name__ == "__main__":
    main()
