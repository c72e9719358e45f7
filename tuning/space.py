"""A task's search space: tuning/configs/<task>.yaml (or default.yaml, or the user's file) read
into a Ray Tune param_space over the keys of FinetuneConfig.

A key is fixed (a plain value) or sampled, as a one-key mapping:
    lr: {loguniform: [2.0e-5, 2.0e-4]}      batch_size: {choice: [16, 32]}
    warmup: {uniform: [0.0, 0.1]}           lm_coef: {grid: [0.0, 0.5]}   (every value)
--set key=value fixes a key. Every value, fixed or among a sampler's, is checked against the
type of the key's default, so a typo fails before any trial starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from pipeline import configio, errors

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def _samplers():
    from ray import tune

    return {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
    }


def space_file(task: str, path: str | None = None) -> Path:
    if path:
        if not Path(path).exists():
            raise errors.ConfigError(f"--space {path}: no such file")
        return Path(path)
    own = CONFIGS_DIR / f"{task}.yaml"
    return own if own.exists() else CONFIGS_DIR / "default.yaml"


def load_space(
    defaults, task: str, path: str | None = None, sets: list[str] | None = None, check=None
) -> dict[str, Any]:
    """The param_space for Tuner: every key of the defaults dataclass, fixed or sampled. With
    check (a function of a config that raises ConfigError), the fixed config and every value a
    sampler can give (its choices, its bounds) are range-checked before any trial starts."""
    file = space_file(task, path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise errors.ConfigError(f"{file}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise errors.ConfigError(f"{file}: expected a mapping of keys to values or samplers")
    raw.update(configio.parse_sets(sets or []))
    where = f"{file} with --set" if sets else str(file)
    samplers = _samplers()
    fixed, sampled, values = {}, {}, {}
    for key, value in raw.items():
        if isinstance(value, dict):
            if (
                len(value) != 1
                or next(iter(value)) not in samplers
                or not isinstance(next(iter(value.values())), list)
            ):
                raise errors.ConfigError(
                    f"{where}: {key}: expected a value or one of "
                    f"{{{', '.join(f'{s}: [...]' for s in samplers)}}}; got {value!r}"
                )
            ((kind, args),) = value.items()
            if kind in ("loguniform", "uniform") and len(args) != 2:
                raise errors.ConfigError(f"{where}: {key}: {kind} takes [low, high]; got {args!r}")
            # Check each value against the key's type: apply() names an unknown key, a bad value.
            args = [getattr(configio.apply(defaults, {key: a}, where), key) for a in args]
            sampled[key], values[key] = samplers[kind](args), args
        else:
            fixed[key] = value
    base = configio.apply(defaults, fixed, where)
    if check is not None:
        try:
            check(base)
            for key, args in values.items():
                for a in args:
                    check(dataclasses.replace(base, **{key: a}))
        except errors.ConfigError as err:
            raise errors.ConfigError(f"{where}: {err}") from None
    fixed = dataclasses.asdict(base)
    return {**fixed, **sampled}


def describe(space: dict[str, Any]) -> str:
    """One line per sampled key, for the sweep's opening lines."""
    from ray.tune.search.sample import Domain

    return "; ".join(
        f"{k} {v.domain_str}" if isinstance(v, Domain) else f"{k} every one of {v['grid_search']}"
        for k, v in space.items()
        if isinstance(v, Domain) or (isinstance(v, dict) and "grid_search" in v)
    )
