"""What the cluster has, and what its autoscaler can add: ask for what a command needs, then wait.

A command needs some workers of one shape ({"GPU": 1}, or {"CPU": k}). Where the cluster has
them, nothing happens. Where it has an autoscaler (Ray's monitor writes a report into the GCS at
every update, as `ray status` reads it), the command reserves the workers' bundles in a
placement group, which the autoscaler adds nodes for, and waits until it is placed, printing a
line whenever the count changes, up to --wait-minutes; then it lets the group go, for the work's
own to take the nodes. Where it has no autoscaler, asking for more than it has is refused at
once: Ray would wait for ever.

`wants_gpus` decides --device auto: GPUs where the cluster has them, or where its autoscaler
starts a GPU node when asked for one GPU.
"""

from __future__ import annotations

import json
import time

from pipeline import errors

STATUS_KEY = "__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS
STALE_S = 60.0  # a report older than this is from a monitor that died
PROBE_UPDATES = 3  # autoscaler updates to watch for a GPU node starting before --device auto picks CPU


def autoscaler_report() -> dict | None:
    """The autoscaler's newest report (active, pending and failed nodes, and the resources of the
    nodes starting), or None where the cluster has no autoscaler that can add nodes: a local
    instance, or a cluster started with `ray start` and no --autoscaling-config."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(STATUS_KEY)
    if not raw:
        return None
    status = json.loads(raw)
    if time.time() - status.get("time", 0) > STALE_S:
        return None
    report = status.get("autoscaler_report")
    if not report or _read_only(report):
        return None
    return {**report, "time": status["time"]}


def _read_only(report: dict) -> bool:
    """A local instance (`ray.init()`, or `ray start` without a cluster file) runs the monitor too,
    on Ray's read-only provider: it reports the nodes it sees under their own ids as node types,
    and can add none."""
    from ray.autoscaler._private.util import format_readonly_node_type

    mapping = report.get("node_type_mapping") or {}
    return all(kind == format_readonly_node_type(node) for node, kind in mapping.items())


def can_grow() -> bool:
    return autoscaler_report() is not None


def starting(report: dict | None, kind: str) -> tuple[float, int]:
    """(kind's units on the nodes now starting, those nodes) in an autoscaler report."""
    if not report:
        return 0.0, 0
    nodes = len(report.get("pending_nodes") or []) + sum((report.get("pending_launches") or {}).values())
    return float((report.get("pending_resources") or {}).get(kind, 0)), nodes


def _reserve(bundles: list[dict]):
    """A placement group of the bundles: while it waits, the autoscaler adds nodes for it, as it
    does for Ray Train's own. (`request_resources` is one cluster-wide setting that Ray Data's
    requester overwrites; a placement group is this command's alone.)"""
    from ray.util.placement_group import placement_group

    return placement_group(bundles, strategy="PACK")


def _release(group) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(group)


def wants_gpus(device: str, say=print) -> bool:
    """--device as a choice of GPUs: cuda always (never a fall back to CPU), cpu never, auto where
    the cluster has GPUs or its autoscaler starts a GPU node when asked for one."""
    import ray

    if device != "auto":
        return device == "cuda"
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    first = autoscaler_report()
    if first is None:
        return False
    group = _reserve([{"GPU": 1}])
    try:
        seen, last = 0, first["time"]
        while seen < PROBE_UPDATES:
            time.sleep(0.5)
            report = autoscaler_report()
            if report is None:
                return False
            if starting(report, "GPU")[0] > 0 or ray.cluster_resources().get("GPU", 0) > 0:
                return True
            if report["time"] != last:
                seen, last = seen + 1, report["time"]
    finally:
        _release(group)
    say(
        "--device auto: the cluster has no GPUs and its autoscaler starts no GPU node; running on CPU",
        flush=True,
    )
    return False


def accelerator_key(accelerator: str) -> str:
    """The resource Ray gives every node of that accelerator type (and the AWS provider gives
    the node types it can launch): a label, not a count of GPUs."""
    return f"accelerator_type:{accelerator}"


def available(kind: str, accelerator: str | None = None) -> float:
    """kind's units on the live nodes (of that accelerator type, where one is given)."""
    import ray

    if accelerator is None:
        return ray.cluster_resources().get(kind, 0)
    key = accelerator_key(accelerator)
    return sum(n["Resources"].get(kind, 0) for n in ray.nodes() if n["Alive"] and key in n["Resources"])


def wait_for(
    kind: str,
    count: float,
    bundles: int,
    what: str,
    minutes: float,
    accelerator: str | None = None,
    say=print,
    poll_s=2.0,
) -> None:
    """Wait until the cluster has count units of kind (GPU or CPU) in all, on nodes of the
    accelerator type where one is given, for `what` (the command's workers or trials, `bundles`
    of them). The autoscaler is asked for them first; a line is printed whenever the count
    changes. Raises NotEnoughResources after `minutes`, or ConfigError at once where the cluster
    cannot grow."""
    have = available(kind, accelerator)
    if have >= count:
        return
    kinds = f"{accelerator} {kind}s" if accelerator else f"{kind}s"
    if not can_grow():
        raise errors.ConfigError(
            f"{what}: the cluster has {have:g} of the {count:g} {kinds} needed, and no autoscaler to add "
            "them; ask for fewer, or run on a cluster whose autoscaler adds nodes (clusters/gpu.yaml)"
        )
    import ray

    shape = {kind: count / bundles}
    if accelerator:
        shape[accelerator_key(accelerator)] = 0.001  # as Ray Train asks for it: any share of the label
    group = _reserve([shape] * bundles)
    placed = group.ready()
    deadline, last = time.monotonic() + minutes * 60, None
    try:
        # Said at once, before the first wait: a fast autoscaler may bring the nodes within one
        # poll, and the user should still see that this command asked for them.
        while True:
            _, nodes = starting(autoscaler_report(), kind)
            line = f"waiting for {count:g} {kinds} for {what}: {have:g} up, {nodes} node(s) starting"
            if line != last:
                say(line, flush=True)
                last = line
            if ray.wait([placed], timeout=poll_s)[0]:
                break
            if time.monotonic() > deadline:
                raise errors.NotEnoughResources(
                    f"{what}: after {minutes:g} minute(s) the cluster has {have:g} of the {count:g} {kinds} "
                    f"needed ({nodes} node(s) starting); `ray status` says why (no node type with {kind}s, "
                    "max_workers, or the cloud's quota). Ask for fewer, or raise --wait-minutes"
                )
            have = available(kind, accelerator)
    finally:
        # The nodes are up; the work's own placement group (or actors) takes them from here.
        _release(group)
    say(f"the cluster has the {count:g} {kinds} for {what}", flush=True)
