"""A sweep whose driver is killed (kill -9) resumes when the same command runs again: Tune's own
experiment restore, one parent run, the trials that ended not run again, and no run left RUNNING."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # a cluster, an S3 server or a Ray job: minutes

ROOT = Path(__file__).resolve().parent.parent

SPACE = """
lr: {loguniform: [1.0e-3, 3.0e-3]}
lm_coef: 0.5
batch_size: 16
epochs: 2
max_train: 48
"""


def test_a_killed_sweep_resumes_with_one_parent_and_no_trial_run_twice(task_checkpoint, sst2, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONPATH": str(ROOT),
    }
    cmd = [
        sys.executable,
        "-m",
        "gpt1.cli",
        "sweep",
        "--task",
        "sst-2",
        "--data",
        str(sst2),
        "--checkpoint",
        str(task_checkpoint),
        "--samples",
        "4",
        "--max-concurrent",
        "1",
        "--space",
        str(tmp_path / "space.yaml"),
        "--storage",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
    ]
    client = MlflowClient(uri)

    def runs():
        exp = client.get_experiment_by_name("gpt1-finetune-sst-2")
        return client.search_runs([exp.experiment_id]) if exp else []

    def children(status):
        return [r for r in runs() if "mlflow.parentRunId" in r.data.tags and r.info.status == status]

    first = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while len(children("FINISHED")) < 1 or not children("RUNNING"):  # one trial done, the next under way
        assert first.poll() is None and time.time() < deadline, "the sweep ended before it could be killed"
        time.sleep(1)
    os.kill(first.pid, signal.SIGKILL)  # the driver alone, as kill -9 does
    first.wait()
    done_before = {r.data.tags["trial_id"] for r in children("FINISHED")}

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(resumed)" in again.stdout and "resuming Tune's experiment" in again.stdout, again.stdout[-2000:]
    parents = [r for r in runs() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r for r in runs() if r.info.status == "RUNNING"]
    finished = children("FINISHED")
    trial_ids = [r.data.tags["trial_id"] for r in finished]
    assert len(trial_ids) == 4 == len(set(trial_ids)) and done_before <= set(trial_ids)
    assert children("KILLED")  # the trial the kill cut off, marked so and run again in a new run
    # The one sweep's table names the four trials, each with its finished run, and the best
    # trial's run is one of them.
    import csv

    table = client.download_artifacts(parents[0].info.run_id, "results.csv", str(tmp_path))
    with open(table) as f:
        listed = list(csv.DictReader(f))
    assert sorted(r["trial"] for r in listed) == sorted(trial_ids)
    assert {r["run_id"] for r in listed} == {r.info.run_id for r in finished}
    assert parents[0].data.tags["best_trial_run_id"] in {r.info.run_id for r in finished}
