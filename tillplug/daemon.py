"""The daemon: one process, one event loop.

Start-up order: state directory and outbox (recovering what a crash left),
engine client, printers, flows, the outbox deliverer, scanners, then the API;
READY=1 goes to systemd only when the devices have been tried and the API
listens.  SIGHUP reloads the config and reopens only the devices that changed;
SIGTERM stops cleanly: in-flight requests finish, queued writes stay queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from tillplug import __version__, systemd
from tillplug.api.app import TillApi
from tillplug.config import Config, load_config, read_secret
from tillplug.devices.registry import Registry, driver_names, load_drivers
from tillplug.devices.supervisor import (
    DeviceHealth,
    PrinterSupervisor,
    Scan,
    ScannerSupervisor,
)
from tillplug.engine import EngineClient, load_secrets
from tillplug.errors import (
    ConfigError,
    DriverError,
    InvalidRequest,
    PrinterNotReady,
    TillplugError,
)
from tillplug.flows.events import EventBus
from tillplug.flows.service import Loyalty
from tillplug.metrics import Metrics
from tillplug.net import listen
from tillplug.outbox import Deliverer, OutboxStore, Pacer, PacingPolicy
from tillplug.receipts import templates
from tillplug.receipts.layout import Receipt
from tillplug.traffic import Traffic, UseCaseMiddleware, use_case

log = logging.getLogger(__name__)
HEALTH_PING_EVERY = 10.0


class _ApiServer(uvicorn.Server):
    """uvicorn inside our loop; the daemon owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EngineWatch:
    """Engine reachability from real traffic: the last success and the last failure, by endpoint."""

    def __init__(self) -> None:
        self.last_ok = 0.0
        self.last_error: tuple[float, str, str] | None = None
        self.latency: dict[str, float] = {}

    def __call__(self, endpoint: str, seconds: float, error: str | None) -> None:
        if error is None:
            self.last_ok = time.time()
            self.latency[endpoint] = seconds
        else:
            self.last_error = (time.time(), endpoint, error)

    def view(self) -> dict[str, Any]:
        reachable = self.last_ok > (self.last_error[0] if self.last_error else 0)
        return {
            "reachable": reachable,
            "lastOk": self.last_ok or None,
            "lastError": {"at": self.last_error[0], "endpoint": self.last_error[1], "error": self.last_error[2]}
            if self.last_error
            else None,
            "latencyMs": {k: round(v * 1000, 1) for k, v in self.latency.items()},
        }


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None, registry: Registry | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.registry = registry or load_drivers()
        self.events = EventBus()
        self.engine_watch = EngineWatch()
        self.metrics = Metrics()
        self.traffic = Traffic()  # engine requests by use case; interactive 429s pause the outbox
        self.scanners: dict[str, ScannerSupervisor] = {}
        self.printers: dict[str, PrinterSupervisor] = {}
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._lane_locks: dict[int, asyncio.Lock] = {}
        self._last_ping = 0.0
        self.api_port: int | None = None

    # -- devices -------------------------------------------------------------------

    def _device_state(self, health: DeviceHealth) -> None:
        """Called from scanner threads too: hop onto the loop."""
        self.loop.call_soon_threadsafe(self.events.publish, "device_state", health.to_dict())

    def _on_scan(self, scan: Scan) -> None:
        if threading.get_ident() == self._loop_thread:  # read by the loop itself: no hop needed
            self._spawn_scan(scan)
        else:
            self.loop.call_soon_threadsafe(self._spawn_scan, scan)

    def _spawn_scan(self, scan: Scan) -> None:
        self._tasks.append(asyncio.ensure_future(self._handle_scan(scan)))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _handle_scan(self, scan: Scan) -> None:
        async with self._lane_locks.setdefault(scan.lane, asyncio.Lock()):  # scans on a lane in order
            try:
                with use_case("scan"):
                    classified = await self.loyalty.handle_scan(scan.text, scan.symbology, scan.lane, scan.device)
                self.metrics.scans.labels(classified.kind.value).inc()
            except Exception:
                log.exception("scan on lane %d could not be handled", scan.lane)

    def _start_scanner(self, cfg: Any) -> None:
        try:
            driver_cls = self.registry.get(cfg.driver)
        except DriverError as exc:
            log.error("scanner %s: %s", cfg.name, exc.message)
            return
        sup = ScannerSupervisor(cfg, driver_cls, self._on_scan, self._device_state, loop=self.loop)
        self.scanners[cfg.name] = sup
        sup.start()

    async def _start_printer(self, cfg: Any) -> None:
        try:
            driver = await asyncio.to_thread(self.registry.get(cfg.driver), cfg, str(self.config.cache_dir))
        except (DriverError, TillplugError) as exc:
            log.error("printer %s: %s", cfg.name, exc.message)
            return
        sup = PrinterSupervisor(cfg, driver, self._device_state)
        self.printers[cfg.name] = sup
        await sup.open()

    async def _print_on_lane(self, lane: int, receipt: Receipt) -> None:
        sup = next((p for p in self.printers.values() if p.config.lane == lane), None)
        if sup is None:
            raise PrinterNotReady(f"No printer is configured for lane {lane}.")
        await sup.print(receipt)

    async def print_test(self, name: str | None) -> dict[str, Any]:
        sup = self.printers.get(name) if name else next(iter(self.printers.values()), None)
        if sup is None:
            raise InvalidRequest(f"No printer named {name!r}." if name else "No printer is configured.")
        page = templates.test_page(
            self.loyalty.slip,
            sup.config.name,
            sup.config.profile,
            sup.config.effective_columns(),
            getattr(sup.driver, "code_page", "-"),
        )
        await sup.print(page)
        return {"printer": sup.config.name, "printed": True}

    def _engine_call(self, endpoint: str, seconds: float, error: str | None) -> None:
        self.engine_watch(endpoint, seconds, error)
        self.metrics.engine_call(endpoint, seconds, error)

    # -- health --------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        stats = await asyncio.to_thread(self.store.stats)
        limits = self.config.outbox
        over = limits.exceeded(stats.depth, stats.oldest_pending_age)
        if time.time() - max(self.engine_watch.last_ok, self._last_ping) > HEALTH_PING_EVERY:
            self._last_ping = time.time()
            with contextlib.suppress(TillplugError):
                await self.client.ping()
        printers = []
        for sup in self.printers.values():
            status = await sup.status()
            printers.append({**sup.health.to_dict(), "paper": status.to_dict()})
        devices = [s.health.to_dict() for s in self.scanners.values()] + printers
        engine = self.engine_watch.view()
        degraded = over or stats.dead > 0 or not engine["reachable"] or any(d["state"] != "ready" for d in devices)
        return {
            "status": "degraded" if degraded else "ok",
            "version": __version__,
            "tillId": self.config.till_id,
            "branchId": self.config.branch_id,
            "devices": devices,
            "engine": engine,
            "outbox": {
                **stats.to_dict(),
                "overLimit": over,
                "maxRows": limits.max_rows,
                "maxAgeHours": limits.max_age_hours,
                "pacing": self.deliverer.pacer.view(),
            },
        }

    async def check_outbox_limits(self) -> bool:
        """Loud, never lossy: over the configured bounds the till, the log and health are told;
        sales keep queueing, and only a technician's command discards anything."""
        stats = await asyncio.to_thread(self.store.stats)
        over = self.config.outbox.exceeded(stats.depth, stats.oldest_pending_age)
        if over:
            log.error(
                "outbox over its limits: %d waiting, oldest %.1f h; sales still queue — check the "
                "engine connection and `tillplug outbox stats`",
                stats.depth,
                stats.oldest_pending_age / 3600,
            )
            self.events.publish(
                "error",
                {
                    "code": "outbox_over_limit",
                    "depth": stats.depth,
                    "message": "Loyalty points are waiting to be sent; call a technician.",
                },
            )
        return over

    async def _outbox_alarm(self, every: float = 60.0) -> None:
        while not self.stop_event.is_set():
            await self.check_outbox_limits()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), every)

    async def _printer_watch(self, every: float = 30.0) -> None:
        """Ask each printer how it is, now and then: for health, metrics and a log line on change."""
        while not self.stop_event.is_set():
            for sup in list(self.printers.values()):
                before = sup.last_status
                status = await sup.status()
                if status.state != before.state:
                    level = logging.WARNING if status.state.value in ("error", "warning") else logging.INFO
                    log.log(level, "printer %s: %s %s", sup.config.name, status.state.value, status.reason)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), every)

    async def _watchdog(self, interval: float) -> None:
        # Fed from the event loop itself: a hung loop stops the pings and systemd restarts us.
        while not self.stop_event.is_set():
            systemd.notify("WATCHDOG=1")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), interval)

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        self.store = OutboxStore(cfg.state_dir / "outbox.sqlite3")
        recovered = self.store.recover()
        self.client = EngineClient(
            cfg.engine, load_secrets(cfg.engine), on_call=self._engine_call, traffic=self.traffic
        )
        policy = PacingPolicy(
            share=cfg.outbox.rate_per_second,
            burst=cfg.outbox.burst,
            fleet_interactive=cfg.outbox.fleet_interactive_per_second,
        )
        self.deliverer = Deliverer(self.store, self.client, pacer=Pacer(policy, traffic=self.traffic))
        await asyncio.gather(*(self._start_printer(p) for p in cfg.printers))
        self.loyalty = Loyalty(
            cfg,
            self.client,
            self.store,
            events=self.events,
            wake_outbox=self.deliverer.wake,
            printer=self._print_on_lane,
        )
        interrupted = self.loyalty.recover()
        if recovered or interrupted:
            log.warning(
                "recovered after an interruption: %d queued write(s) to check, %d deduction(s) to settle",
                recovered,
                interrupted,
            )
        self._tasks.append(asyncio.ensure_future(self.deliverer.run(self.stop_event)))
        self._tasks.append(asyncio.ensure_future(self._outbox_alarm()))
        self._tasks.append(asyncio.ensure_future(self._printer_watch()))
        for s in cfg.scanners:
            self._start_scanner(s)
        token = read_secret(cfg.api.token).reveal() if cfg.api.token else None
        self.metrics.watch(
            self.store.stats,
            lambda: [s.health for s in self.scanners.values()] + [p.health for p in self.printers.values()],
            lambda: {n: p.last_status.state.value for n, p in self.printers.items()},
        )
        self.metrics.watch_traffic(self.traffic, self.deliverer.pacer.view)
        api = TillApi(
            self.loyalty,
            self.events,
            health=self.health,
            print_test=self.print_test,
            token=token,
            metrics=self.metrics.exposition,
        )
        sock = listen(cfg.api.host, cfg.api.port)
        self.api_port = sock.getsockname()[1]
        self.api_server = _ApiServer(
            uvicorn.Config(
                UseCaseMiddleware(api.app),
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=10,
            )
        )
        self._api_task = asyncio.ensure_future(self.api_server.serve(sockets=[sock]))
        await self._wait_devices_tried()
        while not self.api_server.started:
            if self._api_task.done():
                self._api_task.result()
                raise TillplugError("the API server stopped during start-up")
            await asyncio.sleep(0.005)
        if (interval := systemd.watchdog_interval()) is not None:
            self._tasks.append(asyncio.ensure_future(self._watchdog(interval)))
        systemd.notify(
            f"READY=1\nSTATUS=ready: {len(self.scanners)} scanner(s), {len(self.printers)} printer(s), "
            f"API on {cfg.api.listen}"
        )
        self.ready.set()
        log.info("tillplug %s ready: till %s, API on %s:%d", __version__, cfg.till_id, cfg.api.host, self.api_port)

    async def _wait_devices_tried(self, timeout: float = 3.0) -> None:
        """Each scanner has either opened or failed once (then we start degraded, and say so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.health.state.value != "connecting" for s in self.scanners.values()):
                return
            await asyncio.sleep(0.01)

    async def reload(self) -> None:
        if self.config_path is None:
            return
        systemd.notify("RELOADING=1")
        try:
            new = await asyncio.to_thread(load_config, self.config_path, known_drivers=driver_names())
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc.message)
            systemd.notify("READY=1")
            return
        old = self.config
        old_s, new_s = {s.name: s for s in old.scanners}, {s.name: s for s in new.scanners}
        for name, sup in list(self.scanners.items()):
            if new_s.get(name) != old_s.get(name):
                await asyncio.to_thread(sup.stop)
                del self.scanners[name]
        old_p, new_p = {p.name: p for p in old.printers}, {p.name: p for p in new.printers}
        for name, psup in list(self.printers.items()):
            if new_p.get(name) != old_p.get(name):
                await psup.close()
                del self.printers[name]
        self.config = new.model_copy(update={"engine": old.engine, "api": old.api, "state_dir": old.state_dir})
        self.loyalty.reconfigure(self.config)
        for name, cfg in new_s.items():
            if name not in self.scanners:
                self._start_scanner(cfg)
        for name, pcfg in new_p.items():
            if name not in self.printers:
                await self._start_printer(pcfg)
        for key in ("engine", "api", "state_dir"):
            if getattr(new, key) != getattr(old, key):
                log.warning("config %s changed: it takes effect at the next restart", key)
        log.info("config reloaded: %d scanner(s), %d printer(s)", len(self.scanners), len(self.printers))
        systemd.notify("READY=1")

    async def stop(self) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping: finishing in-flight requests; queued engine writes stay queued")
        self.events.close()  # listeners on /v1/events are told the stream ends, not left hanging
        self.api_server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._api_task, 15)
        self.stop_event.set()
        for sup in self.scanners.values():
            await asyncio.to_thread(sup.stop)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for psup in self.printers.values():
            await psup.close()
        await self.client.aclose()
        self.store.close()

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT; SIGHUP reloads."""
        await self.start()
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            waiter = asyncio.ensure_future(stopping.wait())
            done, _ = await asyncio.wait([waiter, self._api_task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        finally:
            await self.stop()


def run_daemon(config_path: str) -> int:
    from tillplug import logs

    config = load_config(config_path, known_drivers=driver_names())
    logs.setup(config.log_level)
    asyncio.run(Daemon(config, config_path=str(Path(config_path))).run())
    return 0
