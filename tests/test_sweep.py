"""Ray Tune sweeps: a parent run per task with nested trial runs, table, plot, the best model
registered, the ablation rows, lineage tags; bad input refused before any trial starts."""

import csv
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from gpt1.cli import main as cli
from model import GPT, GPTConfig
from pipeline.data.tokenizer import train_tokenizer
from pipeline.files import sha256_file
from tuning.search import main

SPACE = """
lr: {loguniform: [1.0e-3, 3.0e-3]}
lm_coef: {choice: [0.0, 0.5]}
batch_size: 32
epochs: 3
warmup: 0.05
"""


@pytest.mark.slow
def test_sweep_logs_parent_and_trials_and_registers_the_best(
    task_checkpoint, lstm_checkpoint, sst2, tmp_path, mlflow_uri, ray_session, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(mlflow_uri)
    # The pretrain run that wrote the checkpoint, as pretrain tags it: by the run's directory.
    pretrain = client.create_run(
        client.create_experiment("gpt1-pretrain"), tags={"run_path": str(task_checkpoint.parent)}
    )
    (tmp_path / "space.yaml").write_text(SPACE)
    code = main(
        [
            "--task",
            "sst-2",
            "--data",
            str(sst2),
            "--checkpoint",
            str(task_checkpoint),
            "--samples",
            "2",
            "--space",
            str(tmp_path / "space.yaml"),
            "--ablations",
            "--seeds",
            "2",
            "--lstm-checkpoint",
            str(lstm_checkpoint),
            "--storage",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0

    exp = client.get_experiment_by_name("gpt1-finetune-sst-2")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 10 and len(runs) == 11  # 2 trials + 4 ablation rows x 2 seeds; no stray runs
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    # Runs named as the table reads: by what the trials vary, and by ablation row and seed.
    names = sorted(c.data.tags["mlflow.runName"] for c in children)
    assert names[:8] == [
        f"ablation: {a} (seed {k})" for a in ("full", "lstm", "no_aux_lm", "no_pretraining") for k in (0, 1)
    ]
    for c in children:
        ablation = c.data.params["ablation"]  # every run has one, for Compare's plots
        assert c.data.tags["row"] == (f"ablation: {ablation}" if ablation != "search" else "trial")
        if ablation == "search":
            lr, lam = float(c.data.params["lr"]), float(c.data.params["lm_coef"])
            assert c.data.tags["mlflow.runName"] == f"lr={lr:.2g} λ={lam:.2g}"

    # Lineage on every run: the pretrain run, the checkpoint's and the data files' sha256.
    # The lstm row's runs name the LSTM checkpoint instead.
    for r in runs:
        lstm_row = r.data.params.get("ablation") == "lstm"
        assert r.data.tags.get("pretrain_run_id") == (None if lstm_row else pretrain.info.run_id)
        ckpt = lstm_checkpoint if lstm_row else task_checkpoint
        assert r.data.tags["checkpoint_sha256"] == sha256_file(ckpt / "model.safetensors")
        assert r.data.tags["data_sha256.train"] == sha256_file(sst2 / "train.tsv")
        assert r.data.tags["data_sha256.dev"] == sha256_file(sst2 / "dev.tsv")

    # Each trial: its config as params, one metric point per evaluation (an epoch: 13 steps).
    best_of = {}
    for c in children:
        assert 1e-3 <= float(c.data.params["lr"]) <= 3e-3 and c.data.params["batch_size"] == "32"
        history = client.get_metric_history(c.info.run_id, "accuracy")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) and set(steps) <= {13, 26, 39} and steps[0] == 13
        best_of[c.info.run_id] = max(m.value for m in history)
        # Compare shows the best evaluation (what the tables report) beside the last one.
        best = max(history, key=lambda m: (m.value, -m.step))
        assert c.data.metrics["best_accuracy"] == best.value and c.data.metrics["best_step"] == best.step

    # The results table names each trial's run and its best evaluation.
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {
        "results.csv",
        "results.md",
        "metric_vs_lambda_and_lr.png",
        "parallel_lr_lambda_metric.png",
        "best_config.json",
        "ablations.csv",
        "ablations.md",
    } <= arts
    d = client.download_artifacts(parent.info.run_id, "", str(tmp_path / "parent"))
    rows = list(csv.DictReader(Path(f"{d}/results.csv").read_text().splitlines()))
    assert len(rows) == 2
    for row in rows:
        assert float(row["accuracy"]) == pytest.approx(best_of[row["run_id"]])
        assert row["lm_coef"] in ("0.0", "0.5")
    assert Path(f"{d}/metric_vs_lambda_and_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| trial |" in Path(f"{d}/results.md").read_text()

    # The ablation rows at the best settings: full (λ 0.5), no auxiliary LM (λ 0), and no
    # pretraining at the best trial's own λ.
    every_seed = list(csv.DictReader(Path(f"{d}/ablations.csv").read_text().splitlines()))
    assert sorted((r["ablation"], r["seed"]) for r in every_seed) == [
        (a, k) for a in ("full", "lstm", "no_aux_lm", "no_pretraining") for k in ("0", "1")
    ]
    ablations = {r["ablation"]: r for r in every_seed if r["seed"] == "0"}
    assert set(ablations) == {"full", "lstm", "no_aux_lm", "no_pretraining"}
    best_config = json.loads(Path(f"{d}/best_config.json").read_text())
    assert [float(ablations[a]["lm_coef"]) for a in ("full", "lstm", "no_aux_lm", "no_pretraining")] == [
        0.5,
        0.5,
        0.0,
        best_config["lm_coef"],
    ]
    assert all(float(ablations[a]["lr"]) == pytest.approx(best_config["lr"]) for a in ablations)
    # The parent's row carries its trials' columns, with the best trial's values; the closing
    # lines link the trials and the chart of the metric over λ and lr, in the training view.
    assert parent.data.params["lr"] == str(best_config["lr"]) and parent.data.params["lm_coef"] == str(
        best_config["lm_coef"]
    )
    searched = max(best_of[c.info.run_id] for c in children if c.data.params["ablation"] == "search")
    assert parent.data.metrics["accuracy"] == searched and parent.data.tags["row"] == "best of the sweep"
    out = capsys.readouterr().out
    chart = f"/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifactPath/metric_vs_lambda_and_lr.png?workflowType=machine_learning"
    assert f"sst-2: dev accuracy over λ and lr http://127.0.0.1:5000{chart}" in out, out[-2000:]
    parallel = chart.replace("metric_vs_lambda_and_lr.png", "parallel_lr_lambda_metric.png")
    assert f"sst-2: lr, λ and dev accuracy, trial by trial http://127.0.0.1:5000{parallel}" in out
    assert f"sst-2: its trials http://127.0.0.1:5000/#/experiments/{exp.experiment_id}?workflowType=" in out
    # Mean ± std over the seeds, in the summary table and the parent's metrics.
    summary = {
        r["ablation"]: r for r in csv.DictReader(Path(f"{d}/ablations_summary.csv").read_text().splitlines())
    }
    for a in ablations:
        values = [float(r["accuracy"]) for r in every_seed if r["ablation"] == a]
        assert parent.data.metrics[f"ablation_{a}_accuracy"] == pytest.approx(sum(values) / 2)
        assert parent.data.metrics[f"ablation_{a}_accuracy_std"] == pytest.approx(
            abs(values[0] - values[1]) / 2**0.5
        )
        assert summary[a]["seeds"] == "2" and " ± " in summary[a]["accuracy"]

    # The best trial's best model is registered as gpt1-sst-2 and loads as a model directory.
    versions = client.search_model_versions("name='gpt1-sst-2'")
    assert len(versions) == 1
    best_run = parent.data.tags["best_trial_run_id"]
    assert versions[0].run_id == best_run
    assert parent.data.metrics["best_accuracy"] == pytest.approx(max(best_of[r["run_id"]] for r in rows))
    assert best_of[best_run] == pytest.approx(parent.data.metrics["best_accuracy"])
    m = client.download_artifacts(best_run, "model", str(tmp_path / "best"))
    assert GPT.from_pretrained(m).config.n_layer == 2
    assert json.loads(Path(f"{m}/task.json").read_text())["task"] == "sst-2"
    # Evaluating the registered model finds its trial and, through it, the pretrain run.
    (tmp_path / "text.txt").write_text("the film was good and the music was fine\n\nthe plot was thin\n")
    assert cli(["evaluate", "--checkpoint", m, "--corpus", str(tmp_path / "text.txt")]) == 0
    (ev,) = client.search_runs([client.get_experiment_by_name("gpt1-evaluate").experiment_id])
    assert (
        ev.data.tags["finetune_run_id"] == best_run
        and ev.data.tags["pretrain_run_id"] == pretrain.info.run_id
    )
    # gpt1 report reads this sweep: Table 5's rows for SST-2, the LSTM's among them, beside the paper's.
    assert cli(["report", "--no-mlflow", "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    for row, name, theirs in (
        ("full", "Transformer w/ aux LM (full)", 91.3),
        ("lstm", "LSTM w/ aux LM", 90.5),
    ):
        ours = 100 * parent.data.metrics[f"ablation_{row}_accuracy"]
        assert f"| {name} | {ours:.1f} \\| {theirs} (1 of 8 tasks" in text, row


def test_bad_input_is_refused_before_any_trial(
    task_checkpoint, sst2, tmp_path, mlflow_uri, ray_session, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = ["--task", "sst-2", "--checkpoint", str(task_checkpoint), "--storage", str(tmp_path / "runs")]
    # A missing split file.
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "train.tsv").write_text((sst2 / "train.tsv").read_text())
    assert main(args + ["--data", str(tmp_path / "task")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dev.tsv: no such file" in err[0]
    # A bad row in it: the file and line are named.
    (tmp_path / "task" / "dev.tsv").write_text("sentence\tlabel\nfine words\t1\nmore words\t7\n")
    assert main(args + ["--data", str(tmp_path / "task")]) == 2
    assert f"{tmp_path / 'task' / 'dev.tsv'}:3: label '7' is not one of 0, 1" in capsys.readouterr().err
    # A search space with an unknown key, or a bad value.
    assert main(args + ["--data", str(sst2), "--set", "lrr=1"]) == 2
    assert "unknown key 'lrr'; valid keys are lr," in capsys.readouterr().err
    (tmp_path / "space.yaml").write_text("lr: {loguniform: [1.0e-4]}\n")
    assert main(args + ["--data", str(sst2), "--space", str(tmp_path / "space.yaml")]) == 2
    assert "lr: loguniform takes [low, high]" in capsys.readouterr().err
    # A checkpoint smaller than its tokenizer's own vocabulary (not theirs: the special tokens'
    # rows are what fine-tuning adds).
    small = tmp_path / "small"
    tok = train_tokenizer(["some words here"], n_merges=5)
    torch.manual_seed(0)
    GPT(GPTConfig.preset("tiny", vocab_size=tok.get_vocab_size() - 6)).save_pretrained(small)
    tok.save(str(small / "tokenizer.json"))
    assert main(["--task", "sst-2", "--checkpoint", str(small), "--data", str(sst2)]) == 2
    assert "but the model only" in capsys.readouterr().err
    # --task glue over a directory without any GLUE task directory.
    assert (
        main(["--task", "glue", "--checkpoint", str(task_checkpoint), "--data", str(tmp_path / "task")]) == 2
    )
    assert "holds none of the GLUE task directories (CoLA, SST-2," in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert MlflowClient(mlflow_uri).get_experiment_by_name("gpt1-finetune-sst-2") is None


def hf_gpt1(d, vocab_dir):
    """A directory as transformers writes the released GPT-1 (random weights, small network):
    OpenAIGPTLMHeadModel.save_pretrained and OpenAIGPTTokenizer.save_pretrained, with the
    vocabulary's rows only (no special tokens)."""
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel, OpenAIGPTTokenizer

    tok = OpenAIGPTTokenizer(
        vocab=str(vocab_dir / "encoder_bpe_40000.json"), merges=str(vocab_dir / "vocab_40000.bpe")
    )
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(
        OpenAIGPTConfig(vocab_size=len(tok.get_vocab()), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    )
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.slow
def test_the_released_model_in_hugging_face_layout_fine_tunes_and_sweeps(
    sst2, tmp_path, mlflow_uri, ray_session, monkeypatch
):
    """The released GPT-1 as Hugging Face publishes it (the real 40,478-entry vocabulary where
    ../shared/data has it, else a small one in the released format): `gpt1 finetune` and
    `gpt1 sweep` take it as it is, adding the three special tokens' rows."""
    from pathlib import Path

    from corpus_gen import released_vocabulary

    from pipeline.data.tokenizer import RESERVED_TOKENS, load_tokenizer
    from tuning.finetune_cli import main as finetune_main

    monkeypatch.chdir(tmp_path)
    vocab_dir = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gpt1-vocab"
    if not vocab_dir.exists():
        vocab_dir = released_vocabulary(tmp_path / "release")
    ckpt = hf_gpt1(tmp_path / "openai-gpt", vocab_dir)
    n_vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    # gpt1 export keeps the released encoder's way of reading text, not Hugging Face's file.
    from gpt1.cli import main as gpt1
    from pipeline.data.tokenizer import is_gpt1_encoder

    assert gpt1(["export", str(ckpt), str(tmp_path / "native")]) == 0
    assert is_gpt1_encoder(load_tokenizer(tmp_path / "native")) and is_gpt1_encoder(load_tokenizer(ckpt))
    out = tmp_path / "ft"
    assert (
        finetune_main(
            [
                "--task",
                "sst-2",
                "--data",
                str(sst2),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--set",
                "max_steps=4",
                "--set",
                "batch_size=8",
            ]
        )
        == 0
    )
    tuned = GPT.from_pretrained(out)
    # The released code's three rows (_start_, _delimiter_, _classify_: ids n_vocab .. n_vocab + 2).
    assert tuned.config.vocab_size == n_vocab + 3
    assert [load_tokenizer(out).token_to_id(t) for t in RESERVED_TOKENS[:3]] == [
        n_vocab,
        n_vocab + 1,
        n_vocab + 2,
    ]
    (tmp_path / "space.yaml").write_text("lr: 1.0e-3\nbatch_size: 16\nmax_steps: 4\n")
    assert (
        main(
            [
                "--task",
                "sst-2",
                "--data",
                str(sst2),
                "--checkpoint",
                str(ckpt),
                "--samples",
                "1",
                "--space",
                str(tmp_path / "space.yaml"),
                "--storage",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )


def test_a_sweep_reads_its_checkpoint_and_task_from_s3(
    task_checkpoint, sst2, tmp_path, mlflow_uri, ray_session, s3, monkeypatch, capsys
):
    """No shared file system: the driver copies both once; the trials get them from Ray's object
    store. Lineage names the checkpoint by its URI and finds the pretrain run by its S3 run path."""
    import tempfile
    from pathlib import Path

    import pyarrow.fs as pafs

    from pipeline.remote import upload

    monkeypatch.chdir(tmp_path)
    fs = pafs.FileSystem.from_uri("s3://gpt1-test")[0]
    upload(task_checkpoint, fs, "gpt1-test/runs/pre/checkpoint_000000010", last="model.safetensors")
    upload(sst2, fs, "gpt1-test/glue/SST-2", last="train.tsv")
    client = MlflowClient(mlflow_uri)
    pretrain = client.create_run(
        client.create_experiment("gpt1-pretrain"), tags={"run_path": "s3://gpt1-test/runs/pre"}
    )
    (tmp_path / "space.yaml").write_text("lr: 1.0e-3\nbatch_size: 16\nmax_steps: 4\n")
    args = [
        "--task",
        "sst-2",
        "--data",
        "s3://gpt1-test/glue/SST-2",
        "--samples",
        "1",
        "--space",
        str(tmp_path / "space.yaml"),
        "--storage",
        str(tmp_path / "runs"),
    ]
    before = set(Path(tempfile.gettempdir()).glob("gpt1-fetched-*"))
    assert main([*args, "--checkpoint", "s3://gpt1-test/runs/pre/checkpoint_000000010/"]) == 0
    runs = client.search_runs([client.get_experiment_by_name("gpt1-finetune-sst-2").experiment_id])
    assert len(runs) == 2  # the parent and its trial
    for r in runs:
        assert r.data.tags["checkpoint"] == "s3://gpt1-test/runs/pre/checkpoint_000000010"
        assert r.data.tags["pretrain_run_id"] == pretrain.info.run_id
        assert r.data.tags["checkpoint_sha256"] == sha256_file(task_checkpoint / "model.safetensors")
        assert r.data.tags["data_sha256.train"] == sha256_file(sst2 / "train.tsv")
    assert set(Path(tempfile.gettempdir()).glob("gpt1-fetched-*")) == before  # the copies are gone
    capsys.readouterr()
    assert main([*args, "--checkpoint", "s3://gpt1-test/runs/nothing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sweep: s3://gpt1-test/runs/nothing: nothing there; expected a model directory", err


def test_max_concurrent_limits_the_trials_running_at_once(ray_session, tmp_path):
    """Trials of 1 CPU on a 2-CPU instance could run two at a time; concurrent=1 must keep them
    one after another (Tune ignores max_concurrent_trials beside a search_alg, so the limit has
    to reach the generator)."""
    import time

    from ray import tune

    from tuning.trials import run_tuner

    def trainable(config):
        start = time.time()
        time.sleep(1.5)
        tune.report({"objective": config["x"], "start": start, "end": time.time()})

    points = [{"x": x} for x in (0.1, 0.5, 0.9)]
    grid = run_tuner("limit", tune.with_resources(trainable, {"CPU": 1}), points, None, str(tmp_path), [], 1)
    spans = sorted((r.metrics["start"], r.metrics["end"]) for r in grid)
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


@pytest.mark.slow
def test_two_tasks_sweep_in_one_tune_run_on_fractions_of_a_cpu(
    task_checkpoint, tmp_path, mlflow_uri, ray_session, monkeypatch, capsys
):
    """--task glue: every task's trials in one Tune run (and so one experiment directory), each
    task under its own parent run, ranked and registered by its own metric; trials of half a CPU."""
    from corpus_gen import write_cola, write_sst2

    monkeypatch.chdir(tmp_path)
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    write_sst2(glue / "SST-2", n_train=64, n_dev=32)
    (glue / "CoLA").mkdir()
    write_cola(glue / "CoLA", 48, seed=1)
    (tmp_path / "space.yaml").write_text("lr: {loguniform: [1.0e-3, 3.0e-3]}\nbatch_size: 16\nmax_steps: 4\n")
    args = ["--task", "glue", "--data", str(glue), "--checkpoint", str(task_checkpoint), "--samples", "2"]
    args += [
        "--space",
        str(tmp_path / "space.yaml"),
        "--cpus-per-trial",
        "0.5",
        "--storage",
        str(tmp_path / "runs"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 task(s) in one Tune run" in out and "each with {'CPU': 0.5}" in out, out
    assert sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / "runs").iterdir()) == ["sweep-cola+sst-2"]
    client = MlflowClient(mlflow_uri)
    for task, metric in (("cola", "matthews"), ("sst-2", "accuracy")):
        runs = client.search_runs([client.get_experiment_by_name(f"gpt1-finetune-{task}").experiment_id])
        (parent,) = [r for r in runs if "best_trial_run_id" in r.data.tags]
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(trials) == 2 and {t.data.params["task"] for t in trials} == {task}
        assert f"best_{metric}" in parent.data.metrics
        assert client.get_model_version(f"gpt1-{task}", "1").run_id == parent.data.tags["best_trial_run_id"]


def test_a_sweep_on_a_cluster_that_can_grow_runs_every_trial_at_once_for_the_autoscaler_to_see():
    from tuning.search import trials_at_once

    # 144 trials, 16 GPUs up at the start: on a cluster with an autoscaler every trial is started
    # (its resources asked for), so the autoscaler adds nodes; without one, what fits now.
    assert trials_at_once(16, 144, 0, grows=True) == 144
    assert trials_at_once(16, 144, 0, grows=False) == 16
    assert trials_at_once(0, 8, 0, grows=True) == 8  # no GPU node up yet
    assert trials_at_once(0, 8, 0, grows=False) == 0  # refused by the caller, in one line
    assert trials_at_once(16, 144, 4, grows=True) == 4  # --max-concurrent caps it


def test_each_task_takes_the_gpu_its_examples_need():
    from pipeline.data.tasks import Example, get
    from tuning.search import gpu_share, trial_resources

    one = [Example(("a film",), 1, "0")]
    # A quarter of a GPU a sequence an example feeds the model: SST-2 one, STS-B two (both
    # orders), RACE four choices: a whole GPU.
    assert gpu_share(get("sst-2"), one) == 0.25
    assert gpu_share(get("sts-b"), [Example(("a", "b"), 3.0, "0")]) == 0.5
    race = [Example(("article", "question"), 0, "0", choices=("a", "b", "c", "d"))]
    assert gpu_share(get("race"), race) == 1.0
    # Each trial asks Ray for its own task's share.
    per_trial = {"sst-2": {"GPU": 0.25, "CPU": 1}, "race": {"GPU": 1.0, "CPU": 1}}
    assert trial_resources(per_trial, {"task": "race", "lr": 1e-4}).bundles == [{"GPU": 1.0, "CPU": 1}]
    assert trial_resources(per_trial, {"task": "sst-2"}).bundles == [{"GPU": 0.25, "CPU": 1}]
