"""pipeline.configio and pipeline.errors: defaults, preset or YAML file, --set overrides, clear errors."""

import argparse
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


@pytest.mark.parametrize(
    "sets, message",
    [
        (["stpes=3"], "unknown key 'stpes'; valid keys are lr, steps, name, compile"),
        (["steps=many"], "steps must be a whole number .*, got 'many'"),
        (["steps=1.5"], "steps must be a whole number"),
        (["steps=1.5e0"], "steps must be a whole number"),
        (["compile=1"], "compile must be a bool"),
        (["lr"], "expected key=value"),
    ],
)
def test_bad_overrides(sets, message):
    with pytest.raises(ConfigError, match=message):
        load(Cfg(), sets=sets)


@pytest.mark.parametrize(
    "written", ["1e10", "1.0e10", "10_000_000_000", "10B", "10b", "0.01T", "10000000000"]
)
def test_whole_numbers_are_read_as_users_write_them(written):
    assert load(Cfg(), sets=[f"steps={written}"]).steps == 10_000_000_000


def test_pretrain_settings_beyond_the_physical_world_or_the_network_are_refused():
    from pipeline.train.config import PretrainConfig, check_config
    from pipeline.train.plan import model_config

    check_config(load(PretrainConfig(), sets=["max_tokens=1e15"]), 1)  # 10^15: the largest taken
    with pytest.raises(ConfigError, match=r"max_tokens 10,000,000,000,000,000,000,000,000: expected 0"):
        check_config(load(PretrainConfig(), sets=["max_tokens=1e25"]), 1)
    with pytest.raises(
        ConfigError, match=r"--workers 1000: more workers than the batch's 32 sequences"
    ) as err:
        check_config(load(PretrainConfig(), sets=["batch_size=32"]), 1000)
    assert "(0)" not in str(err.value)  # never an internal 0 for "automatic"
    cfg = load(PretrainConfig(), sets=["model=lstm-tiny", "model_overrides={n_head: 7}"])
    with pytest.raises(ConfigError, match="n_head 7: the lstm-tiny preset is an LSTM"):
        model_config(cfg, None, None)


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
    assert parse_sets(["a=1", "b=0.5", "c=true", "d=text", "e="]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "text",
        "e": "",
    }


def test_only_a_users_mistake_ends_as_one_line(capsys):
    """A UserError (and what model/ raises about the user's input, wrapped where the command
    calls it) is one line and exit 2; any other error is a bug and keeps its traceback."""
    from pipeline.errors import UserError, model_input, run_reporting

    def mistake(_):
        raise UserError("x.yaml: expected a mapping")

    def bug(_):
        raise ValueError("an internal invariant broke")

    def model_error(_):
        with model_input("--checkpoint ckpt"):
            raise ValueError("unknown model preset 'huge'")

    assert run_reporting("t", mistake, None) == 2
    assert capsys.readouterr().err.strip() == "t: x.yaml: expected a mapping"
    with pytest.raises(ValueError, match="invariant"):
        run_reporting("t", bug, None)
    assert run_reporting("t", model_error, None) == 2
    assert capsys.readouterr().err.strip() == "t: --checkpoint ckpt: unknown model preset 'huge'"


def test_artifacts_go_beside_the_sqlite_store(tmp_path, monkeypatch):
    """Not to ./mlruns of whatever directory the command runs in."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import experiment_id

    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    run = client.create_run(experiment_id(client, "gpt1-test"))
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert list(store.glob("mlartifacts/gpt1-test/*/artifacts/note.txt"))
    assert not list(elsewhere.iterdir())


def test_experiments_open_in_mlflows_training_view_with_a_description(tmp_path):
    """MLflow 3 opens an experiment without the kind tag in its GenAI view, where a training run
    shows an empty traces page; one made by an earlier version gets the tags when next used."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import experiment_id

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment(experiment_id(client, "gpt1-finetune-sst-2"))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "sst-2" in exp.tags["mlflow.note.content"] and "λ" in exp.tags["mlflow.note.content"]
    earlier = client.create_experiment("gpt1-pretrain")
    assert "mlflow.experimentKind" not in client.get_experiment(earlier).tags
    assert experiment_id(client, "gpt1-pretrain") == earlier
    tags = client.get_experiment(earlier).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"].startswith("Pretraining runs")


def test_every_verbs_help_gives_each_option_a_line_and_its_default():
    from gpt1.cli import build_parser

    verbs = next(a for a in build_parser()._actions if a.choices and "pretrain" in a.choices).choices
    assert {"prepare", "pretrain", "finetune", "sweep", "evaluate", "generate", "demo", "export"} <= set(
        verbs
    )
    for name, parser in verbs.items():
        text = " ".join(parser.format_help().split("options:", 1)[1].split())
        for action in parser._actions:
            if not action.option_strings or action.option_strings == ["-h", "--help"]:
                continue
            flag = action.option_strings[-1]
            if action.help == argparse.SUPPRESS:  # --KEY VALUE, a spelling of --set KEY=VALUE
                assert f"\n  {action.key} " in parser.epilog, f"gpt1 {name} {flag}: its key is not listed"
                continue
            assert action.help, f"gpt1 {name} {flag}: no help line"
            shown = any(action.default is v for v in (None, False)) or action.default == []
            if not shown:  # a value the user gets without asking: --help must say which
                line = text[text.index(f"{flag} ") :][:400]
                assert "default" in line.split(" --")[0], f"gpt1 {name} {flag}: default not shown"


def test_seed_means_the_runs_seed_on_every_verb_that_draws():
    """--seed on each verb that draws random numbers; on the verbs whose settings hold a seed it
    is --set seed=N, and the later of the two wins, as a repeated --set does."""
    from gpt1.cli import build_parser

    parser = build_parser()
    for verb, required in (
        ("prepare", ["--corpus", "c.txt", "--out", "o"]),
        ("pretrain", ["--data", "d"]),
        ("finetune", ["--task", "sst-2", "--data", "d", "--checkpoint", "c"]),
    ):
        args = parser.parse_args([verb, *required, "--set", "seed=1", "--seed", "7"])
        assert args.set == ["seed=1", "seed=7"], verb
        assert parser.parse_args([verb, *required, "--seed", "7", "--set", "seed=2"]).set == [
            "seed=7",
            "seed=2",
        ]
        assert parser.parse_args([verb, *required]).set == [], verb
        assert "the run's seed" in parser._subparsers._group_actions[0].choices[verb].format_help()
    sweep = ["sweep", "--task", "sst-2", "--data", "d", "--checkpoint", "c"]
    assert parser.parse_args([*sweep, "--seed", "7"]).seed == 7
    assert parser.parse_args(["generate", "--checkpoint", "c", "--prompt", "p", "--seed", "7"]).seed == 7


def test_every_set_key_is_also_an_option_read_by_the_same_mechanism():
    """--max-steps 30 is --set max_steps=30: one list, in the order given, the last one winning,
    checked by the same code (a bad value is the same line either way). A verb's own option of
    the same name keeps its meaning (the sweep's --eval-every and --seed)."""
    from gpt1.cli import build_parser
    from pipeline.train.config import PretrainConfig
    from pipeline.train.pretrain_cli import PRESETS_DIR

    parser = build_parser()
    args = parser.parse_args(
        ["pretrain", "--data", "d", "--max-steps", "30", "--set", "lr=1e-3", "--lr", "2e-3"]
    )
    assert args.set == ["max_steps=30", "lr=1e-3", "lr=2e-3"]
    cfg = load(PretrainConfig(), args.config, PRESETS_DIR, args.set)
    assert (cfg.max_steps, cfg.lr) == (30, 2e-3)
    for spelling in (["--max-steps", "many"], ["--set", "max_steps=many"]):
        args = parser.parse_args(["pretrain", "--data", "d", *spelling])
        with pytest.raises(ConfigError, match="max_steps"):
            load(PretrainConfig(), args.config, PRESETS_DIR, args.set)
    args = parser.parse_args(
        ["finetune", "--task", "sst-2", "--data", "d", "--checkpoint", "c", "--lm-coef", "0"]
    )
    assert args.set == ["lm_coef=0"]
    sweep = parser.parse_args(
        ["sweep", "--task", "sst-2", "--data", "d", "--checkpoint", "c", "--eval-every", "5", "--epochs", "1"]
    )
    assert sweep.eval_every == 5 and sweep.set == ["epochs=1"]


def test_help_lists_every_set_key_with_its_type_default_and_meaning():
    import dataclasses

    from gpt1.cli import build_parser
    from pipeline.data.prepare import PrepareConfig
    from pipeline.train.config import PretrainConfig
    from tuning.finetune_config import FinetuneConfig

    verbs = next(a for a in build_parser()._actions if a.choices and "pretrain" in a.choices).choices
    for verb, cls in (("prepare", PrepareConfig), ("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
        text = verbs[verb].format_help()
        for f in dataclasses.fields(cls):
            line = next((ln for ln in text.splitlines() if ln.startswith(f"  {f.name} (")), None)
            assert line, f"gpt1 {verb} --help: no line for --set {f.name}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            # its type, its default, and a meaning (read from the dataclass's own comment)
            assert f"({f.type}, default {default!r}): " in line and not line.endswith(": -"), line


def test_print_config_shows_the_settings_resolved_and_loads_back(tmp_path, capsys):
    from gpt1.cli import main
    from pipeline.train.pretrain import PRESETS_DIR, PretrainConfig

    sets = ["--set", "micro_batch=auto", "--set", "lr=1e-4"]
    assert main(["pretrain", "--config", "gpt1", *sets, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert (
        "micro_batch: auto\n" in printed and "lr: 0.0001\n" in printed and "warmup_steps: 2000\n" in printed
    )
    (tmp_path / "resolved.yaml").write_text(printed)
    # Every key is there: loaded as a --config, it is the same settings.
    want = load(PretrainConfig(), "gpt1", PRESETS_DIR, ["micro_batch=auto", "lr=1e-4"])
    assert load(PretrainConfig(), str(tmp_path / "resolved.yaml")) == want


def test_the_sweeps_options_are_its_dataclass_fields_with_their_defaults():
    import dataclasses

    from gpt1.cli import build_parser
    from tuning.search import OPTIONS, SweepOptions

    args = build_parser().parse_args(["sweep", "--task", "sst-2", "--data", "d", "--checkpoint", "c"])
    given = {name: getattr(args, name) for name in OPTIONS}
    assert given == {f.name: f.default for f in dataclasses.fields(SweepOptions) if f.name in OPTIONS}
    args = build_parser().parse_args(
        [
            "sweep",
            "--task",
            "t",
            "--data",
            "d",
            "--checkpoint",
            "c",
            "--gpus-per-trial",
            "0.25",
            "--ablations",
        ]
    )
    assert args.gpus_per_trial == 0.25 and args.ablations is True
