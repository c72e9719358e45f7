"""The waits of small jobs, this checkout beside an earlier commit (default ce12322), run side by
side by one process on this machine: a finished pretraining run run again, `serve` to its first
200 on /healthz, and `predict` on 10 and on 10,000 rows.

Everything runs from a temporary directory on data the project makes itself (gpt1/world.py): a
corpus prepared once; a tiny pretraining run finished by each tree before its re-run is timed; a
model fine-tuned once (by this checkout) that both trees' predict and serve read. Each case is one
fresh process (`python -m gpt1.cli ...`, as the `gpt1` script runs it) with its own local Ray,
timed `--repeat` times; the table gives the median wall time and the ratio. The earlier commit
runs from a `git worktree` of it with the same virtual environment (PYTHONPATH puts its tree
first).

    python bench/small_jobs.py [--baseline REF] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = ["--config", "tiny", "--set", "max_steps=20", "--set", "batch_size=4", "--set", "micro_batch=4"]


def env_of(tree: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": str(tree), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}


def gpt1(tree: Path, work: Path, *args: str) -> float:
    """One command, to its end: its wall time; a failure ends the benchmark with its output."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gpt1.cli", *args],
        cwd=work,
        env=env_of(tree, work),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"gpt1 {' '.join(args)} in {tree}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def serve_ready(tree: Path, work: Path, model: Path, port: int) -> float:
    """Seconds from `gpt1 serve`'s start to its first 200 on /healthz; then stopped."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt1.cli", "serve", "--model", str(model), "--port", str(port)],
        cwd=work,
        env=env_of(tree, work),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - start < 600:
            if proc.poll() is not None:
                raise SystemExit(f"gpt1 serve in {tree}: exit {proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"gpt1 serve in {tree}: not ready in 600 s")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="ce12322", help="the earlier commit (default ce12322)")
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    from gpt1 import world

    with tempfile.TemporaryDirectory(prefix="gpt1-small-jobs-") as tmp:
        tmp = Path(tmp)
        old = tmp / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), a.baseline], check=True
        )
        try:
            work = tmp / "work"
            work.mkdir()
            world.write_corpus(work / "corpus.txt", 400)
            world.write_task("sentiment", work / "sentiment", 200, 50)
            new = ROOT
            gpt1(
                new,
                work,
                "prepare",
                "--corpus",
                "corpus.txt",
                "--out",
                "data",
                "--set",
                "n_ctx=64",
                "--set",
                "n_merges=300",
            )

            def pretrain(tree: Path) -> float:  # each tree's own run, in its own storage
                storage = f"runs-{'old' if tree == old else 'new'}"
                return gpt1(
                    tree, work, "pretrain", "--data", "data", "--storage", storage, "--name", "r", *TINY
                )

            for tree in (old, new):  # finished first, untimed
                pretrain(tree)
            gpt1(
                new,
                work,
                "finetune",
                "--task",
                "sentiment",
                "--data",
                "sentiment",
                "--checkpoint",
                "runs-new/r",
                "--out",
                "tuned",
                "--set",
                "max_steps=5",
                "--set",
                "batch_size=8",
            )
            dev = (work / "sentiment" / "dev.tsv").read_text().splitlines()[1:]
            sentences = [line.split("\t")[0] for line in dev]
            for n in (10, 10_000):
                rows = [sentences[i % len(sentences)] for i in range(n)]
                (work / f"rows{n}.csv").write_text("sentence\n" + "\n".join(rows) + "\n")
            cases = [
                (
                    "a finished pretraining run, run again",
                    lambda tree, k: pretrain(tree),
                ),
                (
                    "serve: start to the first 200 on /healthz",
                    lambda tree, k: serve_ready(tree, work, work / "tuned", 8700 + k),
                ),
            ] + [
                (
                    f"predict on {n:,} rows",
                    lambda tree, k, n=n: gpt1(
                        tree,
                        work,
                        "predict",
                        "--model",
                        "tuned",
                        "--input",
                        f"rows{n}.csv",
                        "--out",
                        f"out-{k}.csv",
                    ),
                )
                for n in (10, 10_000)
            ]
            print(f"# gpt1: small jobs ({platform.node()}, {os.cpu_count()} CPUs)")
            print(f"baseline {a.baseline}, median of {a.repeat} fresh process(es) each\n")
            print(f"| case | {a.baseline} (s) | this checkout (s) | ratio |")
            print("|---|---:|---:|---:|")
            k = 0
            for label, run in cases:
                times = {}
                for name, tree in (("old", old), ("new", new)):
                    runs = []
                    for _ in range(a.repeat):
                        k += 1
                        runs.append(run(tree, k))
                    times[name] = statistics.median(runs)
                print(
                    f"| {label} | {times['old']:.1f} | {times['new']:.1f} | {times['old'] / times['new']:.1f}x |",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)


if __name__ == "__main__":
    main()
