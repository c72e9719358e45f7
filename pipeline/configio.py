"""Stage configuration: a dataclass of defaults, a preset name or YAML file, and --set overrides.

Unknown keys are errors that list the valid ones; values are parsed as YAML scalars and checked
against the type of the field's default. A whole-number setting takes what users write: 1e10,
10_000_000_000 or 10B (K, M, B, T).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import ConfigError

C = TypeVar("C")


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
                raise ConfigError(
                    f"{where}{f.name} {v}: expected {lo}" + (f" and <= {high}" if high is not None else "")
                )


# The suffixes users write token counts and sizes with: 10B tokens, 500M, 64K.
SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def whole_number(value: Any) -> int | None:
    """value as users write whole numbers: an int, an integral float or its text (1e10, 2.5e9),
    with underscores (10_000_000_000) or a suffix (10B, 1.5M, 64K, 2T); None if it is none of them.
    Text is read exactly (1e25 is 10^25, not the float nearest it)."""
    from decimal import Decimal, InvalidOperation

    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, str):
        return None
    text = value.strip().replace("_", "")
    scale = SUFFIXES.get(text[-1:].lower(), 1) if text else 1
    try:
        number = Decimal(text[:-1] if scale != 1 else text) * scale
    except InvalidOperation:
        return None
    return int(number) if number.is_finite() and number == number.to_integral_value() else None


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
        if value == "auto" and "str" in str(field.type):  # a number, or auto (micro_batch)
            return value
        whole = whole_number(value)
        if whole is not None:
            return whole
        also = " or auto" if "str" in str(field.type) else ""
        raise ConfigError(
            f"{where}: {key} must be a whole number (e.g. 10000000000, 1e10, 10_000_000_000 or 10B){also}, "
            f"got {value!r}"
        )
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
    elif isinstance(default, dict) and isinstance(value, dict):
        return value
    raise ConfigError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")


def apply(cfg: C, values: dict[str, Any], where: str) -> C:
    valid = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys are {', '.join(valid)}")
    return dataclasses.replace(cfg, **{k: _coerce(type(cfg), k, v, where) for k, v in values.items()})


def field_comments(cls) -> dict[str, str]:
    """Each field's meaning as its dataclass's source writes it: the comment on the field's line,
    else the comment lines right above it. The comments are the one place a setting is explained;
    --help reads them from there."""
    import ast
    import inspect
    import io
    import tokenize

    source = inspect.getsource(cls)
    comments: dict[int, str] = {}  # line -> its comment's text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        # A trailing comment anywhere in the field's lines (a default may span several).
        text = " ".join(comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments)
        above, n = [], node.lineno - 1
        while n in comments and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        out[node.target.id] = text or " ".join(above)
    return out


def describe(cls) -> str:
    """The --set keys of cls, one a line: name, type, default and meaning."""
    meaning = field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"  {f.name} ({f.type}, default {default!r}): {meaning.get(f.name) or '-'}")
    return "\n".join(rows)


def dump(cfg) -> str:
    """cfg fully resolved, as the YAML a --config file would hold."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


_TYPES = {"int": int, "float": float, "str": str, "str | None": str, "int | None": int}


def add_field_options(p, cls, names: list[str], metavars: dict[str, str] | None = None) -> None:
    """--name-with-dashes for each named field of the dataclass cls: its type, its default and
    its help (the field's comment) from the dataclass itself, the one place they are written. A
    bool field is a flag, off unless given."""
    meaning = field_comments(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields[name]
        flag = "--" + name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=f.default, help=meaning[name])
        else:
            metavar = (metavars or {}).get(name)
            p.add_argument(flag, type=_TYPES[f.type], default=f.default, metavar=metavar, help=meaning[name])


def add_set_option(p, cls, what: str = "override a key", seed: str | None = None) -> None:
    """The --set KEY=VALUE option of a command whose settings are the dataclass cls, and, for each
    key, --key-with-dashes VALUE: a spelling of --set key=value, appended to the same list in
    the order given (the last one wins), so that both are read, checked and printed by one
    mechanism (a yes/no key's VALUE may be left out: true). A key whose spelling the command already uses for an option of its own keeps
    that option. Where seed says what the seed decides, --seed N is shown in --help (the run's
    seed, of which every random draw is a function, on every verb)."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{what}; the keys are listed below, each also an option: --max-steps 30 is --set max_steps=30",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings as resolved (defaults, then --config, then --set) as YAML, and stop",
    )
    keys = (
        f"--set keys (KEY=VALUE, or --KEY VALUE; a --config YAML file takes the same keys):\n{describe(cls)}"
    )
    p.epilog = f"{p.epilog}\n\n{keys}" if p.epilog else keys
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if flag in p._option_string_actions:
            continue
        shown = f.name == "seed" and seed
        p.add_argument(
            flag,
            dest="set",
            metavar="N" if shown else "VALUE",
            action=_KeyAsSet,
            key=f.name,
            # A yes/no key is a flag too: --slow-network-ok alone is --set slow_network_ok=true.
            **({"nargs": "?", "const": "true"} if f.type in ("bool", "bool | None") else {}),
            default=argparse.SUPPRESS,  # --set's own default stands
            help=f"the run's seed (default: {f.default}): {seed}; the same as --set seed=N"
            if shown
            else argparse.SUPPRESS,  # listed once, with the --set keys below
        )


class _KeyAsSet(argparse.Action):
    """--key VALUE appended to the --set list as key=VALUE, in the order given."""

    def __init__(self, *args, key: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), f"{self.key}={value}"])


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


def load(
    defaults: C, config: str | None = None, presets_dir: Path | None = None, sets: list[str] | None = None
) -> C:
    """defaults, then a preset (a name in presets_dir) or YAML file, then --set overrides."""
    cfg = defaults
    if config:
        path = Path(config)
        if not path.is_file() and presets_dir is not None and (presets_dir / f"{config}.yaml").exists():
            path = presets_dir / f"{config}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in presets_dir.glob("*.yaml")) if presets_dir else []
            raise ConfigError(
                f"--config {config}: no such file"
                + (f" or preset (presets: {', '.join(names)})" if names else "")
            )
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
