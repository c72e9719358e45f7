"""A sweep on an autoscaling cluster with no worker node up (Ray's fake multi-node provider, a head
that takes no work): every trial is started at once with the resources it declares, so the
pending ones ask the autoscaler for nodes, and it adds them (tuning/search.py, trials_at_once)."""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_pretrain_job import free_ports
from test_runbook import BIN, ROOT, fake_cluster_config, start, stop, wait_listening

pytestmark = pytest.mark.slow  # a simulated cluster whose nodes start as the trials ask


def worker_nodes(address: str, env: dict) -> int:
    """The nodes `ray status` counts active, but the head (which takes no work here)."""
    out = subprocess.run(
        [str(BIN / "ray"), "status", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    active = out.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in out else ""
    return sum(int(n) for n, kind in re.findall(r"(\d+) (\S+)", active) if kind != "ray.head.default")


def test_a_sweep_on_a_cluster_with_no_worker_node_up_asks_the_autoscaler_for_its_trials(
    tmp_path, task_checkpoint
):
    from corpus_gen import write_sst2
    from ray._private.services import get_node_ip_address

    (tmp_path / "SST-2").mkdir()
    write_sst2(tmp_path / "SST-2", n_train=60, n_dev=30, n_test=5)
    port, dash, client, agent = free_ports(4)
    address = f"{get_node_ip_address()}:{port}"
    config = fake_cluster_config(address)
    # One kind of node, a 1-CPU stand-in, none up: each trial needs a node of its own.
    config["available_node_types"] = {
        "ray.head.default": config["available_node_types"]["ray.head.default"],
        "cpu-1": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 3},
    }
    (tmp_path / "autoscaling.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "RAY_AUTH_MODE": "token"})
    head_env = {
        **env,
        "RAY_FAKE_CLUSTER": "1",
        "PYTHONPATH": str(Path(__file__).parent),  # where the monitor finds own_disk_nodes
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    temp = tempfile.mkdtemp(prefix="raysw-", dir="/tmp")  # short: it holds Unix sockets
    head = start(
        [
            str(BIN / "ray"),
            *("start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}"),
            *(f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}"),
            *("--num-cpus=0", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}"),
            f"--autoscaling-config={tmp_path / 'autoscaling.yaml'}",
        ],
        head_env,
        tmp_path / "head.log",
    )
    try:
        wait_listening(dash, head, "the Ray head's dashboard")
        assert worker_nodes(address, env) == 0
        argv = [
            sys.executable,
            "-m",
            "gpt1.cli",
            "sweep",
            "--task",
            "sst-2",
            "--data",
            str(tmp_path / "SST-2"),
        ]
        argv += ["--checkpoint", str(task_checkpoint), "--samples", "3", "--cpus-per-trial", "1"]
        argv += [
            "--device",
            "cpu",
            "--set",
            "epochs=1",
            "--set",
            "batch_size=8",
            "--storage",
            str(tmp_path / "runs"),
        ]
        t0 = time.time()
        out = subprocess.run(
            argv, cwd=ROOT, env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        # All three trials at once, though no node was up to hold them: the autoscaler was asked.
        assert "1 task(s) in one Tune run: 3 trial(s) at a time, each with {'CPU': 1.0}" in out.stdout, (
            out.stdout
        )
        nodes = worker_nodes(address, env)  # still up: the idle timeout is minutes
        assert nodes >= 2, (nodes, time.time() - t0, out.stdout[-2000:])
    finally:
        stop(head)  # and the nodes the autoscaler started: its process group
