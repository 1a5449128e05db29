"""Drivers come from the ``tillplug.drivers`` entry-point group, built-ins included.

A driver that fails to import is reported (which, why) and skipped; it never
stops the daemon or the other drivers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tillplug.errors import DriverError

GROUP = "tillplug.drivers"
log = logging.getLogger(__name__)


@dataclass
class Registry:
    drivers: dict[str, Any] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # name -> why it did not load
    # Installed, not imported yet (``load_drivers(lazily=True)``): imported by the first ``get``.
    unloaded: dict[str, EntryPoint] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name in self.unloaded:
            self._load(self.unloaded.pop(name))
        if name in self.drivers:
            return self.drivers[name]
        if name in self.broken:
            raise DriverError(f"driver '{name}' is installed but cannot load: {self.broken[name]}")
        installed = ", ".join(sorted({*self.drivers, *self.unloaded})) or "none"
        raise DriverError(f"no driver named '{name}' (installed: {installed})")

    def _load(self, ep: EntryPoint) -> None:
        try:
            cls = ep.load()
            kind = getattr(cls, "kind", None)
            if kind not in ("scanner", "printer", "display"):
                raise TypeError(f"{ep.value} is not a tillplug driver (no kind 'scanner', 'printer' or 'display')")
        except Exception as exc:  # a broken plug-in must never be fatal
            why = f"{type(exc).__name__}: {exc}"
            self.broken[ep.name] = why
            log.warning("driver %s (%s) skipped: %s", ep.name, ep.value, why)
            return
        self.drivers[ep.name] = cls


def _entry_points() -> list[EntryPoint]:
    return list(entry_points(group=GROUP))


def driver_names() -> set[str]:
    """Names of every installed driver, without importing any of them."""
    return {ep.name for ep in _entry_points()}


def load_drivers(*, lazily: bool = False) -> Registry:
    """Every installed driver, imported now; ``lazily``, each only when first asked for (the daemon:
    a till without a keyboard scanner never imports the HID driver)."""
    registry = Registry()
    for ep in _entry_points():
        if lazily:
            registry.unloaded[ep.name] = ep
        else:
            registry._load(ep)
    return registry
