"""The durable outbox of engine writes: every one arrives, exactly once."""

from tillplug.outbox.deliver import Deliverer
from tillplug.outbox.pacing import Pacer, PacingPolicy
from tillplug.outbox.store import OutboxStore, Row, Stats

__all__ = ["Deliverer", "OutboxStore", "Pacer", "PacingPolicy", "Row", "Stats"]
