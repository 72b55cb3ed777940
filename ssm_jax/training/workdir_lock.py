"""One training run per workdir: two would interleave their checkpoints and ``metrics.jsonl``. The lock is an
advisory ``flock`` on ``<workdir>/.lock``, which the operating system releases when the process ends, however it
ends (a crash or ``kill -9`` leaves no stale lock to clear by hand). A run that ends having written nothing (a
config refused before anything is built) takes its lock file away, and the workdir too if the lock created it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

import jax


@contextlib.contextmanager
def workdir_lock(workdir):
    """Holds ``<workdir>/.lock`` (in process 0 of a job) for the ``with`` block; raises ValueError naming the run
    that holds it. Leaves no ``.lock`` (nor a workdir it made) behind when the block wrote nothing beside it."""
    if jax.process_index() != 0:
        yield
        return
    path = Path(workdir).expanduser() / ".lock"
    made_dir = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(f"{path.parent} is in use by another run ({holder}); two runs in one workdir would "
                             f"interleave their checkpoints and metrics: wait for it to end, or pass another "
                             f"--workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:
            if [p.name for p in path.parent.iterdir()] == [path.name]:
                path.unlink()
                if made_dir:
                    path.parent.rmdir()
            fcntl.flock(f, fcntl.LOCK_UN)
