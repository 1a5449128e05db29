"""Release builds shared by the system tests (one build per version per session: each takes a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def next_version(version: str) -> str:
    """The same source as a later release: an upgrade needs two versions."""
    major, minor, patch = version.split(".")[:3]
    return f"{major}.{minor}.{int(patch) + 1}"


def build(out: Path, version: str | None = None) -> Path:
    # A maintainer's loop may reuse builds: TILLPLUG_PREBUILT=<folder with dist/ and dist-next/>.
    if prebuilt := os.environ.get("TILLPLUG_PREBUILT"):
        return Path(prebuilt) / ("dist-next" if version else "dist")
    argv = [sys.executable, str(ROOT / "packaging" / "build.py"), "--out", str(out)]
    if version:
        argv += ["--version", version]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release of the version in pyproject.toml."""
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def dist_next(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same source released as the next patch version."""
    return build(tmp_path_factory.mktemp("dist-next"), next_version(VERSION))


@pytest.fixture(scope="session")
def chain_key(tmp_path_factory):
    """The chain's signing key, made as docs/fleet-updates.md says."""
    keys = tmp_path_factory.mktemp("keys")
    public = keys / "tillplug-archive-keyring.gpg"
    from tests.system.debian_root import apt_repo

    fingerprint = apt_repo("keygen", "--gnupghome", keys / "gnupg", "--uid", "Test chain <apt@chain.test>",
                           "--public", public)  # fmt: skip
    return keys / "gnupg", fingerprint, public
