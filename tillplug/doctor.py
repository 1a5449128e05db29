"""``tillplug doctor``: checks the things that go wrong on real tills, one plain verdict per line.

Everything is read through ``root`` (``/`` on a till, a prepared folder in the
tests), so each fault can be staged without touching the machine's own /etc.
"""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from tillplug.procfs import holders, running_commands
from tillplug.service import GROUP, RULES_NAME, USER

OK, WARN, FAIL = "ok", "warn", "FAIL"
HOLDERS = {
    "ModemManager": "ModemManager probes serial ports with AT commands (the udev rules set "
    "ID_MM_DEVICE_IGNORE; or: systemctl disable --now ModemManager)",
    "brltty": "brltty grabs USB-serial adapters (CH340, CP210x, FTDI): apt remove brltty, or mask its udev rules",
}


@dataclass
class Finding:
    verdict: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.verdict:>4}] {self.check}: {self.detail}"


class Doctor:
    def __init__(
        self,
        config_path: str,
        *,
        root: str | os.PathLike[str] = "/",
        clock: Callable[[], float] = time.time,
        disk_usage: Callable[[str], Any] = shutil.disk_usage,
    ) -> None:
        self.config_path = config_path
        self.root = Path(root)
        self.clock = clock
        self.disk_usage = disk_usage
        self.findings: list[Finding] = []
        self.config: Any = None

    def add(self, verdict: str, check: str, detail: str) -> None:
        self.findings.append(Finding(verdict, check, detail))

    def path(self, p: str | Path) -> Path:
        """A till path (/dev/ttyACM0) inside ``root``."""
        return self.root / str(p).lstrip("/")

    # -- checks ------------------------------------------------------------------

    def check_config(self) -> None:
        from tillplug.config import check_config
        from tillplug.devices.registry import driver_names

        report = check_config(self.config_path, known_drivers=driver_names())
        for p in report.problems:
            self.add(FAIL if p.severity == "error" else WARN, "config", f"{p.path or '(file)'}: {p.message}")
        if report.ok:
            self.add(OK, "config", f"{self.config_path} is valid")
            self.config = report.config

    def check_udev(self) -> None:
        rules = self.path(f"/etc/udev/rules.d/{RULES_NAME}")
        if rules.exists():
            self.add(OK, "udev rules", f"{rules} installed")
        else:
            self.add(
                WARN,
                "udev rules",
                f"{rules} missing: devices get no stable names and "
                "ModemManager may probe them (run `tillplug install`)",
            )

    def _service_groups(self) -> set[str] | None:
        group_file = self.path("/etc/group")
        passwd_file = self.path("/etc/passwd")
        if not group_file.exists() or not passwd_file.exists():
            return None
        users = {line.split(":")[0]: line.split(":") for line in passwd_file.read_text().splitlines() if line}
        if USER not in users:
            return None
        primary_gid = users[USER][3]
        groups = set()
        for line in group_file.read_text().splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and (USER in parts[3].split(",") or parts[2] == primary_gid):
                groups.add(parts[0])
        return groups

    def _group_name(self, gid: int) -> str:
        group_file = self.path("/etc/group")
        if group_file.exists():
            for line in group_file.read_text().splitlines():
                parts = line.split(":")
                if len(parts) >= 3 and parts[2] == str(gid):
                    return parts[0]
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)

    def check_ports(self) -> None:
        if self.config is None:
            return
        service_groups = self._service_groups()
        if service_groups is None:
            self.add(WARN, "service user", f"user {USER} does not exist (run `tillplug install`)")
        ports = [(s.name, s.port) for s in self.config.scanners if s.port.startswith("/")]
        ports += [
            (p.name, p.connection.split("://", 1)[1])
            for p in self.config.printers
            if p.connection.startswith(("serial://", "file://"))
        ]
        for name, port in ports:
            node = self.path(port)
            if not node.exists():
                self.add(FAIL, f"port {name}", f"{port} does not exist (unplugged? see `tillplug devices`)")
                continue
            st = os.stat(node)
            group = self._group_name(st.st_gid)
            if service_groups is not None and group not in service_groups and not st.st_mode & stat.S_IWOTH:
                self.add(
                    FAIL,
                    f"port {name}",
                    f"{port} belongs to group {group}, which user {USER} is not in (udev rules set group {GROUP})",
                )
            elif not st.st_mode & stat.S_IRGRP or not st.st_mode & stat.S_IWGRP:
                self.add(
                    FAIL,
                    f"port {name}",
                    f"{port} is mode {stat.S_IMODE(st.st_mode):o}: the group cannot read and write it",
                )
            else:
                self.add(OK, f"port {name}", f"{port} (group {group}, mode {stat.S_IMODE(st.st_mode):o})")
            for holder in self._holders(node):
                self.add(FAIL, f"port {name}", f"{port} is held by {holder}: {HOLDERS.get(holder, '')}".rstrip(": "))

    def _holders(self, node: Path) -> list[str]:
        return [holder.command for holder in holders(node, self.path("/proc"))]

    def check_conflicting_services(self) -> None:
        running = running_commands(self.path("/proc"))
        for name, why in HOLDERS.items():
            if name in running:
                self.add(WARN, name, f"{name} is running: {why}")

    def check_disk(self) -> None:
        if self.config is None:
            return
        state = self.config.state_dir
        probe = state if state.exists() else state.parent
        try:
            free = self.disk_usage(str(probe)).free
        except OSError as exc:
            self.add(FAIL, "disk", f"cannot read free space for {state}: {exc.strerror}")
            return
        mb = free / 1e6
        verdict = FAIL if mb < 100 else WARN if mb < 500 else OK
        self.add(verdict, "disk", f"{mb:,.0f} MB free for the outbox in {state}")

    def check_engine(self) -> None:
        if self.config is None:
            return
        asyncio.run(self._engine())

    async def _engine(self) -> None:

        from tillplug.engine import EngineClient, load_secrets
        from tillplug.errors import EngineAuthError, TillplugError

        cfg = self.config.engine
        try:
            secrets = load_secrets(cfg)
        except TillplugError as exc:
            self.add(FAIL, "engine credentials", exc.message)
            return
        async with EngineClient(cfg, secrets) as client:
            try:
                ping = await client.ping()
            except EngineAuthError as exc:
                self.add(FAIL, "engine credentials", exc.message)
                return
            except TillplugError as exc:
                self.add(FAIL, "engine", f"{client.urls['base_url']}: {exc.message}")
                return
        base = client.urls["base_url"]
        self.add(OK, "engine", f"{base} answered in {ping.seconds * 1000:.0f} ms; credentials accepted")
        if ping.server_date:
            skew = self.clock() - parsedate_to_datetime(ping.server_date).timestamp()
            verdict = OK if abs(skew) < 5 else WARN if abs(skew) < 60 else FAIL
            self.add(
                verdict,
                "clock",
                f"this till is {skew:+.0f} s from the engine's clock"
                + ("" if verdict == OK else " (check NTP: systemctl status systemd-timesyncd)"),
            )

    def check_printers(self) -> None:
        if self.config is None:
            return
        from tillplug.devices.registry import load_drivers
        from tillplug.errors import TillplugError

        registry = load_drivers()
        for p in self.config.printers:
            try:
                driver = registry.get(p.driver)(p, str(self.config.cache_dir))
                driver.open()
                status = driver.status()
                driver.close()
            except TillplugError as exc:
                self.add(FAIL, f"printer {p.name}", exc.message)
                continue
            verdict = {"ok": OK, "warning": WARN}.get(status.state.value, FAIL)
            self.add(verdict, f"printer {p.name}", f"{status.state.value} {status.reason}".strip())

    def run(self, *, engine: bool = True, printers: bool = True) -> list[Finding]:
        self.check_config()
        self.check_udev()
        self.check_ports()
        self.check_conflicting_services()
        self.check_disk()
        if engine:
            self.check_engine()
        if printers:
            self.check_printers()
        return self.findings
