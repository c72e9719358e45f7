"""pipeline/cluster.py without a cluster: reading the autoscaler's report, and the options that
ask it for nodes. (Waiting for an autoscaler's nodes runs in tests/test_runbook.py, on Ray's
autoscaling simulator; a refusal on a fixed cluster in tests/test_faults_runs.py.)"""

import math

import pytest

from pipeline import cluster
from pipeline.errors import ConfigError
from pipeline.runtime import check_accelerator, check_wait


def test_the_nodes_starting_are_read_from_the_autoscalers_report():
    report = {
        "pending_nodes": [["10.0.0.5", "gpu-8xA100", "setting-up"]],
        "pending_launches": {"gpu-8xA100": 2, "cpu-32": 1},
        "pending_resources": {"GPU": 24, "CPU": 320},
    }
    assert cluster.starting(report, "GPU") == (24.0, 4)
    assert cluster.starting(report, "CPU") == (320.0, 4)
    assert cluster.starting({"pending_nodes": [], "pending_launches": {}}, "GPU") == (0.0, 0)
    assert cluster.starting(None, "GPU") == (0.0, 0)


def test_a_local_instances_monitor_is_not_an_autoscaler():
    # ray.init()'s monitor names each node's type after the node (Ray's read-only provider);
    # a cluster file's autoscaler names them after its node types.
    local = {"node_type_mapping": {"ab12": "node_ab12", "cd34": "node_cd34"}}
    assert cluster._read_only(local)
    assert not cluster._read_only({"node_type_mapping": {"ab12": "ray.head.default", "cd34": "cpu-32"}})


def test_wait_minutes_and_accelerator_are_checked():
    assert check_wait(0) == 0 and check_wait(30) == 30
    for bad in (-1, math.nan):
        with pytest.raises(ConfigError, match="--wait-minutes"):
            check_wait(bad)
    assert check_accelerator(None) is None
    assert check_accelerator("A100") == "A100" and check_accelerator("H100") == "H100"
    with pytest.raises(ConfigError, match="--accelerator 'a100'"):
        check_accelerator("a100")
    assert cluster.accelerator_key("A10G") == "accelerator_type:A10G"


def test_a_device_given_is_never_changed():
    # cuda never falls back to CPU; cpu never asks for a GPU (no Ray needed for either).
    assert cluster.wants_gpus("cuda") is True
    assert cluster.wants_gpus("cpu") is False
