"""`tillplug diag`: one bundle for a ticket, with no secret, member id or card number anywhere in it."""

import json
import string
import tarfile
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tillplug.commands.cli import main
from tillplug.commands.diag import journal, write_bundle
from tillplug.commands.virtual.till import VirtualTill
from tillplug.outbox.store import open_store

MEMBER = "5a1b2c3d-0000-4000-8000-000000000001"  # the simulator's member with account number 1000001


def bundle_text(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def till_config(folder: Path, *, secret: str, listen: str = "127.0.0.1:9", state: Path | None = None) -> Path:
    """A real-engine config: its three credentials and the API token in files holding ``secret``."""
    names = ("api_key", "client_id", "client_secret", "token")
    for name in names:
        (folder / name).write_text(secret + "\n")
        (folder / name).chmod(0o600)
    config = folder / "tillplug.toml"
    config.write_text(
        f'till_id = "till-07"\nbranch_id = "b-12"\nstate_dir = "{state or folder / "state"}"\n'
        f'[engine]\npreset = "eu"\napi_key = "{folder}/api_key"\nclient_id = "{folder}/client_id"\n'
        f'client_secret = "{folder}/client_secret"\n[api]\nlisten = "{listen}"\ntoken = "{folder}/token"\n'
    )
    return config


member_ids = st.uuids().map(str)
card_numbers = st.from_regex(r"\A[0-9]{7}\Z") | st.from_regex(r"\A[0-9]{13,19}\Z")
secrets = st.text(string.ascii_letters + string.digits + "-_.", min_size=16, max_size=48)


@settings(max_examples=15)
@given(member_ids, card_numbers, secrets)
def test_no_secret_member_id_or_card_number_anywhere_in_the_bundle(member, card, secret):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = till_config(folder, secret=secret)
        (folder / "state").mkdir()
        store = open_store(folder / "state" / "outbox.sqlite3")
        with store.transaction() as tx:
            store.enqueue(tx, kind="event", stream="T1", body={"userId": member, "card": card}, event_key=f"k-{card}")
        claimed = store.claim()
        assert claimed is not None
        store.dead(claimed.id, error=f"engine refused user {member} (card {card}) with key {secret}")
        store.close()

        def old_journal() -> str:  # lines an older version (or a crash before logging was set up) wrote
            return (
                f"Traceback: KeyError: '{member}'\nscan {card} on lane 1\nAuthorization: Bearer {secret}\n"
                f"token={secret}\n"
            )

        out = folder / "ticket" / "diag.tar.gz"
        write_bundle(str(config), out, journal_reader=old_journal)
        texts = bundle_text(out)
        assert set(texts) == {
            f"tillplug-diag/{n}"
            for n in ("README.txt", "config.txt", "health.json", "state.json", "versions.json", "journal.txt")
        }
        everything = "\n".join(texts.values())
        assert member not in everything and member.upper() not in everything
        assert card not in everything
        assert secret not in everything
        # What the ticket needs is still there: the secrets' paths, the dead row and its masked reason.
        assert f"engine.api_key = {folder}/api_key: ok" in texts["tillplug-diag/config.txt"]
        assert ["dead", 1] in json.loads(texts["tillplug-diag/state.json"])["outbox.sqlite3"]["outbox_by_state"]
        assert "…" + member[-4:] in texts["tillplug-diag/state.json"]
        assert "scan …" + card[-4:] in texts["tillplug-diag/journal.txt"]
        assert out.stat().st_mode & 0o077 == 0


def test_with_a_running_daemon_the_bundle_holds_its_health_and_queues(tmp_path, capsys):
    secret = "api-token-of-till-07-do-not-share"
    token = tmp_path / "token"
    token.write_text(secret)
    token.chmod(0o600)
    with VirtualTill(tmp_path / "till", api={"listen": "127.0.0.1:0", "token": str(token)}) as till:
        auth = {"Authorization": f"Bearer {secret}"}
        till.api.post("/v1/checkouts", json={"transactionId": "T1"}, headers=auth).raise_for_status()
        till.api.put("/v1/checkouts/T1/member", json={"code": "1000001"}, headers=auth).raise_for_status()
        config = tmp_path / "tillplug.toml"
        config.write_text(
            f'till_id = "till-01"\nbranch_id = "b"\nstate_dir = "{till.config.state_dir}"\n'
            f'[engine]\npreset = "simulator"\n[api]\nlisten = "127.0.0.1:{till.daemon.api_port}"\n'
            f'token = "{token}"\n'
        )
        assert main(["diag", "--config", str(config), "--out", str(tmp_path / "b.tgz")]) == 0
    texts = bundle_text(tmp_path / "b.tgz")
    health = texts["tillplug-diag/health.json"]
    assert '"tillId": "till-01"' in health and '"outbox"' in health
    assert ["open", 1] in json.loads(texts["tillplug-diag/state.json"])["outbox.sqlite3"]["checkouts_by_state"]
    everything = "\n".join(texts.values())
    assert secret not in everything and MEMBER not in everything and "1000001" not in everything
    assert "wrote " in capsys.readouterr().out


def test_without_journalctl_the_bundle_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no journalctl here
    assert journal().startswith("journalctl is not installed on this machine")


def test_an_invalid_config_shows_its_problems_and_never_its_text(tmp_path):
    config = tmp_path / "tillplug.toml"
    config.write_text('till_id = "t"\nbranch_id = "b"\n[engine]\npreset = "eu"\napi_key = "inline-secret-x9"\n')
    write_bundle(str(config), tmp_path / "b.tgz", journal_reader=lambda: "")
    texts = bundle_text(tmp_path / "b.tgz")
    assert "inline-secret-x9" not in "\n".join(texts.values())
    assert "error: engine.api_key" in texts["tillplug-diag/config.txt"]
    assert '"status": "unknown"' in texts["tillplug-diag/health.json"]
