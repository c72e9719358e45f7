"""pipeline.config: defaults, preset or YAML file, --set overrides, clear errors."""
from dataclasses import dataclass

import pytest

from pipeline.configio import load, parse_sets
from pipeline.errors import ConfigError


@dataclass
class Cfg:
    lr: float = 1e-3
    steps: int = 10
    name: str = "run"
    compile: bool = False


def test_yaml_then_sets(tmp_path):
    (tmp_path / "small.yaml").write_text("steps: 20\nname: small\n")
    cfg = load(Cfg(), "small", presets_dir=tmp_path, sets=["lr=2e-4", "compile=true"])
    assert cfg == Cfg(lr=2e-4, steps=20, name="small", compile=True)
    assert load(Cfg(), str(tmp_path / "small.yaml")).steps == 20
    assert load(Cfg(), sets=["lr=1"]).lr == 1.0 and isinstance(load(Cfg(), sets=["lr=1"]).lr, float)


@pytest.mark.parametrize("sets, message", [
    (["stpes=3"], "unknown key 'stpes'; valid keys are lr, steps, name, compile"),
    (["steps=many"], "steps must be a int, got 'many'"),
    (["steps=1.5"], "steps must be a int"),
    (["compile=1"], "compile must be a bool"),
    (["lr"], "expected key=value"),
])
def test_bad_overrides(sets, message):
    with pytest.raises(ConfigError, match=message):
        load(Cfg(), sets=sets)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file or preset .presets: small"):
        (tmp_path / "small.yaml").write_text("steps: 2\n")
        load(Cfg(), "large", presets_dir=tmp_path)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(Cfg(), str(tmp_path / "list.yaml"))
    (tmp_path / "bad.yaml").write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(Cfg(), str(tmp_path / "bad.yaml"))


def test_parse_sets_reads_yaml_scalars():
    assert parse_sets(["a=1", "b=0.5", "c=true", "d=text", "e="]) == {"a": 1, "b": 0.5, "c": True, "d": "text", "e": ""}
