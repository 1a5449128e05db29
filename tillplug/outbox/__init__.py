"""The durable outbox of engine writes: every one arrives, exactly once."""

from tillplug.outbox.deliver import Deliverer, TokenBucket
from tillplug.outbox.store import OutboxStore, Row, Stats

__all__ = ["Deliverer", "OutboxStore", "Row", "Stats", "TokenBucket"]
