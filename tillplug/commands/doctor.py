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
from typing import TYPE_CHECKING, Any

from tillplug.commands.install import GROUP, RULES_NAME, USER
from tillplug.procfs import holders, running_commands

if TYPE_CHECKING:
    from tillplug.config.model import ScannerConfig

OK, WARN, FAIL = "ok", "warn", "FAIL"
HOLDERS = {
    "ModemManager": "ModemManager probes serial ports with AT commands (the udev rules set "
    "ID_MM_DEVICE_IGNORE; or: systemctl disable --now ModemManager)",
    "brltty": "brltty grabs USB-serial adapters (CH340, CP210x, FTDI): apt remove brltty, or mask its udev rules",
}

# Scanned by `tillplug doctor --scan-test`: under every pair of the supported layouts, typed under
# one and read under another, it comes out different (tests/commands/test_doctor.py holds it to that).
LAYOUT_TEST_CODE = "Tq1Zy-Am@/.:#"


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
        self.scan_test: Callable[[Any], list[tuple[int, int]] | None] | None = None

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
            where = f"{p.source}: " if p.source else ""
            self.add(FAIL if p.severity == "error" else WARN, "config", f"{where}{p.path or '(file)'}: {p.message}")
        if report.ok:
            drop_ins = len(report.layers.sources) - 1 if report.layers else 0
            also = f" with {drop_ins} drop-in(s) from conf.d/" if drop_ins else ""
            self.add(OK, "config", f"{self.config_path}{also} is valid")
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

    def check_keyboard_scanners(self, scan_test: Callable[[Any], list[tuple[int, int]] | None] | None = None) -> None:
        """Keyboard-mode scanners: /dev/uinput for re-typing, no other program holding the grab, and,
        with ``scan_test`` (reads one test scan's key events), the layout the scanner is really set to."""
        if self.config is None:
            return
        hid = [s for s in self.config.scanners if s.driver == "hid-scanner"]
        if any(s.retype for s in hid):
            self._check_uinput()
        for cfg in hid:
            self._check_grab(cfg)
            if scan_test is not None:
                events = scan_test(cfg)
                if events is None:
                    self.add(WARN, f"layout {cfg.name}", f"no test scan arrived; scan {LAYOUT_TEST_CODE!r} (Code 128)")
                else:
                    verdict, detail = layout_verdict(events, cfg.layout)
                    self.add(verdict, f"layout {cfg.name}", detail)

    def _check_uinput(self) -> None:
        node = self.path("/dev/uinput")
        if not node.exists():
            self.add(
                FAIL,
                "uinput",
                "/dev/uinput is missing: keyboard-mode scans cannot be re-typed for the till "
                "(modprobe uinput; `tillplug install` loads it at boot)",
            )
            return
        st = os.stat(node)
        group = self._group_name(st.st_gid)
        if group != GROUP or not st.st_mode & stat.S_IWGRP:
            self.add(
                FAIL,
                "uinput",
                f"/dev/uinput is group {group}, mode {stat.S_IMODE(st.st_mode):o}: the service cannot re-type scans "
                f"(the udev rules set group {GROUP}, mode 660: `tillplug install`, then `udevadm trigger`)",
            )
        else:
            self.add(OK, "uinput", f"/dev/uinput (group {group}, mode {stat.S_IMODE(st.st_mode):o})")

    def _check_grab(self, cfg: ScannerConfig) -> None:
        from tillplug.devices.registry import load_drivers
        from tillplug.errors import TillplugError

        try:
            holder = load_drivers().get(cfg.driver).grab_holder(cfg.port)
        except TillplugError as exc:
            self.add(FAIL, f"scanner {cfg.name}", exc.message)
            return
        if holder:
            self.add(FAIL, f"scanner {cfg.name}", f"{cfg.port} is grabbed by another program{holder}")
        else:
            self.add(OK, f"scanner {cfg.name}", f"{cfg.port} can be grabbed (no other program holds it)")

    def run(self, *, engine: bool = True, printers: bool = True) -> list[Finding]:
        self.check_config()
        self.check_udev()
        self.check_ports()
        self.check_keyboard_scanners(self.scan_test)
        self.check_conflicting_services()
        self.check_disk()
        if engine:
            self.check_engine()
        if printers:
            self.check_printers()
        return self.findings


def layout_verdict(events: list[tuple[int, int]], configured: str) -> tuple[str, str]:
    """What a test scan of LAYOUT_TEST_CODE says about the layout setting."""
    from tillplug.barcodes.keymaps import decode
    from tillplug.barcodes.keymaps_data import LAYOUTS

    read = {layout: decode(events, layout).rstrip("\r\t") for layout in LAYOUTS}
    if read[configured] == LAYOUT_TEST_CODE:
        return OK, f"the scanner types in the {configured} layout, as configured"
    matching = [layout for layout, text in read.items() if text == LAYOUT_TEST_CODE]
    if matching:
        return FAIL, f'the scanner is set to {matching[0]}, the config says {configured}: set layout = "{matching[0]}"'
    return FAIL, (
        f"read as {configured}: {read[configured]!r}, not {LAYOUT_TEST_CODE!r}; no supported layout reads it right "
        "(set the scanner to one of: " + ", ".join(LAYOUTS) + ")"
    )


def read_test_scan(
    cfg: ScannerConfig, timeout: float = 30.0, out: Callable[[str], None] = print
) -> list[tuple[int, int]] | None:
    """Ask for one scan of LAYOUT_TEST_CODE on a keyboard-mode scanner; its key events, or None."""
    from tillplug.devices.registry import load_drivers
    from tillplug.errors import TillplugError

    try:
        driver = load_drivers().get(cfg.driver)(cfg.model_copy(update={"retype": False}))
        driver.open()
    except TillplugError as exc:
        out(f"cannot read {cfg.name}: {exc.message}")
        return None
    out(f"scan the layout test code ({LAYOUT_TEST_CODE!r}, Code 128; `tillplug doctor --layout-code FILE` draws it) ")
    out(f"with {cfg.name} within {timeout:g} s…")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            frames = driver.read_frames()
            if frames:
                return list(frames[0].keys)
    except TillplugError as exc:
        out(f"cannot read {cfg.name}: {exc.message}")
    finally:
        driver.close()
    return None


def write_layout_code(path: str) -> None:
    """LAYOUT_TEST_CODE as a Code 128 barcode image (PNG), to print or show on a screen."""
    import barcode
    from barcode.writer import ImageWriter

    target = path[:-4] if path.endswith(".png") else path  # python-barcode adds the extension
    barcode.get("code128", LAYOUT_TEST_CODE, writer=ImageWriter()).save(target)
