"""Ray's fake multi-node provider, with a runtime-env directory for each simulated node.

The simulator runs every node on this machine, in the head's session directory, so every node's
runtime-env agent unpacks a job's working_dir into the same place, and Ray unpacks it afresh
(remove, then unzip) on each node that first runs the job's work. On a real cluster each node
has its own disk; here the job's driver, on the head, would find its current directory removed
under it when a worker node started. The autoscaling config names this class
(`provider: {type: external, module: own_disk_nodes.OwnDiskProvider}`); the monitor imports it.
"""

import ray._private.parameter as parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

_RayParams = parameter.RayParams


class _NodeParams(_RayParams):
    def __init__(self, *args, **kwargs):
        node = (kwargs.get("env_vars") or {}).get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
        if node and not kwargs.get("runtime_env_dir_name"):
            kwargs["runtime_env_dir_name"] = f"runtime_resources_{node[-8:]}"
        super().__init__(*args, **kwargs)


# Only the autoscaler's monitor imports this module, and only its node launches build RayParams.
parameter.RayParams = _NodeParams


class OwnDiskProvider(FakeMultiNodeProvider):
    pass
