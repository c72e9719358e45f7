"""The console filter of a command that runs Ray (pipeline/console.py), on lines as Ray 2.60
prints them: Ray's own go to the log only; the project's, and any bug's traceback, are shown."""

import io
import os
import threading
from pathlib import Path

from pipeline import console

RAY_LINES = [
    b"2026-12-04 16:47:27,846\tINFO streaming_executor.py:215 -- Starting execution of Dataset",
    b"2026-12-04 16:47:20,660\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled",
    b"[2026-12-04 16:47:27,907 E 15858 15858] core_worker.cc:2465: Actor with class name: 'MapWorker'",
    b"\x1b[36m(TrainController pid=16679)\x1b[0m Requesting resources: {'CPU': 2} * 1",
    b"\x1b[36m(RayTrainWorker pid=16804)\x1b[0m Reporting training result 1: TrainingReport(checkpoint=...)",
    b"(trial pid=16988) Checkpoint successfully created at: Checkpoint(filesystem=local, path=/x)",
    b"\x1b[33m(raylet)\x1b[0m Raylet is terminated. Termination is unexpected.",
    b"    [state-dump] \tObjectManager.UpdateAvailableMemory - 1 total (0 active)",
    b"(PlacementGroupCleaner pid=12) Traceback (most recent call last):",
    "│ Trial name          status             lr     lm_coef │".encode(),
    b"Trial status: 2 TERMINATED",
]


def relay(data: bytes, verbose: bool = False) -> tuple[bytes, bytes, list[str]]:
    """(what the terminal shows, what the log holds, what was lost) for data on a child's pipe."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    tr, tw = os.pipe()
    log, lost = io.BytesIO(), []
    console._relay(os.fdopen(r, "rb"), tw, log, threading.Lock(), verbose, lost)
    os.close(tw)
    with os.fdopen(tr, "rb") as f:
        return f.read(), log.getvalue(), lost


def test_rays_own_lines_go_to_the_log_and_the_projects_to_the_terminal():
    mine = [
        b"Ray: a new local instance at 192.0.2.2:45201",
        b"\x1b[36m(RayTrainWorker pid=16804)\x1b[0m step 50/60 | loss 5.3677 | ETA 0m00s",
        b"trial 1/5 lr=0.0016 \xce\xbb=0: done in 2 s, best accuracy 0.5333",
    ]
    data = b"\n".join([*RAY_LINES, *mine]) + b"\n"
    shown, log, lost = relay(data)
    assert shown.splitlines() == [mine[0], b"step 50/60 | loss 5.3677 | ETA 0m00s", mine[2]]
    assert log == data  # every line, as printed
    assert lost == ["the raylet"]
    assert relay(data, verbose=True)[0] == data


def test_a_traceback_of_the_commands_own_code_is_shown_whole():
    bug = [
        b"Traceback (most recent call last):",
        b'  File "/work/tuning/finetune.py", line 3, in finetune',
        b"ZeroDivisionError: division by zero",
    ]
    from_trial = [b"(trial pid=7) " + line for line in bug]
    shown, _, lost = relay(b"\n".join(bug + from_trial) + b"\n")
    assert shown.splitlines() == bug + bug and not lost


def test_a_ray_worker_stopped_at_shutdown_is_not_an_error_but_another_ignored_one_is():
    stopped = b"""Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7fa0ad196520>
Traceback (most recent call last):
  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove
    def _remove(item, selfref=ref(self)):
  File "/venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1063, in sigterm_handler
    raise_sys_exit_with_custom_error_message(
SystemExit: 1
"""
    other = b"""Exception ignored in: <function Writer.__del__ at 0x1>
Traceback (most recent call last):
  File "/work/pipeline/data/packing.py", line 9, in __del__
OSError: [Errno 28] No space left on device
"""
    shown, log, _ = relay(b"before\n" + stopped + other + b"after\n")
    assert shown == b"before\n" + other + b"after\n"
    assert stopped in log
    # The same, forwarded from a trial that Tune stopped (a blank line inside, as Ray sends it).
    lines = stopped.splitlines()
    forwarded = [b"\x1b[36m(trial pid=7)\x1b[0m " + line for line in [*lines[:4], b"", *lines[4:]]]
    assert relay(b"\n".join(forwarded) + b"\nafter\n")[0] == b"after\n"


def test_progress_times_read_as_a_person_would():
    assert console.eta(65) == "1m05s" and console.eta(7300) == "2h01m" and console.eta(float("inf")) == "?"


def test_sizes_and_rates_take_the_unit_that_fits():
    assert [console.size(n) for n in (812, 45_100, 999_400, 999_600, 1.24e9, 3e15)] == [
        "812 B",
        "45.1 KB",
        "999 KB",
        "1 MB",
        "1.24 GB",
        "3,000 TB",
    ]
    assert console.rate(18_028, 12.2) == "1.48 KB/s" and console.rate(5, 0) == "? B/s"


def test_progress_prints_at_most_every_interval_and_closes_what_it_reads(capsys):
    closed = []

    def items():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    assert list(console.progress(items(), 10, "work", every=0.0)) == list(range(10))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("work: 1/10 (10%), ETA") and len(lines) == 9  # not at 0, not at the end
    assert list(console.progress(range(5), 5, "quick")) == list(range(5))
    assert capsys.readouterr().out == ""  # done before the first interval
    it = console.progress(items(), 10, "cut short")
    next(it)
    it.close()
    assert closed == [True, True]


def test_every_command_gets_a_log_file_of_its_own_even_in_the_same_second(tmp_path):
    import subprocess
    import sys

    from pipeline.console import new_log

    # In one process (the clock read twice within a second), and in four at once.
    mine = {new_log(tmp_path / "logs", "predict") for _ in range(3)}
    code = "import sys; from pathlib import Path; from pipeline.console import new_log; print(new_log(Path(sys.argv[1]), 'predict'))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "logs")], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    theirs = {Path(p.communicate()[0].strip()) for p in procs}
    assert len(mine) == 3 and len(theirs) == 4 and not mine & theirs
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(p.name for p in mine | theirs)
