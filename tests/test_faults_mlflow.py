"""An MLflow server lost while a run logs to it: rank 0's logger queues the metrics instead of
stalling the training step, and sends them once the server is back (pipeline/tracking.py,
RunLogger with background=True). A real `mlflow server`, stopped and started again on its port."""

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
