"""The Ansible role (ops/ansible/roles/tillplug) run inside a real Debian root with a local
connection: it builds a till from nothing out of the chain's signed repository, writes the config
layers and the credentials, runs check-config and starts the daemon; a second run changes nothing;
a changed layer reloads the daemon, and a changed credential restarts it only once the open sale
has ended (``restart-when-ready``).  Needs what tests/system/test_fleet.py needs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.system.conftest import VERSION
from tests.system.debian_root import DebianRoot, Repo, api, deb_of, till_config, wait_until
from tests.system.test_fleet import API_PORT, MISSING, TOKEN
from tillplug.sim import SimServer

OPS = Path(__file__).resolve().parents[2] / "ops" / "ansible"

pytestmark = [pytest.mark.slow]
if MISSING and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason=MISSING))

PLAY = """- name: This till
  hosts: all
  gather_facts: false
  roles:
    - tillplug
"""


def settings(repo_url: str, sim_url: str, store_layer: str, api_key: str) -> dict[str, object]:
    return {
        "tillplug_repo_url": repo_url,
        "tillplug_repo_keyring": "/srv/ansible/tillplug-archive-keyring.gpg",
        "tillplug_config": till_config(API_PORT, sim_url),
        "tillplug_chain_layer": 'log_level = "info"\n',
        "tillplug_store_layer": store_layer,
        "tillplug_credentials": [
            {"name": "api-token", "content": TOKEN},
            {"name": "wll-api-key", "content": api_key},
        ],
        "tillplug_restart_within": 120,
        "ansible_python_interpreter": "/usr/bin/python3",
    }


def recap(output: str) -> dict[str, int]:
    found = re.search(r"localhost\s+:\s+(.*)", output)
    assert found, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}


def playbook(root: DebianRoot, values: dict[str, object]) -> list[str]:
    root.write("/srv/ansible/till.json", json.dumps(values))
    return [
        "ansible-playbook",
        "-i",
        "localhost,",
        "-c",
        "local",
        "/srv/ansible/play.yml",
        "-e",
        "@/srv/ansible/till.json",
    ]


def asking(root: DebianRoot) -> bool:
    """The role's handler, restart-when-ready, is running in the root."""
    for pid in root.processes():
        with contextlib.suppress(OSError):
            if b"restart-when-ready" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
    return False


ENV = {"ANSIBLE_ROLES_PATH": "/srv/ansible/roles", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def test_the_role_builds_a_till_from_nothing_and_a_second_run_changes_nothing(tmp_path, chain_key, dist):
    sim = SimServer().start()
    repo = Repo(tmp_path / "repo", chain_key)
    try:
        with DebianRoot.copy(tmp_path) as root:
            repo.publish(deb_of(dist, VERSION))
            root.set_machine_id("0" * 32)
            shutil.copytree(OPS, root.path / "srv/ansible")
            shutil.copy(repo.keyring, root.path / "srv/ansible/tillplug-archive-keyring.gpg")
            root.write("/srv/ansible/play.yml", PLAY)
            root.write("/etc/tillplug/conf.d/99-left-by-hand.toml", 'log_level = "debug"\n')
            values = settings(repo.server.url, sim.url, 'branch_id = "branch-0001"\n', "key-one")

            first = root.run(*playbook(root, values), env=ENV)
            assert recap(first.stdout)["failed"] == 0
            assert TOKEN not in first.stdout and "key-one" not in first.stdout  # no_log on the secrets
            client = api(API_PORT, TOKEN)
            assert wait_until(lambda: client.get("/v1/health").json()["version"] == VERSION, 60)
            assert root.run("dpkg-query", "-W", "-f", "${Version}", "tillplug").stdout == VERSION
            assert sorted(p.name for p in (root.path / "etc/tillplug/conf.d").iterdir()) == [
                "10-chain.toml",
                "20-store.toml",
            ]
            secret = root.path / "etc/tillplug/credentials/wll-api-key"
            assert secret.read_text() == "key-one" and secret.stat().st_mode & 0o777 == 0o600

            second = root.run(*playbook(root, values), env=ENV)
            assert recap(second.stdout)["changed"] == 0, second.stdout[-3000:]

            # A changed store layer reloads; a changed credential restarts, but not during the sale.
            pid = root.daemon_pid()
            assert client.post("/v1/checkouts", json={"transactionId": "T7", "lane": 1}).status_code == 201
            changed = settings(repo.server.url, sim.url, 'branch_id = "branch-0001"\ncurrency = "GBP"\n', "key-two")
            run = root.start(*playbook(root, changed), "-v", env=ENV)  # -v: the handler's output too
            assert wait_until(lambda: "reload tillplug" in root.read("/var/log/standin-systemctl.log"), 120)
            assert wait_until(lambda: asking(root), 120)
            time.sleep(10)  # restart-when-ready asks at once, then every 5 s: "1 checkout open on lane 1"
            assert run.poll() is None and root.daemon_pid() == pid
            done = client.post("/v1/checkouts/T7/complete", json={"total": 300, "paymentConfirmed": True})
            assert done.status_code == 200, done.text
            out, _ = run.communicate(timeout=300)
            assert run.returncode == 0, out[-3000:]
            assert "waiting: not safe to restart: 1 checkout open on lane 1" in out, out[-6000:]
            assert "restarting tillplug.service: safe moment" in out, out[-6000:]
            assert recap(out)["changed"] >= 3 and root.daemon_pid() != pid
            assert wait_until(lambda: client.get("/v1/health").json()["status"] in {"ok", "degraded"}, 60)
            client.close()
    finally:
        repo.server.close()
        sim.stop()
