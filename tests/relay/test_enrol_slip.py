"""`tillplug relay enrol --print HOST:PORT`: the token on a slip from a network ESC/POS printer (emupos)."""

import asyncio
import re
import subprocess
import sys

import psycopg

from tests.emulator import Emulator, free_port
from tests.relay.conftest import relay_config
from tillplug.relay.store import Store
from tillplug.relay.tokens import Tokens


def relay(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillplug", "relay", *argv], capture_output=True, text=True, timeout=60
    )


def till_of(database: str, token: str) -> str | None:
    async def go():
        store = Store(relay_config("http://127.0.0.1:9", database).database, min_size=1)
        await store.open()
        try:
            return (await Tokens(store).till(f"Bearer {token}")).till_id
        except Exception:
            return None
        finally:
            await store.close()

    return asyncio.run(go())


def test_the_token_is_printed_on_a_slip_and_never_on_the_terminal(database, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(f'[engine]\npreset = "simulator"\n\n[database]\nurl = "{database}"\n')
    assert relay("migrate", "--config", str(config)).returncode == 0
    emu = Emulator(tmp_path / "emupos", idle_ms=500)
    try:
        done = relay(
            "enrol", "--config", str(config), "--till", "T07", "--branch", "B12", "--print", f"127.0.0.1:{emu.tcp_port}"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "" and "tpr1." not in done.stderr  # the token is on the slip only
        [receipt] = emu.wait_receipts(1)
        text = emu.text(str(receipt["id"]))
    finally:
        emu.close()
    assert "Relay enrolment" in text and re.search(r"Till\s+T07", text) and re.search(r"Branch\s+B12", text)
    [token] = re.findall(r"\[qr (tpr1\.[A-Za-z0-9_-]+)\]", text)
    assert till_of(database, token) == "T07"  # the code on the slip is the till's working token


def test_a_slip_that_does_not_print_leaves_no_usable_token(database, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(f'[engine]\npreset = "simulator"\n\n[database]\nurl = "{database}"\n')
    assert relay("migrate", "--config", str(config)).returncode == 0
    nobody = free_port()  # nothing listens there
    done = relay("enrol", "--config", str(config), "--till", "T08", "--branch", "B12", "--print", f"127.0.0.1:{nobody}")
    assert done.returncode == 1
    assert "not enrolled" in done.stderr and "tpr1." not in done.stdout + done.stderr
    with psycopg.connect(database) as conn:  # the token nobody could read is revoked
        row = conn.execute("SELECT token_hash, revoked_at FROM tills WHERE till_id = 'T08'").fetchone()
    assert row is not None and row[0] is None and row[1] is not None
    bad = relay("enrol", "--config", str(config), "--till", "T08", "--branch", "B12", "--print", "printer-without-port")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
