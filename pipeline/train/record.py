"""The run record: what makes two runs the same run, the file that holds it (STORAGE/RUN/gpt1_run.json),
and a finished run found from it before Ray starts.

A run's record is written when it starts; a later command with the same name resumes it only with
the same identity (the settings that change results, the model, the data), or says which
settings differ. A run whose newest checkpoint is its last step is answered from the record and
the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from model import GPTConfig
from pipeline import errors, remote
from pipeline.data.dataset import BlockOrder
from pipeline.runtime import storage_path
from pipeline.tracking import PRETRAIN_EXPERIMENT, find_run
from pipeline.train.config import NOT_IN_IDENTITY, PretrainConfig, default_run_name, scale_batch

RUN_FILE = "gpt1_run.json"  # in STORAGE/RUN: what the run was started with


def identity(cfg: PretrainConfig, gcfg: GPTConfig, manifest: dict) -> dict:
    """What makes two runs the same run: the options that change results, the model, the data."""
    opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_IDENTITY}
    return {
        "pretrain": opts,
        "model": gcfg.to_dict(),
        "data_fingerprint": manifest["fingerprint"],
        "block_order": BlockOrder.VERSION,
    }


def run_name(cfg: PretrainConfig, gcfg: GPTConfig, manifest: dict, data: str, name: str | None = None) -> str:
    """The run's name: the one given, else one from the dataset's name, the preset and a digest of
    the settings as given (so a resume on another worker count finds the same run)."""
    if name:
        return name
    digest = hashlib.sha256(json.dumps(identity(cfg, gcfg, manifest), sort_keys=True).encode()).hexdigest()
    return default_run_name(data, cfg.model, digest[:8])


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _run_file(run_path: str):
    fs, path = remote.filesystem(run_path)
    return fs, path, f"{path}/{RUN_FILE}"


def recorded_run(run_path: str) -> dict | None:
    """What the run at run_path was started with (its identity), or None for a new run."""
    import pyarrow.fs as pafs

    fs, _, file = _run_file(run_path)
    if fs.get_file_info(file).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(file) as f:
        return json.loads(f.read())


def claim_run(run_path: str, ident: dict, old: dict | None) -> None:
    """Record what the run at run_path is, or check that an existing one (`old`) is this one. A
    run cannot be resumed with other data or other results-changing options."""
    if old is not None:
        diff = _differences(old, ident)
        if diff:
            raise errors.ConfigError(
                f"{run_path}: this run was started with other settings "
                f"({'; '.join(diff[:3])}); to start a new run, pass another --name"
            )
        return
    fs, path, file = _run_file(run_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(file) as f:
        f.write((json.dumps(ident, indent=2, sort_keys=True) + "\n").encode())


def completed_run(
    cfg: PretrainConfig,
    gcfg: GPTConfig,
    manifest: dict,
    data: str,
    name: str | None,
    storage: str | None,
    uri: str | None,
) -> dict | None:
    """A run already trained to its last step, found from its record and its newest checkpoint
    alone, before Ray starts: pretrain's result for it, or None where there is work left. A
    time-limited run counts only once its budget is decided (loop.py); a record that differs from
    these settings is the ConfigError a resume would raise."""
    from pipeline.model_dir import STATE_FILE, latest_checkpoint

    name = run_name(cfg, gcfg, manifest, data, name)
    run_path = f"{storage_path(storage)}/{name}"
    old = recorded_run(run_path)
    newest = latest_checkpoint(run_path) if old else None
    if not newest:
        return None
    fs, path = remote.filesystem(newest[0])
    state = remote.read_json(fs, f"{path}/{STATE_FILE}")
    if state["step"] < state["total_steps"] or not state.get("budget_decided", True):
        return None
    # The settings the run trained with, as launch() settles them: its own batch and micro-batch.
    ran = scale_batch(cfg, 1, gcfg.n_ctx, batch=old["pretrain"]["batch_size"])
    ran = dataclasses.replace(ran, micro_batch=old["pretrain"].get("micro_batch", ran.micro_batch))
    claim_run(run_path, identity(ran, gcfg, manifest), old)
    from pipeline.train.ray_train import remove_orphan_staging

    remove_orphan_staging(run_path)  # a killed writer's leftovers go, as a resume removes them
    metrics, run_id = {"step": state["step"]}, None
    if uri:
        from mlflow.tracking import MlflowClient

        found = find_run(MlflowClient(uri), PRETRAIN_EXPERIMENT, "run_path", run_path)
        if found is not None:
            run_id = found.info.run_id
            metrics.update({k: v for k, v in found.data.metrics.items() if k.startswith("val_")})
    print(
        f"run {name} is complete: step {state['step']:,} of {state['total_steps']:,}, nothing to do; "
        f"newest checkpoint {newest[0]}" + (f"; MLflow run {run_id}" if run_id else ""),
        flush=True,
    )
    return {"metrics": metrics, "checkpoint": newest[0], "run_id": run_id, "name": name, "run_path": run_path}
