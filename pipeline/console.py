"""The console of a command that runs Ray: the project's own lines on the terminal, everything the
command and its Ray instance print (Ray's, Tune's, Train's and Data's logs, the workers' forwarded
output) in a log file, and a lost Ray instance as one line.

    sys.exit(console.supervise(["pretrain", "--data", "d"], Path("logs/pretrain-....log"), verbose=False))

The command runs in a child process (`python -m gpt1.cli ...` with GPT1_SUPERVISED set) whose
stdout and stderr this process reads, line by line: every line goes to the log file, and to the
terminal unless it is Ray's own (`shown`). A child, not a filter inside the command's process,
because Ray writes from C++ as well as Python, and because when a local raylet dies Ray's C++ ends
the driver at once (`_exit`): no Python code of that process runs to say what happened, so this
one says it (`lost_ray`), with the command that resumes.

Signals: the child has a session of its own, so a terminal's Ctrl-C reaches it once, forwarded
from here (as SIGTERM is); a kill -9 of this process takes the child with it (PR_SET_PDEATHSIG).
A traceback from the command's own code (the driver, a training worker, a trial) is never
noise: a bug is shown whole. Ray's own processes and actors (the raylet, Train's controller and
placement-group cleaner, ...) are Ray's, tracebacks included: they are in the log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pipeline import env
from pipeline.errors import lost_ray_line

_ANSI = re.compile(rb"\x1b\[[0-9;]*m")
# "(RayTrainWorker pid=123)", "(trial pid=123, ip=10.0.0.2)", "(MapWorker(MapBatches(Tokenize)) pid=1)"
_WORKER = re.compile(rb"^\((?P<who>[^\s()]+(?:\([^\n]*?\))?)(?: pid=\d+)?(?:, ip=[\d.]+)?\)(?: |$)")
_RAY_LOG = [
    # Ray's Python loggers ("2026-12-04 16:47:27,846\tINFO streaming_executor.py:215 -- ...")
    rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING)\s",
    # Ray's C++ logs ("[2026-12-04 16:47:27,907 E 15858 15858] core_worker.cc:2465: ..."), also
    # indented, as a dead raylet's last lines are forwarded
    rb"\s*\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWE] \d+ \d+\]",
    rb"\s+\[state-dump\]",
    # Ray Serve's loggers, the replicas' access lines among them ("INFO 2026-12-06 15:12:07,793 serve 5544 -- ...")
    rb"(DEBUG|INFO|WARNING) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ",
    # Ray Train's controller and workers, in their plain format
    rb"(Requesting resources|Attempting to start training worker group|Started training worker group"
    rb"|Setting up process group|Reporting training result|Checkpoint successfully created at"
    rb"|Training finished|Worker group|Shutting down)",
    rb"- \(ip=[\d.]+, pid=\d+\) world_rank=",
    # Ray Tune's status output (verbose 1), which --verbose brings back
    rb"(View detailed results here|To visualize your results with TensorBoard|Trial status:"
    rb"|Current time:|Logical resource usage:|Current best trial:|Trial \S+ (started with|completed after)"
    rb"|Wrote the latest version of all result files)",
    "[╭│├╰]".encode(),
]
_NOISE = re.compile(b"|".join(b"(?:" + p + b")" for p in _RAY_LOG))
# Processes and actors of Ray itself, whose forwarded lines are all Ray's.
_RAY_PROCESSES = {
    b"raylet",
    b"gcs_server",
    b"autoscaler",
    b"monitor",
    b"dashboard",
    b"TrainController",
    b"PlacementGroupCleaner",
    b"PreemptionWatcher",
}
# What Ray prints when its instance goes, and what to call it in the one line.
_LOST = [
    (re.compile(rb"Raylet is terminated|connection to the plasma store is failed"), "the raylet"),
    (
        re.compile(rb"(GCS|gcs_server).{0,80}(unreachable|dead|failed to connect|Failed to connect)"),
        "the GCS",
    ),
    (re.compile(rb"(ActorUnavailableError|NodeDiedError|LocalRayletDiedError)"), "a node"),
]


def shown(line: bytes) -> bytes | None:
    """The line as the terminal shows it, or None where it is Ray's own output. A line forwarded
    from a worker loses its `(RayTrainWorker pid=...)` prefix; one from the raylet is Ray's."""
    plain = _ANSI.sub(b"", line)
    m = _WORKER.match(plain)
    if m:
        if m.group("who") in _RAY_PROCESSES:  # Ray's own (its tracebacks too: not the command's bug)
            return None
        plain = plain[m.end() :]
    if _NOISE.match(plain) or (m is not None and not plain.strip()):
        return None
    return plain if m else line


def eta(seconds: float) -> str:
    """A time left as progress lines print it: 4m05s, 2h10m, or ? where unknown."""
    import math

    if not math.isfinite(seconds):
        return "?"
    h, rest = divmod(int(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def size(n_bytes: float) -> str:
    """A size in the unit that fits it, three figures at most: 812 B, 45.1 KB, 1.24 GB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n_bytes) < 999.5 or unit == "TB":
            return (
                f"{n_bytes:.3g} {unit}" if unit != "B" and abs(n_bytes) < 999.5 else f"{n_bytes:,.0f} {unit}"
            )
        n_bytes /= 1000
    raise AssertionError("unreachable")


def rate(n_bytes: float, seconds: float) -> str:
    """Bytes over seconds as size() writes them, per second (a small corpus: 45.1 KB/s, not 0.00 MB/s)."""
    return f"{size(n_bytes / seconds)}/s" if seconds > 0 else "? B/s"


def progress(items, total: int, what: str, size=lambda item: 1, every: float = 30.0):
    """Yield from items, printing `what: k/total (p%), ETA` at most every `every` seconds, where
    size(item) says how many of the total an item is: a long stage is never silent, a short one
    prints nothing."""
    import time

    start = last = time.monotonic()
    done = 0
    try:
        for item in items:
            done += size(item)
            now = time.monotonic()
            if now - last >= every and 0 < done < total:
                last = now
                left = eta((total - done) * (now - start) / done)
                print(f"{what}: {done:,}/{total:,} ({done / total:.0%}), ETA {left}", flush=True)
            yield item
    finally:  # closed early (a bad input): so is what it reads, at once (Ray Data stops its work)
        close = getattr(items, "close", None)
        if close is not None:
            close()


def supervised() -> bool:
    """Whether this process is a supervised command (its console filtered by its parent)."""
    return env.supervised()


def script(name: str) -> str:
    """A command of this environment (gpt1, mlflow) as a closing hint should print it: its path
    beside this Python where it is installed there (a venv need not be on PATH), else its name."""
    import shlex

    path = Path(sys.executable).parent / name
    return shlex.quote(str(path)) if path.exists() else name


def new_log(logs: Path, command: str) -> Path:
    """A log file of this command's own under logs: COMMAND-YYYYmmdd-HHMMSS-PID.log, created here
    (exclusively), so that two commands started in the same second, or under a clock set back,
    never write into one file."""
    import datetime

    logs.mkdir(parents=True, exist_ok=True)
    stem = f"{command}-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    for n in range(1000):
        path = logs / (f"{stem}.log" if n == 0 else f"{stem}-{n}.log")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path.absolute()
        except FileExistsError:
            continue
    raise FileExistsError(f"{logs}: no free log name for {stem}")


def supervise(argv: list[str], log: Path, verbose: bool = False) -> int:
    """Run `gpt1 argv` in a child with its console filtered and logged; its exit status, or 1
    with one line where its Ray instance was lost."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"the whole output, Ray's included: {log}", flush=True)
    child_env = {**os.environ, **env.for_child(verbose), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        # -P: the working directory is not put first on the child's import path, so a user's own
        # folder named like a package of ours (`model/`, `gpt1 export`'s usual output) is not
        # imported in its place (Python 3.11's flag; 3.10 has no such folder guard).
        [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "gpt1.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )

    forwarded: list[int] = []

    def forward(signum, frame):
        if child.poll() is None:
            forwarded.append(signum)
            child.send_signal(signum)

    # A signal this process ignores (SIGINT in a script's background job) stays ignored: the child
    # inherits that, as it would have without this parent.
    old = {
        s: signal.signal(s, forward)
        for s in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    lost: list[str] = []
    try:
        with open(log, "ab") as out:
            lock = threading.Lock()
            readers = [
                threading.Thread(target=_relay, args=(pipe, fd, out, lock, verbose, lost), daemon=True)
                for pipe, fd in ((child.stdout, 1), (child.stderr, 2))
            ]
            for t in readers:
                t.start()
            code = child.wait()
            for t in readers:
                t.join(timeout=10)  # a process the child's Ray started may hold a pipe open
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if code < 0:
        code = 128 - code
    if forwarded and code not in (0, 2):
        # Stopped as asked: whatever its exit (Ray's own shutdown may crash once interrupted),
        # the status says which signal stopped it, as a shell would.
        code = 128 + forwarded[0]
    if code not in (0, 2, 130, 143) and lost and not _said_one_line(log):
        print(lost_ray_line(f"gpt1 {argv[0]}", lost[0]), file=sys.stderr)
        return 1
    return code


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when its parent dies (Linux)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    # Not Linux: a killed parent leaves the child to finish.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _relay(pipe, fd: int, out, lock: threading.Lock, verbose: bool, lost: list[str]) -> None:
    hidden = False  # a blank line after Ray's lines (a forwarded block's end) is Ray's too
    held: list[tuple[bytes, bytes]] = []  # an "Exception ignored in" block, until its end says whose it is

    def emit(text: bytes) -> None:
        view = memoryview(text + b"\n")
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BrokenPipeError:  # the console's reader has gone (`| head`): the log file keeps it all
                return

    for line in iter(pipe.readline, b""):
        line = line.rstrip(b"\n")
        with lock:
            out.write(line + b"\n")
            out.flush()
        for pattern, what in _LOST:
            if not lost and pattern.search(line):
                lost.append(what)
        plain = _unprefixed(line)
        if not verbose and (held or plain.startswith(b"Exception ignored in")):
            held.append((line, plain))
            if len(held) > 2 and plain[:1] not in (b" ", b"\t", b""):  # the exception's own line ends it
                if not _ray_worker_stopped([p for _, p in held]):
                    for text in filter(None, (shown(h) for h, _ in held)):
                        emit(text)
                held = []
            continue
        text = line if verbose else shown(line)
        if text is not None and hidden and not text.strip():
            text = None
        hidden = text is None
        if text is not None:
            emit(text)
    for text in filter(None, (shown(h) for h, _ in held)):
        emit(text)
    pipe.close()


def _unprefixed(line: bytes) -> bytes:
    """The line without colour codes and without the `(Worker pid=N)` prefix of forwarded output."""
    plain = _ANSI.sub(b"", line)
    m = _WORKER.match(plain)
    return plain[m.end() :] if m else plain


def _ray_worker_stopped(block: list[bytes]) -> bool:
    """An "Exception ignored" traceback of a Ray worker that the instance's shutdown stopped with
    SIGTERM (its handler raises SystemExit inside whatever the interpreter was finalising): Ray's
    shutdown, not the command's error."""
    text = b"\n".join(block)
    return (
        b"sigterm_handler" in text
        and b"ray/_private/worker.py" in text
        and block[-1].startswith(b"SystemExit")
    )


def _said_one_line(log: Path) -> bool:
    """Whether the child ended with a line of its own (`gpt1 VERB: ...`) rather than a crash."""
    with open(log, "rb") as f:  # its end only: a long run's log is large
        f.seek(max(0, log.stat().st_size - 4000))
        tail = f.read().rstrip().splitlines()
    return bool(tail) and tail[-1].startswith(b"gpt1 ") and b"Traceback" not in b"\n".join(tail[-30:])
