"""Observation 4: one daemon per state directory, refused before anything else happens."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tillplug.daemon.statelock import StateLock
from tillplug.errors import StateDirLocked


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_is_free_after_release(tmp_path):
    first = StateLock(tmp_path).acquire()
    with pytest.raises(StateDirLocked) as refused:
        StateLock(tmp_path).acquire()
    assert f"PID {os.getpid()}" in refused.value.message and str(tmp_path) in refused.value.message
    first.release()
    with StateLock(tmp_path) as again:  # released: a restart takes it at once
        assert again.held
    assert (tmp_path / "tillplug.lock").stat().st_mode & 0o777 == 0o600


def test_a_second_daemon_and_outbox_drain_exit_1_naming_the_running_daemon_without_contacting_the_engine(tmp_path):
    # The "engine" is a socket nobody answers: a connection attempt shows up as a pending accept().
    engine = socket.socket()
    engine.bind(("127.0.0.1", 0))
    engine.listen(16)
    engine_url = f"http://127.0.0.1:{engine.getsockname()[1]}"
    engine2 = socket.socket()
    port = free_port()
    cfg = tmp_path / "tillplug.toml"
    cfg.write_text(
        f'till_id="t1"\nbranch_id="b1"\nstate_dir="{tmp_path}/state"\ncache_dir="{tmp_path}/cache"\n'
        f'[engine]\npreset="simulator"\nbase_url="{engine_url}/v1"\nauth_url="{engine_url}/oauth/token"\n'
        f'[api]\nlisten="127.0.0.1:{port}"\n'
    )
    cmd = [sys.executable, "-m", "tillplug"]
    daemon = subprocess.Popen(
        [*cmd, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded: the daemon answers on its API once it holds the lock and is ready
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/openapi.json", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the first daemon did not start"
                time.sleep(0.05)
        # The second process gets an engine of its own (and the same state): the first daemon's own
        # health pings to its engine cannot blur what the second one did.
        engine2.bind(("127.0.0.1", 0))
        engine2.listen(16)
        engine2.setblocking(False)
        url2 = f"http://127.0.0.1:{engine2.getsockname()[1]}"
        cfg2 = tmp_path / "second.toml"
        cfg2.write_text(cfg.read_text().replace(engine_url, url2))
        for argv in (["run", "--config", str(cfg2)], ["outbox", "--config", str(cfg2), "drain", "--timeout", "5"]):
            second = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=60)
            assert second.returncode == 1, (argv, second.stderr)
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and f"PID {daemon.pid}" in lines[0], (argv, second.stderr)
            with pytest.raises(BlockingIOError):
                engine2.accept()  # refused before any engine contact
        stats = subprocess.run([*cmd, "outbox", "--config", str(cfg), "stats"], capture_output=True, text=True)
        assert stats.returncode == 0, stats.stderr  # reading beside the daemon is fine
    finally:
        daemon.terminate()
        daemon.wait(20)
        if daemon.stderr:
            daemon.stderr.close()
        engine.close()
        engine2.close()
