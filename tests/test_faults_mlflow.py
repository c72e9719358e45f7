"""An MLflow server lost while a run logs to it: rank 0's logger queues the metrics instead of
stalling the training step, and sends them once the server is back (pipeline/tracking.py,
RunLogger with background=True). A real `mlflow server`, stopped and started again on its port."""

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_pretrain_job import free_port
from test_runbook import wait_listening

from pipeline.tracking import RunLogger

pytestmark = pytest.mark.slow  # a server started twice: seconds each

BIN = Path(sys.executable).parent


def server(port: int, tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            *("server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
            *("--default-artifact-root", str(tmp_path / "artifacts")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_listening(port, proc, "mlflow server")
    return proc


def stop(proc: subprocess.Popen) -> None:
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):  # stopped already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_metrics_logged_while_the_server_is_down_arrive_once_it_is_back(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    # The client's own retries, short, and the logger's: what is tested here is the queue.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setattr(RunLogger, "RETRY_MAX_S", 1.0)
    monkeypatch.setattr(RunLogger, "BACKLOG", 4)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = server(port, tmp_path)
    try:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        logger = RunLogger(uri, run_id, background=True)
        logger.log({"loss": 9.0}, 0)
        assert logger.flush(timeout=60)
    finally:
        stop(proc)
    # The server gone: every log returns at once, its batch queued; past 4, the oldest dropped.
    for step in range(1, 7):
        logger.log({"loss": 9.0 - step}, step)
    assert logger.pending() == 4
    assert not logger.flush(timeout=2)  # nobody to send them to
    proc = server(port, tmp_path)
    try:
        assert logger.flush(timeout=120)
        client = MlflowClient(uri)
        history = client.get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, 9.0 - s) for s in (0, 3, 4, 5, 6)]
        assert client.get_run(run_id).data.metrics["mlflow_dropped_batches"] == 2
    finally:
        stop(proc)


def test_a_pretraining_run_trains_on_through_an_mlflow_outage_and_its_metrics_arrive(tmp_path):
    """The server killed mid-run and started again later: the steps go on meanwhile, the run
    ends well, and MLflow holds every step's loss."""
    import os
    import time

    from corpus_gen import documents
    from mlflow.tracking import MlflowClient

    from pipeline.data.prepare import PrepareConfig, prepare

    src = tmp_path / "c.txt"
    src.write_text("\n\n".join(documents(600, seed=5)) + "\n")
    prepare([str(src)], tmp_path / "ds", PrepareConfig(n_merges=100, n_ctx=64), track=False, local=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        # Fail fast while the server is down: the logger's own queue and retries are under test.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    env.pop("RAY_ADDRESS", None)
    steps = 300
    sets = [f"max_steps={steps}", "batch_size=4", "log_every=1", "eval_every=0", "checkpoint_every=1000"]
    log = tmp_path / "run.log"

    def logged_step() -> int:
        found = re.findall(r"^step (\d[\d,]*)/", log.read_text(), re.M)
        return int(found[-1].replace(",", "")) if found else 0

    def until(cond, what: str, seconds: float = 300) -> None:
        deadline = time.time() + seconds
        while not cond():
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, f"{what}: {log.read_text()[-3000:]}"
            time.sleep(0.2)

    proc = server(port, tmp_path)
    with open(log, "w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "gpt1.cli", "pretrain", "--config", "tiny", "--data", str(tmp_path / "ds")]
            + ["--storage", str(tmp_path / "runs"), "--name", "outage", "--workers", "1"]
            + [a for s in sets for a in ("--set", s)],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        until(lambda: logged_step() >= 20, "the first 20 steps")
        stop(proc)
        down = logged_step()
        # Training goes on with MLflow gone: 40 more steps (a few seconds), not a stall.
        until(lambda: logged_step() >= down + 40, "40 steps with the server down", seconds=120)
        proc = server(port, tmp_path)
        assert run.wait(timeout=600) == 0, log.read_text()[-3000:]
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("gpt1-pretrain")
        (r,) = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'outage'")
        history = client.get_metric_history(r.info.run_id, "loss")
        assert sorted({m.step for m in history}) == list(range(1, steps + 1))
        assert r.info.status == "FINISHED" and "mlflow_dropped_batches" not in r.data.metrics
    finally:
        if run.poll() is None:
            run.kill()
        stop(proc)
