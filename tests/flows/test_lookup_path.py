"""#27: a look-up's offline-cache commit is off the shopper's path, and nothing it promised is lost."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.flow_harness import Harness
from tillplug.flows import checkouts
from tillplug.flows.checkouts import CheckoutStore
from tillplug.outbox.store import OutboxStore
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


def test_the_offline_cache_commits_without_an_fsync_and_money_keeps_its_own(tmp_path: Path) -> None:
    """A cache lost to a power cut costs a look-up; each look-up's fsync cost more than its slip's commit.
    Its commit runs at synchronous=NORMAL; every other commit, before and after (a failed one too), at FULL."""
    outbox = OutboxStore(tmp_path / "outbox.sqlite3")
    store = CheckoutStore(outbox)
    levels: list[tuple[str, int]] = []

    def level() -> int:
        return int(outbox.db.execute("PRAGMA synchronous").fetchone()[0])

    outbox.db.set_trace_callback(lambda sql: levels.append((sql, level())) if sql.startswith("INSERT") else None)
    try:
        store.remember_members({"1000001": "wll-1"}, ttl=60)
        with store.transaction() as tx:
            tx.execute("INSERT INTO member_cache (ident_hash, member_id, expires) VALUES ('x', 'wll-x', 0)")
        with pytest.raises(sqlite3.IntegrityError), outbox.transaction(fsync=False) as tx:
            tx.execute("INSERT INTO member_cache (ident_hash, member_id, expires) VALUES (NULL, NULL, 0)")
    finally:
        outbox.db.set_trace_callback(None)
    assert [lvl for _, lvl in levels] == [1, 2, 1]  # NORMAL is 1, FULL is 2
    assert level() == 2
    assert store.recall_member("1000001") == "wll-1"
    outbox.close()


def test_the_offline_cache_is_trimmed_to_its_cap_every_so_many_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding the rows past the cap walks the whole cache (a millisecond a look-up at 20,000 cards), so
    it runs at the first commit and then every MEMBER_CACHE_CAP_EVERY: the cache stays near its cap."""
    monkeypatch.setattr(checkouts, "MEMBER_CACHE_ROWS", 10)
    monkeypatch.setattr(checkouts, "MEMBER_CACHE_CAP_EVERY", 4)
    outbox = OutboxStore(tmp_path / "outbox.sqlite3")
    CheckoutStore(outbox)
    with outbox.transaction() as tx:  # a cache grown past the cap before this start
        for n in range(30):
            tx.execute(
                "INSERT INTO member_cache (ident_hash, member_id, expires) VALUES (?, ?, ?)",
                (f"old{n}", f"wll-old{n}", time.time() + 60 + n),
            )
    store = CheckoutStore(outbox)  # this start

    def rows() -> int:
        return int(outbox.query("SELECT COUNT(*) FROM member_cache")[0][0])

    store.remember_members({"card-0": "wll-0"}, ttl=3600)
    assert rows() == 10  # trimmed at once, the newest kept
    assert store.recall_member("card-0") == "wll-0"
    counts = []
    for n in range(1, 13):
        store.remember_members({f"card-{n}": f"wll-{n}"}, ttl=3600)
        counts.append(rows())
    assert counts == [11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13, 10]
    assert store.recall_member("card-12") == "wll-12"
    outbox.close()
