"""The relay's database password: from a file named in [database], never in the URL, never shown."""

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.relay.pg import Cluster, free_port

PASSWORD = "s3cret-Hunter2-pw"


def write(folder: Path, url: str, password_file: Path | None, port: int = 8766) -> Path:
    config = folder / "relay.toml"
    line = f'password_file = "{password_file}"' if password_file else ""
    config.write_text(
        f"""
[engine]
preset = "simulator"
base_url = "http://127.0.0.1:9/v1"

[database]
url = "{url}"
{line}

[api]
listen = "127.0.0.1:{port}"
"""
    )
    return config


def relay(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tillplug", "relay", *argv], capture_output=True, text=True, timeout=60
    )


def secret(folder: Path, text: str) -> Path:
    path = folder / "relay-db-password"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_the_relay_connects_with_the_password_from_its_file_and_serves(cluster: Cluster, tmp_path):
    url = cluster.password_role("relay_pw", PASSWORD)
    # Without the password the database refuses: the role really needs one (scram, not trust).
    bare = relay("migrate", "--config", str(write(tmp_path, url, None)))
    assert bare.returncode == 1 and "asks for a password" in bare.stderr and "database.password_file" in bare.stderr
    config = write(tmp_path, url, secret(tmp_path, PASSWORD), port=free_port())
    migrated = relay("migrate", "--config", str(config))
    assert migrated.returncode == 0, migrated.stderr
    token = relay("enrol", "--config", str(config), "--till", "T01", "--branch", "B01")
    assert token.returncode == 0 and token.stdout.startswith("tpr1.")
    port = int(config.read_text().split("127.0.0.1:")[-1].split('"')[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tillplug", "relay", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answer = None
        for _ in range(300):  # bounded: 30 s
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/relay/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 200 and answer.json()["database"] == "ok"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert PASSWORD not in out


def test_a_wrong_password_is_told_as_such_and_never_shown(cluster: Cluster, tmp_path):
    url = cluster.password_role("relay_pw", PASSWORD)
    config = write(tmp_path, url, secret(tmp_path, "not-the-password-xyz"))
    done = relay("migrate", "--config", str(config))
    assert done.returncode == 1
    assert "refused the password" in done.stderr and "database.password_file" in done.stderr
    assert "not-the-password-xyz" not in done.stdout + done.stderr


def test_a_password_in_the_url_is_refused_by_check_config_without_showing_it(tmp_path):
    for url in ("postgresql://relay:hunter2pw@db.chain.lan/tillplug_relay", "postgresql://db/r?password=hunter2pw"):
        done = relay("check-config", str(write(tmp_path, url, None)))
        assert done.returncode == 2
        assert "database.url" in done.stdout and "must not carry a password" in done.stdout
        assert "hunter2pw" not in done.stdout + done.stderr


def test_a_missing_or_unreadable_password_file_names_the_key_never_the_secret(tmp_path):
    url = "postgresql://relay@127.0.0.1:9/tillplug_relay"
    missing = write(tmp_path, url, tmp_path / "no-such-file")
    for verb in (["check-config", str(missing)], ["migrate", "--config", str(missing)]):
        done = relay(*verb)
        assert done.returncode == 2, done
        assert "database.password_file" in done.stdout + done.stderr
        assert "no-such-file" in done.stdout + done.stderr
    folder = tmp_path / "a-folder"
    folder.mkdir()
    unreadable = write(tmp_path, url, folder)
    done = relay("check-config", str(unreadable))
    assert done.returncode == 2 and "database.password_file" in done.stdout
    two_lines = secret(tmp_path, "hunter2pw\nsecond-line")
    done = relay("check-config", str(write(tmp_path, url, two_lines)))
    assert done.returncode == 2 and "database.password_file" in done.stdout
    assert "hunter2pw" not in done.stdout + done.stderr
