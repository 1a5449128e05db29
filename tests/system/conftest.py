"""Release builds shared by the system tests (one build per version per session: each takes a minute,
made in the background from the start of the session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def next_version(version: str) -> str:
    """The same source as a later release: an upgrade needs two versions."""
    major, minor, patch = version.split(".")[:3]
    return f"{major}.{minor}.{int(patch) + 1}"


RUNNING: set[subprocess.Popen[str]] = set()  # builds under way


def build(out: Path, version: str | None = None) -> Path:
    # A maintainer's loop may reuse builds: TILLPLUG_PREBUILT=<folder with dist/ and dist-next/>.
    if prebuilt := os.environ.get("TILLPLUG_PREBUILT"):
        return Path(prebuilt) / ("dist-next" if version else "dist")
    # Niced: it runs beside the tests (Builds), on the core serial pytest leaves idle.
    argv = ["nice", "-n", "10", sys.executable, str(ROOT / "packaging" / "build.py"), "--out", str(out)]
    if version:
        argv += ["--version", version]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as running:
        RUNNING.add(running)
        try:
            stdout, stderr = running.communicate()
        finally:
            RUNNING.discard(running)
    assert running.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return out


class Builds:
    """The two releases, built one after the other in a thread from the end of collection on, while
    the tests before tests/system/ run (a build takes about a minute of one core; CI has two)."""

    def __init__(self, needed: set[str]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tillplug-builds-"))
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-build")
        self.dist = self.pool.submit(build, self.folder / "dist")
        if "dist_next" in needed:
            self.dist_next = self.pool.submit(build, self.folder / "dist-next", next_version(VERSION))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for running in list(RUNNING):  # the session ended first (-x, ^C): the build is not needed
            running.kill()
        self.pool.shutdown(wait=True)
        shutil.rmtree(self.folder, ignore_errors=True)


BUILDS: list[Builds] = []  # the session's, once a selected test needs a release


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    needed = {"dist", "dist_next"} & {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if needed:
        BUILDS.append(Builds(needed))


def pytest_sessionfinish(session: pytest.Session) -> None:
    while BUILDS:
        BUILDS.pop().close()


@pytest.fixture(scope="session")
def dist() -> Path:
    """The release of the version in pyproject.toml."""
    assert BUILDS, "started at the end of collection"
    return BUILDS[0].dist.result()


@pytest.fixture(scope="session")
def dist_next() -> Path:
    """The same source released as the next patch version."""
    assert BUILDS, "started at the end of collection"
    return BUILDS[0].dist_next.result()


@pytest.fixture(scope="session")
def chain_key(tmp_path_factory):
    """The chain's signing key, made as docs/fleet-updates.md says."""
    keys = tmp_path_factory.mktemp("keys")
    public = keys / "tillplug-archive-keyring.gpg"
    from tests.system.debian_root import apt_repo

    fingerprint = apt_repo("keygen", "--gnupghome", keys / "gnupg", "--uid", "Test chain <apt@chain.test>",
                           "--public", public)  # fmt: skip
    return keys / "gnupg", fingerprint, public
