"""The dense-matmul ceiling of a device: what MFU is measured against.

Measured rather than looked up, so that the same number means the same thing on a laptop CPU
and on a GPU whose datasheet peak assumes a clock it does not hold. The datasheet peak is kept
beside it (DATASHEET_BF16), because it is what llm.c, nanoGPT and llm-foundry report MFU against.
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


# Dense (no sparsity) bf16 tensor-core FLOP/s from each card's NVIDIA datasheet; matched against
# torch.cuda.get_device_name() in this order (so "H100" after "H200" cannot take an H200).
DATASHEET_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card's is 756e12
    "A100": 312e12,
    "A10G": 125e12,  # AWS's A10 (g5)
    "A10": 125e12,
    "L4": 121e12,
}


def datasheet_peak(device_name: str) -> float | None:
    """The card's datasheet dense bf16 FLOP/s, or None where the table does not know it."""
    if "PCIe" in device_name and "H100" in device_name:
        return 756e12
    return next((v for k, v in DATASHEET_BF16.items() if k in device_name), None)


def device_ceiling(device: torch.device | str, dtype: torch.dtype) -> float:
    """The ceiling MFU is measured against, the same way in the loop and in bench/gpu_check.py:
    an 8192-cube matmul on a GPU (large enough to reach the card's best), 1024 on a CPU."""
    cuda = torch.device(device).type == "cuda"
    return matmul_ceiling(device, dtype, 8192 if cuda else 1024, 20 if cuda else 5)
