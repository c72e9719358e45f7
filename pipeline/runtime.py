"""Where and how a command runs: which Ray it joins, where a run's files go, which device and precision."""

from __future__ import annotations

import logging
import os


def ray_init() -> None:
    """Join the cluster that RAY_ADDRESS names (a `ray job submit` job has it set), else start a
    new local instance of this process's own: never a cluster that another process on the machine
    happened to start with `ray start`, which could be stopped under the command. The first line
    of output says which it is."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as err:
        from pipeline.errors import UserError

        auth = os.environ.get("RAY_AUTH_MODE")
        hint = (
            "a cluster started with `ray start` (Ray 2.60) asks for its token: set RAY_AUTH_MODE=token "
            "(with RAY_AUTH_TOKEN, or the head's ~/.ray/auth_token copied here)"
            if auth != "token"
            else "check that the cluster is up and that RAY_AUTH_TOKEN (or ~/.ray/auth_token) is the head's"
        )
        raise UserError(
            f"RAY_ADDRESS={address}: could not join the cluster ({str(err).splitlines()[0]}); "
            f"{hint}; unset RAY_ADDRESS to start a local instance instead"
        ) from None
    where = ray.get_runtime_context().gcs_address
    print(f"Ray: {'a new local instance' if address == 'local' else 'the cluster'} at {where}", flush=True)


def storage_path(storage: str | None) -> str:
    """--storage, else GPT1_STORAGE (a cluster sets it for every job: s3://...), else ./runs."""
    from pipeline import remote

    storage = storage or os.environ.get("GPT1_STORAGE") or "runs"
    return storage.rstrip("/") if remote.is_remote(storage) else str(remote.local_path(storage))


DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> str:
    """--device as given: auto (a GPU where there is one), cpu or cuda."""
    if name not in DEVICES:
        from pipeline.errors import ConfigError

        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda")
    return name


def local_device(name: str = "auto"):
    """The torch device of this process for --device: auto is the GPU where torch sees one."""
    import torch

    check_device(name)
    return torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name
    )


def amp_dtype(device, dtype: str = "auto"):
    """The compute dtype of the matrix products: bf16 (auto: on a GPU), else fp32. Weights,
    optimizer state and the losses stay fp32 (model/losses.py)."""
    import torch

    return torch.bfloat16 if dtype == "bf16" or (dtype == "auto" and device.type == "cuda") else torch.float32


def autocast(device, dtype: str = "auto"):
    """The one autocast of both loops and the benchmarks: bf16 where amp_dtype says so, else none."""
    import contextlib

    import torch

    if amp_dtype(device, dtype) == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
