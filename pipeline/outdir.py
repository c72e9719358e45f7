"""Output directories: what a command may replace, written beside it and swapped in whole.

Every command that writes a directory (prepare's dataset, export's model, finetune's model)
goes through here, so that none of them ever deletes what it did not make:

- a path that does not exist, or an empty directory, is written;
- an existing directory is replaced only with --overwrite, and only if it is what the command
  makes (a dataset, a model directory, a fine-tuned model); anything else is refused, --overwrite
  or not;
- the new directory is written under a hidden sibling name that carries a fixed marker and the
  writer's pid (.NAME.gpt1-TAG-PID-RANDOM), with a marker file inside, then renamed into place; a
  later run removes the siblings whose writer is dead, and only those that carry both markers: a
  user's own hidden folder beside the output (.model.backup-2019-12) is never taken for one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import UserError


def check_replaceable(
    out: Path, what: str, is_what: Callable[[Path], bool], overwrite: bool, error: type[UserError] = UserError
) -> None:
    """Raise error (a UserError) unless out may be written: absent, an empty directory, or (with
    overwrite) a directory that is_what recognises as `what`."""
    if not out.exists():
        return
    if not out.is_dir():
        raise error(f"{out}: exists and is not a directory; choose another path")
    if not any(out.iterdir()):
        return
    if not is_what(out):
        raise error(
            f"{out}: exists and is not {what} (it holds {_sample(out)}); it is never "
            f"replaced, --overwrite or not: choose another path or empty it yourself"
        )
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
        raise UserError(
            f"{out}: cannot write in {parent} ({err.strerror or err}); choose a writable path"
        ) from None


# What makes a hidden sibling the project's own: the name's marker, and this file inside.
MARKER = "gpt1-"
MARKER_FILE = ".gpt1-staging"


def sibling(out: Path, tag: str) -> Path:
    """A new, empty directory beside out for a directory being written: .NAME.gpt1-TAG-PID-RANDOM,
    holding the marker file that remove_orphans checks (publish takes it out again)."""
    d = out.parent / f".{out.name}.{MARKER}{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    mark(d)
    return d


def mark(d: Path) -> None:
    (d / MARKER_FILE).write_text(f"{os.getpid()}\n")


def alive(pid: int) -> bool:
    """Whether process pid runs. A zombie does not: a writer killed with its parent (kill -9 of a
    supervised command) stays one until something reaps it, and holds nothing meanwhile."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/PID/stat: "PID (COMM) STATE ...", COMM may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill's answer stands
    return state not in ("Z", "X")


def orphaned(p: Path) -> bool:
    """Whether p is a staging directory of this project (both markers) whose writer is dead."""
    pid = p.name.rsplit("-", 2)[-2] if p.name.count("-") >= 2 else ""
    if not pid.isdigit() or int(pid) == os.getpid() or p.is_symlink() or not p.is_dir():
        return False
    try:
        marked = (p / MARKER_FILE).read_text().strip() == pid
    except (OSError, UnicodeDecodeError):
        return False
    return marked and not alive(int(pid))


def remove_orphans(out: Path) -> list[Path]:
    """Remove the staging siblings of out left by writers that died (killed, machine lost)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.{MARKER}*-*-*"):
        if orphaned(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished staging directory tmp to final (absent), without its marker file."""
    (tmp / MARKER_FILE).unlink(missing_ok=True)
    os.rename(tmp, final)


@contextlib.contextmanager
def held_alone(lock_file: Path, refused: Callable[[str], Exception]):
    """Hold lock_file (an flock, so that a killed holder leaves nothing stuck) while the block
    runs, with this process's pid in it; if another process holds it, raise refused(its pid)."""
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise refused(f.read().strip() or "?") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def lock_file_of(key: str) -> Path:
    """A lock file under ~/.cache/gpt1/locks for key (a path or a URI): never beside a user's files."""
    return (
        Path.home() / ".cache" / "gpt1" / "locks" / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".lock")
    )


def writer_lock(out: Path, what: str):
    """One writer of out on this machine at a time: a second is refused while the first lives."""
    return held_alone(
        lock_file_of(str(out.absolute())),
        lambda pid: UserError(
            f"{out}: another {what} is writing here (pid {pid}); wait for it to end, or choose another path"
        ),
    )


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished tmp to out, replacing what is there (already checked replaceable)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = out.parent / f".{out.name}.{MARKER}old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        mark(old)  # a kill before the rmtree below leaves it for remove_orphans
        publish(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        publish(tmp, out)
