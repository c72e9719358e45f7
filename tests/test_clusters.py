"""Every `ray up` config in clusters/ passes Ray's own cluster-config validation (what `ray up`
runs before it starts anything), so a typo fails CI, not a launch."""

import copy
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


def test_gpu_cluster_has_what_the_runbook_relies_on():
    config = yaml.safe_load((CLUSTERS[0].parent / "gpu.yaml").read_text())
    types = config["available_node_types"]
    gpu = {t for t, v in types.items() if v["node_config"]["InstanceType"] in ("g5.12xlarge", "p4d.24xlarge")}
    assert len(gpu) == 2 and all(types[t]["min_workers"] == 0 for t in gpu)  # autoscale from 0
    assert config["docker"]["worker_image"] == "rayproject/ray:2.60.0-py311-gpu"
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in start
    assert start.count("MLFLOW_TRACKING_URI=") == 2 and start.count("GPT1_STORAGE=s3://") == 2
    text = (CLUSTERS[0].parent / "gpu.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text
    # No shared file system to set up: everything goes through S3.
    assert "nfs" not in text and "efs" not in text and "mount -t" not in text


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
