"""Where a command runs: which Ray it joins, and where a run's files go."""
from __future__ import annotations

import logging
import os
from pathlib import Path


def ray_init() -> None:
    """Join the cluster that RAY_ADDRESS names (a `ray job submit` job has it set), else start a
    new local instance of this process's own: never a cluster that another process on the machine
    happened to start with `ray start`, which could be stopped under the command. The first line
    of output says which it is."""
    import ray
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, logging_level=logging.WARNING)
    where = ray.get_runtime_context().gcs_address
    print(f"Ray: {'a new local instance' if address == 'local' else 'the cluster'} at {where}", flush=True)


def storage_path(storage: str | None) -> str:
    """--storage, else GPT1_STORAGE (a cluster sets it for every job: s3://...), else ./runs."""
    storage = storage or os.environ.get("GPT1_STORAGE")
    if storage and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage or "runs").absolute())
