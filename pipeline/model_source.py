"""What --checkpoint names, and predict's and serve's --model: one meaning for every verb, as a
local model directory.

    a model directory            itself (native, Hugging Face or the released layout)
    a pretraining run            its newest complete checkpoint (a directory of checkpoint_NNNNNNNNN)
    models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/PATH
                                 an MLflow model, downloaded from the store (pipeline.tracking)
    s3://... (any pyarrow URI)   a copy of it, or of its newest checkpoint where it is a run
    OWNER/NAME, NAME             a Hugging Face hub model (openai-community/openai-gpt), where no
                                 such local path exists: fetched by huggingface_hub into its cache
                                 (HF_HOME), which HF_HUB_OFFLINE=1 reads without the network

Where the spec is not the directory itself, a line says what it was taken for. Anything else is
one line naming the option and what was expected.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline import errors
from pipeline.tracking import tracking_uri

# Every --checkpoint's help: the one meaning (the module's table).
CHECKPOINT_HELP = (
    "a model directory, a pretraining run's directory (its newest checkpoint), models:/NAME/VERSION "
    "or models:/NAME@ALIAS, an s3:// URI, or a Hugging Face hub id (openai-community/openai-gpt)"
)
# The files a GPT-1 model directory may need, of the many a hub repository holds (its
# pytorch_model.bin and tf_model.h5 repeat model.safetensors).
HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*.bpe", "*.npy"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def newest_of_run(spec: str, option: str = "--checkpoint") -> str:
    """spec as given, or, where it names a pretraining run (a directory or a URI holding
    checkpoint_NNNNNNNNN directories), the run's newest complete checkpoint, said in a line."""
    from pipeline import remote

    run = remote.Location.of(spec).local
    if run is not None and not any(run.glob("checkpoint_[0-9]*")):
        return spec  # a model directory, or nothing: torch is not needed to say so
    from pipeline.model_dir import latest_checkpoint

    newest = latest_checkpoint(str(spec).rstrip("/"))
    if newest is None:
        return spec
    print(f"{option} {spec}: a pretraining run; its newest checkpoint is {newest[0]}", flush=True)
    return newest[0]


def is_hub_id(spec: str) -> bool:
    from pipeline import remote

    here = remote.Location.of(spec).local
    return here is not None and not here.exists() and bool(_HUB_ID.fullmatch(str(spec)))


@contextlib.contextmanager
def local_model(
    spec, option: str = "--checkpoint", what: str = "a model directory"
) -> Iterator[tuple[Path, str]]:
    """The model spec names (see the module's table), as a local directory for the block, and
    where it came from: the run's newest checkpoint for a run, else spec (the lineage's key)."""
    spec = str(spec)
    if spec.startswith(("models:/", "runs:/")):
        with _mlflow_model(spec, option) as d:
            yield d, spec
        return
    if is_hub_id(spec):
        yield _hub_model(spec, option), spec
        return
    from pipeline import remote

    spec = newest_of_run(spec, option)
    with remote.fetched(spec, what) as d:
        yield d, spec.rstrip("/")


@contextlib.contextmanager
def _mlflow_model(spec: str, option: str) -> Iterator[Path]:
    import mlflow

    # Its download bar would land on the command's console, between the command's own lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri()  # named per call: mlflow.set_tracking_uri would change the whole process's
    with tempfile.TemporaryDirectory(prefix="gpt1-model-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=spec, dst_path=tmp, tracking_uri=uri, registry_uri=uri
            )
        except Exception as err:  # MLflow's errors for an unknown name, version or alias
            raise errors.ConfigError(f"{option} {spec}: {str(err).splitlines()[0]}") from None
        print(f"{option} {spec}: the MLflow model, downloaded to {path}", flush=True)
        yield Path(path)


def _hub_model(spec: str, option: str) -> Path:
    import huggingface_hub

    try:
        path = huggingface_hub.snapshot_download(repo_id=spec, allow_patterns=HUB_FILES)
    except Exception as err:  # not on the hub, no network and not in the cache, no access
        said = " ".join(str(err).split())[:300]
        raise errors.ConfigError(
            f"{option} {spec}: no such directory, nor a Hugging Face hub model in reach "
            f"({type(err).__name__}: {said}); expected a model directory, a run's directory, "
            "models:/NAME/VERSION, an s3:// URI or a hub id such as openai-community/openai-gpt"
        ) from None
    print(f"{option} {spec}: the Hugging Face hub model, in its cache at {path}", flush=True)
    return Path(path)
