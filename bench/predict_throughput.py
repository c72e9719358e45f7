"""gpt1 predict's rows/s with 1 and 2 CPU actors, side by side in one run: the same fine-tuned
model (bench/fine_tuned.py, `mini` by default) over the same rows (a TSV of generated reviews),
each count run `--rounds` times in turn, through the stage's own predict() on a local Ray.

    python bench/predict_throughput.py [--rows 4000] [--preset mini] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    from fine_tuned import fine_tuned_model

    from tuning.predict import predict

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--preset", default="mini")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    model, dev = fine_tuned_model(work, a.preset)
    rows = (dev * (a.rows // len(dev) + 1))[: a.rows]
    (work / "rows.tsv").write_text("sentence\n" + "\n".join(rows) + "\n")
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores; model: {a.preset}"
    )
    (work / "warm.tsv").write_text("sentence\n" + "\n".join(rows[:50]) + "\n")
    predict(str(model), [str(work / "warm.tsv")], str(work / "warm.parquet"))  # Ray starts here, untimed
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for r in range(a.rounds):
        for actors in seconds:
            t0 = time.perf_counter()
            predict(
                str(model), [str(work / "rows.tsv")], str(work / f"out-{r}-{actors}.parquet"), actors=actors
            )
            seconds[actors].append(time.perf_counter() - t0)
    print()
    print("| CPU actors | rows | rows/s, median of rounds (min-max) |")
    print("|---:|---:|---:|")
    for actors, got in seconds.items():
        rates = [a.rows / s for s in got]
        print(
            f"| {actors} | {a.rows:,} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) |"
        )
    print(
        f"\n2 actors / 1: {statistics.median(seconds[1]) / statistics.median(seconds[2]):.2f}x (wall time, start-up included)"
    )


if __name__ == "__main__":
    main()
