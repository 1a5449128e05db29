"""The scan path, in one place: bytes → frame → classify once → the till and/or loyalty → outcome → feedback.

Every frame a scanner driver completes comes to ``Router.on_scan``, in the order the
scanner sent it, on the thread that read it.  There the text is classified, once (no
product details yet: those wait for the loop), and ``decide`` says where it goes:

    member card, engine voucher  → loyalty (consumed; also to the till with ``pass_loyalty``)
    shop-managed code, product,
    GS1 label, anything else     → the till

A scan for the till is passed on at once, before the loyalty side sees anything,
so a slow engine never delays the till: through the scanner's ``till_port`` (a pty
the till opens as if it were the scanner, written byte for byte as the scanner sent
it), or re-typed by a keyboard scanner's driver.  Every scan with text then goes to
the event loop (``consume``, wired by the daemon), where ``Router.handle`` tells the
till (the ``scan`` event, with the decision: ``route``, ``passThrough``), hands a card
or voucher to the flows with the classification made here (``Loyalty.scan``), and
sends the scanner "good" or "bad" from the ``ScanOutcome`` that call returns.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from tillplug.barcodes.classify import Classified, Classifier, ScanKind, gs1_details
from tillplug.barcodes.framing import Frame
from tillplug.config.model import Config, ScannerConfig
from tillplug.devices.supervisor import Scan, ScannerSupervisor
from tillplug.devices.till_port import PassThrough, TillPort
from tillplug.engine.traffic import use_case
from tillplug.errors import DeviceGone
from tillplug.flows.events import ScanOutcome, ScanResult
from tillplug.flows.loyalty import Loyalty
from tillplug.logs import mask

log = logging.getLogger(__name__)


class Route(enum.Enum):
    LOYALTY = "loyalty"  # consumed: the till does not see it (the event stream still tells)
    TILL = "till"  # passed through: loyalty does nothing with it
    BOTH = "both"  # consumed and passed through (pass_loyalty = true)


CONSUMED = {ScanKind.MEMBER, ScanKind.VOUCHER}
GOOD = {ScanResult.MEMBER_FOUND, ScanResult.MEMBER_ATTACHED, ScanResult.VOUCHER_CHECKED, ScanResult.VOUCHER_ACCEPTED}
BAD = {ScanResult.MEMBER_NOT_FOUND, ScanResult.VOUCHER_REFUSED, ScanResult.FAILED}


def decide(kind: ScanKind | None, *, pass_loyalty: bool = False) -> Route:
    """Where a scan goes.  ``None``: a frame with no text (an empty line), which only the till may want."""
    if kind in CONSUMED:
        return Route.BOTH if pass_loyalty else Route.LOYALTY
    return Route.TILL


def verdict(outcome: ScanOutcome) -> str | None:
    """What the scanner is told: "good", "bad", or None (nothing yet: a pending burn is settled later)."""
    if outcome.result in BAD or outcome.slip_failed:  # a slip that could not print: the cashier looks at the till
        return "bad"
    return "good" if outcome.result in GOOD else None


@dataclass(frozen=True)
class Decision:
    """What routing made of one scan: its classification (None: a frame with no text), where it goes,
    and whether the till got it."""

    classified: Classified | None
    route: Route
    pass_through: PassThrough

    @property
    def kind(self) -> ScanKind | None:
        return self.classified.kind if self.classified else None

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


class Router:
    """The scan path of every scanner, one per daemon: ``on_scan`` on the reader threads (thread-safe),
    ``handle`` on the event loop."""

    def __init__(self, config: Config, consume: Callable[[Scan, Decision], None]) -> None:
        self.consume = consume
        self.scanners: dict[str, ScannerConfig] = {}
        self.classifier = Classifier(config.barcodes)
        self.reconfigure(config)
        # device → the way to the till: a TillPort's send, or a keyboard driver's re-typing
        self.sinks: dict[str, Callable[[Scan], PassThrough]] = {}
        self.senders: dict[str, Callable[[bytes], bool]] = {}  # device → its way to the scanner, for feedback
        self.routed: Counter[tuple[str, str]] = Counter()  # (device, route)
        self.dropped: Counter[tuple[str, str]] = Counter()  # (device, reason)
        self.feedback_sent: Counter[tuple[str, str]] = Counter()  # (device, good|bad)
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (device, good|bad|none): consumed scans handled
        self.till_ports: dict[str, TillPort] = {}
        self._last_passed: dict[str, bool] = {}

    def attach(self, cfg: ScannerConfig, supervisor: ScannerSupervisor, loop: asyncio.AbstractEventLoop) -> None:
        """The way to the till for one scanner: its till_port, or its driver re-typing (keyboard scanners)."""
        self.senders[cfg.name] = supervisor.send_to_scanner
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
        self.senders.pop(name, None)
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
        classified = self.classifier.classify(scan.text, scan.symbology, read_product=False) if scan.text else None
        route = decide(classified.kind if classified else None, pass_loyalty=bool(cfg and cfg.pass_loyalty))
        passed = PassThrough.WITHHELD
        if route is not Route.LOYALTY:
            passed = self._pass(scan)
        self._last_passed[scan.device] = passed is PassThrough.PASSED
        decision = Decision(classified, route, passed)
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

    async def handle(self, scan: Scan, decision: Decision, loyalty: Loyalty) -> ScanOutcome | None:
        """The loop's part of one scan, in the lane's order: the till told, loyalty's part, the feedback."""
        classified = decision.classified
        if classified is None:  # a frame with no text is never consumed
            return None
        loyalty.events.publish("scan", scan_event(scan, classified, decision), lane=scan.lane)
        if decision.route is Route.TILL:
            return None
        with use_case("scan"):
            outcome = await loyalty.scan(classified, scan.lane)
        self.feedback(scan.device, outcome)
        return outcome

    def feedback(self, device: str, outcome: ScanOutcome) -> str | None:
        """Send "good" or "bad" to the scanner, where its config declares the bytes; counted either way."""
        cfg, send = self.scanners.get(device), self.senders.get(device)
        if cfg is None or send is None:
            return None
        said = verdict(outcome)
        self.outcomes[(cfg.name, said or "none")] += 1
        command = {"good": cfg.feedback_good, "bad": cfg.feedback_bad}.get(said or "")
        if said is None or command is None:
            return None
        if send(bytes.fromhex(command)):
            self.feedback_sent[(cfg.name, said)] += 1
            return said
        return None


def scan_event(scan: Scan, classified: Classified, decision: Decision) -> dict[str, Any]:
    """The ``scan`` event: what was read, as far as the till may see it (a member only masked), and where it went."""
    base = {"device": scan.device, "kind": classified.kind.value, "symbology": scan.symbology}
    if classified.kind is ScanKind.MEMBER:
        read: dict[str, Any] = {"member": mask(classified.code)}
    elif classified.kind in (ScanKind.VOUCHER, ScanKind.LOCAL_POOL):
        read = {"code": classified.code}
    else:  # a product or a GS1 label: what biip reads of it, here on the loop, after it went to the till
        read = {"text": scan.text, **gs1_details(scan.text, scan.symbology)}
    return {**base, **read, **decision.event_fields()}


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
        for (device, said), n in sorted(r.feedback_sent.items()):
            feedback.add_metric([device, said], n)
        yield feedback


def frame_of(scan: Scan) -> Frame:
    """The frame a scan came from, for a driver that passes it through itself."""
    return Frame(b"", scan.raw, scan.continuation, scan.keys)
