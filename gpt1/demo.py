"""The main job, end to end: prepare -> pretrain -> sweep on a local Ray instance, logged to MLflow.

    gpt1 demo [--workdir demo] [--size default|ci] [--fresh] [--lstm] [--seeds N]
    gpt1 demo --corpus PATH... --task NAME=PATH ...          the same flow on your own data

Without --corpus and --task it runs on built-in data that it writes itself (gpt1/world.py): a
corpus of English-like text about a small world, and four labeled tasks derived from it, one per
input transformation, whose dev splits only pretraining can help with. Each task is swept with
the ablation rows (full, λ = 0, no pretraining), and the end is a table per task and the command
that opens the MLflow UI on the results. --lstm adds Table 5's fourth row (an LSTM pretrained
on the same data, fine-tuned as the full row), and --seeds N runs each row over N seeds (its
cell: mean ± std); both cost time, so the default leaves them out and its last lines name them.

A re-run reuses every stage whose inputs are unchanged: the dataset (prepare's fingerprint), the
pretrained checkpoint and each task's sweep (recorded in WORKDIR/stages.json by the sha256 of
their inputs). --fresh deletes what an earlier demo wrote in WORKDIR (the entries stages.json
lists, and nothing else: never WORKDIR itself, never an input of the same command) and starts
over; the MLflow store keeps the old runs. That store is WORKDIR/mlflow.db (MLFLOW_TRACKING_URI
still names another), so the demo's runs never mix with the user's own.
--task NAME=PATH takes a registered task's directory (sst-2=glue/SST-2) or a directory with a
task.yaml (transformation, text_columns, label_column, labels, files).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from gpt1 import world
from pipeline import configio, env, errors, outdir
from pipeline.console import script as command
from pipeline.data.tasks import from_directory
from pipeline.files import sha256_file
from pipeline.runtime import ray_init
from pipeline.tracking import TRAINING_VIEW, check_store, tracking_uri
from tuning.report import report


@dataclass(frozen=True)
class Size:
    docs: int  # built-in corpus documents
    train: int  # labeled examples per built-in task
    dev: int
    steps: int  # pretraining updates
    samples: int  # --samples of each sweep: lr draws, each run at both λ of the demo space


SIZES = {
    "default": Size(docs=8000, train=500, dev=200, steps=2000, samples=1),
    # Every stage at a fraction of the size, for CI: the same flow in a few minutes.
    "ci": Size(docs=800, train=80, dev=60, steps=60, samples=1),
}


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# What the demo may write under WORKDIR, besides stages.json.
ENTRIES = ("builtin", "data", "runs", "report")
# The mark of a stages.json the demo wrote. A stages.json without it (a user's file of that name,
# or one from a demo too old to record what it wrote) vouches for nothing: the demo refuses it
# rather than guess which entries beside it are its own.
STAGES_FORMAT = "gpt1-demo-stages/2"


def is_demo_stages(path: Path) -> bool:
    try:
        done = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(done, dict)
        and done.get("format") == STAGES_FORMAT
        and isinstance(done.get("written"), list)
    )


class Stages:
    """WORKDIR/stages.json: each finished stage's result, under the sha256 of its inputs, and the
    entries of WORKDIR that the demo created (under "written"): the only ones --fresh removes,
    and the only dataset it replaces. A stages.json the demo did not write is refused."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists() and not is_demo_stages(path):
            raise errors.ConfigError(
                f"{path}: was not written by gpt1 demo (no {STAGES_FORMAT!r} format mark); "
                "nothing beside it is taken for the demo's: choose another --workdir (a directory an "
                "older demo wrote: delete it yourself)"
            )
        self.done = (
            json.loads(path.read_text()) if path.exists() else {"format": STAGES_FORMAT, "written": []}
        )

    @property
    def written(self) -> list[Path]:
        return [self.path.parent / n for n in self.done["written"] if n in ENTRIES]

    def claim(self, name: str) -> bool:
        """Record WORKDIR/name as the demo's if it does not exist yet; whether it is the demo's."""
        if name not in self.done["written"] and not (self.path.parent / name).exists():
            self.done["written"].append(name)
            self.save()
        return name in self.done["written"]

    def get(self, stage: str, key: str):
        entry = self.done.get(stage)
        return entry["result"] if entry and entry["key"] == key else None

    def put(self, stage: str, key: str, result) -> None:
        self.done[stage] = {"key": key, "result": result}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def builtin_data(work: Path, size: Size, stages: Stages) -> tuple[list[str], dict[str, Path]]:
    """The built-in corpus and task directories, written (deterministically) under work/builtin."""
    d = work / "builtin"
    if not stages.claim("builtin"):
        outdir.check_replaceable(d, "the demo's built-in data", lambda p: (p / "corpus.txt").is_file(), True)
    d.mkdir(parents=True, exist_ok=True)
    corpus = world.write_corpus(d / "corpus.txt", size.docs)
    # Text of the same world the model never trains on (another seed): what `evaluate` should read.
    world.write_corpus(d / HELD_OUT, max(size.docs // 20, 50), seed=1)
    return [str(corpus)], {n: world.write_task(n, d / n, size.train, size.dev) for n in world.TASKS}


HELD_OUT = "held-out.txt"  # in WORKDIR/builtin


def parse_tasks(pairs: list[str]) -> dict[str, Path]:
    tasks = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise errors.ConfigError(f"--task {pair!r}: expected NAME=PATH")
        if not Path(path).is_dir():
            raise errors.ConfigError(f"--task {pair}: {path} is not a directory")
        tasks[name] = Path(path).absolute()
    return tasks


def run_demo(
    work: Path,
    size: Size,
    corpus: list[str] | None = None,
    tasks: dict[str, Path] | None = None,
    lstm_row: bool = False,
    seeds: int = 1,
) -> dict:
    from pipeline.data.prepare import PrepareConfig, prepare
    from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig, pretrain
    from tuning.finetune import FinetuneConfig
    from tuning.search import SweepOptions, sweep_task
    from tuning.space import CONFIGS_DIR, load_space

    t_start = time.perf_counter()
    check_inputs(corpus, tasks)
    jobs = {
        name: (from_directory(name, d), d) for name, d in (tasks or {}).items()
    }  # before anything is written

    uri = tracking_uri()
    stages = Stages(work / "stages.json")  # a stages.json it did not write is refused before any write
    work.mkdir(parents=True, exist_ok=True)  # the demo's own store is created in it
    check_store(uri, skippable=False)
    stages.save()
    held_out = None
    if not tasks:
        corpus, tasks = builtin_data(work, size, stages)
        held_out = work / "builtin" / HELD_OUT
        jobs = {name: (from_directory(name, d), d) for name, d in tasks.items()}

    print(f"[1/4] prepare: {len(corpus)} corpus file(s) -> {work / 'data'}", flush=True)
    pcfg = configio.load(PretrainConfig(), str(PRESETS_DIR / "demo.yaml"))
    n_ctx = pcfg.model_overrides["n_ctx"]
    ray_init()
    # WORKDIR/data, where the demo made it, is the demo's: other inputs replace it (the same ones
    # are a no-op). A dataset it did not make is never replaced.
    manifest = prepare(
        corpus,
        work / "data",
        PrepareConfig(n_merges=2000, n_ctx=n_ctx, val_fraction=0.05),
        overwrite=stages.claim("data"),
    )

    def pretrained(preset: str, what: str) -> dict:
        """The demo's pretraining of one network: run, or reused where data and config are the same."""
        cfg = configio.load(PretrainConfig(), str(PRESETS_DIR / f"{preset}.yaml"))
        cfg = dataclasses.replace(cfg, max_steps=size.steps)
        key = _sha({"data": manifest["fingerprint"], "config": dataclasses.asdict(cfg)})
        stage = "pretrain" if preset == "demo" else f"pretrain:{preset}"
        pre = stages.get(stage, key)
        n = "[2/4]" if preset == "demo" else "[3/4]"  # the Transformer, then the LSTM
        if pre and Path(pre["checkpoint"]).is_dir():
            print(f"{n} pretrain {what}: reusing {pre['checkpoint']} (same data and config)", flush=True)
            return pre
        print(f"{n} pretrain {what}: {size.steps:,} steps of the {preset} preset on Ray Train", flush=True)
        stages.claim("runs")
        out = pretrain(work / "data", cfg, workers=1, storage=str(work / "runs"))
        pre = {
            "checkpoint": out["checkpoint"],
            "run_id": out["run_id"],
            "val_loss": out["metrics"].get("val_loss"),
        }
        stages.put(stage, key, pre)
        return pre

    pre = pretrained("demo", "the Transformer")
    # Table 5's fourth row: an LSTM pretrained on the same data, fine-tuned as the lstm row.
    lstm = pretrained("demo-lstm", "the LSTM") if lstm_row else None
    lstm_ckpt = Path(lstm["checkpoint"]) if lstm else None
    ckpt = Path(pre["checkpoint"])

    space = CONFIGS_DIR / "demo.yaml"
    epochs = load_space(FinetuneConfig(), "demo", str(space))["epochs"]
    results = {}
    for i, (name, (task, d)) in enumerate(jobs.items(), 1):
        files = sorted(str(p) for p in Path(d).iterdir() if p.is_file())
        # A grace period of every epoch: with two trials a task, ASHA would stop one at its first rung.
        opts = SweepOptions(
            samples=size.samples,
            space=str(space),
            ablations=True,
            grace_period=epochs,
            storage=str(work / "runs"),
            device="cpu",
            # One core a trial, so that two run at once: a 4 x 64 model's steps gain little from a
            # second thread, and one trial's start-up and evaluation overlap the other's training.
            cpus_per_trial=1,
            seeds=seeds,
            lstm_checkpoint=str(lstm_ckpt) if lstm_ckpt else None,
        )
        key = _sha(
            {
                "checkpoint": sha256_file(ckpt / "model.safetensors"),
                "lstm": sha256_file(lstm_ckpt / "model.safetensors") if lstm_ckpt else None,
                "files": [sha256_file(Path(f)) for f in files],
                "space": space.read_text(),
                "options": dataclasses.asdict(opts),
            }
        )
        done = stages.get(f"sweep:{name}", key)
        if done and lstm_row and "lstm" not in done.get("ablations", {}):  # recorded without that row
            done = None
        if done:
            print(
                f"[4/4] sweep {name} ({i}/{len(jobs)}): reusing MLflow run {done['parent_run_id']}",
                flush=True,
            )
        else:
            print(f"[4/4] sweep {name} ({i}/{len(jobs)}): {task.transformation}", flush=True)
            r = sweep_task(task, Path(d), ckpt, opts, uri, lstm_checkpoint=lstm_ckpt)
            done = {
                "parent_run_id": r["parent_run_id"],
                "metric": task.metrics[0],
                "best": r["best"],
                "best_lm_coef": r["best_config"]["lm_coef"],
                "transformation": task.transformation,
                "seeds": seeds,
                "ablations": {a["ablation"]: [a["mean"], a["std"]] for a in r["ablation_summary"]},
            }
            stages.put(f"sweep:{name}", key, done)
        results[name] = done

    print()
    # "no pretraining" runs at the best trial's settings, its λ included: the two columns differ
    # in the pretraining alone.
    if seeds > 1:
        print(f"The ablation rows' cells: mean ± std of the best dev metric over {seeds} seeds.\n")
    rows = ["no_pretraining", "full", "no_aux_lm", *(["lstm"] if lstm_row else [])]
    heads = {"no_pretraining": "no pretraining", "full": "full (λ 0.5)", "no_aux_lm": "λ = 0", "lstm": "LSTM"}
    print(
        "| task | transformation | metric | best trial | its λ | " + " | ".join(heads[a] for a in rows) + " |"
    )
    print("|---|---|---|---:|---:|" + "---:|" * len(rows))

    def cell(mean_std):
        mean, std = mean_std
        return f"{mean:.3f}" if seeds == 1 else f"{mean:.3f} ± {std:.3f}"

    for name, r in results.items():
        a = r["ablations"]
        print(
            f"| {name} | {r['transformation']} | {r['metric']} | {r['best']:.3f} | {r['best_lm_coef']} | "
            + " | ".join(cell(a[row]) for row in rows)
            + " |"
        )
    # The paper's tables beside ours (gpt1 report): the built-in tasks are not the paper's, so
    # they come under its "other tasks", with every ablation row.
    from mlflow.tracking import MlflowClient

    stages.claim("report")
    report(MlflowClient(uri), work / "report")
    text = (work / "report" / "report.md").read_text()
    # Its Table 5 and the demo's own tasks; the whole report (Tables 2-4, Figure 2, the ledger of
    # deviations) is in the file.
    print(f"\nFrom the report (gpt1 report), all of it in {work / 'report' / 'report.md'}:\n")
    print(text[text.index("### Table 5") : text.index("### Figure 2")].rstrip() + "\n")
    print(f"done in {time.perf_counter() - t_start:.0f} s.")
    left_out = [
        *([] if lstm_row else ["Table 5's LSTM row (--lstm)"]),
        *([] if seeds > 1 else ["each row's spread over seeds (--seeds 2)"]),
    ]
    if left_out:  # the slower rows: named, with the option that adds them
        print(
            f"\nLeft out to save time: {' and '.join(left_out)}. The same command with "
            f"{' '.join(o[o.index('(') + 1 : -1] for o in left_out)} adds them (the data and the "
            "pretrained Transformer are reused)."
        )
    what_next(uri, pre, results, work, held_out)
    return {"pretrain": pre, "sweeps": results, "uri": uri}


def what_next(uri: str, pre: dict, results: dict, work: Path, held_out: Path | None) -> None:
    """The demo's last lines: where its models are, and the commands that look at them. The
    commands name this environment's own scripts, which need not be on PATH. evaluate reads
    held-out text: the built-in data's, or, for a corpus of the user's, text they set aside."""
    import shlex

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)

    print("\nThe runs, in the MLflow UI:")
    print(f"    {command('mlflow')} ui --backend-store-uri {uri}")
    for name in ["gpt1-pretrain", *(f"gpt1-finetune-{task}" for task in results)]:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            print(f"    http://127.0.0.1:5000/#/experiments/{exp.experiment_id}{TRAINING_VIEW}   {name}")
    ckpt = pre["checkpoint"]
    print("\nThe models:")
    print(f"    pretrained: {ckpt}")
    for task in results:
        versions = client.search_model_versions(f"name='gpt1-{task}'")
        if versions:
            newest = max(int(v.version) for v in versions)
            print(f"    fine-tuned on {task}: models:/gpt1-{task}/{newest} in the registry")
    print(f"    every trial's checkpoints: {work / 'runs'}")
    gpt1 = command("gpt1")
    print("\nTry the pretrained model:")
    print(f"    {gpt1} generate --checkpoint {shlex.quote(str(ckpt))} --prompt 'the'")
    text = shlex.quote(str(held_out)) if held_out else "HELD_OUT.txt"
    print(f"    {gpt1} evaluate --checkpoint {shlex.quote(str(ckpt))} --corpus {text}", end="")
    print("" if held_out else "   (text of yours the model did not train on)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir", default="demo", help="where the data, checkpoints and trials go (default ./demo)"
    )
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="default",
        help="default (about 4 minutes on 2 cores) or ci (every stage shrunk)",
    )
    p.add_argument(
        "--lstm",
        action="store_true",
        help="add Table 5's LSTM row: an LSTM pretrained on the same data, fine-tuned as the full row",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="run each ablation row over N seeds; its cell is the mean ± std (default: 1)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="remove what an earlier demo wrote in WORKDIR (only that), then run every stage again",
    )
    p.add_argument(
        "--corpus", nargs="+", help="your unlabeled text (files, globs, directories), instead of the built-in"
    )
    p.add_argument(
        "--task", action="append", default=[], metavar="NAME=PATH", help="your labeled task (repeatable)"
    )


def check_inputs(corpus: list[str] | None, tasks: dict[str, Path] | None) -> None:
    if bool(corpus) != bool(tasks):
        raise errors.ConfigError(
            "--corpus and --task go together: give both, or neither for the built-in data"
        )


def fresh(work: Path, inputs: list[Path]) -> None:
    """--fresh: remove what an earlier demo wrote in work (stages.json's entries, and stages.json
    itself), after checking that none of it holds one of inputs (this command's corpus, tasks and
    MLflow store). work itself stays, with whatever else it holds."""
    if not work.exists():
        return

    # Only a demo's own directory is touched: --workdir ~ --fresh must not empty a home.
    outdir.check_replaceable(work, "a demo directory", lambda d: is_demo_stages(d / "stages.json"), True)
    if not (work / "stages.json").exists():
        return  # empty
    stages = Stages(work / "stages.json")
    for entry in stages.written:
        for path in inputs:
            if entry in (path, *path.parents):
                raise errors.ConfigError(
                    f"--fresh: {entry} holds {path}, an input of this command; "
                    "move the input out of the demo's directory, or drop --fresh"
                )
    for entry in stages.written:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
    stages.path.unlink()


def run(args: argparse.Namespace) -> None:
    import os

    work = Path(args.workdir).absolute()
    # The demo's runs in a store of its own, under WORKDIR (MLFLOW_TRACKING_URI still wins): in the
    # working directory's ./mlflow.db they would mix with the user's, and its report with theirs.
    # Set for the demo's time, so every process it starts (Ray's workers, Tune's trials) inherits it.
    given = env.tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = given or f"sqlite:///{work / 'mlflow.db'}"
    try:
        _run(args, work)
    finally:
        if given is None:
            del os.environ["MLFLOW_TRACKING_URI"]


def _run(args: argparse.Namespace, work: Path) -> None:

    # Every argument is checked before anything is touched.
    tasks = parse_tasks(args.task)
    check_inputs(args.corpus, tasks)
    if args.fresh:
        inputs = [Path(c).absolute() for c in args.corpus or []] + list(tasks.values())
        uri = tracking_uri()
        if uri.startswith("sqlite:///"):
            inputs.append(Path(uri.removeprefix("sqlite:///")).absolute())
        fresh(work, inputs + [p.resolve() for p in inputs])
    if args.seeds < 1:
        raise errors.ConfigError(f"--seeds {args.seeds}: expected at least 1")
    run_demo(work, SIZES[args.size], args.corpus, tasks, lstm_row=args.lstm, seeds=args.seeds)


def main(argv: list[str] | None = None) -> int:
    return errors.stage_main("demo", __doc__, add_arguments, run, argv)
