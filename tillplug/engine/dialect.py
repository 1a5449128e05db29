"""What a particular engine is known to do where WLL publishes nothing (the dialect file).

``tillplug engine-check`` observes a real engine and writes these answers as JSON to the
file ``engine.dialect_file`` names; the client reads it at start.  ``unknown`` is always a
valid answer and always the safe one: tillplug then trusts nothing it has not seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tillplug.errors import ConfigError

FILE_VERSION = 1
FILTERS = ("honoured", "ignored", "rejected", "unknown")
ANSWERS: dict[str, tuple[str, ...]] = {
    "reactions": ("flat", "nested", "delayed", "never", "unknown"),
    "event_key_filter": FILTERS,
    "order_key_filter": FILTERS,
    "owner_filter": FILTERS,
    "user_filter": FILTERS,
    "voucher_refusals": ("codes", "status_only", "unknown"),
    "write_bodies": ("normal", "empty", "unreadable", "unknown"),
    "audience_checked": ("yes", "no", "unknown"),
    "auth_identifier_lookup": ("answered", "refused", "unknown"),
    # Does the engine refuse a second event carrying an eventKey it already has (engine-check --yes)?
    "duplicate_event_key": ("rejected", "accepted", "unknown"),
}


@dataclass(frozen=True)
class EngineDialect:
    reactions: str = "unknown"
    event_key_filter: str = "unknown"
    order_key_filter: str = "unknown"
    owner_filter: str = "unknown"
    user_filter: str = "unknown"
    voucher_refusals: str = "unknown"
    write_bodies: str = "unknown"
    audience_checked: str = "unknown"
    auth_identifier_lookup: str = "unknown"
    duplicate_event_key: str = "unknown"

    def filter_works(self, kind: str) -> bool:
        """True only if engine-check saw the look-up filter for ``kind`` (event or order) work."""
        answer = self.event_key_filter if kind == "event" else self.order_key_filter
        return answer == "honoured"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def read_dialect_file(path: str | os.PathLike[str] | None) -> EngineDialect:
    """The answers in ``path``; every answer unknown when no file is named."""
    if path is None:
        return EngineDialect()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"engine.dialect_file {path} does not exist; run tillplug engine-check") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"engine.dialect_file {path} cannot be read ({type(exc).__name__})") from None
    answers = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(answers, dict):
        raise ConfigError(f"engine.dialect_file {path} has no 'answers' object")
    known = {f.name for f in fields(EngineDialect)}
    values: dict[str, str] = {}
    for key, value in answers.items():
        if key in known and isinstance(value, str) and value in ANSWERS[key]:
            values[key] = value
    return EngineDialect(**values)


def write_dialect_file(path: str | os.PathLike[str], dialect: EngineDialect, evidence: dict[str, Any]) -> None:
    """Write atomically (temp file, then rename) so a daemon never reads half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": FILE_VERSION, "answers": dialect.to_dict(), "evidence": evidence}
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target)
