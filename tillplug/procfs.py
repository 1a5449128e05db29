"""Who holds a device node, read from ``/proc`` (a staged root in tests and in ``doctor --root``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str


def running_commands(proc: Path = Path("/proc")) -> set[str]:
    """The command names of every process ``proc`` lists."""
    names: set[str] = set()
    for entry in _processes(proc):
        try:
            names.add((entry / "comm").read_text().strip())
        except OSError:
            continue  # the process ended while we looked
    return names


def holders(node: str | Path, proc: Path = Path("/proc")) -> list[Holder]:
    """Every other process with ``node`` open.  Unreadable processes (not ours) are skipped."""
    target = os.path.realpath(node)
    found: list[Holder] = []
    for entry in _processes(proc):
        if int(entry.name) == os.getpid():
            continue
        try:
            if any(os.path.realpath(fd) == target for fd in (entry / "fd").iterdir()):
                found.append(Holder(int(entry.name), (entry / "comm").read_text().strip()))
        except OSError:
            continue
    return found


def _processes(proc: Path) -> list[Path]:
    try:
        return [entry for entry in proc.iterdir() if entry.name.isdigit()]
    except OSError:
        return []
