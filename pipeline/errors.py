"""Errors and how a command ends: the UserError family as one line and exit status 2, Ctrl-C and
SIGTERM as one line and status 130, anything else (a bug) with its traceback and status 1."""
from __future__ import annotations

import contextlib
import errno
import os
import sys


class UserError(ValueError):
    """A user's mistake in an input (a file, a config key, a dataset): every stage reports it as
    one line naming the input, and exits with status 2."""


class ConfigError(UserError):
    """A user's configuration mistake."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the command stopped cleanly; its text says where to resume from."""


# A full, read-only or forbidden filesystem is the machine's state, not a bug: one line.
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


def disk_error(err: BaseException) -> UserError | None:
    """err as one line naming the file, if it is a disk error (also as pyarrow words it)."""
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return UserError(f"{err.filename or 'a file'}: {err.strerror}")
    first = (str(err).splitlines() or [""])[0]  # pyarrow and safetensors word it so, without an errno
    if isinstance(err, Exception) and any(w in first for w in ("No space left on device", "Read-only file system")):
        return UserError(first)
    return None


@contextlib.contextmanager
def naming(path):
    """An OSError raised inside, raised again with path as its file name: pyarrow's carry none,
    and the line the user reads should say which file."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno:
            raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
        raise


def user_error(err: BaseException) -> BaseException | None:
    """The user's mistake behind err, if any. A bad input found inside a Ray worker arrives
    wrapped (as RayTaskError subclasses that also derive from the original class, whose text is
    the worker's traceback): the innermost instance is the original, with its one-line text."""
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (UserError, FileNotFoundError)):
            found = err
        elif found is None:  # a line already written wins over a disk error beneath it
            found = disk_error(err)
        err = getattr(err, "cause", None) or err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return found


@contextlib.contextmanager
def model_input(what: str):
    """The model package raises ValueError for what is the user's input where a command calls it (an
    unknown preset, a damaged model directory): inside this block such an error is a UserError,
    with its line prefixed by what (the flag or file it came from)."""
    try:
        yield
    except UserError:
        raise
    except ValueError as err:
        raise UserError(f"{what}: {err}" if what and not str(err).startswith(what) else str(err)) from None


def sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, `kill`) ends a command as Ctrl-C does: cleanly, one line."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_reporting(prog: str, func, args) -> int:
    """Run a command; a user's mistake ends as one line naming the input and exit status 2, with
    no traceback; Ctrl-C and SIGTERM as one line and status 130. Shared by the `gpt1`
    subcommands and the stage scripts, so both behave alike."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGTERM)
    if main:
        sigterm_as_interrupt()
    try:
        func(args)
    except (Interrupted, KeyboardInterrupt) as err:
        print(f"{prog}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as err:
        cause = user_error(err)
        if cause is None:  # a bug: its traceback, exit status 1
            raise
        print(f"{prog}: {cause}", file=sys.stderr)
        return 2
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
    return 0


def stage_main(prog: str, doc: str, add_arguments, run, argv: list[str] | None = None) -> int:
    """The `main` of a stage's script (`python pipeline/pretrain.py ...`)."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run_reporting(prog, run, p.parse_args(argv))
