"""How long the command makes a user wait for nothing: `--help` and the refusal of bad input, this
checkout beside an earlier commit (default ac409e6, before the probe's fixes and the lazy parser),
run side by side by one process on this machine.

Each case is run `--repeat` times in a fresh process (`python -m gpt1.cli ...`, as the `gpt1`
script runs it) from an empty working directory with its own SQLite store; the table gives the
median wall time of each, and the ratio. The earlier commit runs from a `git worktree` of it with
the same virtual environment (PYTHONPATH puts its tree first).

    python bench/cli_latency.py [--baseline REF] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (label, arguments, the exit status a correct command gives)
CASES = [
    ("gpt1 --help", ["--help"], 0),
    ("gpt1 predict --help", ["predict", "--help"], 0),
    ("gpt1 pretrain --help", ["pretrain", "--help"], 0),
    ("gpt1 finetune --help", ["finetune", "--help"], 0),
    ("gpt1 sweep --help", ["sweep", "--help"], 0),
    ("prepare: a missing corpus file", ["prepare", "--corpus", "missing.txt", "--out", "data"], 2),
    ("pretrain: --set lr=abc", ["pretrain", "--data", "data", "--set", "lr=abc"], 2),
    ("pretrain --plan: --workers 0", ["pretrain", "--plan", "--workers", "0"], 2),
    ("predict: a missing --model", ["predict", "--model", "nope", "--input", "in.csv", "--out", "o.csv"], 2),
    (
        "predict: a missing --input",
        ["predict", "--model", "nope", "--input", "none.csv", "--out", "o.csv"],
        2,
    ),
]


def timed(tree: Path, args: list[str], status: int, work: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(tree)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gpt1.cli", *args], cwd=work, env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - start
    if done.returncode != status:
        raise SystemExit(
            f"{' '.join(args)} in {tree}: exit {done.returncode}, expected {status}\n{done.stderr[-2000:]}"
        )
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="ac409e6", help="the earlier commit (default ac409e6)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpt1-cli-latency-") as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), a.baseline], check=True
        )
        try:
            print(f"# gpt1: waits before the first useful line ({platform.node()}, {os.cpu_count()} CPUs)")
            print(f"baseline {a.baseline}, median of {a.repeat} fresh processes each\n")
            print(f"| case | {a.baseline} (s) | this checkout (s) | ratio |")
            print("|---|---:|---:|---:|")
            for label, args, status in CASES:
                times = {}
                for name, tree in (("old", old), ("new", ROOT)):
                    runs = []
                    for _ in range(a.repeat):
                        work = Path(tempfile.mkdtemp(dir=tmp))
                        (work / "in.csv").write_text("sentence\ngood film\n")
                        runs.append(timed(tree, args, status, work))
                    times[name] = statistics.median(runs)
                print(
                    f"| {label} | {times['old']:.2f} | {times['new']:.2f} | {times['old'] / times['new']:.1f}x |",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)


if __name__ == "__main__":
    main()
