"""Sizes come from files, and files can lie: every model-size field and special-token id is
bounded by what the files hold before anything that size is allocated, and memory is bounded by
the input's shape (a 50 MB line, a 50 MB task row)."""

import json
import shutil

import pytest
from test_faults_inputs import one_line

from gpt1.cli import main as gpt1
from model import GPT, GPTConfig


@pytest.mark.parametrize("preset", ["tiny", "mini", "gpt1"])
def test_the_parameter_count_of_a_config_is_the_built_models(preset):
    cfg = GPTConfig.preset(preset, n_layer=1) if preset == "gpt1" else GPTConfig.preset(preset)
    with __import__("torch").device("meta"):
        assert GPT(cfg).num_params() == cfg.n_params()


def test_a_config_that_asks_for_more_than_its_weights_is_refused_before_building(
    task_checkpoint, tmp_path, capsys
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(task_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "n_layer": 100000}))
    assert gpt1(["generate", "--checkpoint", str(ckpt), "--prompt", "the film"]) == 2
    one_line(capsys, str(ckpt), "asks for", "the weights hold")


@pytest.mark.slow
def test_a_special_token_id_far_past_the_table_is_refused(task_checkpoint, sst2, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(task_checkpoint, ckpt)
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["model"]["vocab"]["_start_"] = 300_000_000
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    assert gpt1(["generate", "--checkpoint", str(ckpt), "--prompt", "the film"]) == 2
    one_line(capsys, "_start_ at 300,000,000")
    assert (
        gpt1(
            [
                "finetune",
                "--task",
                "sst-2",
                "--data",
                str(sst2),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "ft"),
                "--set",
                "max_steps=1",
            ]
        )
        == 2
    )
    one_line(capsys, "_start_ at 300,000,000")
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_a_manifest_on_s3_that_asks_for_a_huge_vocabulary_is_refused_before_any_worker(s3, tmp_path, capsys):
    import pyarrow.fs as pafs
    from corpus_gen import documents

    from pipeline.data.prepare import PrepareConfig, prepare
    from pipeline.remote import upload

    (tmp_path / "c.txt").write_text("\n\n".join(documents(100, seed=3)) + "\n")
    prepare(
        [str(tmp_path / "c.txt")],
        tmp_path / "ds",
        PrepareConfig(n_merges=50, n_ctx=16),
        track=False,
        local=True,
    )
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_size"] = 300_000_000
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    fs, base = pafs.FileSystem.from_uri("s3://gpt1-test/ds")
    upload(tmp_path / "ds", fs, base, last="manifest.json")
    assert (
        gpt1(
            [
                "pretrain",
                "--data",
                "s3://gpt1-test/ds",
                "--storage",
                str(tmp_path / "runs"),
                "--no-mlflow",
                "--set",
                "model_overrides={n_ctx: 16}",
            ]
        )
        == 2
    )
    one_line(capsys, "s3://gpt1-test/ds/manifest.json", "300000000", "tokenizer.json has")
    assert not (tmp_path / "runs").exists()


# What a prepare worker holds for one long line: the text, a few copies of it, and the tokenizer's
# objects for one bounded call, not for the whole line.
ONE_LINE = """
import random, resource, sys
sys.path.insert(0, {root!r})
from pipeline.data.prepare import PrepareConfig, prepare
random.seed(0)
words = ["alpha", "beta", "gamma", "delta", "the", "of", "and"]
with open(sys.argv[1], "w") as f:
    f.write(" ".join(random.choice(words) for _ in range(int(sys.argv[3]) // 5)) + "\\n\\nand a short one.\\n")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
prepare([sys.argv[1]], sys.argv[2], PrepareConfig(n_merges=50, n_ctx=16), track=False, local=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


def test_a_long_line_costs_memory_in_proportion_to_its_length_not_a_hundred_times_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    size = 8 << 20
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            ONE_LINE.format(root=str(Path(__file__).parent.parent)),
            str(tmp_path / "c.txt"),
            str(tmp_path / "ds"),
            str(size),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    grown = int(out.stdout.split()[-1])
    # Tokenizing the line in one call took ~95 bytes a character (2 GB for 20 MB); now ~8.
    assert grown < 25 * size, grown


def test_a_task_row_longer_than_the_bound_is_refused_by_its_line(task_checkpoint, tmp_path, capsys):
    from pipeline.data.tasks import MAX_TEXT_CHARS

    d = tmp_path / "sst2"
    d.mkdir()
    rows = ["sentence\tlabel", "a fine film\t1", "x" * (MAX_TEXT_CHARS + 1) + "\t0", "dull\t0"]
    (d / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    assert (
        gpt1(
            [
                "finetune",
                "--task",
                "sst-2",
                "--data",
                str(d),
                "--checkpoint",
                str(task_checkpoint),
                "--out",
                str(tmp_path / "ft"),
                "--set",
                "max_steps=1",
            ]
        )
        == 2
    )
    one_line(capsys, f"{d / 'train.tsv'}:3", "sentence holds", "expected at most")


def test_a_text_of_nul_bytes_is_an_empty_text_not_an_example(task_checkpoint, tmp_path, capsys):
    d = tmp_path / "sst2"
    d.mkdir()
    (d / "train.tsv").write_text("sentence\tlabel\na fine film\t1\n\x00\x00\x00\t0\n")
    (d / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    assert (
        gpt1(
            [
                "finetune",
                "--task",
                "sst-2",
                "--data",
                str(d),
                "--checkpoint",
                str(task_checkpoint),
                "--out",
                str(tmp_path / "ft"),
                "--set",
                "max_steps=1",
            ]
        )
        == 2
    )
    one_line(capsys, f"{d / 'train.tsv'}:3", "sentence is empty", "control characters")


def test_a_one_document_corpus_says_its_val_split_is_empty(tmp_path, capsys):
    from pipeline.data.prepare import PrepareConfig, prepare

    (tmp_path / "c.txt").write_text("just one document, not very long at all.\n")
    prepare(
        [str(tmp_path / "c.txt")],
        tmp_path / "ds",
        PrepareConfig(n_merges=20, n_ctx=4),
        track=False,
        local=True,
    )
    err = capsys.readouterr().err
    assert "the val split holds 0 documents" in err and "val_fraction" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_temperature_that_is_not_a_finite_number_is_refused(task_checkpoint, capsys, value):
    assert (
        gpt1(
            ["generate", "--checkpoint", str(task_checkpoint), "--prompt", "the film", "--temperature", value]
        )
        == 2
    )
    one_line(capsys, f"--temperature {float(value)}", "finite number")


def test_an_interrupt_without_words_still_says_what_happened(capsys):
    from pipeline.errors import run_reporting

    def stopped(args):
        raise KeyboardInterrupt  # SIGTERM arrives so (errors.sigterm_as_interrupt)

    assert run_reporting("gpt1 generate", stopped, None) == 130
    assert capsys.readouterr().err.strip() == "gpt1 generate: interrupted"


def test_sigterm_ends_a_command_with_143_and_ctrl_c_with_130(capsys):
    import signal

    from pipeline.errors import note_signal, run_reporting

    def stopped_by(signum):
        def run(args):
            note_signal(signum)  # as the command's handler records it
            raise KeyboardInterrupt

        return run

    assert run_reporting("gpt1 serve", stopped_by(signal.SIGTERM), None) == 143
    assert run_reporting("gpt1 serve", stopped_by(signal.SIGINT), None) == 130
    assert capsys.readouterr().err.count("gpt1 serve: interrupted") == 2


def test_the_mlflow_hint_offers_no_mlflow_only_where_the_command_has_it(tmp_path):
    from pipeline.errors import UserError
    from pipeline.tracking import check_store

    for skippable in (True, False):
        with pytest.raises(UserError) as err:
            check_store(f"file://{tmp_path}", skippable=skippable)
        assert ("--no-mlflow" in str(err.value)) == skippable
