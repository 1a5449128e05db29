"""``GET /metrics`` on the relay: Prometheus text, one registry per relay process.

Labels are bounded on purpose: a route (the app's own templates), a status code, an engine
endpoint, a kind and a state.  No till or branch id is a label: a chain of 5,000 tills (hundreds
of branches) times routes times statuses would be tens of thousands of series per process, and
the per-till story is already in the per-call log (``tillplug.relay.calls``).  The outbox's rows
are counted from PostgreSQL at each scrape, so every process reports the chain's whole outbox.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tillplug.relay.store import Store

KINDS = ("earn", "order", "spend", "refund", "give_back", "take_back")
# Rows still to be worked on, and those the outbox gave up on (``tillplug relay outbox list``).
OUTBOX_STATES = ("pending", "sending", "unknown", "landed", "dead")


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tillplug_relay_requests", "Till requests answered, by route and status", ["route", "status"], registry=r
        )
        self.rate_limited = Counter(
            "tillplug_relay_rate_limited", "429s given to tills: the chain's bucket was empty", registry=r
        )
        self.guard_wait = Histogram(
            "tillplug_relay_guard_wait_seconds",
            "How long a spend waited for its member's lock (another spend on the member first)",
            buckets=(0.005, 0.02, 0.1, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.guard_refusals = Counter(
            "tillplug_relay_guard_refusals", "Spends the guard refused, by reason", ["reason"], registry=r
        )
        self.forwarded = Counter(
            "tillplug_relay_forwarded_events",
            "Writes the relay's outbox delivered to WLL, by kind",
            ["kind"],
            registry=r,
        )
        self.engine_errors = Counter(
            "tillplug_relay_engine_errors",
            "WLL calls that failed, by endpoint and HTTP status or transport error",
            ["endpoint", "error"],
            registry=r,
        )
        self.outbox = Gauge(
            "tillplug_relay_outbox_rows",
            "Rows of the relay's outbox not delivered yet, and dead ones (a human decides), by kind and state",
            ["kind", "state"],
            registry=r,
        )

    def engine_call(self, endpoint: str, seconds: float, error: str | None) -> None:
        """The engine client's ``on_call``: a call that got no answer (timeout, unreachable...)."""
        del seconds
        if error is not None:
            self.engine_errors.labels(endpoint, error).inc()

    def engine_failure(self, endpoint: str, status: int) -> None:
        """The engine client's ``on_failure``: an answer that is a failure (429, 5xx, 4xx)."""
        self.engine_errors.labels(endpoint, str(status)).inc()

    async def render(self, store: Store) -> bytes:
        counts = {(k, s): 0 for k in KINDS for s in OUTBOX_STATES}
        for row in await store.fetchall(
            "SELECT kind, state, count(*) AS n FROM events WHERE state = ANY(%s) GROUP BY kind, state",
            (list(OUTBOX_STATES),),
        ):
            counts[(str(row["kind"]), str(row["state"]))] = int(row["n"])
        for (kind, state), n in counts.items():
            self.outbox.labels(kind, state).set(n)
        return generate_latest(self.registry)
