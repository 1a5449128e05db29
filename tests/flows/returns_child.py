"""A till process for the kill -9 test: it takes one return, settles it and drains its outbox.

``python -m tests.flows.returns_child STATE_DIR SIM_URL``.  It prints a line at each step the
parent may kill it after (``returning``, ``committed``, ``delivered``, ``answered``) and
``done`` with the points moved at the end.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from tests.flow_harness import config
from tillplug.engine import EngineClient, load_secrets
from tillplug.flows.loyalty import Loyalty
from tillplug.flows.returns import ReturnRequest, Returns
from tillplug.outbox import Deliverer, OutboxStore

HALF = ReturnRequest("R1", "T1", 1, 1500)


def say_after(cls: Any, name: str, step: str) -> None:
    """``cls.name`` runs as before, then the step is announced (the parent's cue to kill)."""
    original = getattr(cls, name)

    def announced(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        print(step, flush=True)
        return result

    setattr(cls, name, announced)


def say_after_batch_delivered() -> None:
    """The outbox records the rows the engine acknowledged with its next claim: "delivered" after
    a commit that recorded some."""
    original = OutboxStore.claim_batch

    def announced(self: OutboxStore, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if kwargs.get("delivered"):
            print("delivered", flush=True)
        return result

    OutboxStore.claim_batch = announced  # type: ignore[method-assign]


async def main(state_dir: Path, sim_url: str) -> None:
    say_after(Returns, "_commit", "committed")
    say_after(OutboxStore, "delivered", "delivered")  # found by look-up
    say_after_batch_delivered()
    say_after(Returns, "_keep_answer", "answered")
    cfg = config(state_dir, sim_url, returns={"confirm_wait": 2.0})
    store = OutboxStore(state_dir / "outbox.sqlite3")
    client = EngineClient(cfg.engine, load_secrets(cfg.engine))
    deliverer = Deliverer(store, client, rate=1000, burst=1000)
    loyalty = Loyalty(cfg, client, store, wake_outbox=deliverer.wake)
    stop = asyncio.Event()
    delivering = asyncio.ensure_future(deliverer.run(stop))
    print("returning", flush=True)
    answer = await loyalty.return_sale(HALF)
    for _ in range(100):  # bounded: the take-back may wait for the sale's earn
        if await loyalty.returns.settle_waiting() == 0:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await delivering
    assert await deliverer.drain(30)
    await client.aclose()
    store.close()
    print("done", answer.takeBack.points, answer.giveBack.points, flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
