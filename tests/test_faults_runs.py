"""Pretraining on a hostile machine: a full disk, too many workers, two runs of one name, a
damaged or half-written checkpoint, a diverging loss, an edited manifest, Ctrl-C and SIGTERM.
Each ends as one line and exit status 2 (130 for an interrupt), and the same command resumes
from the newest complete checkpoint."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus_gen import documents
from test_faults_inputs import one_line, tmpfs

from gpt1.cli import main as gpt1
from pipeline.data.prepare import PrepareConfig, prepare
from pipeline.model_dir import STATE_FILE, latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SETS = [
    "max_steps=40",
    "batch_size=8",
    "log_every=1",
    "checkpoint_every=10",
    "eval_every=0",
    "keep_checkpoints=10",
    "lr=3e-3",
    "warmup_steps=5",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_session) -> Path:
    d = tmp_path_factory.mktemp("faults-data")
    (d / "corpus.txt").write_text("\n\n".join(documents(1500, seed=5)) + "\n")
    prepare(
        [str(d / "corpus.txt")],
        d / "data",
        PrepareConfig(n_merges=200, n_ctx=64, val_fraction=0.1, shard_mb=1),
        track=False,
    )
    return d / "data"


def args(data, storage, name="r", *extra, sets=SETS):
    out = ["pretrain", "--data", str(data), "--storage", str(storage), "--name", name, "--no-mlflow"]
    for s in sets:
        out += ["--set", s]
    return out + list(extra)


def steps_on_disk(run: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in run.glob("checkpoint_0*") if p.is_dir())


# A full disk: one line, nothing half-written, and the same command resumes once there is room.


@pytest.mark.slow
def test_a_full_disk_stops_cleanly_and_the_run_resumes(data, tmp_path, capsys):
    storage = tmp_path / "store"
    with tmpfs(storage, "700k"):
        assert gpt1(args(data, storage)) == 2
        line = one_line(capsys, "No space left on device", "while writing checkpoint")
        run = storage / "r"
        done = steps_on_disk(run)
        assert done and done[-1] < 40, (line, done)
        assert not list(run.glob(".checkpoint_*"))  # the cut-off one is gone, not left half-written
        assert latest_checkpoint(str(run))[1] == done[-1]
        # As the probe found it: Ray Train's index cut off at 0 bytes by the full disk.
        (run / "checkpoint_manager_snapshot.json").write_bytes(b"")
        subprocess.run(["mount", "-o", "remount,size=32m", str(storage)], check=True)
        assert gpt1(args(data, storage)) == 0
        out = capsys.readouterr().out
        assert f"resuming run r from step {done[-1]}" in out, out[-2000:]
        assert steps_on_disk(run)[-1] == 40


def test_a_read_only_storage_is_one_line_before_any_worker(data, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        assert gpt1(args(data, ro)) == 2
        one_line(capsys, "cannot write", "Read-only")


# More workers than the cluster has: one line before any worker starts.


def test_more_workers_than_cpus_is_refused_at_once(data, tmp_path, capsys):
    t0 = time.time()
    assert gpt1(args(data, tmp_path / "s", "r", "--workers", "4")) == 2
    one_line(capsys, "--workers 4", "the cluster has 2 CPU(s)", "no autoscaler")
    assert time.time() - t0 < 30
    assert not list((tmp_path / "s" / "r").glob("checkpoint_*"))


# Two runs of one name: the second is refused while the first lives; a dead holder leaves no lock.


def test_a_second_run_of_the_same_name_is_refused(data, tmp_path, capsys):
    from pipeline.train.ray_train import run_lock

    run = str(tmp_path / "s" / "r")
    with run_lock(run):
        assert gpt1(args(data, tmp_path / "s")) == 2
        one_line(capsys, "another pretrain of this run is running", f"pid {os.getpid()}")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "from pipeline.train.ray_train import run_lock; import time\n"
            f"with run_lock({run!r}):\n    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert gpt1(args(data, tmp_path / "s")) == 2
    one_line(capsys, f"pid {holder.pid}")
    holder.kill()
    holder.wait()
    with run_lock(run):  # a killed holder's lock is gone with it
        pass


# A half-written checkpoint never looks complete; a damaged one is one line; a killed
# writer's leftovers are removed by the next run.


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_line_and_a_killed_writers_leftovers_go(data, tmp_path, capsys, sst2):
    storage = tmp_path / "s"
    assert gpt1(args(data, storage)) == 0
    run = storage / "r"
    newest = run / "checkpoint_000000040"
    state = json.loads((newest / STATE_FILE).read_text())
    assert set(state["files"]) == {
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
    }
    capsys.readouterr()

    cut = tmp_path / "cut"
    shutil.copytree(newest, cut)
    with open(cut / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert gpt1(["export", str(cut), str(tmp_path / "x")]) == 2
    one_line(capsys, "model.safetensors", "the checkpoint is damaged")
    (cut / STATE_FILE).unlink()
    assert (
        gpt1(
            [
                "finetune",
                "--task",
                "sst-2",
                "--data",
                str(sst2),
                "--checkpoint",
                str(cut),
                "--out",
                str(tmp_path / "ft"),
            ]
        )
        == 2
    )
    one_line(capsys, "incomplete training checkpoint")
    # A checkpoint without trainer_state.json, cut off mid-write, is passed over on resume.
    shutil.copytree(cut, run / "checkpoint_000000050")
    assert latest_checkpoint(str(run))[0] == str(newest)

    # What a killed writer leaves: a staging directory in the run, a temporary checkpoint.
    import tempfile

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    staging = run / f".checkpoint_000000060.gpt1-tmp-{dead}-0badc0de"
    staging.mkdir()
    (staging / ".gpt1-staging").write_text(dead)
    (staging / "model.safetensors").write_bytes(b"half")
    tmp_ckpt = Path(tempfile.gettempdir()) / f"gpt1-ckpt-{dead}-abc"
    tmp_ckpt.mkdir()
    (tmp_ckpt / ".gpt1-staging").write_text(dead)
    assert gpt1(args(data, storage)) == 0  # done already: resumes at 40 of 40 and ends
    assert not staging.exists() and not tmp_ckpt.exists()


# Settings and a manifest checked before any worker; a diverging loss stops the run.


@pytest.mark.parametrize(
    "setting, words",
    [
        ("lr=.nan", "lr nan"),
        ("lr=1e30", "lr 1e+30"),
        ("weight_decay=-1", "weight_decay -1"),
        ("grad_clip=.inf", "grad_clip inf"),
    ],
)
def test_pretrain_settings_out_of_range(data, tmp_path, capsys, setting, words):
    assert gpt1(args(data, tmp_path / "s", "r", sets=SETS + [setting])) == 2
    one_line(capsys, words)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_saves_nothing_after_it(data, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    from pipeline.files import sha256_file

    storage = tmp_path / "s"
    assert gpt1(args(data, storage)) == 0
    run = storage / "r"
    for step in (30, 40):
        shutil.rmtree(run / f"checkpoint_{step:09d}")
    (run / "checkpoint_manager_snapshot.json").unlink()
    # Weights that have become NaN (as a diverged update leaves them), in a checkpoint that is
    # otherwise complete: the run resumes from it, and its first step's loss is NaN.
    poisoned = run / "checkpoint_000000020"
    weights = {
        k: torch.full_like(v, float("nan")) for k, v in load_file(poisoned / "model.safetensors").items()
    }
    save_file(weights, str(poisoned / "model.safetensors"), metadata={"format": "pt"})
    state = json.loads((poisoned / STATE_FILE).read_text())
    state["files"]["model.safetensors"] = {
        "bytes": (poisoned / "model.safetensors").stat().st_size,
        "sha256": sha256_file(poisoned / "model.safetensors"),
    }
    (poisoned / STATE_FILE).write_text(json.dumps(state))
    capsys.readouterr()
    assert gpt1(args(data, storage)) == 2
    one_line(capsys, "the loss became non-finite", "at step 21", "Lower lr")
    assert steps_on_disk(run) == [10, 20]  # nothing saved after it


def test_an_edited_manifest_is_refused_before_any_worker(data, tmp_path, capsys):
    cases = {
        "vocab_size": lambda m: m["tokenizer"].update(vocab_size=100),
        "no val split": lambda m: m["splits"].pop("val"),
        "a shard unlisted": lambda m: m["shards"].pop(sorted(m["shards"])[0]),
        "a block count": lambda m: m["splits"]["train"].update(blocks=m["splits"]["train"]["blocks"] + 1),
    }
    words = {
        "vocab_size": "tokenizer.json has",
        "no val split": "no 'val' split",
        "a shard unlisted": "does not list",
        "a block count": "splits.train.blocks",
    }
    for case, edit in cases.items():
        d = tmp_path / case.replace(" ", "-")
        shutil.copytree(data, d)
        m = json.loads((d / "manifest.json").read_text())
        edit(m)
        (d / "manifest.json").write_text(json.dumps(m))
        assert gpt1(args(d, tmp_path / "s", case.replace(" ", "-"))) == 2, case
        one_line(capsys, words[case])
    assert not (tmp_path / "s").exists()


# Ctrl-C and SIGTERM stop cleanly with one line naming the newest checkpoint; the same
# command resumes from it.


def wait_for_checkpoint_after(run: Path, step: int, proc, timeout: float = 240) -> None:
    t0 = time.time()
    while (latest_checkpoint(str(run)) or ("", -1))[1] <= step:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, f"no checkpoint after step {step} in {run}"
        time.sleep(0.3)


@pytest.mark.slow
def test_a_lost_raylet_is_one_line_and_the_same_command_resumes(data, tmp_path):
    """The local raylet killed from outside mid-run: Ray's C++ ends the driver at once, so the
    `gpt1` process that supervises it says so, in one line with the command that resumes."""
    import psutil

    storage = tmp_path / "s"
    # 1,000 steps: the kill lands seconds after the first checkpoint (step 20), long before the
    # run could end; at 120 a fast machine finished first, and the run exited 0.
    cmd = [sys.executable, "-m", "gpt1.cli"] + args(
        data, storage, "r", sets=SETS[1:] + ["max_steps=1000", "checkpoint_every=20", "log_every=100"]
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    wait_for_checkpoint_after(storage / "r", 0, proc)
    (raylet,) = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "raylet"]
    raylet.kill()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    console = (out + err).splitlines()
    assert not any("Traceback" in line or "state-dump" in line for line in console), (out + err)[-3000:]
    assert (
        err.strip().splitlines()[-1].startswith("gpt1 pretrain: the Ray instance was lost (the raylet ended)")
    ), err[-3000:]
    assert err.strip().endswith(" ".join(["gpt1", *cmd[3:]])), err[-500:]
    (log,) = (tmp_path / "logs").glob("pretrain-*.log")  # Ray's own lines are kept there
    assert "Raylet is terminated" in log.read_text()
    done = latest_checkpoint(str(storage / "r"))[1]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert done < 1000 and f"resuming run r from step {done:,}" in again.stdout, again.stdout[-2000:]


@pytest.mark.slow
def test_ctrl_c_and_sigterm_stop_cleanly_and_resume(data, tmp_path):
    storage = tmp_path / "s"
    cmd = [sys.executable, str(ROOT / "pipeline" / "pretrain.py")] + args(
        data, storage, "r", sets=SETS[1:] + ["max_steps=100000", "checkpoint_every=20"]
    )[1:]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    previous = None
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        wait_for_checkpoint_after(storage / "r", previous or 0, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, (sig, proc.returncode, err[-3000:])  # 130, 143: as a shell says
        mine = [line for line in err.splitlines() if line.startswith("pretrain: ")]
        assert len(mine) == 1 and "interrupted; newest checkpoint" in mine[0], err[-3000:]
        # No traceback or stack dump from this process. (Lines tagged "(Actor pid=N)" are Ray's own
        # processes': its placement-group cleaner can log one as the local instance shuts down.)
        own = [line for line in err.splitlines() if not re.sub(r"\x1b\[[0-9;]*m", "", line).startswith("(")]
        assert not any("Traceback" in line or "core dumped" in line.lower() for line in own), err[-3000:]
        newest = latest_checkpoint(str(storage / "r"))
        assert newest[0] in mine[0] and newest[1] > (previous or 0)
        # The second run took up from the newest checkpoint the first one left, not an older one.
        assert (
            f"resuming run r from step {previous:,}" if previous else "starting run r from step 0"
        ) in out, out[:2000]
        previous = newest[1]


def as_at_a_terminal() -> None:
    """In the child, before exec: SIGINT as a foreground command at a terminal has it. A shell
    starts a script's background jobs (`.ci/run &`) with SIGINT ignored, every process under them
    inherits that, and Python then never raises KeyboardInterrupt: a Ctrl-C test run there
    would wait for a sweep that cannot hear it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_is_one_line(task_checkpoint, sst2, tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    cmd = [
        sys.executable,
        str(ROOT / "tuning" / "sweep.py"),
        "--task",
        "sst-2",
        "--data",
        str(sst2),
        "--checkpoint",
        str(task_checkpoint),
        "--samples",
        "50",
        "--storage",
        str(tmp_path / "runs"),
        "--set",
        "epochs=50",
        "--set",
        "batch_size=8",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=as_at_a_terminal,
    )
    for line in proc.stdout:  # the trials are under way once the sweep names its parent run
        if "MLflow parent run" in line:
            break
    time.sleep(5)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # not left running into the tests after this one
        out, err = proc.communicate()
        pytest.fail(f"the sweep did not exit within 120 s of SIGINT: {err[-3000:]}")
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    mine = [line for line in err.splitlines() if line.startswith("sweep: ")]
    assert len(mine) == 1 and "sweep sst-2 interrupted" in mine[0] and "KILLED" in mine[0], err[-3000:]
    own = [line for line in err.splitlines() if not re.sub(r"\x1b\[[0-9;]*m", "", line).startswith("(")]
    assert not any("Traceback" in line for line in own), err[-3000:]
