"""The release artefacts (packaging/build.py): a .deb with the venv, the wheels, the unit and
the udev rules and the man page, whose postinst runs `tillplug install`, and a wheelhouse tarball with its
install script.  Builds for real (pip needs the package index, as on a build machine)."""

import argparse
import gzip
import io
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from tillplug.commands.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is needed to read the package"),
]


def deb(dist: Path) -> Path:
    (found,) = dist.glob(f"tillplug_{VERSION}_*.deb")
    return found


def test_the_deb_says_what_it_is_and_runs_tillplug_install_after_unpacking(dist):
    info = subprocess.run(["dpkg-deb", "--info", str(deb(dist))], capture_output=True, text=True, check=True).stdout
    fields = dict(
        line.strip().split(": ", 1)
        for line in info.splitlines()
        if ": " in line and line.startswith(" ") and not line.startswith("  ")
    )
    assert fields["Package"] == "tillplug" and fields["Version"] == VERSION
    assert "python3 (>= 3.11)" in fields["Depends"] and "systemd" in fields["Depends"]
    postinst = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb(dist))], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(postinst)) as tar:
        script = tar.extractfile("./postinst").read().decode()
    assert "/usr/bin/tillplug install" in script


def payload(dist: Path) -> tarfile.TarFile:
    """The version's folder as the postinst unpacks it into /opt/tillplug/<version>."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb(dist))], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        inner = outer.extractfile(f"./usr/lib/tillplug/tillplug-{VERSION}.tar")
        assert inner is not None
        return tarfile.open(fileobj=io.BytesIO(inner.read()))


def test_the_deb_holds_the_version_payload_every_wheel_the_unit_and_the_udev_rules(dist):
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb(dist))], capture_output=True, text=True, check=True
    ).stdout
    entries = {line.split()[5].removeprefix("."): line for line in listing.splitlines()}
    assert {
        f"/usr/lib/tillplug/tillplug-{VERSION}.tar",
        "/usr/bin/tillplug",
        "/usr/lib/systemd/system/tillplug.service",
        "/usr/lib/udev/rules.d/99-tillplug.rules",
    } <= set(entries)
    assert "-> /opt/tillplug/current/bin/tillplug" in entries["/usr/bin/tillplug"]
    assert not any(p.startswith("/opt/") for p in entries), "dpkg must not own the version folders"
    wheels = {p.name for p in (dist / "wheelhouse").glob("*.whl")}
    assert any(w.startswith("tillplug-") for w in wheels) and any(w.startswith("pydantic_core-") for w in wheels)
    with payload(dist) as tar:
        paths = {name.removeprefix("./") for name in tar.getnames()}
    assert {f"wheels/{w}" for w in wheels} <= paths
    assert {"bin/tillplug", "pyvenv.cfg"} <= paths
    assert any(p.startswith("lib/python3") and p.endswith("/tillplug/daemon/wiring.py") for p in paths)
    assert not any("/stage/" in p or "__pycache__" in p for p in paths)


def test_the_venv_inside_names_its_own_version_folder_not_the_build_folder(dist, tmp_path):
    with payload(dist) as tar:
        tar.extractall(tmp_path / "venv", filter="tar")
    shebang = (tmp_path / "venv/bin/tillplug").read_text().splitlines()[0]
    assert shebang in {f"#!/opt/tillplug/{VERSION}/bin/python3", f"#!/opt/tillplug/{VERSION}/bin/python"}
    assert str(dist) not in (tmp_path / "venv/pyvenv.cfg").read_text()
    subprocess.run(["dpkg-deb", "--extract", str(deb(dist)), str(tmp_path / "deb")], check=True)
    unit = (tmp_path / "deb/usr/lib/systemd/system/tillplug.service").read_text()
    assert "ExecStart=/usr/bin/tillplug run" in unit


def test_the_maintainer_scripts_never_restart_in_place_and_know_their_version(dist):
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb(dist))], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(control)) as tar:
        scripts = {n: tar.extractfile(f"./{n}").read().decode() for n in ("postinst", "prerm", "postrm")}
    assert f"version={VERSION}\n" in scripts["postinst"] and "@VERSION@" not in scripts["postinst"]
    assert "restart-when-ready" in scripts["postinst"] and "systemd-run" in scripts["postinst"]
    for name, text in scripts.items():  # a restart is only ever scheduled, never done by dpkg's scripts
        assert "systemctl restart" not in text, name
        assert subprocess.run(["sh", "-n"], input=text.encode()).returncode == 0, name


def test_the_wheelhouse_tarball_installs_with_no_index(dist, tmp_path):
    (tar_path,) = dist.glob(f"tillplug-{VERSION}-wheelhouse.tar.gz")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    top = tmp_path / f"tillplug-{VERSION}"
    assert f"tillplug-{VERSION}/install.sh" in names
    assert "--no-index" in (top / "install.sh").read_text()
    venv = tmp_path / "venv"  # what install.sh does, short of writing to /opt and /etc
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links", str(top / "wheels"), "tillplug"],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert subprocess.run([str(venv / "bin/tillplug"), "--help"], capture_output=True).returncode == 0


def test_the_deb_carries_a_man_page_made_from_the_cli_parser(dist, tmp_path):
    subprocess.run(["dpkg-deb", "-x", str(deb(dist)), str(tmp_path)], check=True)
    page = gzip.decompress((tmp_path / "usr/share/man/man1/tillplug.1.gz").read_bytes()).decode()
    assert page.startswith(".TH") and VERSION in page
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [verb for verb in verbs if verb.replace("-", "\\-") not in page]  # roff escapes hyphens
    assert missing == [], f"the man page does not name {missing}"


def contents(package: Path) -> set[str]:
    listing = subprocess.run(["dpkg-deb", "--contents", str(package)], capture_output=True, text=True, check=True)
    return {line.split()[5].removeprefix(".") for line in listing.stdout.splitlines()}


def test_the_relay_has_a_package_of_its_own_and_the_tills_carries_no_database_driver(dist):
    (relay,) = dist.glob(f"tillplug-relay_{VERSION}_*.deb")
    paths = contents(relay)
    assert "/usr/lib/systemd/system/tillplug-relay.service" in paths
    assert "/opt/tillplug-relay/bin/tillplug" in paths
    assert any(p.endswith("/site-packages/psycopg/__init__.py") for p in paths)
    assert any(p.endswith("/site-packages/psycopg_pool/__init__.py") for p in paths)
    assert any(p.endswith("/tillplug/relay/service.py") for p in paths)
    info = subprocess.run(["dpkg-deb", "--field", str(relay), "Depends"], capture_output=True, text=True, check=True)
    assert "libpq5" in info.stdout
    till = contents(deb(dist))
    assert not any("psycopg" in p for p in till)
    assert not any(w.name.startswith("psycopg") for w in (dist / "wheelhouse").glob("*.whl"))
    assert any(w.name.startswith("psycopg") for w in (dist / "wheelhouse-relay").glob("*.whl"))
    unit = (ROOT / "packaging" / "tillplug-relay.service").read_text()
    assert "ExecStart=/opt/tillplug-relay/bin/tillplug relay run --config /etc/tillplug/relay.toml" in unit
