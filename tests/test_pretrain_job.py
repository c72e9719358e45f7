"""`ray job submit ... -- python pipeline/pretrain.py` against a head started by `ray start --head`,
as the README tells users to run it (token authentication on, RAY_AUTH_MODE=token)."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from corpus_gen import documents

pytestmark = pytest.mark.slow  # a cluster, an S3 server or a Ray job: minutes

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """n distinct free ports: each socket is held until all are chosen, so that the kernel never
    hands the same port out twice (two equal ports make `ray start` refuse to start)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


@pytest.fixture
def head(tmp_path):
    """A Ray head of its own (not the tests' shared instance), stopped with its processes."""
    port, dash, agent, client = free_ports(4)
    # Its own temp dir (short: it holds Unix sockets), so that the address file `ray start`
    # leaves behind does not send later ray.init() calls on this machine to a dead head.
    temp = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    # The job's `python` is the head's: this interpreter's environment.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", dash), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(1)
    yield address, env, port
    # The head's processes share ray start's session: all of them go at once (a graceful stop
    # takes half a minute, and nothing of this head is used again).
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_to_a_local_head(head, tmp_path):
    from mlflow.tracking import MlflowClient

    address, env, _ = head
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(documents(600, seed=5)) + "\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Ray 2.60's `ray start --head` requires a token; clients say they have one.
    env = {**env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": address}

    def submit(*args: str) -> subprocess.CompletedProcess:
        # A head just started may not have its job agent up yet ("No available agent to submit
        # job, please try again later"): Ray's own advice, taken a few times.
        for _ in range(12):
            done = submit_once(*args)
            if done.returncode == 0 or "No available agent" not in done.stderr:
                return done
            time.sleep(5)
        return done

    def submit_once(*args: str) -> subprocess.CompletedProcess:
        runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri}})
        return subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                str(ROOT),
                "--runtime-env-json",
                runtime_env,
                "--",
                "python",
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    prep = submit(
        "pipeline/prepare.py",
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "data"),
        "--set",
        "n_merges=200",
        "--set",
        "n_ctx=64",
        "--set",
        "val_fraction=0.1",
    )
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    job = submit(
        "pipeline/pretrain.py",
        "--config",
        "tiny",
        "--data",
        str(tmp_path / "data"),
        "--workers",
        "2",
        "--name",
        "job",
        "--storage",
        str(tmp_path / "runs"),
        "--set",
        "max_steps=20",
        "--set",
        "batch_size=4",
        "--set",
        "checkpoint_every=10",
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "run job done at step 20" in job.stdout
    assert (tmp_path / "runs" / "job" / "checkpoint_000000020" / "model.safetensors").exists()

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gpt1-pretrain")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert "prepare_run_id" in run.data.tags  # lineage to the prepare job's run
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 20 // 5


def test_joining_a_token_cluster_without_ray_auth_mode_is_one_line(head, tmp_path):
    _, env, gcs_port = head
    env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    (tmp_path / "c.txt").write_text("\n\n".join(documents(20, seed=1)) + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt1.cli",
            "prepare",
            "--corpus",
            str(tmp_path / "c.txt"),
            "--out",
            str(tmp_path / "ds"),
            "--no-mlflow",
        ],
        env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    mine = [line for line in out.stderr.splitlines() if line.startswith("gpt1 prepare:")]
    assert len(mine) == 1 and "RAY_AUTH_MODE=token" in mine[0] and "Traceback" not in out.stderr, out.stderr[
        -2000:
    ]
    assert not (tmp_path / "ds").exists()
