"""gpt1 demo at the ci size (with its LSTM row): prepare -> pretrain -> sweep on the built-in data, the MLflow runs it
leaves, and a second run that reuses every stage."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gpt1 import world
from pipeline.data.tasks import from_directory

ROOT = Path(__file__).resolve().parent.parent


def gpt1_demo(cwd: Path, *args: str) -> str:
    """`gpt1 demo ...` as a user runs it: its own process, its own local Ray instance, MLflow's
    own store (WORKDIR/mlflow.db). Returns its console (stdout, then stderr); fails the test on a
    non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run(
        [sys.executable, "-m", "gpt1.cli", "demo", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def pretrain_checkpoint(work: Path) -> str:
    return json.loads((work / "demo" / "stages.json").read_text())["pretrain"]["result"]["checkpoint"]


def test_builtin_tasks_train_and_dev_use_disjoint_words(tmp_path):
    """The dev split's members (and adjectives) never occur in training: only pretraining can
    tell the model about them."""
    for name, (transformation, *_rest) in world.TASKS.items():
        d = world.write_task(name, tmp_path / name, 100, 50)
        task = from_directory(name, d)
        assert task.transformation == transformation
        train, dev = task.load(d, "train"), task.load(d, "dev")
        assert len(train) == 100 and len(dev) == 50
        words = [
            {w for e in split for t in (*e.text, *e.choices) for w in t.split()} for split in (train, dev)
        ]
        pool = world.MOOD if name == "sentiment" else world.KINDS
        things = {m for members, _ in pool.values() for m in members}
        seen_train, seen_dev = words[0] & things, words[1] & things
        assert seen_train and seen_dev and not seen_train & seen_dev
        assert max(Counter(e.label for e in train).values()) < 0.8 * len(train)  # no degenerate labels
    corpus = " ".join(world.corpus(300))
    assert all(m in corpus for members, _ in world.KINDS.values() for m in members)


@pytest.mark.slow
def test_demo_runs_every_stage_and_reuses_them(tmp_path):
    out = gpt1_demo(tmp_path, "--size", "ci", "--lstm")
    client = MlflowClient(f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}")  # its own store
    assert not (tmp_path / "mlflow.db").exists()
    # The console is the project's own lines; Ray's (Tune's tables, Data's progress, the workers'
    # reports) are in the log file it names.
    assert "Traceback" not in out and len(out.splitlines()) < 150, out
    (log,) = (tmp_path / "demo" / "logs").glob("demo-*.log")
    assert f"the whole output, Ray's included: {log}" in out
    assert "Trial status:" not in out and "INFO streaming_executor" in log.read_text()

    def runs(exp):
        e = client.get_experiment_by_name(exp)
        return client.search_runs([e.experiment_id]) if e else []

    assert len(runs("gpt1-prepare")) == 1
    # Both networks pretrained on the same data: the Transformer, and the LSTM of Table 5's last row.
    by_arch = {r.data.params["model_config.arch"]: r for r in runs("gpt1-pretrain")}
    assert sorted(by_arch) == ["lstm", "transformer"] and len(runs("gpt1-pretrain")) == 2
    pretrain = by_arch["transformer"]
    assert pretrain.data.tags["prepare_run_id"] == runs("gpt1-prepare")[0].info.run_id
    assert client.get_metric_history(pretrain.info.run_id, "loss")
    table = {}
    for name in world.TASKS:
        rs = runs(f"gpt1-finetune-{name}")
        (parent,) = [r for r in rs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in rs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 6 and len(rs) == 7  # 2 trials (λ 0 and 0.5) + 4 ablation rows, LSTM's too
        assert sorted(
            float(c.data.params["lm_coef"]) for c in children if c.data.params["ablation"] == "search"
        )[:2] == [0.0, 0.5]
        assert parent.data.tags["pretrain_run_id"] == pretrain.info.run_id
        arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"results.csv", "metric_vs_lambda_and_lr.png", "ablations.md", "best_config.json"} <= arts
        assert client.search_model_versions(f"name='gpt1-{name}'")
        table[name] = parent.data.metrics
        assert f"| {name} | {world.TASKS[name][0]} |" in out
        # The report's other tasks: ours beside nothing of the paper's, the LSTM row among them.
        lstm = 100 * parent.data.metrics["ablation_lstm_accuracy"]
        assert f"| {name} | accuracy |" in out and f"{lstm:.1f} |" in out
    # The last lines: the venv's own mlflow and gpt1 (not on PATH here), each experiment's runs
    # view, where the models are.
    venv = Path(sys.executable).parent
    assert f"{venv / 'mlflow'} ui --backend-store-uri sqlite:///" in out
    for name in ("gpt1-pretrain", *(f"gpt1-finetune-{n}" for n in world.TASKS)):
        exp_id = client.get_experiment_by_name(name).experiment_id
        assert f"http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning   {name}" in out
    assert f"pretrained: {pretrain_checkpoint(tmp_path)}" in out
    assert all(f"fine-tuned on {n}: models:/gpt1-{n}/1" in out for n in world.TASKS)
    assert f"{venv / 'gpt1'} generate --checkpoint" in out
    # With --lstm, only the spread over seeds is left out, and the ending names its option.
    assert "Left out to save time: each row's spread over seeds (--seeds 2)." in out
    assert (
        "| task | transformation | metric | best trial | its λ | no pretraining | full (λ 0.5) | λ = 0 | LSTM |"
        in out
    )
    held_out = tmp_path / "demo" / "builtin" / "held-out.txt"
    assert (
        f"--corpus {held_out}" in out
        and held_out.read_text() not in (tmp_path / "demo" / "builtin" / "corpus.txt").read_text()
    )

    # Again: every stage is recognised by its inputs and reused; no new runs.
    again = gpt1_demo(tmp_path, "--size", "ci", "--lstm")
    assert "pretrain the Transformer: reusing" in again and "pretrain the LSTM: reusing" in again
    assert again.count("reusing MLflow run") == len(world.TASKS)
    assert "up to date" in again
    assert len(runs("gpt1-pretrain")) == 2 and len(runs("gpt1-prepare")) == 1
    assert all(len(runs(f"gpt1-finetune-{n}")) == 7 for n in world.TASKS)


def test_demo_refuses_bad_arguments_before_any_work(tmp_path, capsys):
    from gpt1.demo import main

    work = tmp_path / "w"
    assert main(["--workdir", str(work), "--task", "sst-2"]) == 2
    assert "--task 'sst-2': expected NAME=PATH" in capsys.readouterr().err
    assert main(["--workdir", str(work), "--task", f"sst-2={tmp_path / 'nope'}"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "corpus.txt").write_text("some text\n")
    assert (
        main(
            [
                "--workdir",
                str(work),
                "--corpus",
                str(tmp_path / "corpus.txt"),
                "--task",
                f"mine={tmp_path / 'mine'}",
            ]
        )
        == 2
    )
    assert "unknown task 'mine'" in capsys.readouterr().err
    assert main(["--workdir", str(work), "--task", f"sst-2={tmp_path / 'mine'}"]) == 2
    assert "--corpus and --task go together" in capsys.readouterr().err
    assert not work.exists()  # nothing written
