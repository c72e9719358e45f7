"""Two commands at once on the same output or store: the second is refused in one line while the
first lives (or waits its turn where that is safe), and a finished dataset is never replaced
without --overwrite."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from corpus_gen import documents
from test_faults_inputs import one_line

from gpt1.cli import main as gpt1
from pipeline.errors import UserError
from pipeline.remote import LEASE, lease

ROOT = Path(__file__).resolve().parent.parent


def test_of_two_writers_that_start_at_once_exactly_one_holds_the_lease(tmp_path):
    fs, base = pafs.LocalFileSystem(), str(tmp_path)
    got, refused, inside = [], [], threading.Barrier(2)

    def writer(i):
        inside.wait()
        try:
            # ttl 20: the product's 1 s wait before the read-back (ttl 4 gave 0.4 s, which a
            # loaded machine's scheduling of two threads can exceed).
            with lease(fs, base, "prefix", "prepare", ttl=20.0):
                got.append(i)
                time.sleep(1.5)
        except UserError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1 and len(refused) == 1, (got, refused)
    assert "another prepare is writing here" in refused[0]
    assert not (tmp_path / LEASE).exists()  # released by its holder


def test_a_lease_is_never_read_half_written_while_it_is_renewed(tmp_path):
    # A torn lease reads as nobody's: two writers that wrote one local file at once both went on.
    # Renewed every 0.05 s here, a lease written in place was read empty or cut some 100 times in 2 s.
    fs, base = pafs.LocalFileSystem(), str(tmp_path)
    torn, reads = 0, 0
    with lease(fs, base, "prefix", "prepare", ttl=0.2):
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                json.loads((tmp_path / LEASE).read_text())
            except ValueError:
                torn += 1
            reads += 1
    assert reads > 1000 and torn == 0, (torn, reads)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no renewal's temporary left


def test_a_lease_nobody_renews_is_taken_over_and_a_fresh_one_is_not(tmp_path):
    fs, base = pafs.LocalFileSystem(), str(tmp_path)
    other = {"host": "another-machine", "pid": 1, "token": "t"}
    (tmp_path / LEASE).write_text(json.dumps({**other, "time": time.time()}))
    with pytest.raises(UserError, match="another-machine"), lease(fs, base, "prefix", "prepare", ttl=60.0):
        pass
    (tmp_path / LEASE).write_text(json.dumps({**other, "time": time.time() - 61}))
    with lease(fs, base, "prefix", "prepare", ttl=60.0):
        held = json.loads((tmp_path / LEASE).read_text())
        assert held["host"] == socket.gethostname()


def test_a_second_local_prepare_is_refused_while_the_first_writes(tmp_path, capsys):
    from pipeline.outdir import writer_lock

    (tmp_path / "c.txt").write_text("\n\n".join(documents(50, seed=1)) + "\n")
    out = tmp_path / "ds"
    with writer_lock(out, "prepare"):  # the first run, still writing
        assert (
            gpt1(
                [
                    "prepare",
                    "--corpus",
                    str(tmp_path / "c.txt"),
                    "--out",
                    str(out),
                    "--no-mlflow",
                    "--set",
                    "n_merges=20",
                    "--set",
                    "n_ctx=16",
                ]
            )
            == 2
        )
    one_line(capsys, str(out), "another prepare is writing here")
    assert not out.exists()


def gpt1_process(argv: list[str]) -> tuple[int, str]:
    """A command in a process of its own, as a user runs it: (its exit status, its one line on
    stderr, or "" where it has none). Its own Ray, whose workers see this environment's S3 (a Ray
    this process started earlier would not)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "gpt1.cli", *argv],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("gpt1 ")]
    assert len(lines) <= 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, "".join(lines)


@pytest.mark.slow
def test_a_second_prepare_to_the_same_prefix_never_replaces_the_first(s3, tmp_path):
    from test_prepare_s3 import remote_files

    (tmp_path / "a.txt").write_text("\n\n".join(documents(100, seed=1)) + "\n")
    (tmp_path / "b.txt").write_text("\n\n".join(documents(100, seed=2)) + "\n")

    def args(corpus):
        return [
            "prepare",
            "--corpus",
            str(corpus),
            "--out",
            "s3://gpt1-test/ds",
            "--no-mlflow",
            "--set",
            "n_merges=20",
            "--set",
            "n_ctx=16",
            "--set",
            "parallelism=1",
        ]

    fs, base = pafs.FileSystem.from_uri("s3://gpt1-test/ds")
    # The first writer holds the prefix (here: a lease as another machine's prepare writes it).
    with fs.open_output_stream(f"{base}/{LEASE}") as f:
        f.write(json.dumps({"host": "node-1", "pid": 7, "token": "x", "time": time.time()}).encode())
    status, line = gpt1_process(args(tmp_path / "b.txt"))
    assert status == 2 and all(
        w in line for w in ("s3://gpt1-test/ds", "another prepare is writing here", "node-1")
    )
    assert set(remote_files("gpt1-test/ds")) == {LEASE}  # nothing of the second run's
    fs.delete_file(f"{base}/{LEASE}")

    assert gpt1_process(args(tmp_path / "a.txt")) == (0, "")
    first = remote_files("gpt1-test/ds")
    assert LEASE not in first and "manifest.json" in first
    status, line = gpt1_process(args(tmp_path / "b.txt"))
    assert status == 2 and "already holds a different prepared dataset" in line, line
    assert remote_files("gpt1-test/ds") == first


# What a command does first with its MLflow store (check_store), then what it logs at its end.
FIRST_USE = """
import sys, time
sys.path.insert(0, {root!r})
from pipeline.tracking import check_store, experiment_id
from mlflow.tracking import MlflowClient
uri = sys.argv[1]
while time.time() < float(sys.argv[2]):  # every process starts at the same moment
    pass
check_store(uri)
client = MlflowClient(uri)
client.create_run(experiment_id(client, "gpt1-" + sys.argv[3]))
"""


@pytest.mark.slow
def test_commands_started_at_once_on_a_new_sqlite_store_all_log(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 3
    script = FIRST_USE.format(root=str(Path(__file__).resolve().parent.parent))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, str(start), f"c{i}"], stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errs if e.strip()]
    from mlflow.tracking import MlflowClient

    assert (
        len(MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()]))
        == 4
    )


def test_a_writer_that_died_unreaped_holds_nothing():
    """A supervised command killed with kill -9 takes its child with it; the child stays a zombie
    until something reaps it, and its lease or lock must not be taken for a live writer's."""
    import os
    import subprocess
    import time

    from pipeline.outdir import alive

    child = subprocess.Popen(["sleep", "0.1"])
    time.sleep(0.5)  # ended, not yet reaped: a zombie
    assert not alive(child.pid)
    child.wait()
    assert not alive(child.pid) and alive(os.getpid())


def _hold_at(uri: str, start: float, env: dict, out) -> None:
    """A process that asks for the lease at wall-clock time `start`, and holds it 3 s if it gets it."""
    import os

    os.environ.update(env)
    from pipeline.remote import Location

    time.sleep(max(0.0, start - time.time()))
    try:
        with Location.of(uri).hold("pretrain"):
            out.put(("held", os.getpid()))
            time.sleep(3)
    except UserError as err:
        out.put(("refused", str(err)))


@pytest.mark.slow
def test_of_two_processes_that_ask_s3_for_the_lease_at_once_exactly_one_holds_it(s3):
    import multiprocessing as mp

    import boto3

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 8  # both started and imported by then
    procs = [ctx.Process(target=_hold_at, args=("s3://gpt1-test/run", start, s3, out)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [g[0] for g in got] == ["held", "refused"], got
    assert "another pretrain is writing here" in got[1][1] and f"pid {got[0][1]}" in got[1][1]
    # Released by its holder: the object is gone.
    s3c = boto3.client("s3")
    assert "Contents" not in s3c.list_objects_v2(Bucket="gpt1-test", Prefix=f"run/{LEASE}")


@pytest.mark.slow
def test_an_s3_lease_nobody_renews_is_taken_over_once_and_a_fresh_one_is_refused(s3):
    import boto3

    from pipeline.remote import Location

    s3c = boto3.client("s3")
    key = f"run/{LEASE}"
    other = {"host": "another-machine", "pid": 1, "token": "t"}
    s3c.put_object(Bucket="gpt1-test", Key=key, Body=json.dumps({**other, "time": time.time()}).encode())
    with (
        pytest.raises(UserError, match="another-machine"),
        Location.of("s3://gpt1-test/run").hold("pretrain"),
    ):
        pass
    s3c.put_object(
        Bucket="gpt1-test", Key=key, Body=json.dumps({**other, "time": time.time() - 121}).encode()
    )
    with Location.of("s3://gpt1-test/run").hold("pretrain"):
        held = json.loads(s3c.get_object(Bucket="gpt1-test", Key=key)["Body"].read())
        assert held["host"] == socket.gethostname()
        # Taken over while held (this writer judged stale elsewhere): leaving never deletes the
        # successor's lease, since the holder deletes only with its own ETag.
        successor = json.dumps({**other, "time": time.time()}).encode()
        s3c.put_object(Bucket="gpt1-test", Key=key, Body=successor)
    assert s3c.get_object(Bucket="gpt1-test", Key=key)["Body"].read() == successor
