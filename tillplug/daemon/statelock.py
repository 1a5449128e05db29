"""One daemon per state directory: an exclusive ``flock`` on ``state_dir/tillplug.lock``.

Two processes writing one outbox and one checkout table settle each other's
in-flight writes (a refund queued for a spend that is still running) and so
create points.  The lock is taken before anything else — before the database
is opened, before the engine is contacted — and the kernel releases it when
the process dies, so a crash never leaves a stale lock behind.  The holder
writes its PID into the file for the message the second process prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tillplug.errors import StateDirLocked

LOCK_NAME = "tillplug.lock"


class StateLock:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StateLock:
        """Take the lock or raise ``StateDirLocked`` naming the holder's PID; never waits."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "an unknown PID"
            raise StateDirLocked(
                f"{self.path.parent} is in use by another tillplug process ({who}); stop it first"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the descriptor drops the flock; the file stays (removing it would race)

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
