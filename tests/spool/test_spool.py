"""The print spool: durable jobs, the truth about paper, printers that vanish, black-hole and come back."""

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tillplug.drivers.escpos_printer import EscposPrinter

from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.config.model import PrinterConfig
from tillplug.devices.base import PrinterState
from tillplug.devices.supervisor import DeviceState
from tillplug.errors import PrintJobConflict
from tillplug.receipts import templates as T
from tillplug.spool import JobState, JobStore, PrintSpool, PrintSpools

CTX = T.SlipContext("till-01", "branch-0001", "GBP")
SLIP = T.refund_slip(CTX, "TX-1", 500)
TEXT = b"Sale TX-1 was cancelled."


async def until(predicate, timeout=5.0):
    """Poll a condition, bounded in time; True once it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


class Rig:
    def __init__(self, tmp_path, connection, hold_seconds=120.0):
        cfg = PrinterConfig(
            name="p1", connection=connection, profile="TM-T20II", status_timeout=0.2, connect_timeout=0.5
        )
        self.store = JobStore(tmp_path / "print_jobs.sqlite3")
        self.events = []
        self.states = []
        self.spool = PrintSpool(
            cfg,
            EscposPrinter(cfg),
            self.store,
            publish=lambda event: self.events.append((event.type, event.data())),
            on_state=lambda h: self.states.append((h.state, h.reason)),
            hold_seconds=hold_seconds,
        )
        self.spools = PrintSpools(self.store)
        self.spools.add(self.spool)

    def state(self, job_id):
        return self.store.get(job_id).state

    def history(self, job_id):
        return [d["state"] for t, d in self.events if t == "print_job" and d["job"] == job_id]

    async def close(self):
        await self.spool.close()
        self.store.close()


def run(tmp_path, connection, body, **kw):
    async def go():
        rig = Rig(tmp_path, connection, **kw)
        rig.spool.start()
        try:
            await body(rig)
        finally:
            await rig.close()

    asyncio.run(go())


def test_a_slip_is_printed_only_once_the_printer_answers_after_the_cut(tmp_path):
    with FakeNetworkPrinter("ok") as fake:

        async def body(rig):
            job = await rig.spools.submit(1, SLIP)
            assert job["state"] == "queued"
            assert await until(lambda: rig.state(job["job"]) is JobState.PRINTED)
            assert rig.history(job["job"]) == ["queued", "printing", "printed"]
            assert rig.spool.health.state is DeviceState.READY

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 1


def test_a_connection_that_never_answers_says_sent_not_printed(tmp_path):
    with FakeNetworkPrinter("silent") as fake:

        async def body(rig):
            job = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(job["job"]) is JobState.SENT)

        run(tmp_path, fake.url, body)
        assert TEXT in fake.printed()


@pytest.mark.parametrize("mood, reason", [("paper_out", "paper out"), ("cover_open", "cover open")])
def test_paper_out_or_cover_open_holds_the_job_degrades_the_printer_and_prints_when_cleared(tmp_path, mood, reason):
    with FakeNetworkPrinter(mood) as fake:

        async def body(rig):
            job = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(job["job"]) is JobState.HELD)
            assert rig.store.get(job["job"]).reason == reason
            assert rig.spool.health.state is DeviceState.ERROR and reason in rig.spool.health.reason
            assert (DeviceState.ERROR, reason) in rig.states  # the device_state event
            assert rig.spool.last_status.state is PrinterState.ERROR
            assert TEXT not in fake.printed()  # never handed to a printer that cannot print it
            fake.mood = "ok"  # the cashier changes the roll
            started = time.monotonic()
            assert await until(lambda: rig.state(job["job"]) is JobState.PRINTED, timeout=5)
            assert time.monotonic() - started < 2.0
            assert rig.spool.health.state is DeviceState.READY

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 1


def test_a_held_slip_expires_so_it_never_prints_for_the_next_customer_but_can_be_reprinted(tmp_path):
    with FakeNetworkPrinter("paper_out") as fake:

        async def body(rig):
            job = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(job["job"]) is JobState.EXPIRED)
            # The event follows the stored state (told after the expiring commit), so wait for it too.
            assert await until(lambda: rig.history(job["job"])[-1:] == ["expired"])
            fake.mood = "ok"
            assert await until(lambda: rig.spool.health.state is DeviceState.READY)
            again = await rig.spools.reprint(job["job"])
            assert await until(lambda: rig.state(again["job"]) is JobState.PRINTED)
            assert rig.store.get(again["job"]).reprint_of == job["job"]

        run(tmp_path, fake.url, body, hold_seconds=0.5)
        assert fake.printed().count(TEXT) == 1  # the reprint, not the expired job


def test_a_printer_that_vanishes_holds_jobs_and_prints_them_within_two_seconds_of_its_return(tmp_path):
    with FakeNetworkPrinter("ok") as fake:

        async def body(rig):
            first = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(first["job"]) is JobState.PRINTED)
            fake.vanish()
            jobs = [await rig.spools.submit(1, SLIP) for _ in range(3)]
            assert await until(lambda: all(rig.state(j["job"]) is JobState.HELD for j in jobs))
            assert rig.spool.health.state is DeviceState.STALE
            fake.come_back()
            back = time.monotonic()
            assert await until(lambda: all(rig.state(j["job"]) is JobState.PRINTED for j in jobs), timeout=5)
            assert time.monotonic() - back < 2.0

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 4  # no slip lost, none twice


def test_a_black_holed_printer_costs_the_caller_nothing_and_prints_after_its_return(tmp_path):
    with FakeNetworkPrinter("ok") as fake:

        async def body(rig):
            first = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(first["job"]) is JobState.PRINTED)
            fake.black_hole()
            started = time.monotonic()
            jobs = [await rig.spools.submit(1, SLIP) for _ in range(3)]
            assert time.monotonic() - started < 0.5  # three submissions, no connect timeout waited
            assert await until(lambda: all(rig.state(j["job"]) is JobState.HELD for j in jobs))
            assert rig.spool.health.state is DeviceState.STALE
            fake.come_back()
            back = time.monotonic()
            assert await until(lambda: all(rig.state(j["job"]) is JobState.PRINTED for j in jobs), timeout=5)
            assert time.monotonic() - back < 2.0

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 4  # the status check before each job kept the lost one back


def test_cancel_stops_a_waiting_job_and_refuses_a_printed_one(tmp_path):
    with FakeNetworkPrinter("paper_out") as fake:

        async def body(rig):
            job = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(job["job"]) is JobState.HELD)
            assert (await rig.spools.cancel(job["job"]))["state"] == "cancelled"
            fake.mood = "ok"
            done = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(done["job"]) is JobState.PRINTED)
            with pytest.raises(PrintJobConflict):
                await rig.spools.cancel(done["job"])
            assert rig.state(job["job"]) is JobState.CANCELLED

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 1


def test_reprinting_a_held_job_cancels_it_so_it_cannot_print_twice(tmp_path):
    with FakeNetworkPrinter("paper_out") as fake:

        async def body(rig):
            job = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(job["job"]) is JobState.HELD)
            again = await rig.spools.reprint(job["job"])
            assert rig.state(job["job"]) is JobState.CANCELLED
            fake.mood = "ok"
            assert await until(lambda: rig.state(again["job"]) is JobState.PRINTED)

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 1


def test_jobs_survive_a_restart_and_one_caught_printing_is_failed_not_repeated(tmp_path):
    store = JobStore(tmp_path / "print_jobs.sqlite3")
    waiting = store.add("p1", 1, "refund", "tillplug", b"slip", hold_seconds=60)
    store.add("p1", 1, "refund", "tillplug", b"other", hold_seconds=60)
    claimed, _ = store.claim("p1")
    assert claimed.id == waiting.id
    store.close()
    store = JobStore(tmp_path / "print_jobs.sqlite3")
    [interrupted] = store.recover()
    assert (interrupted.id, interrupted.state, interrupted.reason) == (
        waiting.id,
        JobState.FAILED,
        "interrupted by a restart",
    )
    assert [j.state for j in store.list_jobs()] == [JobState.QUEUED, JobState.FAILED]
    store.close()


@settings(max_examples=30)
@given(st.lists(st.sampled_from(["add", "claim", "print", "hold", "cancel", "expire"]), max_size=30))
def test_a_job_only_moves_along_the_documented_edges(tmp_path_factory, ops):
    allowed = {
        JobState.QUEUED: {JobState.PRINTING, JobState.HELD, JobState.CANCELLED, JobState.EXPIRED},
        JobState.HELD: {JobState.PRINTING, JobState.CANCELLED, JobState.EXPIRED},
        JobState.PRINTING: {JobState.PRINTED, JobState.SENT, JobState.HELD, JobState.FAILED},
    }
    store = JobStore(tmp_path_factory.mktemp("jobs") / "j.sqlite3")
    seen: dict[int, JobState] = {}
    now = time.time()
    for op in ops:
        if op == "add":
            store.add("p", 1, "raw", "till", b"x", hold_seconds=60)
        elif op == "claim":
            store.claim("p")
        elif op == "print":
            for j in store.list_jobs(state="printing"):
                store.move(j.id, JobState.PRINTED)
        elif op == "hold":
            store.hold_queued("p", "paper out")
        elif op == "cancel":
            for j in store.list_jobs():
                store.move(j.id, JobState.CANCELLED, only_from=(JobState.QUEUED, JobState.HELD))
        else:
            store.expire("p", now + 3600)
        for j in store.list_jobs():
            before = seen.get(j.id)
            if before is not None and before is not j.state:
                assert j.state in allowed.get(before, set()), (before, j.state)
            seen[j.id] = j.state
    store.close()


def test_a_driver_that_breaks_fails_the_job_and_the_spool_carries_on(tmp_path):
    with FakeNetworkPrinter("ok") as fake:

        async def body(rig):
            real_write = rig.spool.driver.write
            rig.spool.driver.write = lambda data: (_ for _ in ()).throw(RuntimeError("driver bug"))
            broken = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(broken["job"]) is JobState.FAILED)
            assert rig.store.get(broken["job"]).reason == "driver error: RuntimeError"
            rig.spool.driver.write = real_write
            fine = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(fine["job"]) is JobState.PRINTED)

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 1


def test_an_idle_printer_that_goes_away_shows_in_health_without_a_job(tmp_path, monkeypatch):
    monkeypatch.setattr("tillplug.spool.spool.IDLE_CHECK_EVERY", 0.2)
    with FakeNetworkPrinter("ok") as fake:

        async def body(rig):
            assert await until(lambda: rig.spool.health.state is DeviceState.READY)
            fake.vanish()
            assert await until(lambda: rig.spool.health.state is DeviceState.STALE, timeout=3)
            fake.come_back()
            assert await until(lambda: rig.spool.health.state is DeviceState.READY, timeout=3)

        run(tmp_path, fake.url, body)


def test_the_job_history_is_bounded_but_waiting_jobs_are_never_pruned(tmp_path, monkeypatch):
    monkeypatch.setattr("tillplug.spool.jobs.KEEP_FINISHED", 5)
    store = JobStore(tmp_path / "j.sqlite3")
    waiting = store.add("p", 1, "raw", "till", b"x", hold_seconds=60)
    for _ in range(20):
        job = store.add("p", 1, "raw", "till", b"x", hold_seconds=60)
        store.move(job.id, JobState.PRINTED)
    kept = store.list_jobs(limit=100)
    assert len(kept) == 6 and waiting.id in {j.id for j in kept}
    store.close()


def test_a_printer_without_status_is_asked_once_per_connection_not_before_every_slip(tmp_path):
    with FakeNetworkPrinter("silent") as fake:

        async def body(rig):
            first = await rig.spools.submit(1, SLIP)
            assert await until(lambda: rig.state(first["job"]) is JobState.SENT)
            started = time.monotonic()
            jobs = [await rig.spools.submit(1, SLIP) for _ in range(5)]
            assert await until(lambda: all(rig.state(j["job"]) is JobState.SENT for j in jobs))
            assert time.monotonic() - started < 5 * 0.2  # no status_timeout (0.2 s) waited per slip

        run(tmp_path, fake.url, body)
        assert fake.printed().count(TEXT) == 6
