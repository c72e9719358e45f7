"""What a pretraining run shows of its ranks and nodes, beside its loss:

- BusyTimer: each rank's busy time a step, its own work from the step's start to its last
  backward (where DDP waits for the others' gradients), so that a slow rank shows as itself and
  not as everyone's wait. On a GPU by CUDA events, read (one synchronisation) at log steps only.
- rank_metrics: every rank's busy time and data wait a step, and `straggler`, the slowest rank's
  busy time over the median rank's (1.0: none).
- system_metrics: MLflow's own monitor (CPU, memory, disk, network; GPU utilisation, memory and
  power where pynvml finds a GPU) on one process of every node, as system/node_<k>/...
- Profile: a torch profiler trace of chosen steps, for Perfetto or TensorBoard.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch


class BusyTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list = []
        self._start = None

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        if self._start is not None:
            self.spans.append((self._start, self._now()))
            self._start = None

    def take(self) -> float:
        """The busy seconds since the last take."""
        spans, self.spans = self.spans, []
        if not self.cuda:
            return sum(b - a for a, b in spans)
        if spans:
            spans[-1][1].synchronize()
        return sum(a.elapsed_time(b) for a, b in spans) / 1000


def rank_metrics(busy: list[float], waits: list[float]) -> dict:
    """Per rank, seconds a step: rank_<r>_busy_s (its own work) and rank_<r>_data_wait_s; and
    straggler, the slowest rank's busy time over the median's."""
    out = {f"rank_{r}_busy_s": b for r, b in enumerate(busy)}
    out.update({f"rank_{r}_data_wait_s": w for r, w in enumerate(waits)})
    median = statistics.median(busy)
    out["straggler"] = max(busy) / median if median > 0 else 1.0
    return out


def system_metrics(run_id: str, uri: str | None, node: int, interval_s: float):
    """MLflow's system-metrics monitor for this node, started (its metrics system/node_<node>/...),
    or None where interval_s is 0. The caller finishes it."""
    if interval_s <= 0:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, node_id=f"node_{node}", tracking_uri=uri
    )
    monitor.start()
    return monitor


class Profile:
    """torch.profiler over `steps` steps, begun at step `first` (a few steps into the attempt, so
    that compilation and warm caches stay out of it); the trace written as Chrome JSON."""

    def __init__(self, first: int, steps: int, device: torch.device):
        self.first, self.last = first, first + steps
        self.device = device
        self.prof = None

    def step(self, step: int) -> Path | None:
        """Call after every step; returns the trace's path (in a directory of its own) once written."""
        if self.prof is None and self.first <= step < self.last:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities, record_shapes=True)
            self.prof.start()
            return None
        if self.prof is not None and step >= self.last:
            self.prof.stop()
            path = (
                Path(tempfile.mkdtemp(prefix="gpt1-profile-"))
                / f"trace_steps_{self.first + 1}-{self.last}.json"
            )
            self.prof.export_chrome_trace(str(path))
            self.prof, self.first = None, -1
            return path
        return None
