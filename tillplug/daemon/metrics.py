"""Prometheus metrics for fleet operators, served at /metrics on the till API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tillplug.engine.traffic import Traffic


class _Live(Collector):
    """Gauges read at scrape time, so they are never stale: outbox, printers, devices."""

    def __init__(
        self,
        outbox_stats: Callable[[], Any],
        devices: Callable[[], list[Any]],
        printer_states: Callable[[], dict[str, str]],
    ) -> None:
        self.outbox_stats, self.devices, self.printer_states = outbox_stats, devices, printer_states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.outbox_stats()
        yield GaugeMetricFamily("tillplug_outbox_depth", "Engine writes waiting to be delivered", value=stats.depth)
        yield GaugeMetricFamily(
            "tillplug_outbox_oldest_age_seconds", "Age of the oldest waiting write", value=stats.oldest_pending_age
        )
        yield GaugeMetricFamily("tillplug_outbox_dead", "Writes the engine refused for good", value=stats.dead)
        yield GaugeMetricFamily(
            "tillplug_outbox_unverifiable",
            "Writes held because a look-up cannot tell whether the engine has them",
            value=getattr(stats, "unverifiable", 0),
        )
        printers = GaugeMetricFamily(
            "tillplug_printer_status", "1 for the printer's current paper/cover state", labels=["printer", "state"]
        )
        for name, state in self.printer_states().items():
            for s in ("ok", "warning", "error", "unknown"):
                printers.add_metric([name, s], 1.0 if s == state else 0.0)
        yield printers
        reconnects = GaugeMetricFamily(
            "tillplug_device_reconnects", "Times a device came back after a failure", labels=["device", "kind"]
        )
        ready = GaugeMetricFamily("tillplug_device_ready", "1 if the device is ready", labels=["device", "kind"])
        for h in self.devices():
            reconnects.add_metric([h.name, h.kind], h.reconnects)
            ready.add_metric([h.name, h.kind], 1.0 if h.state.value == "ready" else 0.0)
        yield reconnects
        yield ready


def failure_kind(status: int) -> str:
    """The kind of an engine answer that is a failure, as metrics, health and the log name it."""
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if status in (401, 403):
        return "auth"
    return "rejected"


class _Traffic(Collector):
    """Engine requests and 429s by use case, and the outbox's current pace (tillplug/engine/traffic.py)."""

    def __init__(self, traffic: Traffic, pace: Callable[[], dict[str, Any]]) -> None:
        self.traffic, self.pace = traffic, pace

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "tillplug_engine_requests", "Engine HTTP requests by use case", labels=["use_case"]
        )
        for name, count in sorted(self.traffic.requests.items()):
            requests.add_metric([name], count)
        yield requests
        limited = CounterMetricFamily(
            "tillplug_engine_rate_limited", "Engine answers 429 by use case", labels=["use_case"]
        )
        for name, count in sorted(self.traffic.rate_limited.items()):
            limited.add_metric([name], count)
        yield limited
        pace = self.pace()
        yield GaugeMetricFamily(
            "tillplug_outbox_rate", "Requests/s the outbox may send now (adaptive)", value=pace["ratePerSecond"]
        )
        yield GaugeMetricFamily(
            "tillplug_outbox_held_seconds",
            "Seconds the outbox still waits (Retry-After, restart)",
            value=pace["heldSeconds"],
        )
        yield GaugeMetricFamily(
            "tillplug_outbox_drain_deadline_seconds",
            "Seconds until the chain's drain deadline after an outage (0: not draining towards one)",
            value=pace["drainDeadlineSeconds"],
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.scans = Counter("tillplug_scans", "Scans by kind", ["kind"], registry=self.registry)
        self.print_jobs = Counter(
            "tillplug_print_jobs",
            "Print jobs entering each state, by printer",
            ["printer", "state"],
            registry=self.registry,
        )
        self.share_refused = Counter(
            "tillplug_share_refused",
            "Connections to a printer's share port refused before printing anything, by what they spoke "
            "(http: a web page or other HTTP client; tls)",
            ["printer", "protocol"],
            registry=self.registry,
        )
        self.drawer_state = Gauge(
            "tillplug_drawer_state",
            "1 for the cash drawer's state as its sensor last said (open, closed, unknown), by printer",
            ["printer", "state"],
            registry=self.registry,
        )
        self.drawer_openings = Counter(
            "tillplug_drawer_openings",
            "Times the drawer sensor saw the drawer open, by printer",
            ["printer"],
            registry=self.registry,
        )
        self.engine_latency = Histogram(
            "tillplug_engine_request_seconds",
            "Engine round trips by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.engine_failures = Counter(
            "tillplug_engine_failures",
            "Engine calls that failed, by endpoint and error: timeout, unreachable, transport (nothing or no answer "
            "came back), rate_limited (429), server_error (5xx), auth (401/403), rejected (other 4xx)",
            ["endpoint", "error"],
            registry=self.registry,
        )
        self.refunds_not_needed = Counter(
            "tillplug_outbox_refunds_not_needed",
            "Refunds the outbox did not send because the engine shows the deduction they reverse never applied "
            "(its redemption reactor may be missing: tillplug engine-check)",
            registry=self.registry,
        )

    def watch(
        self,
        outbox_stats: Callable[[], Any],
        devices: Callable[[], list[Any]],
        printer_states: Callable[[], dict[str, str]],
    ) -> None:
        self.registry.register(_Live(outbox_stats, devices, printer_states))

    def watch_traffic(self, traffic: Traffic, pace: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_Traffic(traffic, pace))

    def engine_call(self, endpoint: str, seconds: float, error: str | None) -> None:
        self.engine_latency.labels(endpoint).observe(seconds)
        if error is not None:
            self.engine_failures.labels(endpoint, error).inc()

    def engine_failure(self, endpoint: str, kind: str) -> None:
        """An engine answer that was a failure (kinds from ``failure_kind``; transport failures come by engine_call)."""
        self.engine_failures.labels(endpoint, kind).inc()

    def drawer_changed(self, printer: str, state: str) -> None:
        for each in ("open", "closed", "unknown"):
            self.drawer_state.labels(printer, each).set(1.0 if each == state else 0.0)
        if state == "open":
            self.drawer_openings.labels(printer).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
