"""A throwaway Debian root for the fleet tests: a copy of the root ``packaging/debian-root.sh`` built
once (``.ci/run`` builds it), run in namespaces of its own (util-linux unshare/nsenter), with apt
pointed at the tests' own signed repository on 127.0.0.1 and stand-ins for what a chroot lacks
(systemd): ``systemctl`` runs tillplug.service as a plain process (the real daemon, from the
installed package), ``systemd-run`` runs the transient unit's command in the background after its
delay, ``udevadm`` does nothing.  Every call to them is logged in the root."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
CACHED_ROOT = Path(os.environ.get("TILLPLUG_DEBIAN_ROOT", "/var/cache/tillplug/debian-root"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl in the tests' chroot: tillplug.service as a plain background process.
echo "systemctl $*" >> /var/log/standin-systemctl.log
pidfile=/run/standin-tillplug.pid
all="$*"
args=
for a in "$@"; do case "$a" in -*) ;; *) args="$args $a" ;; esac; done
set -- $args
# The root's PID 1 is a placeholder that reaps no one: a daemon that has exited stays a zombie
# (state Z), which is stopped all the same (systemd would have reaped it).
running() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }
alive() { [ -f $pidfile ] && running "$(cat $pidfile)"; }
stop() {
    if alive; then
        pid=$(cat $pidfile); kill -TERM "$pid"; i=0
        while running "$pid" && [ $i -lt 400 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    rm -f $pidfile
}
start() {
    setsid /usr/bin/tillplug run --config /etc/tillplug/tillplug.toml </dev/null >>/var/log/standin-tillplug.log 2>&1 &
    echo $! > $pidfile
}
case "$1 ${2%.service}" in
    "is-active tillplug") alive ;;
    "start tillplug") alive || start ;;
    "enable tillplug") case " $all " in *" --now "*) alive || start ;; esac ;;
    "restart tillplug") stop; start ;;
    "reload tillplug") alive && kill -HUP "$(cat $pidfile)" ;;
    "stop tillplug") stop ;;
    *) exit 0 ;;
esac
"""

SYSTEMD_RUN = """#!/bin/sh
# Stand-in for systemd-run in the tests' chroot: the command, detached, after --on-active.
echo "systemd-run $*" >> /var/log/standin-systemd-run.log
delay=0
while [ $# -gt 0 ]; do
    case "$1" in --on-active=*) delay=${1#--on-active=} ;; --*) ;; *) break ;; esac
    shift
done
log=/var/log/tillplug-update-restart.log
setsid sh -c 'sleep "$1"; shift; exec "$@"' standin "$delay" "$@" </dev/null >>$log 2>&1 &
"""

NOTHING = """#!/bin/sh
echo "$(basename "$0") $*" >> /var/log/standin-other.log
"""


def root_available() -> bool:
    return (CACHED_ROOT / ".tillplug-root-complete").exists() and bool(
        shutil.which("unshare") and shutil.which("nsenter")
    )


class RepoServer:
    """A folder served over HTTP on 127.0.0.1 (the chain's repository, as the tills see it)."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class DebianRoot:
    """A writable view of the cached root run as a small container: an overlay over the cached root
    (which stays untouched), mounted inside the root's own mount namespace (nothing stays mounted
    on the machine), its own PID namespace and /proc, with a placeholder as PID 1.  apt phases
    updates only where / is PID 1's root (in a bare chroot it includes every phased update), and
    ending PID 1 ends every process the test started there.  ``path`` reaches its files from
    outside (``/proc/<PID 1>/root``)."""

    def __init__(self, layers: dict[str, Path]) -> None:
        self.layers = layers
        self.holder: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self.path = Path("/nonexistent")

    @classmethod
    @contextlib.contextmanager
    def copy(cls, where: Path) -> Iterator[DebianRoot]:
        layers = {name: where / f"root-{name}" for name in ("upper", "work", "merged")}
        for folder in layers.values():
            folder.mkdir()
        root = cls(layers)
        try:
            root._start()
            root._stand_ins()
            yield root
        finally:
            root.kill_everything()
            for folder in layers.values():
                shutil.rmtree(folder, ignore_errors=True)

    def _start(self) -> None:
        upper, work, merged = self.layers["upper"], self.layers["work"], self.layers["merged"]
        overlay = f"lowerdir={CACHED_ROOT},upperdir={upper},workdir={work}"
        inside = "mount -t proc proc /proc && exec sleep infinity"
        script = f"mount -t overlay overlay -o {overlay} {merged} && exec chroot {merged} /bin/sh -c '{inside}'"
        self.holder = subprocess.Popen(
            ["unshare", "--fork", "--pid", "--mount", "--propagation=private", "--kill-child", "/bin/sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # unshare complains when its PID 1 is killed at the end
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.holder.poll() is None:
            children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.init_pid = int(children.read_text().split()[0])
                if Path(f"/proc/{self.init_pid}/root/proc/1/cmdline").read_bytes().startswith(b"sleep"):
                    self.path = Path(f"/proc/{self.init_pid}/root")
                    return
            time.sleep(0.02)
        raise AssertionError("the root's PID 1 did not start (overlay or /proc could not be mounted)")

    def _stand_ins(self) -> None:
        sbin = self.path / "usr/local/sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        for name, text in (("systemctl", SYSTEMCTL), ("systemd-run", SYSTEMD_RUN), ("udevadm", NOTHING)):
            (sbin / name).write_text(text)
            (sbin / name).chmod(0o755)
        (self.path / "run/systemd/system").mkdir(parents=True, exist_ok=True)  # "systemd is running"
        (self.path / "etc/apt/sources.list").write_text("")  # only the tests' repository, never a mirror

    def trust(self, repo_url: str, keyring: Path, machine_id: str, suite: str = "stable") -> None:
        """apt on this root: the repository, its key, and the machine's phase (``APT::Machine-ID``)."""
        keys = self.path / "usr/share/keyrings/tillplug-archive-keyring.gpg"
        shutil.copy(keyring, keys)
        (self.path / "etc/apt/sources.list.d/tillplug.list").write_text(
            f"deb [signed-by=/usr/share/keyrings/tillplug-archive-keyring.gpg] {repo_url} {suite} main\n"
        )
        self.set_machine_id(machine_id)

    def set_machine_id(self, machine_id: str) -> None:
        (self.path / "etc/apt/apt.conf.d/90tillplug-tests").write_text(
            f'APT::Machine-ID "{machine_id}";\nAcquire::Languages "none";\n'
            # apt runs dpkg with a PATH of its own: the stand-ins must come first there too
            f'DPkg::Path "{PATH}";\n'
        )

    def run(
        self, *argv: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        base = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        environment = {**base, **(env or {})}
        done = subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--pid", "--mount", "--root", "--wd", *argv],
            capture_output=True,
            text=True,
            env=environment,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def start(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A command inside the root, in the background (the caller waits for it)."""
        base = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        return subprocess.Popen(
            ["nsenter", f"--target={self.init_pid}", "--pid", "--mount", "--root", "--wd", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**base, **(env or {})},
            stdin=subprocess.DEVNULL,
        )

    def apt(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("apt-get", "-y", "-q", *args, env=env)

    def read(self, inside: str) -> str:
        path = self.path / inside.lstrip("/")
        return path.read_text() if path.exists() else ""

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        path = self.path / inside.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    def daemon_pid(self) -> int | None:
        text = self.read("/run/standin-tillplug.pid").strip()
        return int(text) if text else None

    def processes(self) -> list[int]:
        """Every process whose root is this root (the daemon, a scheduled restart): ours alone to end."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "root") == str(self.layers["merged"]):
                        found.append(int(entry.name))
        return found

    def kill_everything(self) -> None:
        if self.holder is not None:  # its PID 1 ends, and with it every process in the root
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(10)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.1)


def till_config(api_port: int, sim_url: str) -> str:
    return f"""till_id = "till-01"
branch_id = "branch-0001"
currency = "GBP"
state_dir = "/var/lib/tillplug"
cache_dir = "/var/cache/tillplug"
log_level = "info"

[engine]
preset = "simulator"
base_url = "{sim_url}/v1"
auth_url = "{sim_url}/oauth/token"
receipts_url = "{sim_url}/receipts/v1"

[api]
listen = "127.0.0.1:{api_port}"
token = "/etc/tillplug/credentials/api-token"
"""


def api(port: int, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def wait_until(predicate: object, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():  # type: ignore[operator]
                return True
        time.sleep(every)
    return False


def apt_repo(*args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "apt_repo.py"), *map(str, args)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Repo:
    def __init__(self, folder: Path, key: tuple[Path, str, Path]) -> None:
        self.folder, (self.gnupghome, self.fingerprint, self.keyring) = folder, key
        self.server = RepoServer(folder)

    def publish(self, deb: Path, phased: int = 100) -> None:
        apt_repo("publish", "--repo", self.folder, "--key", self.fingerprint, "--gnupghome", self.gnupghome,
                 "--phased", str(phased), deb)  # fmt: skip

    def packages(self) -> str:
        return "".join(p.read_text() for p in sorted(self.folder.glob("dists/stable/main/binary-*/Packages")))


def deb_of(dist: Path, version: str) -> Path:
    (found,) = dist.glob(f"tillplug_{version}_*.deb")
    return found
