"""An engine that refuses tillplug's credentials in the middle of a look-up (a reaction read, a page of
the unfiltered list) is said as that (``engine_auth_failed``: health, the technician), never folded
into "cannot tell", which would leave every refund and verdict waiting on a key nobody is told of."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tillplug.engine.lookup import scan_recent
from tillplug.engine.outcome import Outcome
from tillplug.engine.reactors import applied_within
from tillplug.errors import EngineAuthError, EngineRejected, EngineUnreachable


class ReactionsRefused:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.asked = 0

    async def event_reactions(self, event_id: str) -> list[dict[str, Any]]:
        self.asked += 1
        raise self.error


def test_a_reaction_read_refused_for_credentials_raises():
    client = ReactionsRefused(EngineAuthError(status=401))
    with pytest.raises(EngineAuthError):
        asyncio.run(applied_within(client, "ev-1", 0.05, first_pause=0.01))  # type: ignore[arg-type]
    assert client.asked == 1  # not asked again and again


def test_a_reaction_read_that_cannot_reach_the_engine_cannot_tell():
    client = ReactionsRefused(EngineUnreachable())
    assert asyncio.run(applied_within(client, "ev-1", 0.05, first_pause=0.01)) is None  # type: ignore[arg-type]
    assert client.asked >= 2  # read again until the time is up


def test_a_page_refused_for_credentials_raises():
    async def page(offset: int, limit: int) -> list[Any]:
        raise EngineAuthError(status=403)

    with pytest.raises(EngineAuthError):
        asyncio.run(scan_recent(page, "key-1", None))


def test_a_page_refused_otherwise_cannot_tell():
    async def page(offset: int, limit: int) -> list[Any]:
        raise EngineRejected(status=400)

    assert asyncio.run(scan_recent(page, "key-1", None)).outcome is Outcome.UNKNOWN
