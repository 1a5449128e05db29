"""Running the simulator: in a background thread (tests, demo) or in the foreground (``tillplug sim``)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from tillplug.net import listen
from tillplug.sim.app import Simulator
from tillplug.sim.dialects import Dialect, dialect
from tillplug.sim.state import EngineState, load_seed


class _HideSimulatedResets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ConnectionAbortedError) and "simulated reset" in str(exc))


def _uvicorn(app: Any) -> uvicorn.Server:
    logging.getLogger("uvicorn.error").addFilter(_HideSimulatedResets())
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    return uvicorn.Server(config)


class SimServer:
    """The simulator on 127.0.0.1 in a thread of its own.  ``port=0`` picks a free port."""

    def __init__(
        self,
        seed: str | Path | dict[str, Any] | None = None,
        *,
        port: int = 0,
        rate: float = 100,
        burst: int = 400,
        dialect: str | Dialect = "default",
    ) -> None:
        data = seed if isinstance(seed, dict) else load_seed(seed)
        self.state = EngineState(data)
        self.sim = Simulator(self.state, rate=rate, burst=burst, dialect=_dialect(dialect))
        self._sock = listen("127.0.0.1", port, backlog=512)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = _uvicorn(self.sim.app)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10) -> SimServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="engine-sim", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the engine simulator did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _dialect(value: str | Dialect) -> Dialect:
    return value if isinstance(value, Dialect) else dialect(value)


def serve(port: int, seed: str | None, *, rate: float = 100, burst: int = 400, dialect: str = "default") -> None:
    """Foreground: ``tillplug sim --port N --seed FILE --dialect NAME``."""
    data = load_seed(seed)
    sim = Simulator(EngineState(data), rate=rate, burst=burst, dialect=_dialect(dialect))
    sock = listen("127.0.0.1", port, backlog=512)
    print(f"Loyalty Engine simulator on http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    print(f"  X-Api-Key: {data['tenant']['api_key']}   client: {data['tenant']['client_id']} (demo credentials)")
    print(f"  dialect: {sim.dialect.name}   switch: POST /_sim/dialect", flush=True)
    print("  ledger: /_sim/ledger   faults: POST /_sim/faults   OpenAPI: /v1/openapi.json", flush=True)
    _uvicorn(sim.app).run(sockets=[sock])
