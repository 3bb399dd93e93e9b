"""One learner per logdir: an exclusive `flock` on LOGDIR/learner.lock for the learner's life.

Two learners writing one logdir interleave their checkpoints (the checkpoint index flips
between their histories, and a restart resumes one and drops the other). The lock is held
on an open file, so the kernel releases it when the process ends however it ends: a crashed
or SIGKILLed learner leaves nothing to clean up, and the next one starts. The file holds the
holder's pid and host, so the refusal can say who holds it.
"""

import fcntl
import os
import socket
from typing import Optional

LOCK_NAME = "learner.lock"


class LogdirInUseError(RuntimeError):
    """A live learner holds the logdir."""


class LogdirLock:
    """Holds LOGDIR/learner.lock until `release` (or the process's end)."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, LOCK_NAME)
        self._fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise LogdirInUseError(
                f"{logdir} is in use by a live learner ({holder}); stop it first, or give "
                "this run another --logdir.") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
