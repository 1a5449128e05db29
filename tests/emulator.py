"""An ESC/POS printer nobody here wrote: ``emupos`` (PyPI), run as a subprocess from its own venv.

emupos needs Python >= 3.13; ``.ci/run`` makes ``.venv-emu`` with it.  A missing emulator fails the
tests that need it (never skips them): a green run must mean they ran.  ``TILLPLUG_EMUPOS_VENV``
points elsewhere if the venv lives elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("TILLPLUG_EMUPOS_VENV", ROOT / ".venv-emu"))


def emulator_bin(name: str) -> Path:
    path = VENV / "bin" / name
    if not path.exists():
        pytest.fail(f"the ESC/POS emulator is missing: no {path} (bash .ci/run makes it: a 3.13 venv with emupos)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """One emupos printer, ``front``, on a TCP port and a pty, with its control API."""

    def __init__(self, workdir: Path, *, idle_ms: int = 2000) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.tcp_port, self.api_port = free_port(), free_port()
        config = {
            "schema": 1,
            "api": {"host": "127.0.0.1", "port": self.api_port},
            "devices": [
                {
                    "id": "front",
                    "type": "printer",
                    "profile": "epson-tm-t20iii",
                    "connections": [{"tcp": {"port": self.tcp_port}}, {"serial": {"pty": True}}],
                    "job_idle_timeout_ms": idle_ms,
                    "receipts_dir": str(workdir / "receipts"),
                }
            ],
        }
        (workdir / "emupos.yaml").write_text(json.dumps(config))  # JSON is YAML
        self.pty = workdir / "emupos" / "front"  # published under $TMPDIR/emupos/<id>
        env = {**os.environ, "TMPDIR": str(workdir), "NO_COLOR": "1"}
        self.log = (workdir / "emupos.log").open("wb")
        self.proc = subprocess.Popen(
            [str(emulator_bin("emupos")), "run", "--config", str(workdir / "emupos.yaml")],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}/api/v1", timeout=5, trust_env=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.api.get("/devices").status_code == 200 and self.pty.exists():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.close()
        pytest.fail("the emulator did not start: " + (workdir / "emupos.log").read_text(errors="replace")[-2000:])

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def fault(self, name: str, active: bool) -> None:
        """``paper-out``, ``cover-open``, ``offline``."""
        answer = (self.api.put if active else self.api.delete)(f"/devices/front/faults/{name}")
        assert answer.status_code == 204, answer.text

    def receipts(self) -> list[dict[str, object]]:
        answer = self.api.get("/devices/front/receipts")
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    def image(self, receipt_id: str) -> bytes:
        return self.api.get(f"/devices/front/receipts/{receipt_id}/image").content

    def text(self, receipt_id: str) -> str:
        return self.api.get(f"/devices/front/receipts/{receipt_id}/text").text

    def wait_receipts(self, count: int, timeout: float = 15.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.receipts()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return self.receipts()

    def close(self) -> None:
        self.api.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class EmulatorReading:
    """How the emulator's own ESC/POS tokenizer reads bytes (a long-lived subprocess, one line each)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [str(emulator_bin("python")), str(Path(__file__).with_name("emupos_tokens.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self, data: bytes) -> list[tuple[str, str, int]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(data.hex() + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the emulator's tokenizer stopped"
        return [(kind, name, size) for kind, name, size in json.loads(line)]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
