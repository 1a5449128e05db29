"""Seen from the centre without inbound ports: the shipped agent config, run by Debian's real
``prometheus`` in agent mode, scrapes a real daemon's /metrics on loopback and remote-writes to a
second, central ``prometheus``; the central one ends up holding the till's samples."""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from tillplug.commands.virtual.till import VirtualTill

AGENT_CONFIG = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "agent" / "tillplug-agent.yml"
AGENT_DEFAULTS = AGENT_CONFIG.with_name("prometheus.default")
START_TIMEOUT = 30.0
SAMPLE_TIMEOUT = 90.0  # first scrape (1 s interval here), then the remote-write batch (5 s deadline)

if shutil.which("prometheus") is None:
    if os.environ.get("CI"):
        raise RuntimeError("prometheus (Debian package prometheus) is required in CI: see .ci/debian-packages")
    pytest.skip("prometheus (Debian package prometheus) is not installed", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_flags() -> list[str]:
    """The flags the shipped /etc/default/prometheus gives the agent (config and storage paths aside)."""
    for line in AGENT_DEFAULTS.read_text().splitlines():
        if line.startswith("ARGS="):
            flags = line.removeprefix("ARGS=").strip('"').split()
            return [f for f in flags if f.split("=")[0] in ("--enable-feature",)]
    raise AssertionError("prometheus.default sets no ARGS")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@contextmanager
def prometheus(workdir: Path, port: int, args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """One prometheus process on 127.0.0.1:port, ready (or the test fails with its log), always stopped."""
    workdir.mkdir(parents=True)
    log = (workdir / "log").open("wb")
    command = ["prometheus", f"--web.listen-address=127.0.0.1:{port}", *args]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"prometheus {args} did not become ready:\n{(workdir / 'log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def test_the_central_prometheus_receives_the_tills_samples_through_the_agent(tmp_path):
    token = tmp_path / "api-token"
    token.write_text("agent-scrape-token-0123")
    token.chmod(0o600)
    central_port, agent_port = free_port(), free_port()

    central_config = tmp_path / "central.yml"
    central_config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")

    with VirtualTill(tmp_path / "till", api={"listen": "127.0.0.1:0", "token": str(token)}) as till:
        till.scan(1, "1000001")  # one member scan: a tillplug_scans_total sample with a value

        # The shipped agent config, with only what a role fills in changed: the till's port, the token
        # file, the chain's URL (plain HTTP on loopback here, so no TLS files); 1 s scrapes to be quick.
        shipped = yaml.safe_load(AGENT_CONFIG.read_text())
        shipped["global"]["scrape_interval"] = "1s"
        shipped["global"]["scrape_timeout"] = "1s"
        job = shipped["scrape_configs"][0]
        job["static_configs"][0]["targets"] = [f"127.0.0.1:{till.daemon.api_port}"]
        job["authorization"]["credentials_file"] = str(token)
        remote = shipped["remote_write"][0]
        remote["url"] = f"http://127.0.0.1:{central_port}/api/v1/write"
        del remote["tls_config"]
        agent_config = tmp_path / "agent.yml"
        agent_config.write_text(yaml.safe_dump(shipped))

        central_args = [
            f"--config.file={central_config}",
            f"--storage.tsdb.path={tmp_path / 'central' / 'data'}",
            "--web.enable-remote-write-receiver",
        ]
        agent_args = [
            *agent_flags(),
            f"--config.file={agent_config}",
            f"--storage.agent.path={tmp_path / 'agent' / 'data'}",
        ]
        labels = {"TILLPLUG_TILL_ID": "till-01", "TILLPLUG_BRANCH_ID": "branch-0001"}
        with (
            prometheus(tmp_path / "central", central_port, central_args) as central,
            prometheus(tmp_path / "agent", agent_port, agent_args, env=labels) as agent,
        ):
            # Agent mode answers no queries: the samples can only be seen at the centre.
            assert httpx.get(agent + "/api/v1/query", params={"query": "up"}, timeout=5).status_code != 200
            query = 'tillplug_scans_total{job="tillplug", till="till-01", branch="branch-0001"}'
            found: list[dict[str, object]] = []
            deadline = time.monotonic() + SAMPLE_TIMEOUT
            while not found and time.monotonic() < deadline:
                answer = httpx.get(central + "/api/v1/query", params={"query": query}, timeout=5).json()
                found = answer["data"]["result"]
                if not found:
                    time.sleep(0.5)
            assert found, f"no tillplug sample reached the central prometheus:\n{tail(tmp_path / 'agent' / 'log')}"
            assert any(float(r["value"][1]) >= 1 for r in found)  # type: ignore[index]
            # Only tillplug's own series leave the till (write_relabel_configs).
            names = httpx.get(central + "/api/v1/label/__name__/values", timeout=5).json()["data"]
            assert names and all(n.startswith("tillplug_") or n in ("up", "scrape_duration_seconds") for n in names)
