"""Every `ray up` config in clusters/ passes Ray's own cluster-config validation (what `ray up`
runs before it starts anything), so a typo fails CI, not a launch."""

import copy
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTERS = sorted((Path(__file__).resolve().parent.parent / "clusters").glob("*.yaml"))


def check(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))  # merges the provider's defaults, as ray up does
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", CLUSTERS, ids=[p.name for p in CLUSTERS])
def test_cluster_config_validates(path):
    config = yaml.safe_load(path.read_text())
    prepared = check(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]


GPUS = {"g5.12xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8}  # per node, from AWS's instance types


def gpu_yaml() -> dict:
    return yaml.safe_load((CLUSTERS[0].parent / "gpu.yaml").read_text())


def test_gpu_cluster_has_what_the_runbook_relies_on():
    config = gpu_yaml()
    types = config["available_node_types"]
    workers = {t: v for t, v in types.items() if t != config["head_node_type"]}
    assert all(v["min_workers"] == 0 for v in workers.values())  # autoscale from 0
    gpu = {t: v for t, v in workers.items() if v["node_config"]["InstanceType"] in GPUS}
    # The largest run the runbook promises (--workers 64) fits on one accelerator type.
    assert max(v["max_workers"] * GPUS[v["node_config"]["InstanceType"]] for v in gpu.values()) >= 64
    assert sum(v["max_workers"] for v in workers.values()) <= config["max_workers"]
    # The head takes no work; a CPU node type takes prepare's.
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert set(workers) - set(gpu), "no CPU worker node type for prepare"
    # The workers' own instance profile, not the head's (which may launch them: iam:PassRole).
    assert all(
        v["node_config"]["IamInstanceProfile"]["Arn"].endswith("/gpt1-worker") for v in workers.values()
    )
    # p4d and p5: a cluster placement group and EFA interfaces.
    for v in gpu.values():
        if v["node_config"]["InstanceType"].startswith(("p4d", "p5")):
            assert v["node_config"]["Placement"]["GroupName"]
            assert {n["InterfaceType"] for n in v["node_config"]["NetworkInterfaces"]} == {"efa"}
            # The dataset cache on the node's instance-store NVMe, in the container too.
            assert "GPT1_DATA_CACHE=/mnt/nvme/gpt1-data" in " ".join(v["docker"]["worker_run_options"])
            assert "/mnt/nvme" in " ".join(v["initialization_commands"])
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in start
    assert start.count("MLFLOW_TRACKING_URI=") == 2 and start.count("GPT1_STORAGE=s3://") == 2
    text = (CLUSTERS[0].parent / "gpu.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text
    # No shared file system to set up: everything goes through S3.
    assert "nfs" not in text and "mount -t" not in text


def test_every_node_installs_the_same_lock_and_the_gpu_workers_a_cuda_torch():
    config = gpu_yaml()
    head, worker = config["head_setup_commands"], config["worker_setup_commands"]
    lock_line = "pip install --quiet -r /home/ray/gpt1-on-ray/clusters/requirements.lock"
    assert head[0] == lock_line and worker[0] == lock_line
    pins = {}
    for line in (CLUSTERS[0].parent / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")  # exact pins only
            pins[name] = version
    image_ray = config["docker"]["worker_image"].split(":")[1].split("-")[0]
    assert pins["ray"] == image_ray == config["docker"]["head_image"].split(":")[1].split("-")[0]
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    runtime = [Requirement(d) for d in requires("gpt1-on-ray")]  # pyproject.toml's, as installed
    needed = {canonicalize_name(r.name) for r in runtime if r.marker is None} - {"torch"}
    assert needed <= set(pins), needed - set(pins)
    # torch: the same version on every node, in the CUDA build of the GPU image's CUDA on a GPU.
    cuda = re.search(r"-(cu\d+)$", config["docker"]["worker_image"]).group(1)
    gpu_torch = re.search(
        r"torch==(\S+) --index-url https://download.pytorch.org/whl/(cu\d+)", " ".join(worker)
    )
    head_torch = re.search(r"torch==(\S+) --index-url https://download.pytorch.org/whl/cpu", " ".join(head))
    assert gpu_torch and gpu_torch.group(2) == cuda and head_torch
    assert gpu_torch.group(1) == head_torch.group(1)
    # The project last, without letting pip change what the lock and torch installed.
    assert head[-1].endswith("--no-deps -e /home/ray/gpt1-on-ray") and worker[-1] == head[-1]


def test_the_p4d_and_p5_nodes_use_every_network_card_through_the_efa_image():
    from pipeline.train.estimate import NODE_TYPES

    cards = {n.instance: n.network_cards for n in NODE_TYPES.values()}
    assert cards["p4d.24xlarge"] == 4 and cards["p5.48xlarge"] == 32  # EC2's MaximumNetworkCards
    dockerfile = (CLUSTERS[0].parent / "efa.Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    config = gpu_yaml()
    assert base == config["docker"]["worker_image"]  # the same Ray and CUDA as the other GPU nodes
    assert "--skip-kmod" in dockerfile and "aws-ofi-nccl" in dockerfile
    assert "requirements.lock" in dockerfile and "torch==2.13.0" in dockerfile
    multi_node = 0
    for name, v in config["available_node_types"].items():
        instance = v["node_config"].get("InstanceType", "")
        if not instance.startswith(("p4d", "p5")):
            continue
        multi_node += 1
        n = cards[instance]
        interfaces = v["node_config"]["NetworkInterfaces"]
        # One EFA interface on each card, card 0's the primary (DeviceIndex 0), the others 1.
        assert sorted(i["NetworkCardIndex"] for i in interfaces) == list(range(n)), name
        assert all(i["InterfaceType"] == "efa" for i in interfaces), name
        assert all(i["DeviceIndex"] == (0 if i["NetworkCardIndex"] == 0 else 1) for i in interfaces), name
        run = v["docker"]["worker_run_options"]
        assert sorted(o for o in run if "uverbs" in o) == sorted(
            f"--device=/dev/infiniband/uverbs{i}" for i in range(n)
        ), name
        options = " ".join(run)
        assert "FI_PROVIDER=efa" in options and "memlock=-1" in options, name
        assert v["docker"]["worker_image"].endswith("/gpt1-efa:ray2.60.0-cu128"), name
        # The nodes log in to the registry the image is pushed to before docker pulls it.
        registry = v["docker"]["worker_image"].split("/")[0]
        assert any("docker login" in c and registry in c for c in v["initialization_commands"]), name
    assert multi_node == 4  # on demand and spot, each of p4d and p5


def test_the_spot_types_are_the_on_demand_nodes_at_the_spot_price_and_off_until_chosen():
    types = gpu_yaml()["available_node_types"]
    for name in ("gpu-8xA100", "gpu-8xH100"):
        demand, spot = types[name], types[f"{name}-spot"]
        assert spot["node_config"] == {
            **demand["node_config"],
            "InstanceMarketOptions": {"MarketType": "spot"},
        }
        assert (
            spot["docker"] == demand["docker"]
            and spot["initialization_commands"] == demand["initialization_commands"]
        )
        assert spot["max_workers"] == 0 and demand["max_workers"] > 0  # the runbook says how to switch


@pytest.mark.parametrize("typo", ["top", "node"])
def test_a_typo_fails_validation(typo):
    config = yaml.safe_load((CLUSTERS[0].parent / "gpu.yaml").read_text())
    if typo == "top":
        config["idle_timeout_minuts"] = config.pop("idle_timeout_minutes")
    else:
        node = config["available_node_types"]["head"]
        node["node_confg"] = node.pop("node_config")
    with pytest.raises(ValidationError):
        check(config)
