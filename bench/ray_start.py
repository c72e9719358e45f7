"""What a command's local Ray instance costs to start, with and without Ray's dashboard.

Every command that runs on Ray and is given no RAY_ADDRESS starts a local instance of its own
(pipeline/runtime.py ray_init). Each round starts one in a fresh process, runs one task, and shuts
it down, alternating the dashboard off (the default) and on (GPT1_RAY_DASHBOARD=1), so that drift
in the machine's speed hits both alike. Wall time is the process's; CPU time is the whole
machine's (/proc/stat), since Ray's daemons are not the process's children once it exits: run it
on an otherwise idle machine.

    python bench/ray_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE_COMMAND = """
import ray
from pipeline.runtime import ray_init
ray_init()
ray.get(ray.remote(lambda: 1).remote())
ray.shutdown()
"""


def busy_seconds() -> float:
    """CPU seconds spent by the whole machine since boot (user, nice, system), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(f) for f in fields[:3]) / os.sysconf("SC_CLK_TCK")


def one_start(dashboard: bool) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GPT1_RAY_DASHBOARD")}
    if dashboard:
        env["GPT1_RAY_DASHBOARD"] = "1"
    cpu0, t0 = busy_seconds(), time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", ONE_COMMAND], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
    )
    wall = time.perf_counter() - t0
    time.sleep(2)  # Ray's daemons wind down after the driver exits: their CPU counts too
    return wall, busy_seconds() - cpu0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    import ray

    one_start(False)  # untimed: the first start pays the imports' cold page cache
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for dashboard in (False, True):
            results[dashboard].append(one_start(dashboard))
    print(f"command: python bench/{Path(__file__).name} {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"date: {time.strftime('%Y-%m-%d')}  machine: {platform.machine()}, {os.cpu_count()} CPUs  ray {ray.__version__}"
    )
    print(f"{args.rounds} rounds, alternating; a local instance started, one task run, shut down\n")
    print("| local instance | wall s, median (min-max) | machine CPU s, median |")
    print("|---|---:|---:|")
    for dashboard, label in (
        (True, "with the dashboard (GPT1_RAY_DASHBOARD=1)"),
        (False, "without (the default)"),
    ):
        walls, cpus = zip(*results[dashboard], strict=True)
        print(
            f"| {label} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) "
            f"| {statistics.median(cpus):.2f} |"
        )
    saved = statistics.median(w for w, _ in results[True]) - statistics.median(w for w, _ in results[False])
    print(f"\nwithout the dashboard: {saved:.2f} s less a command")


if __name__ == "__main__":
    main()
