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
import functools
import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel

from tillplug import __version__, logs
from tillplug.api.app import TillApi
from tillplug.api.guard import GuardPolicy, allowed_host_headers
from tillplug.api.idempotency import open_idempotency_store
from tillplug.api.server import server_config, stream_limit
from tillplug.barcodes import classify
from tillplug.config import Config, load_config, read_secret
from tillplug.config.loader import read_layers
from tillplug.config.model import OutboxConfig, PrinterConfig, ScannerConfig
from tillplug.daemon import systemd
from tillplug.daemon.health import EngineWatch, HealthMonitor
from tillplug.daemon.metrics import Metrics, failure_kind
from tillplug.daemon.restart import find_blockers, readiness
from tillplug.daemon.scans import Decision, Router
from tillplug.daemon.statelock import StateLock
from tillplug.devices.registry import Registry, driver_names, load_drivers
from tillplug.devices.supervisor import (
    SCANNERS_TRIED_WITHIN,
    DeviceHealth,
    Scan,
    ScannerSupervisor,
    all_tried,
)
from tillplug.display.hub import DisplayHub
from tillplug.display.page import DisplayPages
from tillplug.display.pole import PoleDisplayLink
from tillplug.display.screen import ScreenBook, first_name_only, pole_lines
from tillplug.engine import EngineClient, load_secrets
from tillplug.engine.dialect import read_test_member
from tillplug.engine.reactors import UNKNOWN, check_reactors, reactor_problems
from tillplug.engine.traffic import Traffic, UseCaseMiddleware
from tillplug.errors import (
    ConfigError,
    DriverError,
    TillplugError,
)
from tillplug.flows.events import EventBus
from tillplug.flows.loyalty import Loyalty
from tillplug.net import listen
from tillplug.outbox import Deliverer, Pacer, PacingPolicy
from tillplug.outbox.store import open_store
from tillplug.receipts import templates
from tillplug.receipts.layout import Block, Receipt
from tillplug.receipts.templates import SlipContext
from tillplug.spool import JobStore, PrintSpool, PrintSpools
from tillplug.spool.drawer import DrawerChanged
from tillplug.spool.jobs import StoreLimits
from tillplug.spool.sales import TRACKED_EVENTS, SaleTracker
from tillplug.spool.spool import JobChanged, SpoolEvent

log = logging.getLogger(__name__)
REACTOR_CHECK_TRIES = 10  # the start's reactor check, asked again while the engine cannot answer
REACTOR_CHECK_RETRY = 60.0  # seconds between those tries
PRUNE_CHECKOUTS_EVERY = 3600.0  # seconds between prunes of finished checkouts (and once at start)


class _ApiServer(uvicorn.Server):
    """uvicorn inside our loop; the daemon owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None, registry: Registry | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.registry = registry or load_drivers(lazily=True)  # only the configured devices' drivers
        self.events = EventBus()
        self.router = Router(config, self._on_scan)
        self.engine_watch = EngineWatch()
        self.metrics = Metrics()
        self.traffic = Traffic()  # engine requests by use case; interactive 429s pause the outbox
        self.scanners: dict[str, ScannerSupervisor] = {}
        self.printers: dict[str, PrintSpool] = {}
        self.displays: dict[str, PoleDisplayLink] = {}
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._lane_locks: dict[int, asyncio.Lock] = {}
        self.api_port: int | None = None
        # What start() opened, closed by stop() in reverse order: a stop after a failed or
        # missing start releases exactly what exists.
        self._opened = contextlib.AsyncExitStack()
        self.api_server: _ApiServer | None = None
        self._api_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False

    # -- devices -------------------------------------------------------------------

    def _device_state(self, health: DeviceHealth) -> None:
        """Called from scanner threads too: hop onto the loop."""
        self.loop.call_soon_threadsafe(self.events.publish, "device_state", health.to_dict())

    def _on_scan(self, scan: Scan, decision: Decision) -> None:
        """From the router, once a scan for the till has been passed on: now the flows and the event stream."""
        if threading.get_ident() == self._loop_thread:  # read by the loop itself: no hop needed
            self._spawn_scan(scan, decision)
        else:
            self.loop.call_soon_threadsafe(self._spawn_scan, scan, decision)

    def _spawn_scan(self, scan: Scan, decision: Decision) -> None:
        self._tasks.append(asyncio.ensure_future(self._handle_scan(scan, decision)))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _handle_scan(self, scan: Scan, decision: Decision) -> None:
        async with self._lane_locks.setdefault(scan.lane, asyncio.Lock()):  # scans on a lane in order
            try:
                await self.router.handle(scan, decision, self.loyalty)
                if decision.kind is not None:
                    self.metrics.scans.labels(decision.kind.value).inc()
            except Exception:
                log.exception("scan on lane %d could not be handled", scan.lane)

    def _start_scanner(self, cfg: ScannerConfig) -> None:
        try:
            driver_cls = self.registry.get(cfg.driver)
        except DriverError as exc:
            log.error("scanner %s: %s", cfg.name, exc.message)
            return
        sup = ScannerSupervisor(cfg, driver_cls, self.router.on_scan, self._device_state, loop=self.loop)
        self.scanners[cfg.name] = sup
        self.router.attach(cfg, sup, self.loop)
        sup.start()

    async def _start_printer(self, cfg: PrinterConfig) -> None:
        try:
            driver = await asyncio.to_thread(self.registry.get(cfg.driver), cfg, str(self.config.cache_dir))
        except (DriverError, TillplugError) as exc:
            log.error("printer %s: %s", cfg.name, exc.message)
            return
        sup = PrintSpool(
            cfg,
            driver,
            self.spools.store,
            publish=self._print_event,
            on_state=self._device_state,
            hold_seconds=self.config.printing.hold_minutes * 60,
            till_block=self._till_block,
        )
        if sup.share is not None:
            sup.share.on_refused = functools.partial(self._share_refused, cfg.name)
        self.printers[cfg.name] = sup
        self.spools.add(sup)
        sup.start()

    async def _start_displays(self, cfg: Config) -> None:
        """The lanes' customer screens, and the pole displays that show them (not reloaded: restart)."""
        shown = cfg.customer_display
        first_name = self._first_name if shown.member == "first_name" else None
        self.display_hub = DisplayHub(self.events, ScreenBook(shown.idle_after_seconds, first_name))
        self.display_hub.start()
        self._opened.push_async_callback(self.display_hub.close)
        slip = SlipContext.from_config(cfg)
        for dcfg in cfg.displays:
            try:
                driver = await asyncio.to_thread(self.registry.get(dcfg.driver), dcfg)
            except (DriverError, TillplugError) as exc:
                log.error("display %s: %s", dcfg.name, exc.message)
                continue
            link = PoleDisplayLink(
                driver,
                self.display_hub,
                functools.partial(pole_lines, ctx=slip, idle_text=shown.idle_text),
                on_state=self._device_state,
            )
            self.displays[dcfg.name] = link
            self._opened.push_async_callback(link.close)
            link.start()

    def display_pages(self, api_token: str | None) -> DisplayPages:
        """The pages at /display/{lane}: their keys come from customer_display.key, else the API token."""
        cfg = self.config
        secret = read_secret(cfg.customer_display.key).reveal() if cfg.customer_display.key else api_token
        return DisplayPages(secret, SlipContext.from_config(cfg), cfg.customer_display.idle_text)

    async def _first_name(self, lane: int) -> str | None:
        """The first name of the member on the lane's sale, for its customer display only."""
        checkout = self.loyalty.open_on_lane(lane)
        if checkout is None or checkout.member is None or checkout.member.offline:
            return None
        user = await self.client.get_user(checkout.member.id)
        return first_name_only(user.given_name)

    def _share_refused(self, printer: str, protocol: str) -> None:
        self.metrics.share_refused.labels(printer, protocol).inc()

    def _till_block(self, lane: int) -> list[Block] | None:
        """The loyalty block for the till's own receipt (receipts.append_to_till_receipt)."""
        if not self.config.receipts.append_to_till_receipt:
            return None
        return self.sales.block(lane, self.loyalty.slip)

    async def _follow_sales(self) -> None:
        """What the till was told about each lane's sale, for the loyalty block on its receipt."""
        queue = self.events.subscribe(TRACKED_EVENTS)
        try:
            while (event := await queue.get()) is not None:
                self.sales.see(event.type, event.data, event.lane)
        finally:
            self.events.unsubscribe(queue)

    def _print_event(self, event: SpoolEvent) -> None:
        """A print job changed state (the till hears it, the metrics count it) or did not print (the till hears why)."""
        self.events.publish(event.type, event.data(), lane=event.lane)
        if isinstance(event, JobChanged):
            self.metrics.print_jobs.labels(event.job.printer, event.job.state.value).inc()
        elif isinstance(event, DrawerChanged):
            self.metrics.drawer_changed(event.printer, event.state.value)

    async def _print_on_lane(self, lane: int, receipt: Receipt) -> dict[str, Any]:
        return await self.spools.submit(lane, receipt)

    async def print_test(self, name: str | None) -> dict[str, Any]:
        sup = self.spools.named(name)
        page = templates.test_page(
            self.loyalty.slip,
            sup.config.name,
            sup.config.profile,
            getattr(sup.driver, "columns", 0),
            getattr(sup.driver, "code_page", "-"),
        )
        data = await asyncio.to_thread(sup.driver.render, page)
        return {"printer": sup.config.name, **(await sup.submit(data, page.kind)).summary()}

    def _engine_call(self, endpoint: str, seconds: float, error: str | None) -> None:
        self.engine_watch(endpoint, seconds, error)
        self.metrics.engine_call(endpoint, seconds, error)

    def _engine_failed(self, endpoint: str, status: int) -> None:
        kind = failure_kind(status)
        self.engine_watch.failed(endpoint, kind)
        self.metrics.engine_failure(endpoint, kind)

    # -- health --------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """From state only: never waits on the engine, a printer or the database (tillplug.daemon.health)."""
        view = self.monitor.view()
        view["outbox"]["pacing"] = self.deliverer.pacer.view()
        return view

    async def restart_readiness(self) -> dict[str, Any]:
        """Whether a restart now would interrupt anything (tillplug.daemon.restart); read fresh."""
        busy = [lane for lane, lock in self._lane_locks.items() if lock.locked()]
        return readiness(await asyncio.to_thread(find_blockers, self.store, self.spools.store, busy))

    def _device_views(self) -> list[dict[str, Any]]:
        printers = [
            {**p.health.to_dict(), "paper": p.last_status.to_dict(), "queue": p.queue_view()}
            for p in self.printers.values()
        ]
        displays = [d.health.to_dict() for d in self.displays.values()]
        return [{**s.health.to_dict(), **self.router.view(n)} for n, s in self.scanners.items()] + printers + displays

    async def check_outbox_limits(self) -> bool:
        """Loud, never lossy: over the configured bounds the till, the log and health are told;
        sales keep queueing, and only a technician's command discards anything."""
        await self.monitor.refresh()  # health and the alarm read the same figures
        stats = self.monitor.snapshot.stats
        if stats is None:  # the outbox cannot be read: health says so
            return False
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
        pruned_at = 0.0
        while not self.stop_event.is_set():
            await self.check_outbox_limits()
            if time.monotonic() - pruned_at > PRUNE_CHECKOUTS_EVERY or not pruned_at:
                pruned_at = time.monotonic()
                await self._prune_checkouts()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), every)

    async def _prune_checkouts(self) -> None:
        """Finished checkouts past their keep time go (tillplug.flows.checkouts.KEEP_FINISHED_CHECKOUTS)."""
        try:
            gone = await asyncio.to_thread(self.loyalty.checkouts.prune_finished)
        except Exception:  # a failed prune is retried next time; it must not stop the alarm
            log.exception("pruning finished checkouts failed")
            return
        if gone:
            log.info("pruned %d finished checkout(s)", gone)

    async def _watchdog(self, interval: float) -> None:
        # Fed from the event loop itself: a hung loop stops the pings and systemd restarts us.
        while not self.stop_event.is_set():
            systemd.notify("WATCHDOG=1")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), interval)

    # -- life cycle ------------------------------------------------------------------

    def _tell_flows_of_the_outbox(self) -> None:
        self.deliverer.on_change = self.loyalty.returns.outbox_moved
        self.deliverer.on_not_applied = self._refund_not_needed

    def _refund_not_needed(self) -> None:
        """The outbox dropped a refund: the deduction it reverses never applied.  Health names the
        reactor; the metric lets a chain see it across its tills."""
        self.metrics.refunds_not_needed.inc()
        self.loyalty.points.saw_not_applied()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        cfg = self.config
        # Before anything else: a second daemon on this state must stop here, not settle our writes.
        self.state_lock = StateLock(cfg.state_dir).acquire()
        self._opened.callback(self.state_lock.release)  # registered first: released last
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(cfg.state_dir / "outbox.sqlite3")
        self._opened.callback(self.store.close)
        recovered = self.store.recover()
        # Answers to keyed API calls, beside the checkouts they answer for (a retry after a restart gets them).
        self.idempotency = open_idempotency_store(cfg.state_dir / "idempotency.sqlite3")
        self._opened.callback(self.idempotency.close)
        self.client = EngineClient(
            cfg.engine,
            load_secrets(cfg.engine),
            on_call=self._engine_call,
            token_path=cfg.state_dir / "engine-token.json",
            traffic=self.traffic,
        )
        self._opened.push_async_callback(self.client.aclose)
        self.client.on_failure = self._engine_failed
        self.deliverer = Deliverer(
            self.store, self.client, pacer=Pacer(pacing_policy(cfg.outbox), traffic=self.traffic)
        )
        self.spools = PrintSpools(
            JobStore(cfg.state_dir / "print_jobs.sqlite3", limits=StoreLimits.from_config(cfg.printing))
        )
        self._opened.callback(self.spools.store.close)
        self.sales = SaleTracker()
        self._tasks.append(asyncio.ensure_future(self._follow_sales()))
        await asyncio.to_thread(self.spools.store.recover)
        await asyncio.gather(*(self._start_printer(p) for p in cfg.printers))
        self.loyalty = Loyalty(
            cfg,
            self.client,
            self.store,
            events=self.events,
            wake_outbox=self.deliverer.wake,
            printer=self._print_on_lane,
        )
        await self._start_displays(cfg)
        # A delivery may be the earn a waiting return's take-back needs: the settler looks at once.
        self._tell_flows_of_the_outbox()
        interrupted = self.loyalty.recover()
        if recovered or interrupted:
            log.warning(
                "recovered after an interruption: %d queued write(s) to check, %d deduction(s) to settle",
                recovered,
                interrupted,
            )
        self.monitor = HealthMonitor(
            cfg,
            self.store,
            self.engine_watch,
            self._device_views,
            ping=self.client.ping,
            money=lambda: dict(self.loyalty.points.problems),
        )
        await self.monitor.refresh()
        self._start_loops()
        for s in cfg.scanners:
            self._start_scanner(s)
        if self.router.sinks:  # a till waits on pass-through: read product codes before the first one comes
            self._tasks.append(asyncio.ensure_future(asyncio.to_thread(classify.preload)))
        self.metrics.registry.register(self.router.collector())
        self.metrics.watch(
            self.store.stats,
            lambda: [
                *(s.health for s in self.scanners.values()),
                *(p.health for p in self.printers.values()),
                *(d.health for d in self.displays.values()),
            ],
            lambda: {n: p.last_status.state.value for n, p in self.printers.items()},
        )
        self.metrics.watch_traffic(self.traffic, self.deliverer.pacer.view)
        api_server, api_task = self._start_api(cfg)
        await self._wait_devices_tried()
        while not api_server.started:
            if api_task.done():
                api_task.result()
                raise TillplugError("the API server stopped during start-up")
            await asyncio.sleep(0.005)
        if (interval := systemd.watchdog_interval()) is not None:
            self._tasks.append(asyncio.ensure_future(self._watchdog(interval)))
        systemd.notify(
            f"READY=1\nSTATUS=ready: {len(self.scanners)} scanner(s), {len(self.printers)} printer(s), "
            f"API on {cfg.api.listen}"
        )
        self.ready.set()
        self._tasks.append(asyncio.ensure_future(self._check_reactors()))
        log.info("tillplug %s ready: till %s, API on %s:%d", __version__, cfg.till_id, cfg.api.host, self.api_port)
        self._tasks.append(asyncio.ensure_future(self._warm_up()))

    async def _warm_up(self) -> None:
        """Once ready: the models start-up deferred are built, the engine's TLS context, and a blank slip
        is rendered per printer, so the renderer's imports and encoder are paid for now, not by the first
        shopper's slip (start-up does not wait on them)."""
        await complete_deferred_models()
        try:
            await asyncio.to_thread(self.client.warm_up)
        except Exception as exc:  # the first TLS connection will fail with it, and say so there
            log.debug("engine warm-up failed: %s", exc)
        for spool in list(self.printers.values()):
            try:
                await asyncio.to_thread(spool.driver.render, Receipt("warm-up", []))
            except Exception as exc:  # the first real slip will say what is wrong, with its own error
                log.debug("printer %s: warm-up render failed: %s", spool.name, exc)
        if gc.get_freeze_count():  # collect_from_now froze start-up: its leftovers go, what lives stays frozen
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    def _start_loops(self) -> None:
        """The daemon's own loops: health, the outbox's delivery, the settler and the outbox alarm."""
        self._tasks.append(asyncio.ensure_future(self.monitor.run(self.stop_event)))
        self._tasks.append(asyncio.ensure_future(self.deliverer.run(self.stop_event)))
        self._tasks.append(asyncio.ensure_future(self.loyalty.run_settler(self.stop_event)))
        self._tasks.append(asyncio.ensure_future(self._outbox_alarm()))

    async def _check_reactors(self) -> None:
        """engine-check stored its test member: ask test_reaction (no side effects) whether the reactors
        take and give back what this till reports.  A missing reactor or another rate is a health
        problem at once, not found out by a shopper's first spend.  Asked again while the engine
        cannot answer, at most ``REACTOR_CHECK_TRIES`` times."""
        cfg = self.config
        test_member = await asyncio.to_thread(read_test_member, cfg.engine.dialect_file)
        if test_member is None:  # no engine-check yet: the first spend's reactions are checked instead
            return
        ids = {"tillId": cfg.till_id, "branchId": cfg.branch_id}
        for _ in range(REACTOR_CHECK_TRIES):
            verdicts = await check_reactors(self.client, test_member, cfg.engine.event_types, ids)
            self.loyalty.points.problems.update(reactor_problems(verdicts))
            if all(v.outcome != UNKNOWN for v in verdicts):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), REACTOR_CHECK_RETRY)
                return
        log.info("the reactor check could not be answered; the first spend's reactions are checked instead")

    def _start_api(self, cfg: Config) -> tuple[_ApiServer, asyncio.Task[None]]:
        """Listen first (the Host check needs the port), then serve the API on that socket."""
        token = read_secret(cfg.api.token).reveal() if cfg.api.token else None
        sock = listen(cfg.api.host, cfg.api.port)
        self.api_port = sock.getsockname()[1]
        api = TillApi(
            self.loyalty,
            self.events,
            health=self.health,
            restart_readiness=self.restart_readiness,
            print_test=self.print_test,
            token=token,
            metrics=self.metrics.exposition,
            spools=self.spools,
            idempotency=self.idempotency,
            max_streams=stream_limit(cfg.api.max_connections),
            display=self.display_pages(token),
            display_hub=self.display_hub,
            policy=GuardPolicy(
                allowed_host_headers(cfg.api.host, self.api_port, cfg.api.allowed_hosts),
                cfg.api.allowed_origins,
                cfg.api.max_body_bytes,
                cfg.api.request_timeout,
            ),
        )
        self.api = api
        api_server = self.api_server = _ApiServer(server_config(UseCaseMiddleware(api.app), cfg.api))
        api_task = self._api_task = asyncio.ensure_future(api_server.serve(sockets=[sock]))
        return api_server, api_task

    async def _wait_devices_tried(self, timeout: float = SCANNERS_TRIED_WITHIN) -> None:
        """Each scanner has either opened or failed once (then we start degraded, and say so)."""
        deadline = time.monotonic() + timeout
        while not all_tried(self.scanners.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def request_reload(self) -> None:
        """SIGHUP: reloads never overlap.  A SIGHUP during a reload is absorbed into one more reload after
        it (the file may have changed again); a burst of 30 is at most two reloads.  Two reloads at once
        once stopped and started the same scanner twice and left an orphan thread reading its port."""
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True
            return
        self._reload_task = asyncio.ensure_future(self._reload_serially())

    async def _reload_serially(self) -> None:
        self._reload_again = True
        while self._reload_again:
            self._reload_again = False
            try:
                await self.reload()
            except Exception:  # a failed reload keeps the running config; the daemon goes on
                log.exception("reload failed; the running config stays in force")
                systemd.notify("READY=1")

    async def reload(self) -> None:  # noqa: C901 -- one step per config section, in the order they apply
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
                self.router.detach(name)
                del self.scanners[name]
        old_p, new_p = {p.name: p for p in old.printers}, {p.name: p for p in new.printers}
        for name, psup in list(self.printers.items()):
            if new_p.get(name) != old_p.get(name):
                await psup.close()
                del self.printers[name]
                self.spools.remove(name)
        self.config = new.model_copy(update={"engine": old.engine, "api": old.api, "state_dir": old.state_dir})
        self.loyalty.reconfigure(self.config)
        self.spools.store.limits = StoreLimits.from_config(self.config.printing)
        self._repace(pacing_policy(self.config.outbox))
        self.router.reconfigure(self.config)
        logs.mask_member_codes(self.config.barcodes.member)  # a new member rule's codes stay out of the journal
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

    def _repace(self, policy: PacingPolicy) -> None:
        """A reload's [outbox] pacing figures apply at once (the share, the burst, the fleet dashboard's
        averages): a reload that kept the old ones would tell the technician they had changed."""
        pacer = self.deliverer.pacer
        if policy == pacer.policy:
            return
        pacer.adopt(policy)
        log.info(
            "outbox pacing reloaded: share %g/s, burst %d, fleet interactive %s/s, fleet writes %s/s",
            policy.share,
            policy.burst,
            policy.fleet_interactive,
            policy.fleet_writes,
        )

    async def stop(self) -> None:
        if self.ready.is_set():  # a start that failed has said why; "stopping" would only confuse
            systemd.notify("STOPPING=1")
            log.info("stopping: finishing in-flight requests; queued engine writes stay queued")
        self.events.close()  # listeners on /v1/events are told the stream ends, not left hanging
        if self._reload_task is not None:  # a reload half done would leave devices half open
            self._reload_again = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reload_task, 15)
        if self.api_server is not None and self._api_task is not None:
            self.api_server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._api_task, 15)
        self.stop_event.set()
        for name, sup in self.scanners.items():
            await asyncio.to_thread(sup.stop)
            self.router.detach(name)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for psup in self.printers.values():
            await psup.close()
        await self._opened.aclose()

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT; SIGHUP reloads.  A failed start still releases what it opened."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.start()
            collect_from_now()  # start() returns as it says READY=1
            waiter = asyncio.ensure_future(stopping.wait())
            assert self._api_task is not None  # start() returned, so the API is serving
            await asyncio.wait([waiter, self._api_task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        finally:
            await self.stop()


def pacing_policy(outbox: OutboxConfig) -> PacingPolicy:
    """The outbox's pacing, from its config section (at start and at every reload)."""
    return PacingPolicy(
        share=outbox.rate_per_second,
        burst=outbox.burst,
        ceiling=outbox.above_share,
        fleet_interactive=outbox.fleet_interactive_per_second,
        fleet_writes=outbox.fleet_writes_per_second,
    )


def _names_the_till(config_path: str) -> bool:
    """Whether a config layer says which till this is (else the till may need enrolment)."""
    layers = read_layers(Path(config_path))
    return isinstance(layers, list) or "till_id" in layers.data or "branch_id" in layers.data


async def complete_deferred_models(package: str = "tillplug") -> int:
    """The API's, the flows' and the engine's pydantic models are declared with ``defer_build``: building
    their validators would cost start-up some 20 ms of CPU before READY=1.  Once ready they are built here, one
    per turn of the loop, so a request that comes meanwhile waits for one model at most and neither the
    first request nor the first slip builds any.  (A model used before its turn builds itself then.)"""
    built = 0
    for model in models_of(package):
        if not model.__pydantic_complete__:
            try:
                model.model_rebuild()
            except Exception as exc:  # its first use will fail with the same error, where it is used
                log.warning("model %s could not be built: %s", model.__qualname__, exc)
            built += 1
            await asyncio.sleep(0)
    return built


def models_of(package: str = "tillplug") -> list[type[BaseModel]]:
    """Every pydantic model class defined in ``package``'s modules (imported so far), each once."""
    seen: dict[type[BaseModel], None] = {}
    todo: list[type[BaseModel]] = [BaseModel]
    while todo:
        for model in todo.pop().__subclasses__():
            if model not in seen:
                seen[model] = None
                todo.append(model)
    return [m for m in seen if m.__module__.startswith(package + ".")]


def collect_from_now() -> None:
    """What start-up built (modules, models, the API's routes) lives as long as the daemon: it goes to
    the collector's permanent generation, so no later full collection walks it again (one would cost
    tens of milliseconds on the slip that triggers it).  Start-up itself ran without the collector
    when ``tillplug run`` turned it off (``cmd_run``); it runs from here on.  A daemon inside another
    process (the tests, the demo) found the collector on and leaves that process's objects alone."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def run_daemon(config_path: str) -> int:
    logs.setup("info")  # enrolment mode logs too; the config's level applies once it is known
    if not _names_the_till(config_path):  # only then enrolment, and the signature library it needs
        from tillplug.daemon.enrolment import enrol_if_needed

        gc.enable()  # an unconfigured till may wait here for days: not without the collector
        enrol_if_needed(config_path)  # an unconfigured till waits here for its enrolment code
    config = load_config(config_path, known_drivers=driver_names())
    logs.setup(config.log_level, member_rules=config.barcodes.member)
    asyncio.run(Daemon(config, config_path=str(Path(config_path))).run())
    return 0
