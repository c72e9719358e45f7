"""A worker's notice that its node will go: a thread that asks, every poll_s seconds,

- Ray, whether the node is being drained (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION
  --deadline-remaining-seconds N`, as autoscaler v2 drains a node it will lose), and
- the cloud's instance metadata (preemption_url, by default EC2's spot/instance-action, which
  answers 404 until AWS schedules the reclaim, two minutes ahead, then a JSON with its time).

At every step boundary the loop hands this rank's notice to an `Agreement`, and where any rank
had one at the boundary before, every rank checkpoints at this one (loop.py), so that the run
loses nothing when the node goes: Ray Train goes on with the workers left (elastic) or waits for
a replacement, from that checkpoint.

A metadata URL that does not answer at all (a machine that is not on EC2) is asked no more.
"""

from __future__ import annotations

import calendar
import json
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta

import torch
import torch.distributed as dist


class Watch:
    def __init__(self, node_id: str | None, url: str | None, poll_s: float = 1.0):
        self.node_id, self.url, self.poll_s = node_id, url, poll_s
        self.notice: dict | None = None  # {"source", "deadline" (Unix seconds, or None), "node"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpt1-preemption", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set() and self.notice is None:
            self.notice = self._drained() or self._reclaimed()
            self._stop.wait(self.poll_s)

    def _drained(self) -> dict | None:
        if not self.node_id:
            return None
        try:
            import ray._private.state

            deadline_ms = ray._private.state.state.get_draining_nodes().get(self.node_id)
        except Exception:  # the GCS busy or gone: ask again at the next poll
            return None
        if deadline_ms is None:
            return None
        return {
            "source": "ray drain",
            "deadline": deadline_ms / 1000 if deadline_ms else None,
            "node": self.node_id,
        }

    def _reclaimed(self) -> dict | None:
        if not self.url:
            return None
        try:
            body = read_metadata(self.url)
        except urllib.error.HTTPError as err:
            if err.code != 404:  # 404: nothing scheduled
                self.url = None
            return None
        except (OSError, ValueError):  # no metadata service here: not on EC2
            self.url = None
            return None
        if body is None:
            return None
        try:
            deadline = calendar.timegm(time.strptime(json.loads(body)["time"], "%Y-%m-%dT%H:%M:%SZ"))
        except (ValueError, KeyError, TypeError):
            deadline = None
        return {"source": f"instance metadata ({self.url})", "deadline": deadline, "node": self.node_id}


def read_metadata(url: str, timeout: float = 0.5) -> str | None:
    """The metadata's body (None where it is empty), through IMDSv2 (a session token first) where
    the service gives one, else a plain GET."""
    headers = {}
    base = url.split("/latest/", 1)[0] if "/latest/" in url else None
    if base:
        try:
            put = urllib.request.Request(
                f"{base}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
            )
            with urllib.request.urlopen(put, timeout=timeout) as r:
                headers["X-aws-ec2-metadata-token"] = r.read().decode()
        except urllib.error.HTTPError:
            pass  # IMDSv1 only
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
        return r.read().decode() or None


class Agreement:
    """Whether any rank has a notice, agreed by all at each step boundary, one step after it was
    posted: a sum of one number on a gloo group of its own, started without waiting and waited
    at the next boundary. Training never stops for it: it is not on the device's stream, and a
    step's gradient all-reduce keeps the ranks within a step of each other, so it is long done
    when it is read. Every rank posts at every boundary, so every rank reads the same sums."""

    def __init__(self, world: int, timeout: timedelta):
        self.group = dist.new_group(backend="gloo", timeout=timeout) if world > 1 else None
        self.posted: tuple | None = None  # (the all-reduce's work, its tensor)

    def __call__(self, mine: bool) -> bool:
        """Whether some rank posted a notice at the last boundary (one rank: this one's, now);
        posts this rank's, unless one is agreed now (the loop acts on it at this boundary)."""
        if self.group is None:
            return mine
        agreed = self._read()
        flag = torch.tensor([int(mine and not agreed)])
        self.posted = (dist.all_reduce(flag, group=self.group, async_op=True), flag)
        return agreed

    def _read(self) -> bool:
        if self.posted is None:
            return False
        work, flag = self.posted
        work.wait()
        self.posted = None
        return bool(flag.item())

    def close(self) -> None:
        """The last posted sum waited for (every rank posted it), and the group let go."""
        if self.group is not None:
            self._read()
            dist.destroy_process_group(self.group)
            self.group = None
