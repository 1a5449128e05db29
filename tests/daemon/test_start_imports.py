"""#27: start-up ≤ 0.5 s and RSS ≤ 60 MB came from importing only what the configured devices need.
Untimed: the modules the daemon holds when it says READY=1, so a heavy import creeping back fails here.

The till here has a serial scanner and a network ESC/POS printer.  At READY=1 it must not hold the HID
(keyboard) driver, the simulator, the CLI's other verbs, or python-escpos's printer module with Pillow,
qrcode and python-barcode (a slip never needs those: drivers/escpos_bytes.py writes it; only a receipt logo
brings them)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.daemon.test_daemon_ops import daemon_config, free_port
from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.commands.virtual.till import VirtualScanner
from tillplug.sim import SimServer

# Whole packages that a daemon with this till's devices never needs by READY=1.
NOT_AT_START = (
    "tillplug.drivers.hid_scanner",
    "tillplug.sim",
    "tillplug.commands.doctor",
    "tillplug.commands.demo",
    "tillplug.commands.engine_check",
    "tillplug.commands.install",
    "tillplug.commands.virtual",
    "tillplug.receipts.preview",
    "escpos.printer",
    "escpos.escpos",
    "escpos.capabilities",  # PyYAML and every printer profile: tillplug.receipts.paper reads the one it needs
    "yaml",
    "babel",  # the slip's locale is in tillplug.receipts.formats_data
    "anyascii",  # only for a character the code page lacks
    "PIL",
    "qrcode",
    "barcode",
    "evdev",
    "hypothesis",
    "pytest",
)
# Every top-level package the daemon may hold at READY=1 beyond the standard library: a new one is a
# decision (README's dependency line), not an accident.
THIRD_PARTY_AT_START = {
    "annotated_types", "anyio", "certifi", "click", "escpos", "h11", "httpcore", "httpx", "idna",
    "importlib_resources", "prometheus_client", "pydantic", "pydantic_core", "regex", "serial", "six",
    "sniffio", "starlette", "typing_extensions", "typing_inspection", "uvicorn", "yaml", "zstandard",
    "_cffi_backend", "brotli", "_brotli", "h2", "hpack", "hyperframe", "socksio", "_distutils_hack",
    "__editable___tillplug_0_2_0_finder", "biip", "dateutil", "markdown_it", "rich", "pygments",
}  # fmt: skip

RUN = textwrap.dedent(
    """
    import asyncio, gc, json, os, signal, sys
    out, config = sys.argv[1], sys.argv[2]
    from tillplug.daemon import systemd
    notify = systemd.notify

    def after_ready(collector_at_ready):
        with open(out + ".gc", "w") as f:
            json.dump({"at_ready": collector_at_ready, "after": gc.isenabled(), "frozen": gc.get_freeze_count()}, f)
        os.kill(os.getpid(), signal.SIGTERM)

    def at_ready(message):
        if "READY=1" in message and not os.path.exists(out):
            from tillplug.daemon.wiring import models_of
            deferred = [f"{m.__module__}.{m.__qualname__}" for m in models_of() if not m.__pydantic_complete__]
            with open(out, "w") as f:
                json.dump(sorted(sys.modules), f)
            with open(out + ".models", "w") as f:
                json.dump(sorted(set(deferred)), f)
            asyncio.get_running_loop().call_soon(after_ready, gc.isenabled())
        return notify(message)

    systemd.notify = at_ready
    from tillplug.commands.cli import main
    sys.exit(main(["run", "--config", config]))
    """
)


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The daemon's modules at READY=1, its cyclic collector at READY=1 and just after, and the pydantic
    models it had not built yet at READY=1."""
    tmp_path = tmp_path_factory.mktemp("start")
    scanner = VirtualScanner(tmp_path / "scanner0")
    out = tmp_path / "modules.json"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    try:
        with SimServer() as sim, FakeNetworkPrinter("ok") as printer:
            cfg = tmp_path / "tillplug.toml"
            cfg.write_text(
                daemon_config(tmp_path, sim, free_port())
                + f'[[scanners]]\nname="s0"\nport="{scanner.link}"\n'
                + f'[[printers]]\nname="p0"\nconnection="{printer.url}"\nprofile="TM-T20II"\n'
            )
            env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
            run = subprocess.run(
                [sys.executable, "-c", RUN, str(out), str(cfg)], env=env, capture_output=True, text=True, timeout=60
            )
    finally:
        notify.close()
        scanner.close()
    assert out.exists() and (tmp_path / "modules.json.gc").exists(), run.stderr[-3000:]
    deferred = json.loads((tmp_path / "modules.json.models").read_text())
    return set(json.loads(out.read_text())), json.loads((tmp_path / "modules.json.gc").read_text()), deferred


def test_the_daemon_holds_only_what_its_devices_need_at_ready(started):
    modules, _, _ = started
    assert "tillplug.daemon.wiring" in modules and "tillplug.drivers.escpos_printer" in modules  # it did start
    held = sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_AT_START))
    assert held == [], f"imported by READY=1 though this till does not need them: {held}"
    stdlib = set(sys.stdlib_module_names)
    runtime = {"tillplug", "__main__", "__mp_main__", "cython_runtime"}  # and _sysconfigdata_*, _cython_*
    third_party = (
        {m.split(".")[0] for m in modules if not m.startswith(("_sysconfigdata_", "_cython_"))} - stdlib - runtime
    )
    assert third_party <= THIRD_PARTY_AT_START, f"new packages at start: {sorted(third_party - THIRD_PARTY_AT_START)}"


def test_start_up_runs_without_the_collector_and_freezes_what_it_built(started):
    """The objects start-up builds live as long as the daemon: no collection while they are built, and
    none walks them again after READY=1 (they are frozen), with the collector on for what comes next."""
    _, collector, _ = started
    assert collector["at_ready"] is False, "start-up ran with the cyclic collector on"
    assert collector["after"] is True, "the collector stayed off after READY=1"
    assert collector["frozen"] > 50_000, f"start-up's objects were not frozen ({collector['frozen']})"


def test_the_api_and_flow_models_are_built_after_ready_not_before(started):
    """Their validators cost start-up some 40 ms: READY=1 comes first, the warm-up builds them after
    (tests/daemon/test_warm_up.py)."""
    _, _, deferred = started
    for model in (
        "tillplug.api.schemas.CheckoutCreate",  # a request body
        "tillplug.api.schemas.Error",
        "tillplug.flows.answers.MemberView",  # an answer to the till
        "tillplug.engine.models.Wallet",  # an engine answer
        "tillplug.flows.returns.TakeBack",
    ):
        assert model in deferred, f"{model} was built before READY=1"
