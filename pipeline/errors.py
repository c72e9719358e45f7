"""Errors and how a command ends: the UserError family as one line and exit status 2; object
storage that stopped answering, a cluster that did not grow in time, and a lost Ray instance as
one line and status 1;
Ctrl-C and SIGTERM as one line and status 130 and 143 (128 + the signal, as a shell reports it);
anything else (a bug) with its traceback and
status 1."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import shlex
import sys


class UserError(ValueError):
    """A user's mistake in an input (a file, a config key, a dataset): every stage reports it as
    one line naming the input, and exits with status 2."""


class ConfigError(UserError):
    """A user's configuration mistake."""


class StorageUnavailable(Exception):
    """Object storage could not be reached, after the client's bounded retries: neither the
    user's mistake nor a bug. One line, exit status 1; the same command resumes once it answers."""


class NotEnoughResources(Exception):
    """The cluster did not grow to what a command needs within --wait-minutes: neither the user's
    mistake in an input nor a bug. One line, exit status 1; the same command may be run again."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the command stopped cleanly; its text says where to resume from."""


# A full, read-only or forbidden filesystem is the machine's state, not a bug: one line.
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


def disk_error(err: BaseException) -> UserError | None:
    """err as one line naming the file, if it is a disk error (also as pyarrow words it)."""
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return UserError(f"{err.filename or 'a file'}: {err.strerror}")
    first = (str(err).splitlines() or [""])[0]  # pyarrow and safetensors word it so, without an errno
    if isinstance(err, Exception) and any(
        w in first for w in ("No space left on device", "Read-only file system")
    ):
        return UserError(first)
    return None


# pyarrow words an S3 failure "When <doing> key 'K' in bucket 'B': AWS Error CODE during OP: detail".
_AWS = re.compile(r"AWS Error ([A-Z_]+)(?: \(HTTP status (\d+)\))?")
_WHERE = re.compile(r"(?:key '([^']*)' in )?bucket '([^']*)'")
_CAUSES = {
    "ACCESS_DENIED": "access denied; check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and the bucket's policy",
    "INVALID_ACCESS_KEY_ID": "the access key was refused; check AWS_ACCESS_KEY_ID or AWS_PROFILE",
    "SIGNATURE_DOES_NOT_MATCH": "the secret key was refused; check AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
    "UNRECOGNIZED_CLIENT": "the credentials were refused; check AWS_ACCESS_KEY_ID or AWS_PROFILE",
    "MISSING_AUTHENTICATION_TOKEN": "no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "NO_SUCH_BUCKET": "no such bucket; create it, or fix the URI",
}
_UNREACHABLE = (
    "NETWORK_CONNECTION",
    "SERVICE_UNAVAILABLE",
    "SLOW_DOWN",
    "REQUEST_TIMEOUT",
    "INTERNAL_FAILURE",
)


def storage_error(err: BaseException) -> BaseException | None:
    """err as one line naming the object and the cause, if it is pyarrow's S3 error: a
    StorageUnavailable where the store could not be reached (or kept failing), else a UserError
    (credentials, a missing bucket, a refusal)."""
    if not isinstance(err, OSError):
        return None
    first = (str(err).splitlines() or [""])[0]
    m = _AWS.search(first)
    if m is None:
        return None
    code, status = m.group(1), m.group(2)
    w = _WHERE.search(first)
    uri = f"s3://{w.group(2)}" + (f"/{w.group(1)}" if w.group(1) else "") if w else "object storage"
    detail = first[m.end() :].split(": ", 1)[-1].strip()
    return classified(uri, code, status, detail)


def classified(uri: str, code: str, status, detail: str) -> Exception:
    """An object store's error code (pyarrow's NO_SUCH_BUCKET or S3's own NoSuchBucket) as one
    line: a StorageUnavailable where the store could not answer or failed (5xx), else a UserError
    naming the cause."""
    code = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", code).upper()  # NoSuchBucket -> NO_SUCH_BUCKET
    status = str(status or "")
    what = f"{code.lower()}{f', HTTP {status}' if status else ''}: {detail[:160]}"
    if code in _UNREACHABLE or status.startswith("5"):  # the store's own failure: worth a retry
        return StorageUnavailable(
            f"{uri}: the object store did not answer, or failed ({what}); check AWS_ENDPOINT_URL and the "
            "network; the same command resumes once it answers"
        )
    return UserError(f"{uri}: {_CAUSES.get(code) or f'the object store refused it ({what})'}")


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


def names_a_file(err: BaseException) -> bool:
    """A missing file the user can act on: one whose line says which. `[Errno 2] No such file or
    directory` alone names nothing, and is a bug's to show with its traceback."""
    return isinstance(err, FileNotFoundError) and (
        err.filename is not None or str(err) != f"[Errno {err.errno}] {err.strerror}"
    )


def user_error(err: BaseException) -> BaseException | None:
    """The user's mistake behind err, if any. A bad input found inside a Ray worker arrives
    wrapped (as RayTaskError subclasses that also derive from the original class, whose text is
    the worker's traceback): the innermost instance is the original, with its one-line text."""
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (UserError, NotEnoughResources)) or names_a_file(err):
            found = err
        elif found is None:  # a line already written wins over a disk or storage error beneath it
            found = err if isinstance(err, StorageUnavailable) else disk_error(err) or storage_error(err)
        # Ray Train's own errors hold the workers' (or its controller's) as attributes, not causes.
        failures = getattr(err, "worker_failures", None)
        err = (
            getattr(err, "cause", None)
            or (next(iter(failures.values()), None) if isinstance(failures, dict) else None)
            or getattr(err, "controller_failure", None)
            or err.__cause__
            or (None if err.__suppress_context__ else err.__context__)
        )
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


# The signal that stopped this command, where one did: its exit status is 128 + it (130 for
# Ctrl-C, 143 for SIGTERM), as a shell would report a process the signal killed.
_stopped_by: list[int] = []


def note_signal(signum: int) -> None:
    """Record that signum asked this command to stop (a handler that stops cleanly calls it)."""
    _stopped_by.append(signum)


def interrupt_status() -> int:
    import signal

    return 128 + (_stopped_by[0] if _stopped_by else signal.SIGINT)


def sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, `kill`) ends a command as Ctrl-C does: cleanly, one line."""
    import signal

    def handler(signum, frame):
        note_signal(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_reporting(prog: str, func, args) -> int:
    """Run a command; a user's mistake ends as one line naming the input and exit status 2, with
    no traceback; Ctrl-C and SIGTERM as one line and status 130 or 143. Shared by the `gpt1`
    subcommands and the stage scripts, so both behave alike."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGTERM)
    if main:
        sigterm_as_interrupt()
    _stopped_by.clear()
    try:
        func(args)
    except BrokenPipeError:
        # The reader of our output has gone (`| head`): stop as a pipe's writer does, quietly, and
        # keep the interpreter's own flush at exit from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (Interrupted, KeyboardInterrupt) as err:
        print(f"{prog}: {str(err) or 'interrupted'}", file=sys.stderr)
        return interrupt_status()
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            what = lost_ray(err)
            if what is None:  # a bug: its traceback, exit status 1
                raise
            print(lost_ray_line(prog, what), file=sys.stderr)
            return 1
        print(f"{prog}: {cause}", file=sys.stderr)
        return 1 if isinstance(cause, (StorageUnavailable, NotEnoughResources)) else 2
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
    return 0


# Ray's errors that mean its instance (not the command's code) failed, where its processes are gone.
_RAY_SYSTEM_ERRORS = (
    "ActorUnavailableError",
    "ActorDiedError",
    "NodeDiedError",
    "LocalRayletDiedError",
    "RaySystemError",
    "ObjectLostError",
    "WorkerCrashedError",
    "RpcError",
)


def lost_ray(err: BaseException) -> str | None:
    """What of this process's Ray instance is gone, if err is Ray's report of that: a system
    error (an actor or node unreachable, an object lost) while a process of the local instance
    (its raylet, its GCS) has ended. None otherwise: an actor that died of the command's own bug
    on a healthy instance shows its traceback."""
    if "ray" not in sys.modules:
        return None
    import ray.exceptions

    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    if not any(
        type(e).__name__ in _RAY_SYSTEM_ERRORS and isinstance(e, ray.exceptions.RayError) for e in chain
    ):
        return None
    node = getattr(ray._private.worker, "_global_node", None)
    dead = {kind for kind, _ in node.dead_processes()} if node is not None else set()
    for kind, name in (("gcs_server", "the GCS"), ("raylet", "the raylet")):
        if kind in dead:
            return name
    return None


def lost_ray_line(prog: str, what: str) -> str:
    """The one line of a command whose Ray instance went (what: "the raylet", "the GCS", ...)."""
    return (
        f"{prog}: the Ray instance was lost ({what} ended); what was done is kept: run the same "
        f"command to resume: {shlex.join(['gpt1', *sys.argv[1:]])}"
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as every verb shows it: the module's docstring as written, and each option's
    default after its help line, unless the line already says it (or the option is a flag,
    off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or action.default == []
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def stage_main(prog: str, doc: str, add_arguments, run, argv: list[str] | None = None) -> int:
    """The `main` of a stage's script (`python pipeline/pretrain.py ...`)."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)
    add_arguments(p)
    return run_reporting(prog, run, p.parse_args(argv))
