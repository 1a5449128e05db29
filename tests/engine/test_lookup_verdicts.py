"""What a look-up may conclude from what the engine's lists hold, at the edges no model reaches:
an engine's stamp that does not parse, and a verdict's own reading (``Lookup.found``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tillplug.engine.lookup import Lookup, scan_recent, stamped
from tillplug.engine.outcome import Outcome

NOW = 2_000_000_000.0


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def pages_of(items: list[dict[str, Any]]):
    async def page(skip: int, limit: int) -> list[dict[str, Any]]:
        return items[skip : skip + limit]

    return page


@pytest.mark.parametrize("created", ["yesterday", "2026-13-45T99:00:00Z", "", "12:00", "2026-12-07T10:00:00"])
def test_a_stamp_that_does_not_parse_is_no_stamp_and_proves_nothing(created: str) -> None:
    """An engine answering some odd ``createdAt`` (or one without its zone) must not stop a look-up
    with a parser's error, nor let that item count as older than the write: without a stamp only
    the list's end proves absence."""
    assert stamped({"createdAt": created}) is None
    items = [{"id": "1", "payload": {"eventKey": "other"}, "createdAt": stamp(NOW - 7200)}]
    items.insert(0, {"id": "0", "payload": {"eventKey": "odd"}, "createdAt": created})
    items += [{"id": str(n), "payload": {"eventKey": f"k{n}"}, "createdAt": stamp(NOW - 7200 - n)} for n in range(2, 9)]
    # The odd item first: the stamps after it are old, but the order can no longer be shown newest first.
    verdict = asyncio.run(scan_recent(pages_of(items), "ours", NOW, max_pages=2, limit=2))
    assert verdict.outcome is Outcome.UNKNOWN
    assert asyncio.run(scan_recent(pages_of(items), "ours", NOW, max_pages=10, limit=2)).outcome is Outcome.NOT_LANDED


def test_only_a_landed_verdict_is_found() -> None:
    """``find_events``/``find_orders`` (engine-check, the relay's proofs) answer "found" from it."""
    assert Lookup(Outcome.LANDED, engine_id="e-1").found
    assert not Lookup(Outcome.NOT_LANDED).found
    assert not Lookup(Outcome.UNKNOWN, reason="refused").found


@pytest.mark.parametrize("refusal", ["rejected", "unreadable"])
def test_a_page_refused_or_unreadable_leaves_the_write_unverifiable(refusal: str) -> None:
    """A list the engine refuses (4xx) or answers unreadably (an HTML error page) proves nothing:
    the look-up says unverifiable, never raises into the outbox's pass, never "not landed"."""
    from tillplug.errors import EngineProtocolError, EngineRejected

    async def page(skip: int, limit: int) -> list[Any]:
        raise EngineRejected("no") if refusal == "rejected" else EngineProtocolError("<html>")

    found = asyncio.run(scan_recent(page, "k-1", None, kind="event"))
    assert found.outcome is Outcome.UNKNOWN and "refused" in (found.reason or "")
