"""#27: the slip's path through the spool on a ready printer, and what it costs the shopper.

Measured (bench: scan → first byte of the balance slip) before this: a render, then six worker-thread
hops (add, expire, count, claim, print, move) and a full-table prune on every add.  What is kept: a
durable mark before the bytes go out, the status the slip is printed on, the bytes at most once."""

import asyncio
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillplug.drivers.escpos_printer import EscposPrinter

from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.config.model import PrinterConfig
from tillplug.devices.supervisor import DeviceState
from tillplug.receipts import templates as T
from tillplug.spool import JobState, JobStore, PrintSpool, PrintSpools

SLIP = T.refund_slip(T.SlipContext("till-01", "branch-0001", "GBP"), "TX-1", 500)


async def _ready_rig(tmp_path, fake, publish=lambda e: None):
    """A started spool on a printer its first probe found ready."""
    cfg = PrinterConfig(name="p1", connection=fake.url, profile="TM-T20II", status_timeout=0.5)
    store = JobStore(tmp_path / "print_jobs.sqlite3")
    spool = PrintSpool(cfg, EscposPrinter(cfg), store, publish=publish)
    spools = PrintSpools(store)
    spools.add(spool)
    spool.start()
    deadline = time.monotonic() + 5
    while spool.health.state is not DeviceState.READY and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the first probe: the printer is known ready
    await asyncio.sleep(0.05)
    return spool, spools, store


async def _until_printed(store, job_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while store.get(job_id).state is not JobState.PRINTED and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return store.get(job_id).state


def test_a_slip_for_a_ready_printer_costs_one_worker_hop_and_keeps_every_state(tmp_path, monkeypatch):
    """Rendered, recorded already printing (one commit), asked, written and recorded in one hop: before
    this, a hop to render and store, then the task's hop to claim and print (two, and the task's wake-up)."""
    hops: list[object] = []  # every hand-off to a worker thread (asyncio.to_thread goes through it too)

    with FakeNetworkPrinter("ok") as fake:

        async def go():
            seen: list[tuple[str, int]] = []  # (state, hops so far) as the till hears each change
            spool, spools, store = await _ready_rig(
                tmp_path,
                fake,
                lambda e: seen.append((e.data()["state"], len(hops))) if e.type == "print_job" else None,
            )
            loop = asyncio.get_running_loop()
            real = loop.run_in_executor

            def counted(executor, fn, *args):
                hops.append(fn)
                return real(executor, fn, *args)

            monkeypatch.setattr(loop, "run_in_executor", counted)
            hops.clear()
            job = await spools.submit(1, SLIP)
            state = await _until_printed(store, job["job"])
            monkeypatch.setattr(loop, "run_in_executor", real)
            await spool.close()
            store.close()
            return job, seen, state

        job, seen, state = asyncio.run(go())
        assert job["state"] == "queued"  # what the call did, as the API documents
        assert state is JobState.PRINTED
        assert [state for state, _ in seen] == ["queued", "printing", "printed"]
        assert dict((state, n) for state, n in seen)["printed"] == 1  # render, record, ask, write, record
        assert fake.printed().count(b"Sale TX-1 was cancelled.") == 1


def test_a_slip_printed_at_once_is_durably_printing_before_its_first_byte(tmp_path, monkeypatch):
    """The printing issue's rule, kept inside the one hop: the job's row says printing (committed: read
    through a second connection) when the driver writes its bytes, and nothing is written twice."""
    with FakeNetworkPrinter("ok") as fake:

        async def go():
            spool, spools, store = await _ready_rig(tmp_path, fake)
            other = JobStore(tmp_path / "print_jobs.sqlite3")  # another connection sees only what is committed
            at_write: list[list[str]] = []
            real_write = spool.driver.write

            def write(data: bytes) -> None:
                at_write.append([j.state.value for j in other.list_jobs()])
                real_write(data)

            monkeypatch.setattr(spool.driver, "write", write)
            job = await spools.submit(1, SLIP)
            state = await _until_printed(store, job["job"])
            await spool.close()
            other.close()
            store.close()
            return at_write, state

        at_write, state = asyncio.run(go())
        assert at_write == [["printing"]]
        assert state is JobState.PRINTED
        assert fake.printed().count(b"Sale TX-1 was cancelled.") == 1


def test_a_slip_behind_waiting_jobs_waits_its_turn(tmp_path):
    """Printed at once only when nothing waits: a slip never jumps ahead of a job already queued."""
    with FakeNetworkPrinter("ok") as fake:

        async def go():
            spool, spools, store = await _ready_rig(tmp_path, fake)
            first = store.add("p1", 1, "raw", "till", b"FIRST JOB\n\x1dV\x00", hold_seconds=120)
            job = await spools.submit(1, SLIP)
            states = (first.state, store.get(job["job"]).state)
            spool.wake()
            await _until_printed(store, job["job"])
            await spool.close()
            store.close()
            return job, states

        job, states = asyncio.run(go())
        assert job["state"] == "queued"
        assert states == (JobState.QUEUED, JobState.QUEUED)  # stored behind the first, not printed past it
        out = fake.printed()
        assert out.index(b"FIRST JOB") < out.index(b"Sale TX-1 was cancelled.")


def test_a_slip_while_the_printer_is_in_use_is_queued_not_interleaved(tmp_path):
    """While another thread talks to the printer (the task's step, a probe), a slip is stored queued and
    the task prints it after: two writers never share the wire."""
    with FakeNetworkPrinter("ok") as fake:

        async def go():
            spool, spools, store = await _ready_rig(tmp_path, fake)
            with spool._wire:  # the task is at the printer
                job = await spools.submit(1, SLIP)
                state_then = store.get(job["job"]).state
                printed_then = fake.printed().count(b"Sale TX-1 was cancelled.")
            spool.wake()
            state = await _until_printed(store, job["job"])
            await spool.close()
            store.close()
            return state_then, printed_then, state

        state_then, printed_then, state = asyncio.run(go())
        assert (state_then, printed_then) == (JobState.QUEUED, 0)
        assert state is JobState.PRINTED
        assert fake.printed().count(b"Sale TX-1 was cancelled.") == 1


def test_a_slip_for_a_printer_out_of_paper_is_held_and_the_till_told(tmp_path):
    """Known ready, then out of paper when asked before the slip: held (nothing written), the caller
    answered, the till told queued → printing → held and why, as the task would."""
    with FakeNetworkPrinter("ok") as fake:

        async def go():
            events: list[tuple[str, dict]] = []
            spool, spools, store = await _ready_rig(tmp_path, fake, lambda e: events.append((e.type, e.data())))
            fake.mood = "paper_out"
            job = await spools.submit(1, SLIP)
            state = store.get(job["job"]).state
            await spool.close()
            store.close()
            return job, state, events

        job, state, events = asyncio.run(go())
        assert job["state"] == "queued"
        assert state is JobState.HELD
        assert [d["state"] for t, d in events if t == "print_job" and d["job"] == job["job"]] == [
            "queued",
            "printing",
            "held",
        ]
        assert any(t == "error" and d["code"] == "printer_not_ready" for t, d in events)
        assert b"Sale TX-1 was cancelled." not in fake.printed()


def test_adding_a_job_does_not_read_every_kept_job(tmp_path):
    """The prune on every add once scanned all 2,000 kept jobs: about a millisecond of every slip.
    Counted in SQLite's own steps, not in time: with 2,100 finished jobs kept, an add reads index ranges."""
    store = JobStore(tmp_path / "print_jobs.sqlite3")
    for _ in range(2100):
        job = store.add("p1", 1, "balance", "tillplug", b"x" * 200, hold_seconds=120)
        store.move(job.id, JobState.PRINTED)
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(step, 100)  # called every 100 virtual-machine instructions
    store.add("p1", 1, "balance", "tillplug", b"x" * 200, hold_seconds=120)
    store._db.set_progress_handler(None, 100)
    store.close()
    assert steps[0] * 100 < 5_000  # a scan of the kept jobs is over 30,000


def test_queued_is_told_before_printing_when_the_task_claims_the_job_at_once(tmp_path):
    """The task (another worker thread) may claim a job the moment it is committed.  "queued" was told
    only once the adding thread was back on the loop, so the till could hear printing, queued, printed
    (seen under load).  Now it is told as the job is stored, before any claim can tell "printing"."""
    with FakeNetworkPrinter("ok") as fake:

        async def go():
            events: list[str] = []
            cfg = PrinterConfig(name="p1", connection=fake.url, profile="TM-T20II", status_timeout=0.5)
            store = JobStore(tmp_path / "print_jobs.sqlite3")
            spool = PrintSpool(
                cfg,
                EscposPrinter(cfg),
                store,
                publish=lambda e: events.append(e.data()["state"]) if e.type == "print_job" else None,
            )
            loop = asyncio.get_running_loop()
            real_add = store.add

            def add_and_claimed_at_once(*args, **kwargs):
                job = real_add(*args, **kwargs)
                claimed = store.claim("p1")  # the task's step, winning the race in its own thread
                assert claimed is not None
                loop.call_soon_threadsafe(spool._changed, claimed[0])
                return job

            store.add = add_and_claimed_at_once
            await spool.submit(b"TILL RECEIPT\n", "raw", source="till")
            await spool.submit_receipt(SLIP)  # not started: health is not ready, so queued for the task
            for _ in range(3):
                await asyncio.sleep(0)
            store.close()
            return events

        assert asyncio.run(go()) == ["queued", "printing", "queued", "printing"]


ADDS = st.fixed_dictionaries(
    {
        "printer": st.text(min_size=1, max_size=12),
        "lane": st.integers(1, 999),
        "kind": st.sampled_from(["balance", "voucher", "raw", "test"]),
        "source": st.sampled_from(["tillplug", "till"]),
        "data": st.binary(max_size=2000),
        "hold_seconds": st.floats(0, 86_400),
        "reprint_of": st.none() | st.integers(1, 10**6),
        "claim": st.booleans(),
    }
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(adds=st.lists(ADDS, min_size=1, max_size=4))
def test_the_job_an_add_answers_is_the_row_it_stored(tmp_path, adds):
    """add builds its answer from what it wrote instead of reading the row back (a query off each
    slip's path): the two must not differ in any field the till or the spool reads."""
    store = JobStore(tmp_path / f"jobs-{time.monotonic_ns()}.sqlite3")
    try:
        for add in adds:
            told = []
            job = store.add(**add, added=told.append)
            assert told == [job]
            assert store.get(job.id) == job
    finally:
        store.close()
