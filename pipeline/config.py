"""Stage configuration: a dataclass of defaults, a preset name or YAML file, and --set overrides.

Unknown keys are errors that list the valid ones; values are parsed as YAML scalars and checked
against the type of the field's default.
"""
from __future__ import annotations

import dataclasses
import errno
import math
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


class UserError(ValueError):
    """A user's mistake in an input (a file, a config key, a dataset): every stage reports it as
    one line naming the input, and exits with status 2."""


class ConfigError(UserError):
    """A user's configuration mistake."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the command stopped cleanly; its text says where to resume from."""


def check_ranges(cfg, ranges: dict[str, tuple[float | None, float | None]], where: str = "") -> None:
    """Every float field of cfg must be finite; those in ranges must lie in [low, high] (None:
    unbounded), and an lr-like key (low 0) must be above 0. Raises ConfigError naming the key."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}{f.name} {v}: expected a finite number")
        if f.name in ranges:
            low, high = ranges[f.name]
            positive = f.name == "lr"
            if (low is not None and (v < low or (positive and v <= low))) or (high is not None and v > high):
                lo = f"> {low}" if positive else f">= {low}"
                raise ConfigError(f"{where}{f.name} {v}: expected {lo}" + (f" and <= {high}" if high is not None else ""))


# A full, read-only or forbidden filesystem is the machine's state, not a bug: one line.
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


def disk_error(err: BaseException) -> UserError | None:
    """err as one line naming the file, if it is a disk error (also as pyarrow words it)."""
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return UserError(f"{err.filename or 'a file'}: {err.strerror}")
    first = (str(err).splitlines() or [""])[0]  # pyarrow and safetensors word it so, without an errno
    if isinstance(err, Exception) and any(w in first for w in ("No space left on device", "Read-only file system")):
        return UserError(first)
    return None


def user_error(err: BaseException) -> BaseException | None:
    """The user's mistake behind err, if any. A bad input found inside a Ray worker arrives
    wrapped (as RayTaskError subclasses that also derive from the original class, whose text is
    the worker's traceback): the innermost instance is the original, with its one-line text."""
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (UserError, FileNotFoundError)):
            found = err
        elif found is None:  # a line already written wins over a disk error beneath it
            found = disk_error(err)
        err = getattr(err, "cause", None) or err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return found


def sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, `kill`) ends a command as Ctrl-C does: cleanly, one line."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_reporting(prog: str, func, args) -> int:
    """Run a command; a user's mistake ends as one line naming the input and exit status 2, with
    no traceback; Ctrl-C and SIGTERM as one line and status 130. Shared by the `gpt1`
    subcommands and the stage scripts, so both behave alike."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGTERM)
    if main:
        sigterm_as_interrupt()
    try:
        func(args)
    except (Interrupted, KeyboardInterrupt) as err:
        print(f"{prog}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as err:
        cause = err if isinstance(err, (ValueError, FileNotFoundError)) else user_error(err)
        if cause is None:
            raise
        print(f"{prog}: {user_error(cause) or cause}", file=sys.stderr)
        return 2
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
    return 0


def stage_main(prog: str, doc: str, add_arguments, run, argv: list[str] | None = None) -> int:
    """The `main` of a stage's script (`python pipeline/pretrain.py ...`)."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run_reporting(prog, run, p.parse_args(argv))


def _coerce(cls, key: str, value: Any, where: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(cls)}[key]
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = None
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")


def apply(cfg: C, values: dict[str, Any], where: str) -> C:
    valid = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys are {', '.join(valid)}")
    return dataclasses.replace(cfg, **{k: _coerce(type(cfg), k, v, where) for k, v in values.items()})


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """['lr=1e-4', 'name=x'] -> {'lr': 0.0001, 'name': 'x'} (values read as YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load(defaults: C, config: str | None = None, presets_dir: Path | None = None,
         sets: list[str] | None = None) -> C:
    """defaults, then a preset (a name in presets_dir) or YAML file, then --set overrides."""
    cfg = defaults
    if config:
        path = Path(config)
        if not path.is_file() and presets_dir is not None and (presets_dir / f"{config}.yaml").exists():
            path = presets_dir / f"{config}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in presets_dir.glob("*.yaml")) if presets_dir else []
            raise ConfigError(f"--config {config}: no such file" + (f" or preset (presets: {', '.join(names)})" if names else ""))
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        cfg = apply(cfg, values, str(path))
    if sets:
        cfg = apply(cfg, parse_sets(sets), "--set")
    return cfg
