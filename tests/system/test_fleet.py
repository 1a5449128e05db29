"""Updates through the chain's signed apt repository, in a real Debian root (packaging/debian-root.sh):
version A installed from the repository, a real daemon running it with a sale open, version B
published in a phase; apt upgrades and returns at once, the restart waits for the sale, the sale
does not notice; a new version that does not start is rolled back to the previous folder.

Needs root (namespaces), reprepro, gpg and the Debian root built once by ``.ci/run``; without them these tests
skip, except under CI=true, where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.system.conftest import VERSION, next_version
from tests.system.debian_root import DebianRoot, Repo, api, apt_repo, deb_of, root_available, till_config, wait_until
from tillplug.sim import SimServer

NEXT = next_version(VERSION)
API_PORT = 18765  # inside the chroot: the same network as the test
TOKEN = "fleet-test-api-token-0123456789"
MISSING = (
    None
    if os.geteuid() == 0 and root_available() and shutil.which("reprepro") and shutil.which("gpg")
    else "needs root, reprepro, gpg and the Debian root (sudo packaging/debian-root.sh)"
)

pytestmark = [pytest.mark.slow]
if MISSING and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason=MISSING))


def test_the_fleet_tests_have_what_they_need_under_ci():
    """Under CI a missing root, tool or privilege fails here instead of skipping the fleet tests."""
    assert MISSING is None, MISSING


@pytest.fixture
def till(tmp_path, chain_key, dist):
    """A Debian root trusting the chain's repository, with version A installed and its daemon running."""
    sim = SimServer().start()
    repo = Repo(tmp_path / "repo", chain_key)
    try:
        with DebianRoot.copy(tmp_path) as root:
            repo.publish(deb_of(dist, VERSION))
            root.trust(repo.server.url, repo.keyring, machine_id="0" * 32)
            root.write("/etc/tillplug/tillplug.toml", till_config(API_PORT, sim.url), 0o640)
            root.write("/etc/tillplug/credentials/api-token", TOKEN, 0o600)
            root.apt("update")
            root.apt("install", "tillplug")
            assert root.run("dpkg-query", "-W", "-f", "${Version}", "tillplug").stdout == VERSION
            root.run("systemctl", "start", "tillplug.service")
            client = api(API_PORT, TOKEN)
            assert wait_until(lambda: client.get("/v1/health").json()["version"] == VERSION, 60), root.read(
                "/var/log/standin-tillplug.log"
            )[-3000:]
            yield root, repo, client, sim
            client.close()
    finally:
        repo.server.close()
        sim.stop()


def machine_ids(root: DebianRoot, upgraded: bool, count: int = 48) -> list[str]:
    """Machine ids for which apt's own phasing does (or does not) take the update (apt 2.6 keeps a
    phased update back in the upgrade; its candidate stays the new version)."""
    found = []
    for n in range(count):
        machine = f"{n + 1:032x}"
        plan = root.run("apt-get", "-s", "upgrade", "-o", f"APT::Machine-ID={machine}").stdout
        if ("Inst tillplug " in plan) == upgraded:
            found.append(machine)
    return found


def test_the_repository_is_signed_and_carries_the_phase(tmp_path, chain_key, dist):
    repo = Repo(tmp_path / "repo", chain_key)
    try:
        repo.publish(deb_of(dist, VERSION), phased=10)
        assert "Phased-Update-Percentage: 10" in repo.packages()
        inrelease = repo.folder / "dists/stable/InRelease"
        check = subprocess.run(["gpgv", "--keyring", str(repo.keyring), str(inrelease)], capture_output=True, text=True)
        assert check.returncode == 0 and "Good signature" in check.stderr
        apt_repo("phase", "--repo", repo.folder, "--key", repo.fingerprint, "--gnupghome", repo.gnupghome,
                 "--phased", "100")  # fmt: skip
        assert "Phased-Update-Percentage" not in repo.packages() and f"Version: {VERSION}" in repo.packages()
    finally:
        repo.server.close()


def test_an_update_waits_for_the_open_sale_and_the_sale_does_not_notice(till, dist_next):
    root, repo, client, _ = till
    pid_a = root.daemon_pid()
    assert client.post("/v1/checkouts", json={"transactionId": "T1", "lane": 1}).status_code == 201
    assert client.put("/v1/checkouts/T1/member", json={"code": "1000001"}).status_code == 200

    repo.publish(deb_of(dist_next, NEXT), phased=50)
    root.apt("update")
    # Phasing is apt's own: at 50 % some machines get B, the others keep A.
    out_of_phase, in_phase = machine_ids(root, upgraded=False), machine_ids(root, upgraded=True)
    assert out_of_phase and in_phase, "apt did not phase the update"
    root.set_machine_id(out_of_phase[0])
    root.apt("upgrade")
    assert root.run("dpkg-query", "-W", "-f", "${Version}", "tillplug").stdout == VERSION

    stale = root.path / "opt/tillplug/0.0.1"  # a version two updates old, run by nothing
    (stale / "bin").mkdir(parents=True)
    (stale / ".complete").touch()
    root.set_machine_id(in_phase[0])
    upgrade = root.apt("upgrade")  # returns while the sale is open: the postinst only schedules
    assert root.run("dpkg-query", "-W", "-f", "${Version}", "tillplug").stdout == NEXT
    assert "restarts into it at the next safe moment" in upgrade.stdout
    assert os.readlink(root.path / "opt/tillplug/current") == NEXT
    assert os.readlink(root.path / "opt/tillplug/previous") == VERSION
    assert (root.path / f"opt/tillplug/{VERSION}/bin/tillplug").exists()  # the running daemon's files stay
    assert not stale.exists()  # pruned: neither current, previous nor in use

    log = "/var/log/tillplug-update-restart.log"
    assert wait_until(lambda: "waiting: not safe to restart: 1 checkout open on lane 1" in root.read(log), 60), (
        root.read(log) + root.read("/var/log/standin-systemd-run.log")
    )
    assert root.daemon_pid() == pid_a and client.get("/v1/health").json()["version"] == VERSION
    assert root.run("tillplug", "ready-to-restart", check=False).returncode == 1

    # The sale goes on and ends on version A; nothing it asked for failed.
    done = client.post("/v1/checkouts/T1/complete", json={"total": 1250, "paymentConfirmed": True})
    assert done.status_code == 200, done.text

    assert wait_until(lambda: client.get("/v1/health").json()["version"] == NEXT, 90), root.read(log)
    assert root.daemon_pid() != pid_a
    assert wait_until(lambda: f"tillplug {NEXT} is running" in root.read(log), 30), root.read(log)
    text = root.read(log)
    assert "restarting tillplug.service: safe moment: nothing in progress" in text
    assert f"tillplug {NEXT} is running" in text
    # The sale, completed on A, is known to B as it was left.
    assert client.get("/v1/checkouts/T1").json()["state"] == "completed"


def test_a_new_version_that_does_not_start_is_rolled_back_to_the_previous_folder(till, dist_next):
    root, repo, client, _ = till
    assert client.post("/v1/checkouts", json={"transactionId": "T2", "lane": 1}).status_code == 201
    repo.publish(deb_of(dist_next, NEXT))
    root.apt("update")
    root.apt("upgrade", env={"TILLPLUG_START_WITHIN": "10"})
    # B's daemon cannot start (its wiring is broken on this till); A serves the sale meanwhile.
    site = next((root.path / f"opt/tillplug/{NEXT}/lib").glob("python3*/site-packages"))
    (site / "tillplug/daemon/wiring.py").write_text("raise SystemExit('broken on purpose by the test')\n")
    assert client.post("/v1/checkouts/T2/void", json={}).status_code == 200
    log = "/var/log/tillplug-update-restart.log"
    assert wait_until(lambda: "rolled back" in root.read(log), 120), root.read(log)
    assert os.readlink(root.path / "opt/tillplug/current") == VERSION
    assert wait_until(lambda: client.get("/v1/health").json()["version"] == VERSION, 60), root.read(log)
    assert wait_until(lambda: "after the rollback" in root.read(log), 30), root.read(log)
    text = root.read(log)
    assert f"tillplug {NEXT} did not answer within 10 s; rolled back: /opt/tillplug/current -> {VERSION}" in text
    assert f"tillplug {VERSION} is running after the rollback" in text
