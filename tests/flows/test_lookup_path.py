"""#27: a look-up's offline-cache commit is off the shopper's path, and nothing it promised is lost."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping

import pytest

from tests.flow_harness import Harness
from tillplug.sim import SimServer


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as s:
        yield s


def test_a_look_up_answers_before_its_offline_cache_commit_and_the_card_is_known_meanwhile(
    tmp_path: object, sim: SimServer
) -> None:
    """The commit (an fsync) held the look-up's answer, and with it the lane's next scan.  Now the
    look-up answers while that commit is still stuck; a card seen meanwhile attaches offline as a
    known member all the same, and the commit lands after."""

    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        store = h.loyalty.ctx.store
        stuck, entered = threading.Event(), threading.Event()
        real = store.remember_members

        def slow_disk(members: Mapping[str, str], ttl: float) -> None:
            entered.set()
            stuck.wait(10)
            real(members, ttl)

        store.remember_members = slow_disk  # type: ignore[method-assign]
        try:
            view = await asyncio.wait_for(h.loyalty.lookup("1000002"), 10)  # a hang, not a duration
            assert view.pointsBalance >= 0
            assert await asyncio.to_thread(entered.wait, 10)
            assert store.recall_member("1000002") is None  # not on disk yet
            sim.sim.faults.update({"down": True})
            await h.loyalty.open_checkout("K1", 1, None)
            attached = await h.loyalty.attach_member("K1", "1000002", entry="keyed")
            assert attached.offline is True and attached.memberUnverified is False
            stuck.set()
            task = h.loyalty.book._remember_task
            assert task is not None
            await asyncio.wait_for(task, 10)
            assert store.recall_member("1000002") is not None  # and then on disk
        finally:
            stuck.set()
            await h.close()

    asyncio.run(go())


def test_cards_looked_up_while_a_commit_is_under_way_share_the_next_one(tmp_path: object, sim: SimServer) -> None:
    async def go() -> None:
        h = Harness(tmp_path, sim)  # type: ignore[arg-type]
        store = h.loyalty.ctx.store
        commits: list[list[str]] = []
        stuck = threading.Event()
        real = store.remember_members

        def counted(members: Mapping[str, str], ttl: float) -> None:
            commits.append(sorted(members))
            stuck.wait(10)
            real(members, ttl)

        store.remember_members = counted  # type: ignore[method-assign]
        try:
            for card in ("1000001", "1000002", "1000003"):
                await h.loyalty.lookup(card)
            stuck.set()
            task = h.loyalty.book._remember_task
            assert task is not None
            await asyncio.wait_for(task, 10)
            assert commits == [["1000001"], ["1000002", "1000003"]]
            assert all(store.recall_member(c) is not None for c in ("1000001", "1000002", "1000003"))
        finally:
            stuck.set()
            await h.close()

    asyncio.run(go())
