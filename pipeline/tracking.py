"""Every MLflow call of pipeline/: the default SQLite store, its experiments and artifact
root, and what prepare and pretrain log."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline import env
from pipeline.errors import UserError
from pipeline.files import machine_lock, sha256_file
from pipeline.outdir import check_writable, lock_file_of


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db in the working directory."""
    return env.tracking_uri() or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_store(uri: str, skippable: bool = True) -> None:
    """Raise UserError unless the MLflow store at uri can be read and written: checked before a
    stage does its work, so that a bad store costs a line, not the work.

    An SQLite store is opened and a write is tried (and rolled back); a new one needs a writable
    directory, and is created here, its tables made and migrated by one process of the machine at
    a time: two commands started at once on a new store would both migrate it, and the second
    would fail at its end ("duplicate column name"). An HTTP server must answer /health within
    10 s. Other stores are left to MLflow."""
    import sqlite3
    import urllib.parse
    import urllib.request

    # skippable: whether the command has --no-mlflow (a sweep's and the demo's results are their runs).
    fix = "set MLFLOW_TRACKING_URI to a usable store (sqlite:///PATH/mlflow.db)" + (
        ", or pass --no-mlflow" if skippable else ""
    )
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.exists():
            try:
                check_writable(path)
            except UserError as err:
                raise UserError(f"MLflow store {uri}: cannot be created ({err}); {fix}") from None
        try:
            if path.exists():  # a read-only or damaged store is found by a write, before MLflow opens it
                con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=10)
                try:
                    con.execute("BEGIN IMMEDIATE")
                    con.execute("CREATE TABLE gpt1_store_probe (x)")
                    con.execute("ROLLBACK")
                finally:
                    con.close()
            _create_store(uri, path)
        except sqlite3.Error as err:
            raise UserError(f"MLflow store {uri}: cannot be used ({err}); {fix}") from None
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
        except OSError as err:
            raise UserError(f"MLflow server {uri}: does not answer ({err}); {fix}") from None
    elif urllib.parse.urlparse(uri).scheme in ("", "file"):  # a path, or file:
        raise UserError(f"MLflow store {uri}: a file store, which this MLflow cannot use; {fix}")


def _create_store(uri: str, path: Path) -> None:
    """MLflow's tables in the SQLite store at path, made or migrated under a lock of the machine
    (a no-op for a store already up to date)."""
    import logging
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # MLflow and alembic announce each table and migration at INFO: quiet here, as a command's
    # console is its own lines.
    loggers = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
    levels = [lg.level for lg in loggers]
    with machine_lock(lock_file_of(f"mlflow:{path.absolute()}")):
        try:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
            SqlAlchemyStore(uri, artifact_root(uri))
        except Exception as err:  # SQLAlchemy's errors wrap sqlite3's
            orig = getattr(err, "orig", None)
            if isinstance(orig, sqlite3.Error):
                raise orig from None
            raise
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def artifact_root(uri: str) -> str | None:
    """Where the artifacts of a store's experiments go: for sqlite:///DIR/mlflow.db, the folder
    DIR/mlartifacts beside it (MLflow's own default is ./mlruns of whatever directory a command
    runs in, which scatters one store's runs over many); for a server, None: the server decides."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).absolute().parent / "mlartifacts").as_uri()
    return None


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, an assistant);
# these are training runs, whose view shows runs, charts and Compare.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTIONS = {
    "gpt1-prepare": "Datasets made by gpt1 prepare: token counts, the manifest and the tokenizer.",
    "gpt1-pretrain": "Pretraining runs (L1): loss, lr, val loss and zero-shot curves; checkpoints.",
    "gpt1-evaluate": "Evaluations of a model: val loss, perplexity, bits per byte, zero-shot heuristics.",
}


def description(name: str) -> str:
    if name.startswith("gpt1-finetune-"):
        task = name[len("gpt1-finetune-") :]
        return f"Fine-tuning on {task} (L3 = L2 + λ·L1): sweeps, their trials and the ablation rows."
    return DESCRIPTIONS.get(name, "")


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created (its artifacts under artifact_root) if it does not
    exist yet. Every experiment of the project is made here, as a training experiment with a
    one-line description; one made by an earlier version gets them the first time it is used."""
    tags = {**EXPERIMENT_KIND, "mlflow.note.content": description(name)}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(client.tracking_uri)
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None, tags=tags)
    for key, value in tags.items():
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_terminated(run_id, status)


def log_prepare(out, cfg, manifest: dict, files: Path | None = None) -> str:
    """A run in experiment gpt1-prepare: options, counts, manifest and tokenizer. Returns its id.
    out is the dataset's path or URI; files, where given, a local copy of its files to log.

    Through a client, not mlflow's fluent API, whose tracking URI and active run are process-wide
    state that would outlive the call."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    files = Path(files or out)
    client = MlflowClient(tracking_uri())
    run = client.create_run(
        experiment_id(client, "gpt1-prepare"),
        run_name=str(out).rstrip("/").rsplit("/", 1)[-1],
        tags={
            "dataset": str(out),
            "tokenizer_sha256": manifest["tokenizer"]["sha256"],
            "fingerprint": manifest["fingerprint"],
        },
    )
    run_id, ts = run.info.run_id, int(time.time() * 1000)
    metrics = {f"{split}_{k}": v for split, c in manifest["splits"].items() for k, v in c.items()}
    metrics.update(replaced_bytes=manifest["replaced_bytes"], vocab_size=manifest["tokenizer"]["vocab_size"])
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in dataclasses.asdict(cfg).items()],
        metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
    )
    client.log_artifact(run_id, str(files / "manifest.json"))
    client.log_artifact(run_id, str(files / "tokenizer.json"))
    client.set_terminated(run_id)
    return run_id


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: nested config as MLflow params."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def git_commit() -> str:
    """The project's commit, or 'unknown' where it is not a git checkout (a Ray job's copy)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def find_run(client, experiment: str, tag: str, value: str):
    """The newest run of experiment tagged tag=value, or None."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.{tag} = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def weights_sha256(ckpt: Path) -> str:
    """The sha256 of a model directory's weights: model.safetensors (native and Hugging Face), or
    for the original OpenAI release, of its params_<i>.npy files' own sha256s, in order."""
    import hashlib

    if (ckpt / "model.safetensors").exists():
        return sha256_file(ckpt / "model.safetensors")
    parts = sorted(ckpt.glob("params_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
    return hashlib.sha256("".join(sha256_file(p) for p in parts).encode()).hexdigest() if parts else "unknown"


def checkpoint_lineage(client, checkpoint: Path, where: str | None = None) -> dict[str, str]:
    """Tags linking a run to the checkpoint it read: its address (`where`, when checkpoint is a
    local copy of one on object storage), its weights' and tokenizer's sha256, and the run that
    wrote it. A pretraining checkpoint's run is found by the run path its MLflow run is tagged
    with; a fine-tuned model (it holds task.json) by its weights' sha256, which the sweep tags on
    the trial whose model it registers, and that trial's pretrain run comes with it."""
    import json

    ckpt = Path(checkpoint).absolute()
    where = where or str(ckpt)
    tags = {"checkpoint": where, "checkpoint_sha256": weights_sha256(ckpt)}
    if (ckpt / "tokenizer.json").exists():
        tags["tokenizer_sha256"] = sha256_file(ckpt / "tokenizer.json")
    if (ckpt / "task.json").exists():
        task = json.loads((ckpt / "task.json").read_text()).get("task")
        trial = find_run(client, f"gpt1-finetune-{task}", "model_sha256", tags["checkpoint_sha256"])
        if trial is not None:
            tags.update(run_tags(client, "finetune", trial))
            for key in ("pretrain_run_id", "pretrain_run_url"):
                if key in trial.data.tags:
                    tags[key] = trial.data.tags[key]
        return tags
    pretrain = find_run(client, PRETRAIN_EXPERIMENT, "run_path", where.rsplit("/", 1)[0])
    if pretrain is not None:
        tags.update(run_tags(client, "pretrain", pretrain))
    return tags


# MLflow 3.17's UI opens in its GenAI view unless the address asks for the training one (its
# experimentKind tag is not read while the workflow switch is on), and remembers the switch only
# when a user clicks it: the addresses the project prints carry the view.
TRAINING_VIEW = "?workflowType=machine_learning"


def run_tags(client, kind: str, run) -> dict[str, str]:
    """<kind>_run_id, and where the store is a tracking server, <kind>_run_url: the run's page,
    a link in the UI's tags (an SQLite store has no address of its own to link to)."""
    tags = {f"{kind}_run_id": run.info.run_id}
    uri = client.tracking_uri
    if uri.startswith(("http://", "https://")):
        tags[f"{kind}_run_url"] = (
            f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{TRAINING_VIEW}"
        )
    return tags


PRETRAIN_EXPERIMENT = "gpt1-pretrain"


def start_pretrain_run(
    uri: str, name: str, run_path: str, cfg, gcfg, manifest: dict, data: Path, world: int
) -> str:
    """The MLflow run for run_path: found again when the run is resumed, else created with its
    params, lineage tags and artifacts. Returns its id."""
    import hashlib
    import json
    import tempfile

    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = experiment_id(client, PRETRAIN_EXPERIMENT)
    run = find_run(client, PRETRAIN_EXPERIMENT, "run_path", run_path)
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        client.set_tag(run.info.run_id, "world_size", str(world))
        return run.info.run_id
    prepare_run = find_run(client, "gpt1-prepare", "fingerprint", manifest["fingerprint"])
    files = {n: _dataset_file(data, n) for n in ("manifest.json", "tokenizer.json")}
    manifest_sha = hashlib.sha256(files["manifest.json"]).hexdigest()
    tags = {
        "run_path": run_path,
        "dataset": str(data),
        "data_fingerprint": manifest["fingerprint"],
        "data_manifest_sha256": manifest_sha,
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "git_commit": git_commit(),
        "world_size": str(world),
    }
    if prepare_run is not None:
        tags["prepare_run_id"] = prepare_run.info.run_id
    run = client.create_run(exp_id, run_name=name, tags=tags)
    params = flatten(
        {
            **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "model_overrides"},
            "model_config": gcfg.to_dict(),
        }
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pretrain_config.json").write_text(
            json.dumps({"pretrain": dataclasses.asdict(cfg), "model": gcfg.to_dict()}, indent=2) + "\n"
        )
        client.log_artifact(run.info.run_id, str(Path(tmp) / "pretrain_config.json"))
        for n, content in files.items():
            (Path(tmp) / n).write_bytes(content)
            client.log_artifact(run.info.run_id, str(Path(tmp) / n), "data")
    return run.info.run_id


def log_preflight(uri: str, name: str, metrics: dict, table: str) -> str:
    """A run in gpt1-pretrain for `pretrain --preflight` of run `name`: the network's figures as
    metrics and the printed table as network.txt. Returns its id."""
    import tempfile
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run(
        experiment_id(client, PRETRAIN_EXPERIMENT),
        run_name=f"{name}-preflight",
        tags={"preflight_of": name, "git_commit": git_commit()},
    )
    ts = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "network.txt").write_text(table)
        client.log_artifact(run.info.run_id, str(Path(tmp) / "network.txt"))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _dataset_file(data, name: str) -> bytes:
    """A file of a dataset directory or object-storage prefix."""
    from pipeline import remote

    return (remote.Location.of(data) / name).read_bytes()


class RunLogger:
    """What rank 0 of a training job logs into an existing MLflow run.

    With background, log() only queues the metrics (each with the time it was called) and a
    thread sends them, retrying while the server does not answer: an MLflow outage neither
    stalls the training step nor fails the run, and the metrics arrive once it is back. The queue
    holds BACKLOG batches; past that the oldest are dropped, and their count is logged as
    mlflow_dropped_batches when the server answers again. flush() waits for the queue to empty
    (the run's end does, before the model is logged)."""

    BACKLOG = 10_000  # batches: at a log every 10 steps, 100,000 steps of an outage
    RETRY_MAX_S = 30.0  # the longest wait between two tries while the server does not answer

    def __init__(self, uri: str, run_id: str, background: bool = False):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(uri), run_id
        self.queue = None
        if background:
            import collections
            import threading

            self.queue = collections.deque()
            self.dropped, self.wake = 0, threading.Condition()
            threading.Thread(target=self._send, name="gpt1-mlflow", daemon=True).start()

    def log(self, metrics: dict, step: int, tags: dict | None = None) -> None:
        import time

        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        batch = (
            [Metric(k, float(v), ts, step) for k, v in metrics.items()],
            [RunTag(k, str(v)) for k, v in (tags or {}).items()],
            step,
        )
        if self.queue is None:
            self.client.log_batch(self.run_id, metrics=batch[0], tags=batch[1])
            return
        with self.wake:
            if len(self.queue) >= self.BACKLOG:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(batch)
            self.wake.notify()

    def pending(self) -> int:
        """Batches queued and not yet sent."""
        return len(self.queue) if self.queue is not None else 0

    def _send(self) -> None:
        import time

        from mlflow.entities import Metric

        wait = 1.0
        while True:
            with self.wake:
                while not self.queue:
                    self.wake.wait()
                batch, dropped = self.queue[0], self.dropped
            try:
                if dropped:
                    note = Metric("mlflow_dropped_batches", float(dropped), int(time.time() * 1000), batch[2])
                    self.client.log_batch(self.run_id, metrics=[note])
                    with self.wake:
                        self.dropped -= dropped
                self.client.log_batch(self.run_id, metrics=batch[0], tags=batch[1])
            except Exception:  # the server down or failing: keep the batch, try again later
                time.sleep(wait)
                wait = min(wait * 2, self.RETRY_MAX_S)
                continue
            wait = 1.0
            with self.wake:
                if self.queue and self.queue[0] is batch:
                    self.queue.popleft()
                self.wake.notify_all()

    def flush(self, timeout: float = 300.0) -> bool:
        """Wait up to timeout seconds for every queued batch to be sent; whether they were."""
        import time

        if self.queue is None:
            return True
        end = time.monotonic() + timeout
        with self.wake:
            while self.queue and time.monotonic() < end:
                self.wake.wait(timeout=min(1.0, end - time.monotonic()))
            return not self.queue

    def log_artifact(self, path, artifact_path: str) -> bool:
        """A file into the run's artifacts, at once; whether it got there (an MLflow outage is a
        warning here, not the run's end)."""
        import warnings

        try:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            return True
        except Exception as err:
            warnings.warn(f"MLflow: could not log {path} ({str(err).splitlines()[0]})", stacklevel=2)
            return False

    def log_curves(self, prefix: str, name: str, title: str) -> None:
        """A PNG of every metric whose key starts with prefix, against the step: the run's whole
        history (a resumed run's too), each step's latest value."""
        import tempfile

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.flush()
        keys = sorted(k for k in self.client.get_run(self.run_id).data.metrics if k.startswith(prefix))
        if not keys:
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in keys:
            history = sorted(self.client.get_metric_history(self.run_id, k), key=lambda m: m.timestamp)
            points = sorted({m.step: m.value for m in history}.items())
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=k.removeprefix(prefix))
        ax.set_xlabel("pretraining updates")
        ax.set_ylabel("zero-shot metric")
        ax.set_title(title)
        ax.legend()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            fig.savefig(path, dpi=120, bbox_inches="tight")
            self.client.log_artifact(self.run_id, str(path))
        plt.close(fig)

    def log_model(self, gpt, tokenizer_path) -> None:
        """The final model, native and Hugging Face (a Transformer; an LSTM has no Hugging Face
        layout), each with the tokenizer."""
        import shutil
        import tempfile

        self.flush()
        with tempfile.TemporaryDirectory(prefix="gpt1-model-") as tmp:
            formats = (("native", "model"), ("hf", "model-hf"))
            for fmt, name in formats if gpt.config.arch == "transformer" else formats[:1]:
                d = Path(tmp) / name
                gpt.save_pretrained(d, format=fmt)
                shutil.copy(tokenizer_path, d / "tokenizer.json")
                self.client.log_artifacts(self.run_id, str(d), name)
