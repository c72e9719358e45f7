"""Loss spikes: which steps of a pretraining run spiked, so that the loop can rewind to its newest
checkpoint and skip their batches (loop.py), as PaLM and OLMo did by hand.

A step spikes where its loss or its gradient norm is not finite, or, with spike_factor k > 0,
where its loss is above k x the median of the last spike_window steps that did not spike. The
loop judges every step since the last check at once, from the losses all ranks agree on (their
all-reduce at a log step), so every rank finds the same spikes. The median's window is of good
steps only, so one spike does not raise the bar for the next; it needs MIN_WINDOW of them first
(the warm-up's first losses fall fast and would read as spikes against nothing).
"""

from __future__ import annotations

import collections
import math
import statistics

MIN_WINDOW = 10  # good steps before the median rule applies


class SpikeMonitor:
    def __init__(self, factor: float, window: int):
        self.factor = factor
        self.recent: collections.deque[float] = collections.deque(maxlen=max(window, 1))

    def spiking(
        self, steps: list[int], losses: list[float], norms: list[float]
    ) -> list[tuple[int, str, bool]]:
        """The steps that spiked, each with why and whether its loss and norm were finite, in
        order; the others join the window."""
        found = []
        for s, loss, norm in zip(steps, losses, norms, strict=True):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                found.append((s, f"loss {loss}, grad norm {norm}", False))
                continue
            if self.factor > 0 and len(self.recent) >= min(MIN_WINDOW, self.recent.maxlen):
                bar = self.factor * statistics.median(self.recent)
                if loss > bar:
                    found.append(
                        (
                            s,
                            f"loss {loss:.4f} over {self.factor:g} x the median {bar / self.factor:.4f}",
                            True,
                        )
                    )
                    continue
            self.recent.append(loss)
        return found

    def reset(self) -> None:
        """Start the window afresh: after a rewind (the steps it held are replayed), as after a resume."""
        self.recent.clear()
