"""What a particular engine is known to do where WLL publishes nothing (the dialect file).

``tillplug engine-check`` observes a real engine and writes these answers as JSON to the
file ``engine.dialect_file`` names; the client reads it at start.  ``unknown`` is always a
valid answer and always the safe one: tillplug then trusts nothing it has not seen.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tillplug.errors import ConfigError

FILE_VERSION = 1
MAX_DIALECT_BYTES = 1 << 20  # engine-check writes a few KiB; /dev/zero was once read to 1.9 GB
TEST_MEMBER = re.compile(r"[A-Za-z0-9-]{1,64}")  # a WLL user id (a UUID)
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


def read_test_member(path: str | os.PathLike[str] | None) -> str | None:
    """The test member engine-check stored (a WLL id), or None: no file, none stored, or not an id."""
    if path is None:
        return None
    data = _bounded_json(Path(path))
    member = data.get("testMember") if isinstance(data, dict) else None
    return member if isinstance(member, str) and TEST_MEMBER.fullmatch(member) else None


# What the chain's relay does (docs/relay.md): its look-ups by eventKey are exact (its own table),
# its owner and member filters are checked.
RELAY_DIALECT = EngineDialect(
    event_key_filter="honoured", order_key_filter="honoured", owner_filter="honoured", user_filter="honoured"
)


def read_dialect_file(path: str | os.PathLike[str] | None) -> EngineDialect:
    """The answers in ``path``; every answer unknown when no file is named.

    Read with bounds, since it is read at every start: a regular file only (a device or a FIFO
    never ends or never answers), at most ``MAX_DIALECT_BYTES``, nested at most ``MAX_DEPTH`` deep
    (the JSON parser recurses; a 100k-deep file crashed every start).
    """
    if path is None:
        return EngineDialect()
    data = _bounded_json(Path(path))
    answers = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(answers, dict):
        raise ConfigError(f"engine.dialect_file {path} has no 'answers' object")
    known = {f.name for f in fields(EngineDialect)}
    values: dict[str, str] = {}
    for key, value in answers.items():
        if key in known and isinstance(value, str) and value in ANSWERS[key]:
            values[key] = value
    return EngineDialect(**values)


MAX_DEPTH = 32  # the file engine-check writes is 3 deep
_JSON_SPECIAL = re.compile(r'["\\\[\]{}]')


def _bounded_json(path: Path) -> Any:
    """The file's JSON, read only once it is known to be small and shallow enough to parse safely."""
    where = f"engine.dialect_file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the start
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist; run tillplug engine-check") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{where} is not a regular file; give the JSON file engine-check wrote")
        raw = _read_at_most(fd, MAX_DIALECT_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_DIALECT_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_DIALECT_BYTES} bytes; it is not a file engine-check wrote")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    if _nesting(text) > MAX_DEPTH:
        raise ConfigError(f"{where} is nested more than {MAX_DEPTH} deep; it is not a file engine-check wrote")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where} is not valid JSON ({type(exc).__name__})") from None


def _nesting(text: str) -> int:
    """How deep the JSON text's arrays and objects nest (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # a backslash inside a string: the character after it is not special
    for token in _JSON_SPECIAL.finditer(text):
        char, at = token.group(), token.start()
        if at == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = os.read(fd, limit - size)
        except OSError as exc:
            raise ConfigError(f"engine.dialect_file cannot be read ({exc.strerror})") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def write_dialect_file(
    path: str | os.PathLike[str], dialect: EngineDialect, evidence: dict[str, Any], *, test_member: str | None = None
) -> None:
    """Write atomically (temp file, then rename) so a daemon never reads half a file.

    ``test_member``: the WLL id of the technician's test card engine-check used, so the daemon can
    repeat the side-effect-free reactor check (``tillplug.engine.reactors``) at every start."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"version": FILE_VERSION, "answers": dialect.to_dict(), "evidence": evidence}
    if test_member is not None:
        body["testMember"] = test_member
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target)
