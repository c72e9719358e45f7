"""Where and how a command runs: which Ray it joins, where a run's files go, which device and precision."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline import env
from pipeline.errors import ConfigError, UserError, note_signal

POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train's (ray/train/v2/_internal/constants.py)


def ray_init() -> None:
    """Join the cluster that RAY_ADDRESS names (a `ray job submit` job has it set), else start a
    new local instance of this process's own: never a cluster that another process on the machine
    happened to start with `ray start`, which could be stopped under the command. The first line
    of output says which it is."""
    import ray

    if ray.is_initialized():
        return
    import signal
    import threading

    address = env.ray_address() or "local"
    main = threading.current_thread() is threading.main_thread()
    ours = signal.getsignal(signal.SIGTERM) if main else None
    # The workers import the project from its own directory before the working directory that
    # Ray puts first on their path: a user's folder named `model` there would shadow the package.
    job = ray.job_config.JobConfig(_py_driver_sys_path=[str(Path(__file__).resolve().parent.parent)])
    pinned = ["RAY_ADDRESS", "RAY_GCS_SERVER_PORT"]
    if address == "local" and POLL not in os.environ:
        # Ray Train's controller takes a worker's report (each checkpoint's) from a queue of one,
        # at its poll of the workers, every 2 s by default: a run that checkpoints more often
        # waits for it (600 steps checkpointed every 20 took 84 s, 34 s at 0.2 s). A local
        # instance's few workers are polled every 0.2 s; a cluster keeps Ray's default.
        os.environ[POLL] = "0.2"
        pinned.append(POLL)
    if address == "local":
        # A new instance's address, chosen now and pinned for every process it starts: they
        # inherit the environment of ray.init's moment. Ray's own helpers in them (Train's
        # placement-group cleaner, the state API) would otherwise look for "the" local instance
        # and fail, with a traceback in the log, wherever another one runs on the machine (`ray
        # start`, another command). This process's own environment is left as it was.
        port = free_port()
        os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    # A local instance's dashboard (and its agents) cost every command about 3 s and 5 CPU-seconds
    # to start, for a page a one-machine run rarely opens: started only where asked. (None, Ray's
    # default, where a cluster is joined: its head decided.)
    dashboard = env.ray_dashboard() if address == "local" else None
    try:
        started = ray.init(
            address=address, logging_level=logging.WARNING, job_config=job, include_dashboard=dashboard
        )
        # ray.init sets a SIGTERM handler of its own (sys.exit, silent, before any cleanup); the
        # command's own (errors.sigterm_as_interrupt: one line, the same exit as Ctrl-C's, 143)
        # stays in charge.
        if main and ours is not None:
            signal.signal(signal.SIGTERM, ours)
    except SystemExit as err:  # SIGTERM while ray.init ran, ended by its handler: stop as ours would
        if err.code != signal.SIGTERM:
            raise

        note_signal(signal.SIGTERM)
        raise KeyboardInterrupt from None
    except ConnectionError as err:
        if address == "local":
            raise
        auth = env.ray_auth_mode()
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
    finally:
        if address == "local":
            for name in pinned:
                os.environ.pop(name, None)
    where = ray.get_runtime_context().gcs_address
    what = "the cluster" if address != "local" else "a new local instance"
    if dashboard:
        what += f" (its dashboard at http://{started.dashboard_url})"
    print(f"Ray: {what} at {where}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def storage_path(storage: str | None) -> str:
    """--storage, else GPT1_STORAGE (a cluster sets it for every job: s3://...), else ./runs."""
    from pipeline import remote

    storage = storage or env.storage() or "runs"
    return str(remote.Location.of(storage))


def add_wait_option(p) -> None:
    p.add_argument(
        "--wait-minutes",
        type=float,
        default=30,
        help="on a cluster with an autoscaler: how long to wait for the nodes the command asks for (default 30)",
    )


def check_wait(minutes: float) -> float:
    if not minutes >= 0:  # also NaN
        raise ConfigError(f"--wait-minutes {minutes}: expected a number of minutes, 0 or more")
    return minutes


def check_accelerator(name: str | None) -> str | None:
    """--accelerator as given: one of the accelerator types Ray names (ray.util.accelerators)."""
    if name is None:
        return None
    import ray.util.accelerators as known

    names = {v for k, v in vars(known).items() if k.isupper() and isinstance(v, str)}
    if name not in names:
        raise ConfigError(
            f"--accelerator {name!r}: expected an accelerator type as Ray names it, e.g. A100, A10G, H100, L4"
        )
    return name


DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> str:
    """--device as given: auto (a GPU where there is one), cpu or cuda."""
    if name not in DEVICES:
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
