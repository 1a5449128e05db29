"""Scan routing, in one place: bytes → scan → classification → loyalty, the till, or both.

Every frame a scanner driver completes comes here, in the order the scanner sent it,
on the thread that read it.  ``decide`` says where it goes:

    member card, engine voucher  → loyalty (consumed; also to the till with ``pass_loyalty``)
    shop-managed code, product,
    GS1 label, anything else     → the till

A scan for the till is passed on at once, before the loyalty side sees anything,
so a slow engine never delays the till: through the scanner's ``till_port`` (a pty
the till opens as if it were the scanner, written byte for byte as the scanner sent
it), or re-typed by a keyboard scanner's driver.  Every scan with text also goes to
the flows, which tell the till on the event stream; the decision travels in that
``scan`` event (``route``, ``passThrough``), added here by ``ScanEvents`` so the
flows need not know about routing.  After a consumed scan, the outcome the flows
published decides the feedback sent to the scanner ("good" or "bad").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from tillplug.barcodes.classify import Classifier, ScanKind
from tillplug.barcodes.framing import Frame
from tillplug.config.model import Config, ScannerConfig
from tillplug.devices.supervisor import Scan, ScannerSupervisor
from tillplug.devices.till_port import PassThrough, TillPort
from tillplug.errors import DeviceGone
from tillplug.flows.events import EventBus, TillEvent

log = logging.getLogger(__name__)


class Route(enum.Enum):
    LOYALTY = "loyalty"  # consumed: the till does not see it (the event stream still tells)
    TILL = "till"  # passed through: loyalty does nothing with it
    BOTH = "both"  # consumed and passed through (pass_loyalty = true)


CONSUMED = {ScanKind.MEMBER, ScanKind.VOUCHER}


def decide(kind: ScanKind | None, *, pass_loyalty: bool = False) -> Route:
    """Where a scan goes.  ``None``: a frame with no text (an empty line), which only the till may want."""
    if kind in CONSUMED:
        return Route.BOTH if pass_loyalty else Route.LOYALTY
    return Route.TILL


@dataclass(frozen=True)
class Decision:
    kind: ScanKind | None
    route: Route
    pass_through: PassThrough

    def event_fields(self) -> dict[str, str]:
        return {"route": self.route.value, "passThrough": self.pass_through.value}

    def describe(self) -> str:
        """One line for ``tillplug sniff``."""
        kind = self.kind.value if self.kind else "empty"
        where = {
            Route.LOYALTY: "consumed by loyalty, not passed to the till",
            Route.TILL: "for the till",
            Route.BOTH: "consumed by loyalty and for the till too (pass_loyalty)",
        }[self.route]
        if self.pass_through is PassThrough.NONE:
            where += " (event stream only: no till_port)"
        return f"{kind} → {self.route.value}: {where}"


# -- the router ---------------------------------------------------------------------------------


@dataclass
class ScanRecord:
    """One consumed scan on its way through the flows: what was decided, what came of it."""

    scan: Scan
    decision: Decision
    events: list[TillEvent] = field(default_factory=list)

    def outcome(self) -> str | None:
        """good, bad, or None (nothing the scanner should signal)."""
        verdict = None
        for event in self.events:
            if event.type == "error" or (event.type == "voucher_result" and not event.data.get("ok")):
                return "bad"
            if event.type in ("member_found", "member_attached", "voucher_result"):
                verdict = "good"
        return verdict


_current: contextvars.ContextVar[ScanRecord | None] = contextvars.ContextVar("tillplug_scan", default=None)


class ScanEvents(EventBus):
    """The event bus, aware of the scan being handled (a context variable: the scan's own task).

    The ``scan`` event the flows publish gets the routing decision; every event published while
    the flows handle a scan is kept on its record, for the feedback at the scanner.
    """

    def publish(self, type_: str, data: dict[str, Any] | None = None, *, lane: int | None = None) -> TillEvent:
        record = _current.get()
        if record is not None and type_ == "scan":
            data = {**(data or {}), **record.decision.event_fields()}
        event = super().publish(type_, data, lane=lane)
        if record is not None:
            record.events.append(event)
        return event


class Router:
    """Routes every frame of every scanner; thread-safe; one per daemon."""

    def __init__(self, config: Config, consume: Callable[[Scan, Decision], None]) -> None:
        self.consume = consume
        self.scanners: dict[str, ScannerConfig] = {}
        self.classifier = Classifier(config.barcodes)
        self.reconfigure(config)
        # device → the way to the till: a TillPort's send, or a keyboard driver's re-typing
        self.sinks: dict[str, Callable[[Scan], PassThrough]] = {}
        self.routed: Counter[tuple[str, str]] = Counter()  # (device, route)
        self.dropped: Counter[tuple[str, str]] = Counter()  # (device, reason)
        self.feedback_sent: Counter[tuple[str, str]] = Counter()  # (device, good|bad)
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (device, good|bad|none): consumed scans handled
        self.till_ports: dict[str, TillPort] = {}
        self._last_passed: dict[str, bool] = {}

    def attach(self, cfg: ScannerConfig, supervisor: ScannerSupervisor, loop: asyncio.AbstractEventLoop) -> None:
        """The way to the till for one scanner: its till_port, or its driver re-typing (keyboard scanners)."""
        if cfg.till_port is not None:
            self.open_till_port(cfg, loop)
        elif cfg.retype and getattr(supervisor.driver_cls, "passes_through", False):

            def retype(scan: Scan) -> PassThrough:
                driver = supervisor.driver
                if driver is not None and driver.pass_through(frame_of(scan)):
                    return PassThrough.PASSED
                self.dropped[(cfg.name, "retype_failed")] += 1
                return PassThrough.DROPPED

            self.sinks[cfg.name] = retype

    def detach(self, name: str) -> None:
        self.close_till_port(name)

    def open_till_port(self, cfg: ScannerConfig, loop: asyncio.AbstractEventLoop) -> None:
        """The scanner's till side, if its config has one; a failure is logged, never fatal."""
        if cfg.till_port is None:
            return
        port = TillPort(cfg.till_port, loop, group=cfg.till_group)
        try:
            port.open()
        except (OSError, DeviceGone) as exc:
            log.error(
                "scanner %s: cannot create till_port %s: %s", cfg.name, cfg.till_port, getattr(exc, "message", exc)
            )

            def unavailable(scan: Scan) -> PassThrough:  # configured, so not "none": every scan is a loss
                self.dropped[(cfg.name, "till_port_unavailable")] += 1
                return PassThrough.DROPPED

            self.sinks[cfg.name] = unavailable
            return
        self.till_ports[cfg.name] = port
        self.sinks[cfg.name] = lambda scan: port.send(scan.raw)
        log.info("scanner %s: the till can open %s as its scanner", cfg.name, cfg.till_port)

    def close_till_port(self, name: str) -> None:
        self.sinks.pop(name, None)
        port = self.till_ports.pop(name, None)
        if port is not None:
            port.close()

    def reconfigure(self, config: Config) -> None:
        self.classifier = Classifier(config.barcodes)
        self.scanners = {s.name: s for s in config.scanners}

    def on_scan(self, scan: Scan) -> None:
        """Called by a scanner's supervisor for every frame, in order, on the thread that read it."""
        cfg = self.scanners.get(scan.device)
        if scan.continuation:  # the LF of a CR LF: it goes where its CR went
            if self._last_passed.get(scan.device):
                self._pass(scan)
            return
        kind = self.classifier.kind_of(scan.text, scan.symbology) if scan.text else None
        route = decide(kind, pass_loyalty=bool(cfg and cfg.pass_loyalty))
        passed = PassThrough.WITHHELD
        if route is not Route.LOYALTY:
            passed = self._pass(scan)
        self._last_passed[scan.device] = passed is PassThrough.PASSED
        decision = Decision(kind, route, passed)
        self.routed[(scan.device, route.value)] += 1
        if scan.text:
            self.consume(scan, decision)

    def _pass(self, scan: Scan) -> PassThrough:
        sink = self.sinks.get(scan.device)
        if sink is None:
            return PassThrough.NONE
        try:
            return sink(scan)
        except Exception:  # a pass-through failure must never stop the loyalty side
            log.exception("scanner %s: passing a scan to the till failed", scan.device)
            self.dropped[(scan.device, "error")] += 1
            return PassThrough.DROPPED

    def view(self, name: str) -> dict[str, Any]:
        """For health: the scanner's till side, if it has one."""
        port = self.till_ports.get(name)
        if port is None:
            return {}
        return {
            "tillPort": {
                "path": str(port.path),
                "tillHasItOpen": port.till_has_it_open(),
                "passed": port.passed,
                "dropped": sum(port.dropped.values()),
            }
        }

    def collector(self) -> Collector:
        return _RoutingMetrics(self)

    @contextlib.contextmanager
    def handling(self, scan: Scan, decision: Decision) -> Iterator[ScanRecord]:
        """Around the flows' handling of one scan: its events are recorded (see ``ScanEvents``)."""
        record = ScanRecord(scan, decision)
        token = _current.set(record)
        try:
            yield record
        finally:
            _current.reset(token)

    def feedback(self, record: ScanRecord, send: Callable[[bytes], bool]) -> str | None:
        """Send "good" or "bad" to the scanner for a consumed scan, where its config declares the bytes."""
        cfg = self.scanners.get(record.scan.device)
        if cfg is None or record.decision.route is Route.TILL:
            return None
        verdict = record.outcome()
        self.outcomes[(cfg.name, verdict or "none")] += 1
        command = {"good": cfg.feedback_good, "bad": cfg.feedback_bad}.get(verdict or "")
        if verdict is None or command is None:
            return None
        if send(bytes.fromhex(command)):
            self.feedback_sent[(cfg.name, verdict)] += 1
            return verdict
        return None


class _RoutingMetrics(Collector):
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[CounterMetricFamily]:
        r = self.router
        routed = CounterMetricFamily(
            "tillplug_scans_routed", "Scans by where routing sent them", labels=["device", "route"]
        )
        for (device, route), n in sorted(r.routed.items()):
            routed.add_metric([device, route], n)
        yield routed
        dropped = CounterMetricFamily(
            "tillplug_passthrough_dropped",
            "Scans for the till that were dropped: till side not open (till_closed), too far behind "
            "(till_behind), or a failure (error, retype_failed, till_port_unavailable)",
            labels=["device", "reason"],
        )
        counts: Counter[tuple[str, str]] = Counter(r.dropped)
        for name, port in list(r.till_ports.items()):
            for reason, n in port.dropped.items():
                counts[(name, reason)] += n
        for (device, reason), n in sorted(counts.items()):
            dropped.add_metric([device, reason], n)
        yield dropped
        feedback = CounterMetricFamily(
            "tillplug_scanner_feedback", "Feedback commands sent to scanners", labels=["device", "verdict"]
        )
        for (device, verdict), n in sorted(r.feedback_sent.items()):
            feedback.add_metric([device, verdict], n)
        yield feedback


def frame_of(scan: Scan) -> Frame:
    """The frame a scan came from, for a driver that passes it through itself."""
    return Frame(b"", scan.raw, scan.continuation, scan.keys)
