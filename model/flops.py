"""The dense-matmul ceiling of a device: what MFU is measured against.

Measured rather than looked up, so that the same number means the same thing on a laptop CPU
and on a GPU whose datasheet peak assumes a clock it does not hold.
"""

from __future__ import annotations

import time

import torch


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device | str, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best FLOP/s of an n x n x n matmul on device in dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)
