"""The two ceilings a floor is made of, measured on the device the benchmark runs on:
HBM read bandwidth (a reduction over one large tensor, read once per run) and the
dense BF16 matrix-multiply rate (a square product)."""

from __future__ import annotations

import torch

from .floors import Ceilings
from .timing import time_calls

__all__ = ["measure_ceilings", "measure_hbm_read", "measure_bf16_matmul"]

_RUNS = 20
_WARMUP = 3
_BUDGET_S = 5.0


def measure_hbm_read(device: torch.device, nbytes: int, seed: int = 0) -> float:
    """Read bandwidth in TB/s: ``sum`` over a float32 tensor of ``nbytes`` random values.

    The tensor is far larger than any cache at the default GPU size (4 GiB), so each
    run streams it from memory; only its bytes are counted (the scalar result is
    negligible)."""
    if nbytes < 4:
        raise ValueError(f"nbytes: expected at least one float32 (4 bytes), got {nbytes}")
    gen = torch.Generator(device=device).manual_seed(seed)
    data = torch.rand(nbytes // 4, generator=gen, device=device).add_(0.5)
    timing = time_calls(lambda _: data.sum(), device, warmup=_WARMUP, repeats=_RUNS,
                        budget_s=_BUDGET_S)
    return data.numel() * 4 / (timing.ms * 1e-3) / 1e12


def measure_bf16_matmul(device: torch.device, n: int, seed: int = 0) -> float:
    """Dense BF16 rate in TFLOP/s of an n×n×n product of random matrices (2n³ FLOPs)."""
    if n <= 0:
        raise ValueError(f"n: expected a positive matrix size, got {n}")
    gen = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(n, n, generator=gen, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, generator=gen, device=device).to(torch.bfloat16)
    timing = time_calls(lambda _: a @ b, device, warmup=_WARMUP, repeats=_RUNS,
                        budget_s=_BUDGET_S)
    return 2.0 * n**3 / (timing.ms * 1e-3) / 1e12


def measure_ceilings(device: torch.device, *, hbm_bytes: int, matmul_n: int) -> Ceilings:
    """Both ceilings on ``device``."""
    return Ceilings(hbm_read_TBps=measure_hbm_read(device, hbm_bytes),
                    bf16_TFLOPs=measure_bf16_matmul(device, matmul_n))
