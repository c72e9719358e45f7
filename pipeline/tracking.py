"""MLflow helpers: the default SQLite store, and what each stage logs."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def log_prepare(out: Path, cfg, manifest: dict) -> str:
    """A run in experiment gpt1-prepare: options, counts, manifest and tokenizer. Returns its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment("gpt1-prepare")
    with mlflow.start_run(run_name=out.name) as run:
        mlflow.log_params(dataclasses.asdict(cfg))
        mlflow.set_tags({"dataset": str(out), "tokenizer_sha256": manifest["tokenizer"]["sha256"],
                         "fingerprint": manifest["fingerprint"]})
        for split, c in manifest["splits"].items():
            mlflow.log_metrics({f"{split}_{k}": v for k, v in c.items()})
        mlflow.log_metrics({"replaced_bytes": manifest["replaced_bytes"],
                            "vocab_size": manifest["tokenizer"]["vocab_size"]})
        mlflow.log_artifact(str(out / "manifest.json"))
        mlflow.log_artifact(str(out / "tokenizer.json"))
    return run.info.run_id
