"""Fine-tuning with L3 = L2 + λ·L1: learns a synthetic task, keeps the best model, refuses bad input."""

import math
import shutil

import pytest
import torch
from corpus_gen import reviews

from model import GPT
from pipeline.data.tasks import get
from tuning.finetune import FinetuneConfig, finetune
from tuning.finetune_cli import main


def test_finetune_beats_the_majority_class_and_keeps_the_best(task_checkpoint, sst2, tmp_path):
    cfg = FinetuneConfig(lr=2e-3, batch_size=16, epochs=6, warmup=0.05, eval_every=25)
    seen = []
    best = finetune(
        get("sst-2"),
        sst2,
        task_checkpoint,
        cfg,
        report=lambda m, s: seen.append((s, m)),
        out=tmp_path / "best",
    )
    gold = [int(line.rsplit("\t", 1)[1]) for line in (sst2 / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(sum(gold), len(gold) - sum(gold)) / len(gold)
    assert best["accuracy"] > majority + 0.2, (best, majority)
    assert [s for s, _ in seen] == list(range(25, 150, 25)) + [150]  # every 25 steps and the end
    assert best["accuracy"] == max(m["accuracy"] for _, m in seen)
    assert best["train_examples"] == 400 and best["dev_examples"] == 200
    gpt = GPT.from_pretrained(tmp_path / "best")  # the kept model is a model directory
    assert (tmp_path / "best" / "head.safetensors").exists() and gpt.config.n_layer == 2
    # The best model's test predictions, in the GLUE submission format.
    lines = (tmp_path / "best" / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 51
    truth = [int("great" in s.split()) for s, _ in reviews(50, 3)]
    pred = [int(line.split("\t")[1]) for line in lines[1:]]
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(50)]
    assert sum(p == t for p, t in zip(pred, truth, strict=True)) / 50 > 0.7


def trained_weights(task_checkpoint, sst2, out, lm_coef, from_scratch=False):
    """The transformer's weights after two updates (the one evaluation comes at the end, so the
    kept model is the last), and the L3 that each update minimised."""
    cfg = FinetuneConfig(lr=2e-3, batch_size=32, max_steps=2, eval_every=2, lm_coef=lm_coef)
    seen = []
    finetune(
        get("sst-2"), sst2, task_checkpoint, cfg, from_scratch, report=lambda m, s: seen.append(m), out=out
    )
    return GPT.from_pretrained(out).state_dict(), seen[-1]["train_loss"]


def test_lambda_is_the_weight_the_user_set(task_checkpoint, sst2, tmp_path):
    """λ = 0 (the "no auxiliary LM" ablation) and λ = 0.5 take different updates from the same
    seed; the same λ twice takes the same ones. (L3 = L2 + λ·L1 itself: tests/test_heads.py.)"""
    zero, l3_zero = trained_weights(task_checkpoint, sst2, tmp_path / "a", 0.0)
    again, l3_again = trained_weights(task_checkpoint, sst2, tmp_path / "b", 0.0)
    half, l3_half = trained_weights(task_checkpoint, sst2, tmp_path / "c", 0.5)
    assert l3_zero == l3_again and all(torch.equal(zero[k], again[k]) for k in zero)
    assert l3_half > l3_zero  # + 0.5·L1, which is positive
    assert not all(torch.equal(zero[k], half[k]) for k in zero)


def test_from_scratch_starts_from_fresh_weights_not_the_checkpoint(task_checkpoint, sst2, tmp_path):
    # The fixture's weights are the seed's own initialisation: move them off it first.
    shutil.copytree(task_checkpoint, tmp_path / "ckpt")
    gpt = GPT.from_pretrained(task_checkpoint)
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.1)
    gpt.save_pretrained(tmp_path / "ckpt")
    transferred, _ = trained_weights(tmp_path / "ckpt", sst2, tmp_path / "a", 0.5)
    fresh, _ = trained_weights(tmp_path / "ckpt", sst2, tmp_path / "b", 0.5, from_scratch=True)
    pretrained = gpt.state_dict()
    key = "h.0.attn.c_attn.weight"
    assert key in pretrained
    # Two updates at lr 2e-3 move a weight by about 4e-3 at most: the transferred model stays
    # near the checkpoint, the fresh one is nowhere near it.
    assert (transferred[key] - pretrained[key]).abs().max() < 0.02
    assert (fresh[key] - pretrained[key]).abs().max() > 0.05


def test_cli_errors_are_one_line(task_checkpoint, tmp_path, capsys):
    code = main(["--task", "sst-2", "--data", str(tmp_path), "--checkpoint", str(task_checkpoint)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train.tsv: no such file" in err and len(err.splitlines()) == 1
    code = main(["--task", "nope", "--data", str(tmp_path), "--checkpoint", str(task_checkpoint)])
    assert code == 2 and "unknown task 'nope'" in capsys.readouterr().err


def test_a_standalone_finetune_is_logged_to_mlflow_as_a_trial_is(
    task_checkpoint, sst2, tmp_path, mlflow_uri, monkeypatch, capsys
):
    """Its settings, every evaluation's metrics, best_<metric>, the model and its lineage; the run
    FINISHED. With --no-mlflow, nothing."""
    from mlflow.tracking import MlflowClient

    from pipeline.files import sha256_file
    from pipeline.tracking import weights_sha256

    monkeypatch.chdir(tmp_path)
    args = ["--task", "sst-2", "--data", str(sst2), "--checkpoint", str(task_checkpoint)]
    sets = ["--set", "max_steps=4", "--set", "eval_every=2", "--set", "batch_size=8"]
    assert main([*args, "--out", str(tmp_path / "ft"), *sets]) == 0
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gpt1-finetune-sst-2").experiment_id])
    assert f"MLflow run {run.info.run_id}" in capsys.readouterr().out
    assert (
        run.info.status == "FINISHED"
        and run.data.params["max_steps"] == "4"
        and run.data.params["lm_coef"] == "0.5"
    )
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted(m.step for m in history) == [2, 4]
    assert run.data.metrics["best_accuracy"] == max(m.value for m in history)
    assert run.data.tags["checkpoint_sha256"] == sha256_file(task_checkpoint / "model.safetensors")
    assert run.data.tags["data_sha256.train"] == sha256_file(sst2 / "train.tsv")
    assert run.data.tags["model_sha256"] == weights_sha256(tmp_path / "ft")
    assert {"model/task.json", "model/head.safetensors"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "model")
    }
    assert main([*args, "--out", str(tmp_path / "ft2"), *sets, "--no-mlflow"]) == 0
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.parametrize("values, best_step", [((math.nan, 0.25, math.nan), 2), ((math.nan,) * 3, 1)])
def test_a_nan_metric_ranks_last_and_never_crashes(
    values, best_step, task_checkpoint, sst2, tmp_path, monkeypatch
):
    """A dev metric of NaN is a best only until a number comes; all NaN, the first evaluation's
    model is kept; either way the best model is the one written."""
    import torch
    from safetensors.torch import load_file

    import tuning.finetune as ft

    it, heads = iter(values), []

    def evaluate(tm, encoded, batch_size=64):
        # The dev evaluation's metric alone (the other sets scored at a best keep theirs), and the
        # head the model had when it was evaluated.
        heads.append({k: v.detach().clone() for k, v in tm.model.head.state_dict().items()})
        return {"accuracy": next(it)}

    monkeypatch.setattr(ft, "evaluate", evaluate)
    cfg = FinetuneConfig(lr=2e-3, batch_size=32, max_steps=3, eval_every=1)
    best = finetune(get("sst-2"), sst2, task_checkpoint, cfg, out=tmp_path / "best")
    assert best["step"] == best_step and len(heads) == 3
    want = values[best_step - 1]
    assert best["accuracy"] == want if not math.isnan(want) else math.isnan(best["accuracy"])
    written = load_file(str(tmp_path / "best" / "head.safetensors"))
    kept = heads[best_step - 1]
    assert written.keys() and all(torch.equal(written[k], kept[k]) for k in written)
    # and not any other evaluation's head: the steps moved it (lr 2e-3)
    assert all(not torch.equal(written["linear.weight"], h["linear.weight"]) for h in heads if h is not kept)


def test_n_transfer_keeps_exactly_the_first_k_blocks(task_checkpoint, sst2):
    import torch

    from pipeline.data.tasks import get as get_task
    from tuning.finetune import Pretrained, build

    pretrained = Pretrained.load(task_checkpoint)
    source = pretrained.gpt().state_dict()
    n_layer = pretrained.gpt().config.n_layer
    for k in range(n_layer + 1):
        gpt = build(get_task("sst-2"), pretrained, FinetuneConfig(n_transfer=k)).model.gpt
        sd = gpt.state_dict()
        for name, t in sd.items():
            if name.startswith("h."):
                kept = int(name.split(".")[1]) < k
                same = torch.equal(t, source[name])
                # A freshly drawn weight differs; a fresh bias or LayerNorm is its initial 0 or 1.
                if kept:
                    assert same, name
                elif name.endswith(".weight") and "ln_" not in name:
                    assert not same, name
                else:
                    assert torch.all(t == (1.0 if name.endswith("weight") else 0.0)), name
            elif name == "positions_embed.weight":
                assert torch.equal(t, source[name])  # the embeddings always transfer
    # Blocks drawn afresh are drawn from the seed: the same k and seed give the same network.
    a = build(get_task("sst-2"), pretrained, FinetuneConfig(n_transfer=1, seed=3)).model.gpt.state_dict()
    b = build(get_task("sst-2"), pretrained, FinetuneConfig(n_transfer=1, seed=3)).model.gpt.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(Exception, match="n_transfer 3: the checkpoint has 2 blocks"):
        build(get_task("sst-2"), pretrained, FinetuneConfig(n_transfer=3))


def write_race(d, seed: int) -> None:
    """A RACE directory: train, dev and test, each with middle/ and high/ articles (its own words)."""
    import json
    import random

    from corpus_gen import WORDS

    rng = random.Random(seed)
    for split, n in (("train", 6), ("dev", 3), ("test", 3)):
        for level in ("middle", "high"):
            (d / split / level).mkdir(parents=True)
            for k in range(n + (level == "high")):  # parts of unequal size: a plain mean would differ
                doc = {
                    "article": " ".join(rng.choice(WORDS) for _ in range(20)),
                    "questions": [" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(2)],
                    "options": [[rng.choice(WORDS) for _ in range(4)] for _ in range(2)],
                    "answers": [rng.choice("ABCD") for _ in range(2)],
                }
                (d / split / level / f"{k}.txt").write_text(json.dumps(doc))


def test_the_tables_other_columns_are_scored_at_the_best_evaluation(task_checkpoint, tmp_path):
    """RACE: dev's middle and high parts, and the test split (its labels are public) whole and
    in parts, each at the evaluation the run keeps; the parts weigh into the whole by their sizes."""
    write_race(tmp_path / "race", 2)
    seen = []
    cfg = FinetuneConfig(lr=1e-3, batch_size=4, max_steps=4, eval_every=2)
    best = finetune(
        get("race"),
        tmp_path / "race",
        task_checkpoint,
        cfg,
        report=lambda m, s: seen.append(m),
        out=tmp_path / "out",
    )
    for name, n_middle, n_high in (("", 6, 8), ("test_", 6, 8)):
        whole = best["accuracy"] if not name else best["test_accuracy"]
        mixed = (n_middle * best[f"{name}middle_accuracy"] + n_high * best[f"{name}high_accuracy"]) / 14
        assert whole == pytest.approx(mixed), name
    # A sample of train, for Figure 2 (left), scored with the model the run keeps: the saved
    # model's accuracy on those same examples.
    import dataclasses

    import numpy as np

    from tuning.finetune import TRAIN_SAMPLE, evaluate, load_splits, load_task_model

    # The saved model, with the task's metrics (task.json names the task, not its metrics).
    kept_model = dataclasses.replace(load_task_model(tmp_path / "out", "cpu"), task=get("race"))
    train = kept_model.encoder.encode(load_splits(get("race"), tmp_path / "race")["train"])
    pick = np.random.default_rng(0).permutation(len(train))[:TRAIN_SAMPLE]
    assert best["train_accuracy"] == pytest.approx(evaluate(kept_model, [train[i] for i in pick])["accuracy"])
    # Only the evaluations that became the best were scored on the other sets.
    kept = [m for m in seen if "test_accuracy" in m]
    assert kept and kept[-1]["test_accuracy"] == best["test_accuracy"]
    assert all(
        m["accuracy"] > max(x["accuracy"] for x in seen[:i])
        for i, m in enumerate(seen)
        if i and "test_accuracy" in m
    )


def test_a_soft_target_regression_model_saves_and_loads_as_it_predicts(task_checkpoint, tmp_path):
    """regression_target soft (the release's STS-B target): six outputs, the expected score read
    out, and a saved model that predict and serve load with the same head."""
    import json

    from pipeline.data.tasks import Example
    from tuning.finetune import Pretrained, build, load_task_model, predict, save

    tm = build(get("sts-b"), Pretrained.load(task_checkpoint), FinetuneConfig(regression_target="soft"))
    assert tm.model.head.soft_classes == 6 and tm.model.head.linear.out_features == 6
    save(tm, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "task.json").read_text())["soft_classes"] == 6
    again = load_task_model(tmp_path / "m")
    pairs = [
        Example(("a good film", "a fine film"), 4.2, "0"),
        Example(("it rained", "the cat sat"), 0.4, "1"),
    ]
    a, b = predict(tm, tm.encoder.encode(pairs)), predict(again, again.encoder.encode(pairs))
    assert list(a) == pytest.approx(list(b)) and all(0 <= x <= 5 for x in a)
    with pytest.raises(Exception, match="regression_target 'kl': expected mse or soft"):
        from tuning.finetune_config import check_config

        check_config(FinetuneConfig(regression_target="kl"))
