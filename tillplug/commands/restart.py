"""Restarts that never cut a sale short: ``tillplug ready-to-restart`` and ``restart-when-ready``.

``ready-to-restart`` asks the running daemon (``GET /v1/restart``, with the API token like
``status``) and answers with its exit code: 0 safe, 1 not safe (the reason on one line), 2 cannot
tell (the daemon does not answer, refuses the token, or is a version without the question).

``restart-when-ready`` is what an update schedules (packaging/postinst.sh, as a transient systemd
unit): it asks every few seconds, restarts at the first safe moment or, after ``--within``
seconds, at once with the reason logged; then it checks that the new version answers within
``--start-within`` seconds and, if not, switches ``/opt/tillplug/current`` back to the previous
version's folder and restarts that.  A daemon that is not running at all (nothing listens) serves
no sale: it counts as safe for the update, though ``ready-to-restart`` itself says "cannot tell".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from tillplug.config.model import Config

EXIT_SAFE, EXIT_NOT_SAFE, EXIT_CANNOT_TELL = 0, 1, 2
INSTALL_ROOT = Path("/opt/tillplug")  # one folder per version, and the `current` and `previous` links


@dataclass(frozen=True)
class Verdict:
    code: int  # EXIT_SAFE, EXIT_NOT_SAFE or EXIT_CANNOT_TELL
    line: str  # one line for people and logs
    running: bool = True  # False: nothing listens on the API (no daemon to interrupt)


def api_target(config: Config) -> tuple[str, dict[str, str]]:
    """The API's base URL and the headers that carry its token (ConfigError if the token file is wrong)."""
    from tillplug.config import read_secret

    token = read_secret(config.api.token).reveal() if config.api.token else None
    host = config.api.host if config.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
    base = f"http://{'[' + host + ']' if ':' in host else host}:{config.api.port}"
    return base, ({"Authorization": f"Bearer {token}"} if token else {})


def ask(config: Config, timeout: float = 5.0) -> Verdict:
    """One question to the running daemon."""
    import httpx

    from tillplug.errors import ConfigError

    try:
        base, headers = api_target(config)
    except ConfigError as exc:  # the token file is missing or unreadable: the daemon cannot be asked
        return Verdict(EXIT_CANNOT_TELL, f"cannot tell: {exc.message}")
    url = base + "/v1/restart"
    try:
        r = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.ConnectError:
        return Verdict(EXIT_CANNOT_TELL, f"cannot tell: tillplug is not running (nothing listens on {url})", False)
    except httpx.TimeoutException:
        return Verdict(EXIT_CANNOT_TELL, f"cannot tell: tillplug does not answer on {url} within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Verdict(EXIT_CANNOT_TELL, f"cannot tell: {url}: {type(exc).__name__}")
    return _verdict_of(r, url)


def _verdict_of(r: httpx.Response, url: str) -> Verdict:
    if r.status_code == 401:
        return Verdict(EXIT_CANNOT_TELL, "cannot tell: the daemon refused the API token (api.token)")
    if r.status_code == 404:
        return Verdict(EXIT_CANNOT_TELL, "cannot tell: the running daemon is a version without /v1/restart")
    try:
        answer = r.json()
        safe, reason = bool(answer["safe"]), answer.get("reason")
    except (ValueError, KeyError, TypeError):
        return Verdict(EXIT_CANNOT_TELL, f"cannot tell: something on {url} answered HTTP {r.status_code}, not tillplug")
    if safe:
        return Verdict(EXIT_SAFE, "safe to restart: nothing in progress")
    return Verdict(EXIT_NOT_SAFE, f"not safe to restart: {' '.join(str(reason).split())}")


# -- the scheduled restart of an update ------------------------------------------------------


@dataclass
class RestartPlan:
    within: float = 900.0  # seconds to wait for a safe moment before restarting anyway
    every: float = 5.0  # seconds between questions
    start_within: float = 60.0  # seconds the new version has to answer before it is rolled back
    unit: str = "tillplug.service"
    expect: str | None = None  # the version that must answer after the restart (None: any)
    root: Path = INSTALL_ROOT


def _say(text: str) -> None:
    # stdout of a transient unit goes to the journal: `journalctl -u tillplug-update-restart`
    sys.stdout.write(f"tillplug restart-when-ready: {text}\n")
    sys.stdout.flush()


def wait_for_safe_moment(
    config: Config,
    plan: RestartPlan,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Ask until it is safe or the time is up; the reason for restarting now, to be logged."""
    deadline = clock() + plan.within
    last = ""
    while True:
        verdict = ask(config, timeout=min(5.0, max(plan.every, 1.0)))
        if verdict.code == EXIT_SAFE:
            return "safe moment: nothing in progress"
        if verdict.code == EXIT_CANNOT_TELL and not verdict.running:
            return "the daemon is not running: nothing to interrupt"
        if verdict.line != last:
            _say(f"waiting: {verdict.line}")
            last = verdict.line
        if clock() >= deadline:
            return f"no safe moment within {plan.within:g} s (last: {verdict.line}); restarting anyway"
        sleep(plan.every)


def running_version(config: Config, timeout: float) -> str | None:
    import httpx

    base, headers = api_target(config)
    try:
        r = httpx.get(base + "/v1/health", headers=headers, timeout=timeout)
        return str(r.json()["version"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def wait_started(config: Config, plan: RestartPlan, *, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The version that answers within ``start_within`` (the expected one, if any), else None."""
    deadline = time.monotonic() + plan.start_within
    while time.monotonic() < deadline:
        version = running_version(config, timeout=2.0)
        if version is not None and (plan.expect is None or version == plan.expect):
            return version
        sleep(0.5)
    return None


def switch_current(root: Path, version: str) -> None:
    """Point ``current`` at ``version``'s folder in one rename: never a moment without a link."""
    tmp = root / ".current.switch"
    tmp.unlink(missing_ok=True)
    os.symlink(version, tmp)
    os.replace(tmp, root / "current")


def systemctl(*args: str) -> int:
    return subprocess.run(["systemctl", *args], check=False).returncode


def restart_when_ready(config: Config, plan: RestartPlan) -> int:
    reason = wait_for_safe_moment(config, plan)
    _say(f"restarting {plan.unit}: {reason}")
    systemctl("restart", plan.unit)
    started = wait_started(config, plan)
    if started is not None:
        _say(f"tillplug {started} is running")
        return 0
    what = f"tillplug {plan.expect or '(new version)'} did not answer within {plan.start_within:g} s"
    previous = plan.root / "previous"
    if not previous.is_symlink() or not (previous.resolve() / "bin" / "tillplug").exists():
        _say(
            f"{what}; no previous version to roll back to. To go back by hand: "
            f"apt install tillplug=<the version before>, or ln -sfn <version> {plan.root}/current && "
            f"systemctl restart {plan.unit}"
        )
        return 1
    back = os.readlink(previous)
    switch_current(plan.root, back)
    _say(f"{what}; rolled back: {plan.root}/current -> {back}, restarting {plan.unit}")
    systemctl("restart", plan.unit)
    again = wait_started(config, RestartPlan(start_within=plan.start_within, expect=None, root=plan.root))
    _say(
        f"tillplug {again} is running after the rollback"
        if again
        else f"tillplug {back} did not answer either: journalctl -u {plan.unit}"
    )
    _say(
        f"apt still lists tillplug {plan.expect or 'the new version'} as installed; install a fixed version, "
        f"or ln -sfn {plan.expect or '<version>'} {plan.root}/current to try it again"
    )
    return 1
