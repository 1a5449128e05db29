"""#27: the slip's path through the spool on a ready printer, and what it costs the shopper.

Measured (bench: scan → first byte of the balance slip) before this: a render, then six worker-thread
hops (add, expire, count, claim, print, move) and a full-table prune on every add.  What is kept: a
durable mark before the bytes go out, the status the slip is printed on, the bytes at most once."""

import asyncio
import time

from tillplug.drivers.escpos_printer import EscposPrinter

from tillplug.commands.virtual.printer import FakeNetworkPrinter
from tillplug.config.model import PrinterConfig
from tillplug.receipts import templates as T
from tillplug.spool import JobState, JobStore, PrintSpool, PrintSpools

SLIP = T.refund_slip(T.SlipContext("till-01", "branch-0001", "GBP"), "TX-1", 500)


def test_a_slip_for_a_ready_printer_costs_two_worker_hops_and_keeps_every_state(tmp_path, monkeypatch):
    hops: list[str] = []
    real = asyncio.to_thread

    async def counted(fn, /, *args, **kwargs):
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    with FakeNetworkPrinter("ok") as fake:

        async def go():
            cfg = PrinterConfig(name="p1", connection=fake.url, profile="TM-T20II", status_timeout=0.5)
            store = JobStore(tmp_path / "print_jobs.sqlite3")
            seen: list[tuple[str, int]] = []  # (state, hops so far) as the till hears each change
            spool = PrintSpool(
                cfg,
                EscposPrinter(cfg),
                store,
                publish=lambda e: seen.append((e.data()["state"], len(hops))) if e.type == "print_job" else None,
            )
            spools = PrintSpools(store)
            spools.add(spool)
            spool.start()
            deadline = time.monotonic() + 5
            while spool.last_status.state.value == "unknown" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the first probe: the printer is known ready
            await asyncio.sleep(0.05)
            monkeypatch.setattr(asyncio, "to_thread", counted)
            hops.clear()
            job = await spools.submit(1, SLIP)
            while store.get(job["job"]).state is not JobState.PRINTED and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            monkeypatch.setattr(asyncio, "to_thread", real)
            await spool.close()
            store.close()
            return job, seen

        job, seen = asyncio.run(go())
        assert job["state"] == "queued"  # the answer never waits on the printer
        assert [state for state, _ in seen] == ["queued", "printing", "printed"]
        assert dict((state, n) for state, n in seen)["printed"] <= 2  # render + add; claim, print, move
        assert fake.printed().count(b"Sale TX-1 was cancelled.") == 1


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
