"""gpt1 pretrain on Ray Train: learning, exact resume (also on another worker count), a killed
worker, checks before any worker starts, and what the MLflow run holds."""

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from corpus_gen import documents

from model import GPT
from pipeline.configio import load
from pipeline.data.dataset import BlockOrder, DataError
from pipeline.data.prepare import PrepareConfig, prepare
from pipeline.data.tokenizer import load_tokenizer
from pipeline.errors import ConfigError
from pipeline.train.config import check_config, micro_batch
from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig, pretrain
from pipeline.train.pretrain_cli import main

STEPS = 90
# 2 x 32, n_ctx 64; micro-batches of 2 so that 1 and 2 workers run the same micro-batches.
SETS = [
    f"max_steps={STEPS}",
    "batch_size=8",
    "micro_batch=2",
    "log_every=1",
    "checkpoint_every=10",
    "eval_every=30",
    "keep_checkpoints=2",
    "lr=3e-3",
    "warmup_steps=10",
]


def config(*extra: str) -> PretrainConfig:
    return load(PretrainConfig(), "tiny", PRESETS_DIR, SETS + list(extra))


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_session) -> Path:
    """A learnable corpus: English-like documents over a hundred-word vocabulary."""
    d = tmp_path_factory.mktemp("pretrain-data")
    (d / "corpus.txt").write_text("\n\n".join(documents(2000, seed=3)) + "\n")
    prepare(
        [str(d / "corpus.txt")],
        d / "data",
        PrepareConfig(n_merges=300, n_ctx=64, val_fraction=0.1, shard_mb=1),
        track=False,
    )
    return d / "data"


@pytest.fixture
def workdir(tmp_path, monkeypatch, mlflow_uri) -> Path:
    monkeypatch.chdir(tmp_path)  # ./runs and MLflow's ./mlruns land here
    return tmp_path


def losses(run_id: str, key: str = "loss", uri: str | None = None) -> dict[int, float]:
    """step -> value; where a resumed run logged a step twice, the later value."""
    from mlflow.tracking import MlflowClient

    history = sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def descends_from_us(proc) -> bool:
    import psutil

    try:
        return os.getpid() in {p.pid for p in proc.parents()}
    except psutil.NoSuchProcess:
        return False


def kill_a_worker_once(checkpoint: Path) -> list:
    """Once `checkpoint` appears, SIGKILL one Ray Train worker process."""
    import psutil

    killed: list = []

    def target():
        deadline = time.time() + 300
        while not checkpoint.exists() and time.time() < deadline:
            time.sleep(0.01)
        # Of this process's own Ray instance, not another one on the machine (a test beside this).
        workers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) and descends_from_us(p)
        ]
        if workers:
            victim = max(workers, key=lambda p: p.pid)
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    threading.Thread(target=target, daemon=True).start()
    return killed


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, ray_session, sst2):
    """An uninterrupted 2-worker run, the yardstick of the resume tests; the SST-2 zero-shot
    heuristic runs at its evaluations (which leaves its losses alone: the key is not in the run's
    identity, and the resumed runs below go without it)."""
    d = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    old, cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(d)
    try:
        out = pretrain(
            data,
            config(f"zero_shot=[sst-2={sst2}]", "zero_shot_examples=40", "system_metrics_s=1"),
            workers=2,
            name="reference",
            storage=str(d / "runs"),
        )
        return {**out, "losses": losses(out["run_id"]), "uri": uri, "dir": d, "sst2": sst2}
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.mark.slow
def test_loss_goes_down_and_the_run_is_tracked(reference, data):
    from mlflow.tracking import MlflowClient

    curve = reference["losses"]
    assert sorted(curve) == list(range(1, STEPS + 1))
    first, last = (
        np.mean([curve[s] for s in range(1, 6)]),
        np.mean([curve[s] for s in range(STEPS - 9, STEPS + 1)]),
    )
    assert last < first - 0.5, (first, last)
    assert reference["metrics"]["val_loss"] < first - 0.5

    client = MlflowClient(reference["uri"])
    run = client.get_run(reference["run_id"])
    exp = client.get_experiment(run.info.experiment_id)
    manifest = json.loads((data / "manifest.json").read_text())
    assert exp.name == "gpt1-pretrain" and run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "8" and run.data.params["model_config.n_layer"] == "2"
    assert run.data.params["model_config.vocab_size"] == str(manifest["tokenizer"]["vocab_size"])
    tags = run.data.tags
    assert tags["data_fingerprint"] == manifest["fingerprint"]
    assert tags["tokenizer_sha256"] == manifest["tokenizer"]["sha256"]
    assert tags["world_size"] == "2" and len(tags["git_commit"]) in (40, 7)  # 'unknown' has 7
    for key in (
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "data_wait",
        "val_loss",
        "val_perplexity",
        "val_bits_per_byte",
    ):
        assert key in run.data.metrics, key
    # Evaluations at steps 30, 60 and 90; bits per byte from the manifest's byte count.
    val = losses(reference["run_id"], "val_loss", reference["uri"])
    assert sorted(val) == [30, 60, 90]
    tpb = manifest["splits"]["val"]["tokens"] / manifest["splits"]["val"]["bytes"]
    bpb = losses(reference["run_id"], "val_bits_per_byte", reference["uri"])
    assert bpb[90] == pytest.approx(val[90] / np.log(2) * tpb)
    assert (
        losses(reference["run_id"], "lr", reference["uri"])[1] == 0.0
    )  # opt.py's schedule: update 0 has lr 0
    # The zero-shot curve (Fig. 2, right): one point per evaluation, and its plot.
    zs = losses(reference["run_id"], "zero_shot_sst-2_accuracy", reference["uri"])
    assert sorted(zs) == [30, 60, 90] and all(0.0 <= v <= 1.0 for v in zs.values())
    # Its cost beside the evaluation's, both timed at every evaluation.
    assert sorted(losses(reference["run_id"], "eval_zero_shot_s", reference["uri"])) == [30, 60, 90]
    assert all(t > 0 for t in losses(reference["run_id"], "eval_s", reference["uri"]).values())
    # Each rank's own work a step, and the straggler metric (the slowest rank over the median).
    assert run.data.metrics["rank_0_busy_s"] > 0 and run.data.metrics["rank_1_busy_s"] > 0
    assert "rank_1_data_wait_s" in run.data.metrics and run.data.metrics["straggler"] >= 1.0
    # MLflow's system metrics, from the one node the two workers share (every second here).
    assert run.data.metrics["system/node_0/cpu_utilization_percentage"] >= 0
    assert "system/node_0/system_memory_usage_megabytes" in run.data.metrics

    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "model-hf", "data", "pretrain_config.json", "zero_shot_curves.png"} <= arts
    for d in ("model", "model-hf"):
        assert {f"{d}/config.json", f"{d}/model.safetensors", f"{d}/tokenizer.json"} <= {
            a.path for a in client.list_artifacts(run.info.run_id, d)
        }
    local = Path(client.download_artifacts(run.info.run_id, "model-hf", str(reference["dir"])))
    assert GPT.from_pretrained(local).num_params() > 0


def test_checkpoints_are_model_directories(reference):
    ckpts = sorted(Path(reference["run_path"]).glob("checkpoint_0*"))
    assert [c.name for c in ckpts] == ["checkpoint_000000080", "checkpoint_000000090"]  # keep 2
    newest = ckpts[-1]
    gpt = GPT.from_pretrained(newest)
    tok = load_tokenizer(newest)
    assert gpt.config.vocab_size >= tok.get_vocab_size()
    state = json.loads((newest / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 2
    assert (newest / "optimizer.safetensors").exists()


@pytest.mark.slow
def test_killed_worker_recovers_and_retraces_the_run(reference, data, workdir):
    killed = kill_a_worker_once(workdir / "runs" / "killed" / "checkpoint_000000020")
    out = pretrain(data, config("max_failures=2"), workers=2, name="killed")
    assert killed, "no worker was killed"
    assert out["metrics"]["step"] == STEPS
    # Exact: the same losses, step by step, as the run that was never interrupted.
    assert losses(out["run_id"]) == reference["losses"]


@pytest.mark.slow
def test_interrupted_run_resumes_on_another_worker_count(reference, data, workdir):
    killed = kill_a_worker_once(workdir / "runs" / "cut" / "checkpoint_000000030")
    # Ray Train's failure, whose class has moved between Ray versions: what matters is what follows.
    with pytest.raises(Exception):  # noqa: B017
        pretrain(data, config("max_failures=0"), workers=2, name="cut")
    assert killed
    done = sorted(Path(workdir / "runs" / "cut").glob("checkpoint_0*"))
    assert done and done[-1].name < f"checkpoint_{STEPS:09d}"
    # The same command again resumes it, here on one worker with two threads.
    out = pretrain(data, config("max_failures=0"), workers=1, name="cut")
    assert out["metrics"]["step"] == STEPS
    again = losses(out["run_id"])
    assert sorted(again) == sorted(reference["losses"])
    # Same micro-batches, same dropout masks; only the order of floating-point sums differs.
    np.testing.assert_allclose(
        [again[s] for s in sorted(again)], [reference["losses"][s] for s in sorted(again)], rtol=2e-3
    )
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("gpt1-pretrain").experiment_id],
        filter_string="tags.mlflow.runName = 'cut'",
    )
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "1"


@pytest.mark.slow
def test_a_time_budget_sets_the_steps_once_and_a_resume_keeps_them(data, workdir):
    import shutil

    from pipeline.train.record import recorded_run

    # micro_batch auto on CPU workers: no GPU memory to size by, so the worker's share (8).
    budget = (
        "max_steps=0",
        "epochs=1000",
        "max_minutes=0.2",
        "checkpoint_every=20",
        "keep_checkpoints=3",
        "micro_batch=auto",
    )
    out = pretrain(data, config(*budget), workers=1, name="budget")
    total = out["metrics"]["step"]
    first = losses(out["run_id"])
    run = workdir / "runs" / "budget"
    assert recorded_run(str(run))["pretrain"]["micro_batch"] == 8  # the number, not "auto"
    ckpts = sorted(run.glob("checkpoint_0*"))
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert state["total_steps"] == total and state["budget_decided"] and 60 < total < 10_000
    assert losses(out["run_id"], "total_steps") == {60: total}  # recorded in the run, once
    # Resumed from an earlier checkpoint, the run keeps its step count (whatever the rate now)
    # and retraces itself step by step.
    shutil.rmtree(ckpts[-1])
    out = pretrain(data, config(*budget), workers=1, name="budget")
    assert out["metrics"]["step"] == total
    again = losses(out["run_id"])
    resumed = int(ckpts[-2].name.split("_")[1])
    assert [again[s] for s in range(resumed + 1, total + 1)] == [
        first[s] for s in range(resumed + 1, total + 1)
    ]


def test_a_finished_run_run_again_says_so_before_ray_starts(reference, data):
    """Its record and newest checkpoint say it is done: the same command answers at once, with
    the run's MLflow run and metrics, and neither starts Ray nor touches the MLflow run."""
    import subprocess
    import sys

    args = ["--config", "tiny", "--data", str(data), "--name", "reference"]
    args += ["--storage", str(reference["dir"] / "runs"), *sum((["--set", s] for s in SETS), [])]
    args += ["--set", f"zero_shot=[sst-2={reference['sst2']}]", "--set", "zero_shot_examples=40"]
    code = (
        "import sys; from pipeline.train.pretrain_cli import main; code = main(sys.argv[1:]); "
        "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(code)"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": reference["uri"]}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=reference["dir"]
    )
    assert out.returncode == 0, out.stderr
    assert f"run reference is complete: step {STEPS} of {STEPS}, nothing to do" in out.stdout, out.stdout
    assert reference["checkpoint"] in out.stdout and f"MLflow run {reference['run_id']}" in out.stdout
    assert out.stdout.strip().endswith("no ray"), out.stdout
    # In-process, pretrain() returns what it returned when it finished.
    again = pretrain(
        data, config(), workers=2, name="reference", storage=str(reference["dir"] / "runs"), track=False
    )
    assert again["checkpoint"] == reference["checkpoint"] and again["metrics"]["step"] == STEPS


def test_resuming_with_other_settings_is_refused(reference, data, workdir, capsys):
    storage = str(reference["dir"] / "runs")
    code = main(
        [
            "--config",
            "tiny",
            "--data",
            str(data),
            "--name",
            "reference",
            "--storage",
            storage,
            "--no-mlflow",
            *sum((["--set", s] for s in SETS), []),
            "--set",
            "lr=1e-3",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "lr: 0.003 -> 0.001" in err and "another --name" in err, err
    # A run started with another block order (an older version of it) is not resumed with this one.
    run_file = Path(storage) / "reference" / "gpt1_run.json"
    ident = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**ident, "block_order": "permutation"}))
    try:
        code = main(
            [
                "--config",
                "tiny",
                "--data",
                str(data),
                "--name",
                "reference",
                "--storage",
                storage,
                "--no-mlflow",
                *sum((["--set", s] for s in SETS), []),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and "block_order: 'permutation' -> 'feistel-4'" in err, err
    finally:
        run_file.write_text(json.dumps(ident))


def test_bad_data_is_refused_before_workers_start(data, tmp_path, workdir, capsys):
    import shutil

    def refused(args: list[str], expected: str) -> None:
        code = main(["--config", "tiny", "--no-mlflow", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and len(err.splitlines()) == 1, err
        assert not (workdir / "runs").exists()  # nothing written

    refused(["--data", str(tmp_path / "nope")], "not a prepared dataset")
    bad = tmp_path / "altered"
    shutil.copytree(data, bad)
    shard = sorted(bad.glob("train/*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    refused(["--data", str(bad)], "sha256 differs from the manifest")
    refused(["--data", str(data), "--set", "model_overrides={vocab_size: 100}"], "expected vocab_size >=")
    refused(["--data", str(data), "--set", "model_overrides={n_ctx: 32}"], "blocks of n_ctx 64")
    refused(["--data", str(data), "--set", "model_overrides={n_layers: 3}"], "unknown key 'n_layers'")
    refused(["--data", str(data), "--set", "batch_size=7", "--workers", "2"], "batch_size 7")
    refused(["--data", str(data), "--set", "learning_rate=1"], "unknown key 'learning_rate'")


def test_block_order_is_a_function_of_seed_and_step():
    a, b = BlockOrder(0, 103, 8), BlockOrder(0, 103, 8)
    steps = [0, 5, 12, 13, 40, 3]  # out of order: no hidden state between calls
    assert all(np.array_equal(a.batch(s), b.batch(s)) for s in steps)
    epoch0 = np.concatenate([a.batch(s) for s in range(a.steps_per_epoch)])
    assert len(set(epoch0.tolist())) == 12 * 8  # an epoch never repeats a block
    assert not np.array_equal(a.batch(0), a.batch(12))  # each epoch its own permutation
    assert not np.array_equal(BlockOrder(1, 103, 8).batch(0), a.batch(0))
    with pytest.raises(DataError):
        BlockOrder(0, 7, 8)
    # Each epoch is a permutation, whatever n_blocks (powers of 4 and not): every block once.
    for n in (64, 100, 1000, 4096, 4097):
        o = BlockOrder(5, n, 8)
        for epoch in (0, 3):
            seen = np.concatenate([o.batch(epoch * o.steps_per_epoch + s) for s in range(o.steps_per_epoch)])
            assert len(set(seen.tolist())) == len(seen) == o.steps_per_epoch * 8 and seen.max() < n
    # Computed, not stored: a batch of a 200 M-block corpus costs no per-block memory.
    assert BlockOrder(0, 200_000_000, 64).batch(3_000_000).max() < 200_000_000


def test_presets_load():
    gpt1 = load(PretrainConfig(), "gpt1", PRESETS_DIR)
    assert (gpt1.batch_size, gpt1.lr, gpt1.warmup_steps, gpt1.epochs, gpt1.weight_decay) == (
        64,
        2.5e-4,
        2000,
        100,
        0.01,
    )
    assert gpt1.schedule == "warmup_cosine" and gpt1.model == "gpt1"
    for name in ("mini", "tiny"):
        assert load(PretrainConfig(), name, PRESETS_DIR).model == name
    with pytest.raises(ConfigError):
        load(PretrainConfig(), "nope", PRESETS_DIR)


def test_wide_runs_take_smaller_micro_batches_and_a_run_keeps_its_own():
    import dataclasses

    gpt1 = load(PretrainConfig(), "gpt1", PRESETS_DIR)
    # The global batch stays 64: micro-batches of 8 up to 8 workers, then 4 on 16, 1 on 64.
    assert [micro_batch(gpt1, w) for w in (1, 2, 8, 16, 32, 64)] == [8, 8, 8, 4, 2, 1]
    for w in (8, 16, 64):
        check_config(gpt1, w)
    with pytest.raises(ConfigError, match="more workers than the batch's 64 sequences"):
        check_config(gpt1, 128)
    # A run keeps its micro-batches (so its dropout masks) wherever it resumes: one started on
    # 16 workers (4 a micro-batch), and one started on 8 (8), whose 8 micro-batches 16 workers
    # share rebalanced (loop.py), 4 sequences each.
    assert [micro_batch(gpt1, w, recorded=4) for w in (1, 2, 8, 16)] == [4, 4, 4, 4]
    assert [micro_batch(gpt1, w, recorded=8) for w in (3, 16, 64)] == [8, 8, 8]
    check_config(gpt1, 3)  # 3 workers do not divide 8 micro-batches: rebalanced, not refused
    with pytest.raises(ConfigError, match="batch_size 60: expected a multiple of micro_batch"):
        check_config(dataclasses.replace(gpt1, batch_size=60), 1)
    # Asking for smaller micro-batches than the run's is a change of settings (claim_run refuses it).
    assert micro_batch(dataclasses.replace(gpt1, micro_batch=2), 4, recorded=4) == 2


def test_a_run_is_planned_from_the_clusters_resources_without_ray(tmp_path):
    from model import GPTConfig
    from pipeline.train.plan import plan_run

    cfg = load(PretrainConfig(), "gpt1", PRESETS_DIR)
    gcfg = GPTConfig()
    manifest = {"splits": {"train": {"blocks": 6400}}, "fingerprint": "f" * 64, "n_ctx": 512}
    on_gpus = plan_run(
        cfg, gcfg, manifest, "s3://b/ds", {"CPU": 96, "GPU": 8}, storage="s3://b/runs", use_gpu=True
    )
    assert (on_gpus.workers, on_gpus.use_gpu, on_gpus.cpus_per_worker) == (8, True, 1)
    assert on_gpus.steps_per_epoch == 100 and on_gpus.total_steps == 100 * cfg.epochs
    assert on_gpus.run_path == f"s3://b/runs/{on_gpus.name}" and on_gpus.name.startswith("ds-gpt1-")
    # The same settings name the same run, whatever the cluster.
    assert plan_run(cfg, gcfg, manifest, "s3://b/ds", {"CPU": 4}, 2).name == on_gpus.name
    on_cpus = plan_run(cfg, gcfg, manifest, "ds", {"CPU": 8}, 2, name="r", storage=str(tmp_path))
    assert (on_cpus.workers, on_cpus.use_gpu, on_cpus.cpus_per_worker) == (2, False, 4)
    assert on_cpus.run_path == f"{tmp_path}/r"
    with pytest.raises(ConfigError, match="--workers 4: the cluster has 2 GPU.*no autoscaler"):
        plan_run(cfg, gcfg, manifest, "ds", {"CPU": 8, "GPU": 2}, 4, use_gpu=True)
    # A cluster that grows: the plan takes more than it has now, a core a CPU worker.
    grown = plan_run(cfg, gcfg, manifest, "ds", {"CPU": 8, "GPU": 2}, 4, use_gpu=True, can_grow=True)
    assert (grown.workers, grown.use_gpu) == (4, True)
    on_new_nodes = plan_run(cfg, gcfg, manifest, "ds", {"CPU": 0}, 8, can_grow=True)
    assert (on_new_nodes.workers, on_new_nodes.cpus_per_worker) == (8, 1)
    with pytest.raises(ConfigError, match="no GPUs now; pass --workers N"):
        plan_run(cfg, gcfg, manifest, "ds", {"CPU": 8}, use_gpu=True, can_grow=True)
    with pytest.raises(ConfigError, match="nor an autoscaler"):
        plan_run(cfg, gcfg, manifest, "ds", {"CPU": 8}, use_gpu=True)


def test_an_auto_batch_grows_with_the_workers_and_keeps_warm_up_tokens_but_not_under_adams_horizon(tmp_path):
    import dataclasses

    from model import GPTConfig
    from pipeline.train.config import scale_batch
    from pipeline.train.plan import plan_run

    gpt1 = load(PretrainConfig(), "gpt1", PRESETS_DIR)
    auto = dataclasses.replace(gpt1, batch_tokens="auto")
    on64 = scale_batch(auto, 64, 512)
    # 64 workers x micro-batches of 8; lr by the square-root rule. Warm-up would keep its 65.5 M
    # tokens in 250 steps, under Adam's untuned horizon 2 / (1 - b2) = 2,000 steps: it keeps those.
    assert (on64.batch_size, on64.micro_batch, on64.batch_tokens) == (512, 8, None)
    assert on64.lr == pytest.approx(2.5e-4 * 8**0.5)
    assert on64.warmup_steps == 2000
    # A smaller batch keeps the warm-up's tokens (more steps); a warm-up asked shorter than the
    # horizon is never lengthened to it.
    small = scale_batch(dataclasses.replace(gpt1, batch_tokens=16 * 512, micro_batch=16), 1, 512)
    assert (small.batch_size, small.warmup_steps) == (16, 8000)
    short = scale_batch(dataclasses.replace(auto, warmup_steps=100), 64, 512)
    assert short.warmup_steps == 100
    linear = scale_batch(dataclasses.replace(auto, lr_scaling="linear"), 64, 512)
    assert linear.lr == pytest.approx(2.5e-4 * 8)
    # A number of tokens: the nearest multiple of the micro-batch, the same on any cluster.
    million = dataclasses.replace(gpt1, batch_tokens=1_000_000)
    assert {scale_batch(million, w, 512).batch_size for w in (1, 8, 16, 56, 64)} == {1952}
    # A resume resizes from the run's own batch, not from the workers it has now.
    assert scale_batch(auto, 8, 512, batch=512) == on64
    # Without batch_tokens the paper's 64 x 512 stays, on any worker count.
    assert scale_batch(gpt1, 64, 512) is gpt1
    manifest = {"splits": {"train": {"blocks": 64_000}}, "fingerprint": "f" * 64, "n_ctx": 512}
    plan = plan_run(auto, GPTConfig(), manifest, "ds", {"GPU": 64}, 64, storage=str(tmp_path), use_gpu=True)
    assert plan.cfg.batch_size == 512 and plan.steps_per_epoch == 125 and plan.asked == auto
    # The same settings name the same run on 8 workers (a resume there keeps the 512).
    assert plan_run(auto, GPTConfig(), manifest, "ds", {"GPU": 8}, 8, use_gpu=True).name == plan.name
    # Resumed on 8 workers, the run keeps its 512 sequences and micro-batches of 8 (accumulating 8).
    from pipeline.train.plan import settle
    from pipeline.train.record import identity

    started = settle(plan, manifest, None)
    old = {"pretrain": identity(started.cfg, GPTConfig(), manifest)["pretrain"]}
    on8 = plan_run(auto, GPTConfig(), manifest, "ds", {"GPU": 8}, 8, use_gpu=True)
    resumed = settle(on8, manifest, old)
    assert (resumed.cfg.batch_size, resumed.cfg.micro_batch, resumed.steps_per_epoch) == (512, 8, 125)
    assert identity(resumed.cfg, GPTConfig(), manifest) == identity(started.cfg, GPTConfig(), manifest)
    budget = dataclasses.replace(auto, max_tokens=10**9)
    assert plan_run(
        budget, GPTConfig(), manifest, "ds", {"GPU": 8}, 8, use_gpu=True
    ).total_steps == math.ceil(10**9 / (64 * 512))
    with pytest.raises(ConfigError, match="batch_tokens 'big'"):
        check_config(dataclasses.replace(gpt1, batch_tokens="big"), 8)
    with pytest.raises(ConfigError, match="max_tokens -1: expected 0 \\(no token budget\\) to"):
        check_config(dataclasses.replace(gpt1, max_tokens=-1), 8)


def test_the_plan_needs_no_data_nor_ray_and_prints_one_json_object(capsys):
    from gpt1.cli import main

    def plan(*args: str) -> dict:
        assert main(["pretrain", "--config", "gpt1", "--plan=json", "--device", "cuda", *args]) == 0
        return json.loads(capsys.readouterr().out)

    on8 = plan("--workers", "8", "--set", "batch_tokens=auto")
    on64 = plan("--workers", "64", "--set", "batch_tokens=auto")
    assert on64["tokens_per_step"] >= 4 * on8["tokens_per_step"]
    for p in (on8, on64):
        assert p["tokens_per_step"] == p["global_batch_sequences"] * 512
        assert p["global_batch_sequences"] == p["workers"] * p["micro_batch"] * p["accumulation"]
        assert {"est_step_ms", "est_tokens_per_s", "est_compute_ms", "est_allreduce_ms"} <= set(p)
    # The paper's batch as given: 32,768 tokens on 64 workers, one sequence each.
    paper = plan("--workers", "64")
    assert (paper["tokens_per_step"], paper["micro_batch"], paper["lr"]) == (32_768, 1, 2.5e-4)
    # The all-reduce across 8 nodes outweighs a 1-sequence compute: the review's finding.
    assert paper["est_allreduce_ms"] > paper["est_compute_ms"]
    # Half the bytes on the wire with bf16 gradients.
    half = plan("--workers", "64", "--set", "grad_compression=bf16")
    assert half["est_allreduce_ms"] == pytest.approx(paper["est_allreduce_ms"] / 2)
    # A length from a token budget, hours and cost from it.
    budget = plan("--workers", "16", "--set", "max_tokens=1000000000", "--accelerator", "H100")
    assert budget["total_steps"] == math.ceil(1e9 / 32_768) and budget["est_hours"] > 0
    assert budget["est_cost_usd"] > 0 and budget["est_node_type"] == "p5.48xlarge"
    assert main(["pretrain", "--config", "gpt1", "--plan", "--workers", "4-8", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "4-8 (elastic)" in out and "estimates, not measurements" in out
    assert "workers run on   A100 GPUs" in out and "compile          on;" in out
    # This machine has no GPU and joins no cluster: the plan is for its CPU workers, not an A100's.
    assert main(["pretrain", "--config", "tiny", "--plan", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert (
        "workers run on   CPU\n" in out and "compile          off;" in out and "A100" not in out.split("(")[0]
    )
    assert "on CPU workers: no time or cost estimate" in out and "MFU" not in out


def test_the_plan_counts_the_fixed_costs_and_flags_a_multi_node_type_without_efa(
    capsys, tmp_path, monkeypatch
):
    import yaml

    from gpt1.cli import main
    from pipeline.train import estimate

    def plan(*args: str) -> dict:
        assert main(["pretrain", "--config", "gpt1", "--plan=json", "--accelerator", "H100", *args]) == 0
        return json.loads(capsys.readouterr().out)

    sized = ("--set", "max_tokens=1000000000")
    efa = plan("--workers", "16", *sized)
    fixed = efa["est_fixed_s"]
    assert fixed["total"] == pytest.approx(sum(v for k, v in fixed.items() if k != "total"))
    # Staging sized by the run's tokens (no --data): 1e9 tokens of 2 bytes at the stated rate.
    assert fixed["staging"] == pytest.approx(2e9 / estimate.STAGE_RATE, rel=0.01)
    assert efa["est_fixed_cost_usd"] == pytest.approx(fixed["total"] / 3600 * 2 * 98.32)
    assert efa["est_total_cost_usd"] == pytest.approx(efa["est_cost_usd"] + efa["est_fixed_cost_usd"])
    assert all(m.startswith(("est.", "not counted", "as stated")) for m in efa["est_marks"].values())
    assert efa["est_bus_gbps"] == 240 and not efa["est_no_efa"]
    # gpu.yaml as it was: p5 nodes on Ray's own image. NCCL then goes over TCP, and the plan says so.
    stock = yaml.safe_load(estimate.CLUSTER_FILE.read_text())
    stock["available_node_types"]["gpu-8xH100"]["docker"]["worker_image"] = (
        "rayproject/ray:2.60.0-py311-cu128"
    )
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(stock))
    monkeypatch.setattr(estimate, "CLUSTER_FILE", tmp_path / "gpu.yaml")
    tcp = plan("--workers", "16", *sized)
    assert tcp["est_no_efa"] and tcp["est_bus_gbps"] == estimate.TCP_BUS_GBPS
    assert tcp["est_allreduce_ms"] > 40 * efa["est_allreduce_ms"] and "NO EFA" in tcp["est_marks"]["network"]
    assert tcp["est_fixed_s"]["install"] > efa["est_fixed_s"]["install"]  # nothing baked in
    assert main(["pretrain", "--config", "gpt1", "--plan", "--accelerator", "H100", "--workers", "16"]) == 0
    assert "WARNING          this node type runs on an image without EFA" in capsys.readouterr().out
    # One node crosses no network: nothing to flag. A preflight's figure, stated, is used as given.
    assert not plan("--workers", "8", *sized)["est_no_efa"]
    stated = plan("--workers", "16", *sized, "--set", "network_gbps=100")
    assert stated["est_bus_gbps"] == 100 and stated["est_marks"]["network"].startswith("as stated")


def test_an_auto_micro_batch_is_the_largest_that_fits_and_a_resume_keeps_it(tmp_path, capsys):
    import dataclasses

    from model import GPTConfig
    from pipeline.train import memory
    from pipeline.train.plan import plan_run, settle
    from pipeline.train.record import identity

    # What is tried: the divisors of each worker's share of a fixed batch, or powers of two
    # where batch_tokens sizes the batch from the micro-batch; the largest before the first
    # size that does not fit wins.
    assert memory.sizes(24, False) == [1, 2, 3, 4, 6, 8, 12, 24]
    assert memory.sizes(1, True) == [1, 2, 4, 8, 16, 32, 64]
    assert memory.largest_fitting([1, 2, 4, 8], lambda m: m * 3 <= 16) == 4
    tried = []
    assert memory.largest_fitting([1, 2, 4, 8], lambda m: tried.append(m) or m != 2) == 1
    assert tried == [1, 2]  # memory rises with the size: no larger size is tried after a failure
    assert memory.largest_fitting([4, 8], lambda m: False) is None

    gpt1 = load(PretrainConfig(), "gpt1", PRESETS_DIR)
    auto = dataclasses.replace(gpt1, micro_batch="auto", batch_tokens="auto")
    check_config(auto, 64)  # auto passes the checks made before anything is measured
    with pytest.raises(ConfigError, match="micro_batch 'big': expected a number of sequences"):
        check_config(dataclasses.replace(gpt1, micro_batch="big"), 8)
    manifest = {"splits": {"train": {"blocks": 64_000}}, "fingerprint": "f" * 64, "n_ctx": 512}
    # Measured 32 on the GPU: batch_tokens=auto makes the batch 64 x 32 sequences.
    plan = plan_run(auto, GPTConfig(), manifest, "ds", {"GPU": 64}, 64, use_gpu=True, fitted_micro=32)
    assert (plan.cfg.micro_batch, plan.cfg.batch_size, plan.asked.micro_batch) == (32, 2048, "auto")
    # The same settings name the same run whatever was measured; the record keeps the number.
    assert plan_run(auto, GPTConfig(), manifest, "ds", {"GPU": 8}, 8, use_gpu=True).name == plan.name
    started = settle(plan, manifest, None)
    old = {"pretrain": identity(started.cfg, GPTConfig(), manifest)["pretrain"]}
    assert old["pretrain"]["micro_batch"] == 32
    on8 = plan_run(auto, GPTConfig(), manifest, "ds", {"GPU": 8}, 8, use_gpu=True, fitted_micro=32)
    resumed = settle(on8, manifest, old)
    assert (resumed.cfg.micro_batch, resumed.cfg.batch_size) == (32, 2048)
    # Without a GPU to measure on, auto is each worker's share of the batch.
    fixed = dataclasses.replace(gpt1, micro_batch="auto")
    assert plan_run(fixed, GPTConfig(), manifest, "ds", {"CPU": 8}, 4).cfg.micro_batch == 16
    # --plan sizes it by the memory model and says so; the A10G's 24 GiB fits fewer than an H100's 80.
    from gpt1.cli import main

    def plan_of(*args: str) -> dict:
        assert main(["pretrain", "--config", "gpt1", "--plan=json", *args]) == 0
        return json.loads(capsys.readouterr().out)

    small = dataclasses.replace(GPTConfig(), n_ctx=512)
    from pipeline.train.estimate import activation_bytes, est_micro_batch

    assert activation_bytes(512, 768, 12) == 34 * 512 * 768 * 12
    big_model = dataclasses.replace(small, n_layer=48, n_embd=1600, n_head=25)
    assert est_micro_batch("A10G", big_model, 1_500_000_000, memory.sizes(1, True)) < est_micro_batch(
        "H100", big_model, 1_500_000_000, memory.sizes(1, True)
    )
    h100 = plan_of("--workers", "8", "--accelerator", "H100", "--set", "micro_batch=auto")
    assert h100["micro_batch"] == 8 and h100["micro_batch_estimated"]  # the share of 64 on 8 GPUs
    grown = plan_of(
        "--workers", "8", "--accelerator", "H100", "--set", "micro_batch=auto", "--set", "batch_tokens=auto"
    )
    assert grown["global_batch_sequences"] == 8 * grown["micro_batch"] and grown["micro_batch"] > 8
    # The paper's batch on 64 GPUs: one sequence each, and the plan says what that costs.
    assert main(["pretrain", "--config", "gpt1", "--plan", "--workers", "64", "--accelerator", "H100"]) == 0
    assert "1 sequence(s) a GPU a step" in capsys.readouterr().out


def test_worker_ranges_are_read_and_bad_ones_refused():
    from pipeline.train.config import parse_workers

    assert parse_workers("8") == (8, 8) and parse_workers("2-16") == (2, 16)
    for bad in ("0", "8-4", "x", "1-", "-3"):
        with pytest.raises(ConfigError, match=f"--workers {bad}: expected a count"):
            parse_workers(bad)


def test_the_batch_is_cut_for_any_worker_count_each_sequence_once_and_evenly():
    from pipeline.train.config import pieces, shares_by_rank

    for batch, micro in ((64, 1), (64, 8), (6, 2), (96, 4), (8, 8)):
        for world in range(1, batch + 1):
            shares = shares_by_rank(batch, micro, world)
            assert sorted(i for s in shares for i in s) == list(range(batch))  # each sequence once
            cuts = [pieces(batch, micro, world, r) for r in range(world)]
            assert all(0 < b - a <= micro for c in cuts for a, b, _ in c)
            keys = [k for c in cuts for _, _, k in c]
            assert len(set(keys)) == len(keys)  # a seed of its own for each piece
            m = batch // micro
            if m % world == 0:  # the micro-batches whole, dealt in turn: as before rebalancing
                assert cuts[0] == [(j * micro, (j + 1) * micro, j) for j in range(0, m, world)]
            else:  # B / W each, to within one: 56 workers for 64 micro-batches of 1 do 1 or 2 each
                assert max(map(len, shares)) == -(-batch // world) and min(map(len, shares)) == batch // world
            for c in cuts:  # a whole micro-batch keeps its key, so its dropout masks
                assert all(k == a // micro for a, b, k in c if b - a == micro and a % micro == 0)
