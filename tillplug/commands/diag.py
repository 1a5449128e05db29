"""``tillplug diag --out FILE``: one bundle for a support ticket, with no secret and no personal data.

What goes in: the merged config as ``check-config --explain`` shows it (secret files by path and
state, never their contents), the daemon's health, the outbox's, intents' and spool's counts, the
versions, and the last hour of tillplug's journal.  Every text is passed through
``tillplug.logs.scrub`` as it is written, so member ids and card numbers are masked even in lines
an older version logged; the secrets are read (when this user can) only so that they can be masked.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from tillplug import __version__
from tillplug.config.layers import explain
from tillplug.config.loader import Report, check_config, check_secret, read_secret, secret_refs
from tillplug.config.model import Config
from tillplug.errors import ConfigError
from tillplug.logs import scrub

UNIT = "tillplug.service"
JOURNAL_WINDOW = "1 hour ago"
JOURNAL_TIMEOUT = 30.0  # seconds: a till's journal for an hour is small
HEALTH_TIMEOUT = 5.0
MAX_JOURNAL_BYTES = 8 * 1024 * 1024  # a log storm must not make a bundle no ticket accepts
TOP = "tillplug-diag"
WAITING = "('pending', 'sending')"

JournalReader = Callable[[], str]


def config_text(path: str, report: Report[Config]) -> str:
    lines = [f"# tillplug check-config --explain {path}"]
    if report.layers is not None:
        lines += [f"# layer: {source}" for source in report.layers.sources]
    lines += [str(p) for p in report.problems]
    if report.config is not None and report.layers is not None:
        for key, value, source in explain(report.config.model_dump(mode="json"), report.layers):
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}  # {source}")
        lines.append("")
        lines.append("# secret files: where they are and whether they are usable (never what they hold)")
        for key, ref in secret_refs(report.config):
            findings = check_secret(ref)
            lines.append(f"{key} = {ref}: " + ("; ".join(m for _, m in findings) if findings else "ok"))
    else:
        lines.append("# the config is not valid: only its problems are shown (a file may hold a secret inline)")
    return "\n".join(lines) + "\n"


def mask_secrets_of(config: Config) -> None:
    """Read each secret so that ``scrub`` masks it wherever it appears (an old traceback, a header)."""
    for _, ref in secret_refs(config):
        with contextlib.suppress(ConfigError, OSError):
            read_secret(ref)  # registers it with tillplug.logs; the value goes nowhere else


def health(config: Config | None) -> dict[str, Any]:
    if config is None:
        return {"status": "unknown", "why": "the config is not valid: the daemon's address is not known"}
    import httpx

    host = config.api.host if config.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.api.port}/v1/health"
    headers = {}
    if config.api.token:
        try:
            headers["Authorization"] = f"Bearer {read_secret(config.api.token).reveal()}"
        except ConfigError as exc:
            return {"status": "unknown", "url": url, "why": exc.message}
    try:
        answer: dict[str, Any] = httpx.get(url, headers=headers, timeout=HEALTH_TIMEOUT).json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"status": "not_running", "url": url, "why": type(exc).__name__}
    return answer


def _read_only(path: Path) -> sqlite3.Connection | None:
    """The database as it is, opened read-only beside a running daemon (nothing migrated, nothing created)."""
    if not path.is_file():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def _counts(db: sqlite3.Connection, sql: str) -> Any:
    try:
        return [list(row) for row in db.execute(sql).fetchall()]
    except sqlite3.Error as exc:
        return f"cannot be read: {exc}"


def state(config: Config | None) -> dict[str, Any]:
    """Counts by state, the oldest waiting write, the dead rows' reasons: no bodies, no member ids."""
    if config is None:
        return {"why": "the config is not valid: the state folder is not known"}
    now = time.time()
    found: dict[str, Any] = {"state_dir": str(config.state_dir)}
    queries = {
        "outbox.sqlite3": {
            "outbox_by_state": "SELECT state, COUNT(*) FROM outbox GROUP BY state",
            "outbox_oldest_waiting_age_s": f"SELECT ROUND({now} - MIN(created)) FROM outbox WHERE state IN {WAITING}",
            "outbox_dead_reasons": "SELECT kind, last_error, COUNT(*) FROM outbox WHERE state='dead' GROUP BY 1, 2",
            "checkouts_by_state": "SELECT state, COUNT(*) FROM checkouts GROUP BY state",
            "deductions_by_state": "SELECT state, COUNT(*) FROM deductions GROUP BY state",
            "burns_by_state": "SELECT state, COUNT(*) FROM burns GROUP BY state",
        },
        "print_jobs.sqlite3": {
            "print_jobs_by_state": "SELECT printer, state, reason, COUNT(*) FROM print_jobs GROUP BY 1, 2, 3",
        },
    }
    for name, asked in queries.items():
        path = config.state_dir / name
        try:
            db = _read_only(path)
        except sqlite3.Error as exc:
            found[name] = f"cannot be opened: {exc}"
            continue
        if db is None:
            found[name] = "not there"
            continue
        with contextlib.closing(db):
            found[name] = {"bytes": path.stat().st_size} | {key: _counts(db, sql) for key, sql in asked.items()}
    return found


def versions() -> dict[str, Any]:
    deps: dict[str, str] = {}
    for requirement in metadata.requires("tillplug") or []:
        if "extra ==" in requirement:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)  # type: ignore[union-attr]
        try:
            deps[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            deps[name] = "not installed"
    package = None
    if shutil.which("dpkg-query"):
        run = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "tillplug"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        package = run.stdout.strip() if run.returncode == 0 else "not installed by dpkg"
    return {
        "tillplug": __version__,
        "package": package,
        "python": sys.version,
        "platform": platform.platform(),
        "dependencies": deps,
    }


def journal(unit: str = UNIT) -> str:
    """The last hour of the unit's journal, or a sentence saying why there is none."""
    if shutil.which("journalctl") is None:
        return "journalctl is not installed on this machine: no journal lines are included.\n"
    # --namespace=*: the lines are found whether or not the unit logs to its own namespace (ops/journald).
    command = ["journalctl", "--namespace=*", "-u", unit, "--since", JOURNAL_WINDOW, "-o", "short-iso", "-q"]
    command += ["--no-pager"]
    try:
        run = subprocess.run(command, check=False, capture_output=True, timeout=JOURNAL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"journalctl did not answer within {JOURNAL_TIMEOUT:.0f} s: no journal lines are included.\n"
    text = run.stdout[-MAX_JOURNAL_BYTES:].decode("utf-8", "replace")
    if run.returncode != 0:
        why = run.stderr.decode("utf-8", "replace").strip()
        return f"journalctl failed (exit {run.returncode}): {why}\n{text}"
    return text or f"no lines from {unit} in the last hour.\n"


def write_bundle(config_path: str, out: Path, *, journal_reader: JournalReader = journal) -> list[str]:
    """Write the bundle to ``out`` (tar.gz); the names of its files."""
    report = check_config(config_path)
    config = report.config if report.ok else None
    if config is not None:
        mask_secrets_of(config)
    parts = {
        "config.txt": config_text(config_path, report),
        "health.json": json.dumps(health(config), indent=2) + "\n",
        "state.json": json.dumps(state(config), indent=2) + "\n",
        "versions.json": json.dumps(versions(), indent=2) + "\n",
        "journal.txt": journal_reader(),
    }
    parts["README.txt"] = (
        f"tillplug diag bundle, made {time.strftime('%Y-%m-%d %H:%M:%S %z')} on {platform.node()}\n"
        "Member ids and card numbers are masked (…1234), secrets replaced by ********; secret files are\n"
        "named by path, never read into the bundle. Files: " + ", ".join(parts) + "\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name, text in parts.items():
            data = scrub(text).encode("utf-8")
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    partial.chmod(0o600)
    partial.replace(out)  # a bundle is whole or absent
    return list(parts)
