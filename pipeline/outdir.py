"""Output directories: what a command may replace, written beside it and swapped in whole.

Every command that writes a directory (prepare's dataset, export's model, finetune's model)
goes through here, so that none of them ever deletes what it did not make:

- a path that does not exist, or an empty directory, is written;
- an existing directory is replaced only with --overwrite, and only if it is what the command
  makes (a dataset, a model directory, a fine-tuned model); anything else is refused, --overwrite
  or not;
- the new directory is written under a hidden sibling name that carries the writer's pid, then
  renamed into place; a later run removes the siblings whose writer is dead.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from pipeline.errors import UserError


def check_replaceable(out: Path, what: str, is_what: Callable[[Path], bool], overwrite: bool,
                      error: type[UserError] = UserError) -> None:
    """Raise error (a UserError) unless out may be written: absent, an empty directory, or (with
    overwrite) a directory that is_what recognises as `what`."""
    if not out.exists():
        return
    if not out.is_dir():
        raise error(f"{out}: exists and is not a directory; choose another path")
    if not any(out.iterdir()):
        return
    if not is_what(out):
        raise error(f"{out}: exists and is not {what} (it holds {_sample(out)}); it is never "
                        f"replaced, --overwrite or not: choose another path or empty it yourself")
    if not overwrite:
        raise error(f"{out}: already exists and holds {what}; pass --overwrite to replace it")


def _sample(d: Path) -> str:
    names = sorted(p.name for p in d.iterdir())
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_writable(out: Path) -> None:
    """Raise UserError unless a file can be created beside out (in its nearest existing
    ancestor): a read-only or full filesystem is found before any work, not after it."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{out}: cannot write in {parent} ({err.strerror or err}); choose a writable path") from None


def sibling(out: Path, tag: str) -> Path:
    """A hidden name beside out for a directory being written: .NAME.TAG-PID-RANDOM."""
    return out.parent / f".{out.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(out: Path) -> list[Path]:
    """Remove the hidden siblings of out left by writers that died (killed, machine lost)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*-*-*"):
        pid = p.name.rsplit("-", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished tmp to out, replacing what is there (already checked replaceable)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = sibling(out, "old")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)

