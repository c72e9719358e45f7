"""Every environment variable the project reads, in one place: its name, what it means, and the
one function that reads it. Code elsewhere calls these functions; `tests/test_layout.py` holds
that nothing else reads `os.environ` for a name of ours. (Variables the project only sets for
a library, such as Tune's, are set where they apply and are not settings of ours.)"""

from __future__ import annotations

import os
from pathlib import Path

# name -> what it means (docs/whats-here.md lists the same)
VARIABLES = {
    "GPT1_STORAGE": "where runs and sweeps are written when --storage is not given (a cluster sets s3://...)",
    "GPT1_DATA_CACHE": "where a node keeps verified and staged datasets (default ~/.cache/gpt1/data)",
    "GPT1_STAGE_STREAMS": "ranged reads at once while a node stages a dataset from object storage (default 8)",
    "GPT1_RAY_DASHBOARD": "1: a new local Ray instance also starts Ray's dashboard (off by default: 3 s a command)",
    "GPT1_SERVE_TOKEN": "the bearer token `gpt1 serve` asks clients for, when --token is not given",
    "GPT1_SUPERVISED": "set by the console for the command it runs in a child: its lines are filtered",
    "GPT1_VERBOSE": "set by the console from --verbose: Tune's status tables are shown",
    "MLFLOW_TRACKING_URI": "the MLflow store (default sqlite:///mlflow.db in the working directory)",
    "RAY_ADDRESS": "the Ray cluster to join (default: a new local instance)",
    "RAY_AUTH_MODE": "token: join a Ray cluster that asks for a token (`ray start --head` turns it on)",
}


def _get(name: str) -> str | None:
    assert name in VARIABLES, name  # a new variable is listed above first
    return os.environ.get(name) or None


def storage() -> str | None:
    return _get("GPT1_STORAGE")


def data_cache() -> Path:
    return Path(_get("GPT1_DATA_CACHE") or Path.home() / ".cache" / "gpt1" / "data")


def stage_streams() -> int:
    return int(_get("GPT1_STAGE_STREAMS") or 8)


def ray_dashboard() -> bool:
    return _get("GPT1_RAY_DASHBOARD") == "1"


def serve_token() -> str | None:
    return _get("GPT1_SERVE_TOKEN")


def supervised() -> bool:
    return _get("GPT1_SUPERVISED") is not None


def verbose() -> bool:
    return _get("GPT1_VERBOSE") is not None


def tracking_uri() -> str | None:
    return _get("MLFLOW_TRACKING_URI")


def ray_address() -> str | None:
    return _get("RAY_ADDRESS")


def ray_auth_mode() -> str | None:
    return _get("RAY_AUTH_MODE")


def for_child(verbose: bool) -> dict[str, str]:
    """The variables the console sets for the command it runs in a child."""
    return {"GPT1_SUPERVISED": "1", "GPT1_VERBOSE": "1" if verbose else ""}
