"""pretrain on a simulated cluster (a head and two worker nodes of 1 CPU each), with the dataset and
the run's storage on a local S3 server (moto): the dataset is staged once, a whole worker node
removed half-way (and a fresh one added) costs nothing but time, since the run retraces an
uninterrupted one step by step; a shard altered on S3 is one line, exit 2."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from corpus_gen import documents

from pipeline.data.dataset import cache_key, verification_cache
from pipeline.data.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.slow  # a cluster, an S3 server or a Ray job: minutes

ROOT = Path(__file__).resolve().parent.parent
STEPS = 60
SETS = [
    f"max_steps={STEPS}",
    "batch_size=4",
    "micro_batch=2",
    "log_every=1",
    "checkpoint_every=10",
    "eval_every=60",
    "eval_blocks=8",
    "keep_checkpoints=2",
    "lr=3e-3",
    "warmup_steps=10",
    "system_metrics_s=1",
]


def pretrain(
    cluster, data: str, name: str, tmp_path: Path, workers: str = "2", extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, Path]:
    # The nodes stage into their own GPT1_DATA_CACHE, the one this process gave them (conftest).
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    sets = [a for s in SETS for a in ("--set", s)]
    log = tmp_path / f"{name}.log"  # a file, not a pipe: nothing reads it while the test waits
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpt1.cli",
                "pretrain",
                "--config",
                "tiny",
                "--data",
                data,
                "--storage",
                "s3://gpt1-test/runs",
                "--name",
                name,
                "--workers",
                workers,
                *sets,
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def finish(run: tuple[subprocess.Popen, Path], returncode: int = 0) -> str:
    proc, log = run
    proc.wait(timeout=600)
    assert proc.returncode == returncode, log.read_text()[-4000:]
    return log.read_text()


def losses(tmp_path: Path, name: str, key: str = "loss") -> dict[int, float]:
    """step -> loss (or another metric); where a resumed run logged a step twice, the later value."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gpt1-pretrain")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'")
    history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def metric(tmp_path: Path, name: str, key: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gpt1-pretrain")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'")
    return run.data.metrics[key]


def raylet_of(cluster, pid: int):
    """The cluster node whose raylet started process `pid`, or None (another Ray's process)."""
    import psutil

    try:
        parents = {p.pid for p in psutil.Process(pid).parents()}
    except psutil.NoSuchProcess:
        return None
    for node in [cluster.head_node, *cluster.worker_nodes]:
        if node.all_processes["raylet"][0].process.pid in parents:
            return node
    return None


def a_worker_node(cluster):
    """A node that runs a training worker but not the run's controller (this cluster's, not
    those of another Ray on the machine), and the worker processes, by pid."""
    import psutil

    procs = {
        name: [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if name in " ".join(p.info["cmdline"] or []) and raylet_of(cluster, p.pid) is not None
        ]
        for name in ("RayTrainWorker", "TrainController")
    }
    assert procs["RayTrainWorker"] and procs["TrainController"], procs
    keep = {raylet_of(cluster, pid).node_id for pid in procs["TrainController"]}
    node = next(
        n for n in (raylet_of(cluster, pid) for pid in procs["RayTrainWorker"]) if n.node_id not in keep
    )
    return node, procs["RayTrainWorker"]


def drain_a_worker_node(cluster, log: Path, after: int):
    """Once the run has logged step `after`, drain a worker node as autoscaler v2 drains a spot
    node AWS reclaims: reason PREEMPTION, a deadline a minute away. Returns the node."""
    deadline = time.time() + 300
    while not re.search(rf"^step {after}/", log.read_text(), re.M):
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    import psutil

    node, workers = a_worker_node(cluster)
    # The workers frozen while the command runs: a run of a few seconds could end before it does.
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "drain-node", "--address", cluster.address]
            + ["--node-id", node.node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION"]
            + ["--reason-message", "spot reclaim", "--deadline-remaining-seconds", "60"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        for pid in workers:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGCONT)
    assert out.returncode == 0, out.stdout + out.stderr
    return node


def remove_a_worker_node(cluster, checkpoint: str, replace: bool = True, victim=None) -> str:
    """Once `checkpoint` is on S3, remove (without warning) a node that runs a training worker but
    not the run's controller, and add a fresh one in its place unless not `replace`. (Here, not
    in a thread: a node starts only from the main thread.)

    The workers are frozen (SIGSTOP) from the moment the checkpoint is seen until the node is
    gone: a run of a few seconds could otherwise finish before the removal, and the test would
    see no loss at all."""
    import psutil

    fs = pafs.FileSystem.from_uri("s3://gpt1-test")[0]
    deadline = time.time() + 300
    while fs.get_file_info(f"{checkpoint}/trainer_state.json").type != pafs.FileType.File:
        assert time.time() < deadline, f"{checkpoint} never appeared"
        time.sleep(0.05)
    chosen, workers = a_worker_node(cluster)
    victim = victim or chosen
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        cluster.remove_node(victim, allow_graceful=False)
    finally:
        for pid in workers:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGCONT)
    if replace:
        cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
    return victim.node_id


def test_a_run_on_a_cluster_survives_a_lost_node_and_retraces_itself_and_refuses_a_corrupt_shard(
    cluster, tmp_path
):
    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(documents(1500, seed=9)) + "\n")
    cfg = PrepareConfig(n_merges=200, n_ctx=64, val_fraction=0.1, shard_mb=1)
    m = prepare([str(src)], "s3://gpt1-test/ds", cfg, track=False, local=True)

    # A network slower than stated, and the user's word to train on anyway.
    slow_ok = ("--set", "network_gbps=1000", "--slow-network-ok")
    out = finish(pretrain(cluster, "s3://gpt1-test/ds", "whole", tmp_path, extra=slow_ok))
    assert f"done at step {STEPS}" in out and "bits per byte" in out
    # One copy on this machine, however many workers and nodes: the shards, the tokenizer, the
    # manifest last.
    staged = verification_cache() / cache_key("s3://gpt1-test/ds", m)
    assert json.loads((staged / "manifest.json").read_text()) == m
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == sorted(
        ["manifest.json", "tokenizer.json", *m["shards"]]
    )
    whole = losses(tmp_path, "whole")
    assert sorted(whole) == list(range(1, STEPS + 1))
    # Its two workers on two nodes: the network measured first, on one node then both (one rank
    # on the first node: nothing to time there), beside the figure stated.
    rows = [x.split() for x in out.splitlines() if re.match(r"network: +\d", x)]
    assert [(r[1], r[2], r[-1]) for r in rows] == [("1", "1", "-"), ("2", "2", "1000")], out[-3000:]
    busbw = metric(tmp_path, "whole", "network_busbw_gbps_2_nodes")
    assert busbw == pytest.approx(float(rows[1][6]), rel=0.01) and busbw > 0
    # MLflow's system metrics from both nodes of the run, each under its own name.
    for node in (0, 1):
        assert metric(tmp_path, "whole", f"system/node_{node}/cpu_utilization_percentage") >= 0

    run = pretrain(cluster, "s3://gpt1-test/ds", "lost", tmp_path)
    removed = remove_a_worker_node(cluster, "gpt1-test/runs/lost/checkpoint_000000020")
    out = finish(run)
    assert re.search(r"resuming at step \d+ of 60 on 2 worker\(s\)", out), out[-3000:]
    assert removed not in {n.node_id for n in cluster.worker_nodes}
    # Exact: the same losses, step by step, as the run that lost nothing.
    assert losses(tmp_path, "lost") == whole

    # Elastic workers (--workers 1-2): a node lost and none to replace it, the run goes on on the
    # one worker left (once Ray Train's start timeout ends its wait for the lost node's CPU; see
    # conftest's cluster), and retraces the same run up to the order of float sums.
    run = pretrain(cluster, "s3://gpt1-test/ds", "elastic", tmp_path, workers="1-2")
    remove_a_worker_node(cluster, "gpt1-test/runs/elastic/checkpoint_000000020", replace=False)
    out = finish(run)
    assert "on 1-2 CPU worker(s)" in out and re.search(r"resuming at step \d+ of 60 on 1 worker\(s\)", out), (
        out[-3000:]
    )
    elastic = losses(tmp_path, "elastic")
    assert sorted(elastic) == sorted(whole)
    # The batch's tokens a step stand; each worker's share of it follows the workers: 2 sequences
    # each on two, 4 on the one left, so throughput tracks the workers (on GPUs; here they share
    # two cores).
    assert set(losses(tmp_path, "elastic", "tokens_per_step").values()) == {4 * 64}
    shares = losses(tmp_path, "elastic", "worker_sequences")
    assert shares[min(shares)] == 2 and shares[STEPS] == 4, shares
    assert [elastic[s] for s in sorted(whole)] == pytest.approx([whole[s] for s in sorted(whole)], rel=1e-4)
    cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
    cluster.wait_for_nodes()

    # A spot node's notice (Ray's drain, reason PREEMPTION) at step 10 of a run whose only
    # scheduled checkpoint is its last: every rank checkpoints at the next step, the node goes,
    # and the run resumes from that step, and retraces the run that lost nothing.
    # (Its workers ask every 50 ms, not every second: this run's steps take milliseconds.)
    drain = ("--set", "checkpoint_every=1000", "--set", "preemption_poll_s=0.05")
    run = pretrain(cluster, "s3://gpt1-test/ds", "drained", tmp_path, extra=drain)
    drained = drain_a_worker_node(cluster, run[1], after=10)
    fs = pafs.FileSystem.from_uri("s3://gpt1-test")[0]
    deadline = time.time() + 300
    while not (
        saved := [
            i.base_name
            for i in fs.get_file_info(pafs.FileSelector("gpt1-test/runs/drained"))
            if i.base_name.startswith("checkpoint_")
        ]
    ):
        assert time.time() < deadline, run[1].read_text()[-3000:]
        time.sleep(0.05)
    step = int(saved[0].split("_")[1])
    assert 10 <= step < 60, saved  # a step after a poll (each 50 ms) saw it
    remove_a_worker_node(cluster, f"gpt1-test/runs/drained/{saved[0]}", victim=drained)
    out = finish(run)
    assert f"node {drained.node_id} will go (ray drain" in out and f"a checkpoint at step {step}" in out, out[
        -3000:
    ]
    assert f"resuming at step {step} of 60" in out, out[-3000:]
    assert losses(tmp_path, "drained") == whole
    assert metric(tmp_path, "drained", "preemption_checkpoint_step") == step

    # The same dataset with one shard altered on S3, at the same length (so no listing can tell):
    # caught while staging, one line, exit 2.
    fs = pafs.FileSystem.from_uri("s3://gpt1-test")[0]
    name = sorted(m["shards"])[0]
    for f in ("manifest.json", "tokenizer.json", *m["shards"]):
        data = fs.open_input_stream(f"gpt1-test/ds/{f}").read()
        if f == name:
            data = data[:100] + bytes(10) + data[110:]
        with fs.open_output_stream(f"gpt1-test/bad/{f}") as out:
            out.write(data)
    err = finish(pretrain(cluster, "s3://gpt1-test/bad", "bad", tmp_path), returncode=2)
    lines = [x for x in err.splitlines() if x.startswith("gpt1 pretrain: ")]
    assert len(lines) == 1 and f"s3://gpt1-test/bad/{name}: sha256 differs" in lines[0], err[-3000:]
    # Ray's own placement-group cleanup may print a traceback as the job ends (its cleaner actor
    # timing out): not ours. No other traceback.
    blocks = err.split("Traceback (most recent call last):")[1:]
    assert not [
        b
        for b in blocks
        if "placement_group" not in b[:600].lower() and "placementgroup" not in b[:600].lower()
    ], err


def test_the_preflight_measures_the_network_and_a_run_on_a_slow_one_refuses_in_one_line(cluster, tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(documents(300, seed=3)) + "\n")
    data = str(tmp_path / "ds")
    prepare(
        [str(src)], data, PrepareConfig(n_merges=100, n_ctx=64, val_fraction=0.1), track=False, local=True
    )
    # gloo between two processes of one machine is nowhere near 1,000 GB/s: a quarter of it refuses.
    fast = ("--set", "network_gbps=1000")
    out = finish(pretrain(cluster, data, "pre", tmp_path, extra=("--preflight", *fast)), returncode=2)
    lines = [x for x in out.splitlines() if x.startswith("gpt1 pretrain: ")]
    assert len(lines) == 1 and "network: an all-reduce across 2 nodes measured" in lines[0], out[-3000:]
    assert "under a quarter of the 1000 GB/s" in lines[0] and "--slow-network-ok" in lines[0]
    assert "Traceback" not in out
    # The table first: the figure beside the plan's.
    rows = [x.split() for x in out.splitlines() if re.match(r"network: +\d", x)]
    assert [(r[1], r[-1]) for r in rows] == [("1", "-"), ("2", "1000")], out[-3000:]

    # Recorded in MLflow, refused or not.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gpt1-pretrain")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.preflight_of = 'pre'")
    assert run.data.metrics["network_busbw_gbps_planned"] == 1000
    assert run.data.metrics["network_busbw_gbps_2_nodes"] == pytest.approx(float(rows[1][6]), rel=0.01)

    # The run itself measures it before its first step, and refuses the same way.
    out = finish(pretrain(cluster, data, "slow", tmp_path, extra=fast), returncode=2)
    lines = [x for x in out.splitlines() if x.startswith("gpt1 pretrain: ")]
    assert len(lines) == 1 and "under a quarter of the 1000 GB/s" in lines[0], out[-3000:]
    assert not losses(tmp_path, "slow")  # not one step
