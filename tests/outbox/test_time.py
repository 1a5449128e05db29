"""Time (#12): the outbox's due times and ages survive wall-clock steps, Retry-After is honoured
up to an hour, and times read from disk (due times, the token cache's expiry) are bounded.

Clock steps are injected (a fake wall clock and a fake monotonic clock); the system clock is
never touched."""

import asyncio
import json
import logging

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tillplug.config.loader import Secret
from tillplug.config.model import EngineConfig
from tillplug.engine import EngineClient, EngineSecrets, TokenCache
from tillplug.engine.models import Token, new_event_key
from tillplug.outbox import Deliverer, OutboxStore
from tillplug.outbox.clock import SteadyClock
from tillplug.outbox.store import MAX_DELAY

ALICE = "5a1b2c3d-0000-4000-8000-000000000001"
HOUR, DAY = 3600.0, 86400.0
START = 1_790_000_000.0  # a wall-clock reading in 2026


class Clocks:
    """A wall clock that a technician (or a bad NTP server) can step, and a monotonic one that only advances."""

    def __init__(self) -> None:
        self.wall = START
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall += seconds


def steady_store(tmp_path, clocks: Clocks) -> OutboxStore:
    return OutboxStore(tmp_path / "o.db", clock=SteadyClock(lambda: clocks.wall, lambda: clocks.mono))


def add_sale(store: OutboxStore, stream: str = "tx-1") -> str:
    key = new_event_key()
    body = {"type": "TRANSACTION", "subject": ALICE, "payload": {"eventKey": key, "total": 100}}
    store.add(kind="event", stream=stream, event_key=key, body=body)
    return key


def schedule(store: OutboxStore, delay: float) -> None:
    """The one row was tried and is due again in ``delay`` seconds (as the deliverer leaves it)."""
    row = store.claim()
    assert row is not None
    store.retry_later(row.id, at=store.clock() + delay, error="engine_unreachable", needs_lookup=False)


# -- in-process: the steady clock ---------------------------------------------------------


def test_the_clock_set_back_an_hour_does_not_hold_a_due_row(tmp_path, caplog):
    """The issue: 'setting the clock back an hour held a due row until it was restored'."""
    clocks = Clocks()
    store = steady_store(tmp_path, clocks)
    add_sale(store)
    schedule(store, 5)
    clocks.step(-HOUR)
    clocks.advance(5)
    with caplog.at_level(logging.WARNING, "tillplug.outbox.clock"):
        assert store.claim() is not None  # due 5 s after it was scheduled, whatever the wall clock says
    assert "the system clock jumped -3600 s" in caplog.text


def test_four_days_ahead_does_not_make_waiting_rows_old(tmp_path):
    """The issue: 'four days ahead raised a false over-limit alarm'."""
    from tillplug.config.model import OutboxConfig

    clocks = Clocks()
    store = steady_store(tmp_path, clocks)
    add_sale(store)
    clocks.advance(60)
    clocks.step(4 * DAY)
    age = store.stats().oldest_pending_age
    assert 59 <= age <= 61
    assert not OutboxConfig().exceeded(store.stats().depth, age)
    add_sale(store, "tx-2")  # a row added after the step is stamped on the same time line
    clocks.advance(30)
    assert 89 <= store.stats().oldest_pending_age <= 91


def test_a_real_wait_still_counts_after_a_step(tmp_path):
    """Monotonic time keeps running: a row waiting for days is still reported as old."""
    clocks = Clocks()
    store = steady_store(tmp_path, clocks)
    add_sale(store)
    clocks.step(-HOUR)
    clocks.advance(2 * DAY)
    assert 2 * DAY - 1 <= store.stats().oldest_pending_age <= 2 * DAY + 1


def test_once_the_clock_is_set_right_it_is_followed_again(tmp_path, caplog):
    clocks = Clocks()
    clock = SteadyClock(lambda: clocks.wall, lambda: clocks.mono)
    clocks.step(-HOUR)
    assert clock() == pytest.approx(START)
    clocks.advance(10)
    clocks.step(HOUR)  # restored
    with caplog.at_level(logging.WARNING, "tillplug.outbox.clock"):
        assert clock() == clocks.wall
    assert "back in step" in caplog.text
    clocks.advance(1.5)
    clocks.step(0.5)  # NTP's small adjustments are followed
    assert clock() == clocks.wall


@settings(max_examples=60, deadline=None)
@given(
    delay=st.floats(0, MAX_DELAY),
    jump=st.floats(-4 * DAY, 4 * DAY).filter(lambda j: abs(j) > 10),
    before=st.floats(0, 1),
)
def test_a_row_is_due_after_its_delay_in_real_time_whatever_the_wall_clock_does(tmp_path_factory, delay, jump, before):
    """Any step of the wall clock, at any moment of the wait: the row is due when its delay has passed."""
    clocks = Clocks()
    store = steady_store(tmp_path_factory.mktemp("o"), clocks)
    try:
        add_sale(store)
        schedule(store, delay)
        clocks.advance(delay * before)
        clocks.step(jump)
        rest = delay * (1 - before)
        if rest > 0.5:
            clocks.advance(rest - 0.5)
            assert store.claim() is None  # not early
            rest = 0.5
        clocks.advance(rest + 0.001)  # a millisecond for float rounding at 1.79e9 s
        assert store.claim() is not None  # not late
    finally:
        store.close()


# -- across a restart: due times read from disk ------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 5.0, 300.0, MAX_DELAY])
def test_after_a_restart_with_the_clock_set_back_a_row_waits_only_its_own_delay(tmp_path, delay):
    now = [START]
    store = OutboxStore(tmp_path / "o.db", clock=lambda: now[0])
    add_sale(store)
    schedule(store, delay)
    store.close()
    now[0] -= 6 * HOUR  # set back while tillplug was stopped
    store = OutboxStore(tmp_path / "o.db", clock=lambda: now[0])
    store.recover()
    if delay:
        assert store.claim(now=now[0] + delay - 1) is None
    assert store.claim(now=now[0] + delay) is not None


def test_a_due_time_far_in_the_future_on_disk_waits_an_hour_at_most(tmp_path):
    now = [START]
    store = OutboxStore(tmp_path / "o.db", clock=lambda: now[0])
    key = add_sale(store)
    store.db.execute("UPDATE outbox SET next_attempt=? WHERE event_key=?", (START + 30 * DAY, key))
    store.recover()
    assert store.by_key(key).next_attempt == START + MAX_DELAY
    assert store.claim(now=START + MAX_DELAY) is not None


def test_ages_are_never_negative(tmp_path):
    now = [START]
    store = OutboxStore(tmp_path / "o.db", clock=lambda: now[0])
    add_sale(store)
    now[0] -= DAY
    assert store.stats().oldest_pending_age == 0.0


# -- Retry-After, end to end through the real client and deliverer ------------------------

CFG = EngineConfig(preset="eu", api_key="/k", client_id="/i", client_secret="/s", max_attempts=3)


class BusyEngine:
    """Answers every write with 429 and a Retry-After; counts the writes that reach it."""

    def __init__(self, retry_after: str) -> None:
        self.retry_after = retry_after
        self.writes = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 86400})
        self.writes += 1
        return httpx.Response(429, headers={"Retry-After": self.retry_after}, json={"message": "slow down"})


@pytest.mark.parametrize(("header", "held"), [("3600", 3600.0), ("86400", MAX_DELAY)])
def test_retry_after_is_honoured_up_to_an_hour(tmp_path, header, held):
    """The issue: 'the outbox ignored Retry-After: 3600 (7 retries in 25 s)'."""
    clocks = Clocks()
    store = steady_store(tmp_path, clocks)
    key = add_sale(store)
    engine = BusyEngine(header)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:  # the client's own waits, counted, not waited
        slept.append(seconds)
        clocks.advance(seconds)

    async def go() -> None:
        secrets = EngineSecrets(api_key=Secret("k"), client_id=Secret("cid"), client_secret=Secret("s"))
        async with EngineClient(CFG, secrets, transport=httpx.MockTransport(engine), sleep=fake_sleep) as client:
            deliverer = Deliverer(store, client, rate=1e6, burst=10**6)
            for _ in range(25):  # 25 s of the deliverer looking once a second
                await deliverer.step()
                clocks.advance(1)

    asyncio.run(go())
    row = store.by_key(key)
    assert engine.writes == 1 and slept == [], (engine.writes, slept)  # one try, then it waits
    assert row.state == "pending" and row.next_attempt == pytest.approx(START + held, abs=0.01)
    assert store.claim(now=START + held - 1) is None
    assert store.claim(now=START + held) is not None


# -- the token cache's expiry, read from disk ---------------------------------------------


@pytest.mark.parametrize(("ahead", "trusted"), [(23 * HOUR, True), (DAY, True), (DAY + 60, False), (400 * DAY, False)])
def test_a_cached_token_whose_expiry_is_implausibly_far_ahead_is_not_trusted(tmp_path, ahead, trusted):
    path = tmp_path / "engine-token.json"
    now = [START]
    TokenCache(clock=lambda: now[0], path=path, scope="s")  # creates nothing
    minted = []

    async def fetch() -> Token:
        minted.append(1)
        return Token(access_token=f"fresh-{len(minted)}", expires_in=86400)

    writer = TokenCache(clock=lambda: now[0], path=path, scope="s")
    asyncio.run(writer.get(fetch))
    data = json.loads(path.read_text())
    data["refresh_after"] = START + ahead  # as if written under a clock that was wrong
    path.write_text(json.dumps(data))
    reader = TokenCache(clock=lambda: now[0], path=path, scope="s")
    assert (reader.valid() is not None) == trusted


def test_the_daemon_and_the_cli_open_the_outbox_on_the_steady_clock(tmp_path):
    from tillplug.outbox.store import open_store

    store = open_store(tmp_path / "outbox.sqlite3")
    try:
        assert isinstance(store.clock, SteadyClock)
    finally:
        store.close()


def test_four_days_ahead_makes_no_row_look_stuck_in_health(tmp_path):
    """A row being sent when the clock steps is not 'stuck for over 5 minutes'."""
    from tillplug.config.model import Config
    from tillplug.daemon.health import EngineWatch, HealthMonitor

    clocks = Clocks()
    store = steady_store(tmp_path, clocks)
    add_sale(store)
    assert store.claim() is not None  # being sent
    config = Config.model_validate(
        {"till_id": "t", "branch_id": "b", "state_dir": str(tmp_path), "engine": {"preset": "simulator"}}
    )
    monitor = HealthMonitor(config, store, EngineWatch(), list)
    clocks.advance(2)
    clocks.step(4 * DAY)
    assert monitor._take().stuck == 0
    clocks.advance(10 * 60)  # really stuck: ten minutes in 'sending'
    assert monitor._take().stuck == 1
