"""Layered configuration: ``tillplug.toml`` and the drop-ins in ``conf.d/`` beside it.

A chain writes its layer once, a store its own, a lane the last (``10-chain.toml``,
``20-store.toml``, ``30-lane.toml``): drop-ins are read in name order and a later one wins.
Tables merge key by key; ``[[scanners]]`` and ``[[printers]]`` merge entry by entry, matched by
``name`` (a new name adds a device); any other value, lists included, is replaced whole.  Every
value remembers the file it came from, so an error names the file and ``--explain`` can say.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DROP_IN_DIR = "conf.d"
MERGED_BY_NAME = ("scanners", "printers")

# A key path as the loader spells it: ("scanners", 0, "port") is "scanners[0].port".
KeyPath = tuple[int | str, ...]


class LayerError(Exception):
    """A layer that cannot be merged: ``source`` and ``path`` say where."""

    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: {path}: {message}")
        self.source, self.path, self.message = source, path, message


@dataclass
class Merged:
    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)  # each leaf (and each device entry) → its file
    sources: list[str] = field(default_factory=list)  # every file read, in order

    def source_of(self, loc: KeyPath) -> str | None:
        """The file that set ``loc``; for a key set nowhere (missing, or a rule over a whole table), the
        files that wrote into the nearest table around it, joined by ' + '; None for the whole config."""
        for n in range(len(loc), 0, -1):
            found = self.origins.get(loc[:n])
            if found is not None:
                return found
            under = {s for p, s in self.origins.items() if p[:n] == loc[:n]}
            if under:
                return " + ".join(sorted(under, key=self.sources.index))
        return None


def drop_ins(main: Path) -> list[Path]:
    """The drop-ins beside ``main``, in name order; editors' and dpkg's leftovers are not ``*.toml``."""
    folder = main.parent / DROP_IN_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".toml" and not p.name.startswith(".") and p.is_file())


def merge(layers: Iterable[tuple[str, Mapping[str, Any]]]) -> Merged:
    """Merge parsed layers in order; a later layer wins key by key."""
    merged = Merged()
    for source, data in layers:
        merged.sources.append(source)
        _merge_table(merged, merged.data, data, (), source)
    return merged


def _merge_table(merged: Merged, into: dict[str, Any], layer: Mapping[str, Any], at: KeyPath, source: str) -> None:
    for key, value in layer.items():
        here = (*at, key)
        if at == () and key in MERGED_BY_NAME and isinstance(value, list):
            _merge_devices(merged, into, key, value, source)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge_table(merged, into[key], value, here, source)
        else:
            if isinstance(into.get(key), dict | list):
                _forget(merged, here)  # a table or list replaced whole: what was recorded under it goes
            else:
                merged.origins.pop(here, None)  # O(1): a file of 10,000 keys merges in linear time
            into[key] = copy.deepcopy(value)
            _record(merged, value, here, source)


def _merge_devices(merged: Merged, into: dict[str, Any], kind: str, entries: list[Any], source: str) -> None:
    existing = into.get(kind)
    if not isinstance(existing, list):
        _forget(merged, (kind,))
        existing = into[kind] = []
    by_name = {e.get("name"): i for i, e in enumerate(existing) if isinstance(e, dict)}
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise LayerError(source, f"{kind}[{n}]", f"must be a table ([[{kind}]]), not {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            # Without a name a later layer could never say which device it means.
            raise LayerError(source, f"{kind}[{n}].name", "is required: devices are merged across layers by name")
        if name in by_name:
            i = by_name[name]
            _merge_table(merged, existing[i], {k: v for k, v in entry.items() if k != "name"}, (kind, i), source)
        else:
            i = by_name[name] = len(existing)
            existing.append({})
            merged.origins[(kind, i)] = source  # the entry itself: where a missing key of it is reported
            _merge_table(merged, existing[i], entry, (kind, i), source)


def _forget(merged: Merged, at: KeyPath) -> None:
    """A value replaced whole: what was recorded under it no longer holds."""
    for path in [p for p in merged.origins if p[: len(at)] == at]:
        del merged.origins[path]


def _record(merged: Merged, value: Any, at: KeyPath, source: str) -> None:
    if isinstance(value, Mapping):
        if not value:
            merged.origins[at] = source
        for key, inner in value.items():
            _record(merged, inner, (*at, key), source)
    else:
        merged.origins[at] = source  # lists are one value: a later layer replaces them whole


def dotted(loc: Iterable[int | str]) -> str:
    """A key path as the config file writes it: ``printers[0].connection``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def explain(values: Mapping[str, Any], merged: Merged) -> list[tuple[str, Any, str]]:
    """(key path, value, where it came from) for every leaf of the validated config, defaults too."""
    rows: list[tuple[str, Any, str]] = []

    def walk(value: Any, at: KeyPath) -> None:
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                walk(inner, (*at, key))
        elif at and at[0] in MERGED_BY_NAME and len(at) == 1 and isinstance(value, list) and value:
            for i, entry in enumerate(value):
                walk(entry, (*at, i))
        else:
            rows.append((dotted(at), value, merged.origins.get(at) or "(default)"))

    walk(values, ())
    return rows
