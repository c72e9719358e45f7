"""`gpt1 pretrain --preflight` on Ray's simulated cluster: a head with no CPUs and N worker nodes of
one CPU each (ray.cluster_utils.Cluster, all on this machine), one CPU worker a node, so the
all-reduce (gloo) crosses "nodes" that share this machine's loopback. What it shows is the
preflight's output and its verdict against a stated figure; the bandwidth is this machine's
loopback, not a network's.

    python bench/preflight_simulated.py                  # 4 nodes, the mini preset, network_gbps=10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from corpus_gen import documents  # noqa: E402

from pipeline.data.prepare import PrepareConfig, prepare  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--config", default="mini")
    p.add_argument("--network-gbps", default="10", help="the figure the preflight is held to")
    a = p.parse_args()
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="preflight-"))
    (work / "c.txt").write_text("\n\n".join(documents(1500, seed=3)) + "\n")
    prepare(
        [str(work / "c.txt")],
        work / "ds",
        PrepareConfig(n_merges=100, n_ctx=256, val_fraction=0.2),
        track=False,
        local=True,
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(a.nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        argv = [
            sys.executable, "-m", "gpt1.cli", "pretrain", "--preflight", "--config", a.config,
            "--data", str(work / "ds"), "--workers", str(a.nodes), "--set", f"network_gbps={a.network_gbps}",
        ]  # fmt: skip
        env = {
            **os.environ,
            "RAY_ADDRESS": cluster.address,
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        }
        print("$", " ".join(argv[1:]), flush=True)
        out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        lines = [
            x for x in (out.stdout + out.stderr).splitlines() if x.startswith(("network:", "gpt1 pretrain:"))
        ]
        print("\n".join(lines))
        print(f"exit status {out.returncode}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
