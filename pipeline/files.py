"""Files on this machine: a file's sha256, and a lock that one process of the machine holds at a
time. Below every other module of pipeline/ (it imports none), so that the data stages, training
and the MLflow records share them without importing one another."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def machine_lock(path: Path):
    """One process of the machine at a time, for as long as the block runs (an flock: a killed
    holder leaves nothing stuck)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
