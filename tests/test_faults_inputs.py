"""Bad input and a hostile machine, before any training: nothing the user had is lost, every
mistake is one line naming the input and exit status 2, and nothing half-written is left."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from corpus_gen import documents

from gpt1.cli import main as gpt1

ROOT = Path(__file__).resolve().parent.parent


def one_line(capsys, *words) -> str:
    """The command's own lines on stderr (Ray's progress logs aside): exactly one. (In this
    process a bug cannot end as a printed traceback: gpt1() would raise it instead of returning.)"""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("gpt1 ")]
    assert len(lines) == 1, err[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small filesystem of its own at path (root and mount(8) needed, else the test is skipped)."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip(
            "this machine refuses a tmpfs mount (needs root); the full-disk and read-only cases need one"
        )
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def corpus(tmp_path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("\n\n".join(documents(200, seed=1)) + "\n")
    return d


def prepare_args(corpus, out, *extra):
    return [
        "prepare",
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--no-mlflow",
        "--set",
        "n_merges=50",
        "--set",
        "n_ctx=16",
        *extra,
    ]


# finetune --out never deletes what it did not write, nor the checkpoint it reads.


def finetune_args(ckpt, data, out, *extra):
    return [
        "finetune",
        "--task",
        "sst-2",
        "--data",
        str(data),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--set",
        "max_steps=2",
        "--set",
        "batch_size=8",
        "--set",
        "max_train=16",
        *extra,
    ]


def test_finetune_refuses_a_directory_it_did_not_write(task_checkpoint, sst2, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("four years of work")
    assert gpt1(finetune_args(task_checkpoint, sst2, out)) == 2
    one_line(capsys, str(out), "not a fine-tuned model", "thesis.txt")
    assert gpt1(finetune_args(task_checkpoint, sst2, out, "--overwrite")) == 2
    one_line(capsys, "never replaced")
    assert (out / "thesis.txt").read_text() == "four years of work"


def test_finetune_never_writes_into_the_checkpoint(task_checkpoint, sst2, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(task_checkpoint, ckpt)
    (ckpt / "optimizer.safetensors").write_bytes(b"moments")
    before = sorted(p.name for p in ckpt.iterdir())
    for out in (ckpt, ckpt / "inner"):
        assert gpt1(finetune_args(ckpt, sst2, out, "--overwrite")) == 2
        one_line(capsys, "--checkpoint being read")
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_finetune_replaces_its_own_output_only_with_overwrite(task_checkpoint, sst2, tmp_path, capsys):
    out = tmp_path / "ft"
    assert gpt1(finetune_args(task_checkpoint, sst2, out)) == 0
    assert (out / "task.json").exists() and (out / "head.safetensors").exists()
    assert gpt1(finetune_args(task_checkpoint, sst2, out)) == 2
    one_line(capsys, "pass --overwrite")
    assert gpt1(finetune_args(task_checkpoint, sst2, out, "--overwrite")) == 0
    assert not list(tmp_path.glob(".ft.*"))  # nothing half-written beside it


# --overwrite replaces what the command makes, nothing else.


def test_prepare_overwrite_refuses_a_directory_that_is_not_a_dataset(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("notes")
    assert gpt1(prepare_args(corpus, out, "--overwrite")) == 2
    one_line(capsys, "is not a prepared dataset", "notes.txt")
    assert (out / "notes.txt").read_text() == "notes"


def test_export_and_demo_refuse_to_replace_what_they_did_not_write(task_checkpoint, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("notes")
    assert gpt1(["export", str(task_checkpoint), str(dst), "--overwrite"]) == 2
    one_line(capsys, "is not a model directory")
    assert (dst / "notes.txt").exists()
    assert gpt1(["export", str(task_checkpoint), str(task_checkpoint), "--overwrite"]) == 2
    one_line(capsys, "the source")
    assert gpt1(["export", str(task_checkpoint), str(tmp_path / "m")]) == 0
    assert gpt1(["export", str(task_checkpoint), str(tmp_path / "m")]) == 2
    one_line(capsys, "pass --overwrite")
    assert gpt1(["export", str(task_checkpoint), str(tmp_path / "m"), "--overwrite"]) == 0
    assert gpt1(["demo", "--workdir", str(dst), "--fresh"]) == 2
    one_line(capsys, "is not a demo directory")
    assert (dst / "notes.txt").exists()


# The MLflow store is checked before any work.


def test_a_bad_mlflow_store_is_one_line_before_any_work(corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ds"
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{bad}")
    args = [a for a in prepare_args(corpus, out) if a != "--no-mlflow"]
    assert gpt1(args) == 2
    one_line(capsys, "MLflow store", "file is not a database")
    assert not out.exists()
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ro / 'new.db'}")
        assert gpt1(args) == 2
        one_line(capsys, "MLflow store", "cannot be created", "Read-only")
    assert not out.exists()


def test_a_read_only_sqlite_store_is_refused(corpus, tmp_path, capsys, monkeypatch):
    import sqlite3

    d = tmp_path / "store"
    with tmpfs(d, "4m"):
        con = sqlite3.connect(d / "mlflow.db")
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d / 'mlflow.db'}")
        assert gpt1([a for a in prepare_args(corpus, tmp_path / "ds") if a != "--no-mlflow"]) == 2
        one_line(capsys, "readonly database")
    assert not (tmp_path / "ds").exists()


# Every numeric key has a range, checked before any work.


@pytest.mark.parametrize(
    "setting, words",
    [
        ("batch_size=0", "batch_size 0"),
        ("epochs=0", "epochs 0"),
        ("lr=.nan", "lr nan"),
        ("lm_coef=.nan", "lm_coef nan"),
        ("lr=-1", "lr -1"),
        ("warmup=2", "warmup 2"),
    ],
)
def test_finetune_settings_out_of_range(task_checkpoint, sst2, tmp_path, capsys, setting, words):
    out = tmp_path / "ft"
    assert gpt1(finetune_args(task_checkpoint, sst2, out, "--set", setting)) == 2
    one_line(capsys, words)
    assert not out.exists()


def test_a_diverging_finetune_stops_and_keeps_no_model(task_checkpoint, sst2, tmp_path, capsys):
    out = tmp_path / "ft"
    # λ·L1 overflows float32 at the first step: the loss is inf.
    assert gpt1(finetune_args(task_checkpoint, sst2, out, "--set", "lm_coef=1e38")) == 2
    one_line(capsys, "the training loss became inf at step 1")
    assert not out.exists()


def test_a_sweep_out_of_range_writes_nothing(
    task_checkpoint, sst2, tmp_path, capsys, monkeypatch, mlflow_uri
):
    monkeypatch.chdir(tmp_path)
    assert (
        gpt1(
            [
                "sweep",
                "--task",
                "sst-2",
                "--data",
                str(sst2),
                "--checkpoint",
                str(task_checkpoint),
                "--samples",
                "1",
                "--set",
                "batch_size=0",
            ]
        )
        == 2
    )
    one_line(capsys, "batch_size 0")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    assert not Path(mlflow_uri[len("sqlite:///") :]).exists()


# A manifest is checked against itself; a checkpoint against its own record.


def test_a_swapped_tokenizer_in_a_checkpoint_is_refused(task_checkpoint, sst2, tmp_path, capsys):
    import torch

    from model import GPT
    from pipeline.data.tokenizer import save_tokenizer, train_tokenizer
    from pipeline.train.checkpoint import save_checkpoint

    ckpt = tmp_path / "ckpt"
    gpt = GPT.from_pretrained(task_checkpoint)
    opt = torch.optim.AdamW(gpt.parameters())
    save_checkpoint(ckpt, gpt, opt, {"step": 1}, task_checkpoint / "tokenizer.json")
    other = train_tokenizer(["different words entirely " * 20], n_merges=5)
    save_tokenizer(other, ckpt / "tokenizer.json")
    assert gpt1(finetune_args(ckpt, sst2, tmp_path / "ft")) == 2
    one_line(capsys, "tokenizer.json", "the checkpoint is damaged")


# One line naming the file and the cause.


def test_a_corrupt_gzip_is_one_line(tmp_path, capsys, ray_session):
    data = gzip.compress(("\n\n".join(documents(300, seed=2)) + "\n").encode())
    bad = bytearray(data)
    for i in range(200, 260):
        bad[i] ^= 0xFF
    (tmp_path / "c.txt.gz").write_bytes(bytes(bad))
    assert gpt1(prepare_args(tmp_path / "c.txt.gz", tmp_path / "ds")) == 2
    one_line(capsys, "c.txt.gz", "not a valid gzip file")
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))


def test_a_latin1_task_file_names_the_file(task_checkpoint, sst2, tmp_path, capsys):
    d = tmp_path / "latin"
    shutil.copytree(sst2, d)
    (d / "train.tsv").write_bytes("sentence\tlabel\ncaf\xe9 great\t1\n".encode("latin-1"))
    assert gpt1(finetune_args(task_checkpoint, d, tmp_path / "ft")) == 2
    one_line(capsys, str(d / "train.tsv"), "not UTF-8")


def test_manifest_and_config_json_that_are_not_json(task_checkpoint, tmp_path, capsys):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_text("{not json")
    assert gpt1(["pretrain", "--data", str(ds), "--no-mlflow"]) == 2
    one_line(capsys, "manifest.json", "not valid JSON")
    m = tmp_path / "m"
    shutil.copytree(task_checkpoint, m)
    (m / "config.json").write_text("{oops")
    assert gpt1(["export", str(m), str(tmp_path / "out")]) == 2
    one_line(capsys, "config.json", "not valid JSON")
    raw = json.loads((task_checkpoint / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**raw, "n_layer": "two"}))
    assert gpt1(["export", str(m), str(tmp_path / "out")]) == 2
    one_line(capsys, "config.json", "n_layer 'two'", "positive integer")
    assert not (tmp_path / "out").exists()


def test_read_only_out_and_storage_are_one_line(corpus, tmp_path, capsys, task_checkpoint):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        assert gpt1(prepare_args(corpus, ro / "ds")) == 2
        one_line(capsys, "cannot write", "Read-only")
        assert gpt1(["export", str(task_checkpoint), str(ro / "m")]) == 2
        one_line(capsys, "cannot write", "Read-only")


@pytest.mark.slow
def test_a_full_disk_during_prepare_and_export_is_one_line(tmp_path, capsys, task_checkpoint, ray_session):
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(documents(6000, seed=4)) + "\n")
    with tmpfs(tmp_path / "small", "64k") as small:
        assert gpt1(prepare_args(big, small / "ds", "--set", "n_merges=20")) == 2
        one_line(capsys, "No space left on device")
        assert list(small.iterdir()) == []  # nothing half-written
        assert gpt1(["export", str(task_checkpoint), str(small / "m")]) == 2
        one_line(capsys, "No space left on device")
        assert list(small.iterdir()) == []


@pytest.mark.slow
def test_a_readme_in_a_corpus_directory_is_skipped_by_name(corpus, tmp_path, capsys, ray_session):
    (corpus / "README").write_text("about this corpus")
    assert gpt1(prepare_args(corpus, tmp_path / "ds")) == 0
    err = capsys.readouterr().err
    assert "skipping" in err and str(corpus / "README") in err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert [Path(i["uri"]).name for i in manifest["inputs"]] == ["a.txt"]
    # Named on its own, it is refused, with the fix.
    assert gpt1(prepare_args(corpus / "README", tmp_path / "ds2")) == 2
    one_line(capsys, "README", "cannot tell the format", "set format")


# A binary file without NUL bytes is refused by its share of replaced bytes.


@pytest.mark.slow
def test_a_binary_file_without_nul_bytes_is_refused(tmp_path, capsys, ray_session):
    import random

    rng = random.Random(0)
    blob = bytes(rng.choice(range(1, 256)) for _ in range(20000))
    (tmp_path / "b.txt").write_bytes(blob)
    assert gpt1(prepare_args(tmp_path / "b.txt", tmp_path / "ds")) == 2
    one_line(capsys, "b.txt", "are not UTF-8", "max_replaced_fraction")
    assert not (tmp_path / "ds").exists()
    assert gpt1(prepare_args(tmp_path / "b.txt", tmp_path / "ds", "--set", "max_replaced_fraction=1")) == 0


# A killed writer's leftovers are removed by the next run.


@pytest.mark.slow
def test_prepare_removes_the_orphans_of_a_killed_run(corpus, tmp_path, capsys, ray_session):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    orphan = tmp_path / f".ds.gpt1-tmp-{dead}-deadbeef"
    (orphan / "train").mkdir(parents=True)
    (orphan / ".gpt1-staging").write_text(dead)
    (orphan / "train" / "part.parquet").write_bytes(b"half")
    live = tmp_path / f".ds.gpt1-tmp-{os.getpid()}-cafecafe"  # a live writer's is left alone
    live.mkdir()
    (live / ".gpt1-staging").write_text(str(os.getpid()))
    assert gpt1(prepare_args(corpus, tmp_path / "ds")) == 0
    assert not orphan.exists() and live.exists()


@pytest.mark.slow
def test_a_command_says_which_ray_it_joined(corpus, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipeline" / "prepare.py"),
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "ds"),
            "--no-mlflow",
            "--set",
            "n_merges=20",
            "--set",
            "n_ctx=16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0].startswith("Ray: a new local instance at "), out.stdout[:500]


@pytest.mark.slow
def test_a_run_beside_another_ray_and_a_folder_named_model_is_clean(corpus, tmp_path, ray_session):
    """This test process's own Ray instance is "another local Ray" to the command's: Ray's helpers
    in the command's processes (Train's placement-group cleaner) find theirs by the address the
    command pins, with no "Found multiple active Ray instances" traceback; and its workers import
    the project's `model` package, not a user's folder of that name in the working directory."""
    from pipeline.data.prepare import PrepareConfig, prepare

    prepare([str(corpus / "a.txt")], tmp_path / "ds", PrepareConfig(n_merges=50, n_ctx=64), track=False)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("a user's folder")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sets = sum((["--set", s] for s in ("max_steps=2", "batch_size=2", "micro_batch=2", "eval_blocks=1")), [])
    out = subprocess.run(
        # The installed script, as a user runs it (python -m would put the working directory first).
        [Path(sys.executable).parent / "gpt1", "pretrain", "--data", "ds", "--no-mlflow", *sets],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (log,) = (tmp_path / "logs").glob("pretrain-*.log")
    assert out.returncode == 0, log.read_text()[-3000:]
    assert "done at step 2" in out.stdout
    assert "Found multiple active Ray instances" not in log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.slow
def test_a_damaged_dataset_is_named_and_replaced_only_with_overwrite(corpus, tmp_path, capsys, ray_session):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.json").write_text("{cut off")
    assert gpt1(prepare_args(corpus, out)) == 2
    one_line(capsys, "manifest.json", "not valid JSON", "--overwrite")
    assert gpt1(prepare_args(corpus, out, "--overwrite")) == 0
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["documents"] > 0
