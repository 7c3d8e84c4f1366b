"""How the aiter double reports a broken convention: loudly, naming it."""

from __future__ import annotations

import torch


class ContractViolation(RuntimeError):
    """The caller broke a convention the real aiter kernel relies on."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ContractViolation(message)


def expect_tensor(name: str, t: object, dtype: torch.dtype,
                  shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``t`` is a tensor of ``dtype`` (and ``shape``), else ContractViolation."""
    expect(isinstance(t, torch.Tensor), f"{name}: expected a tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)
    expect(t.dtype == dtype, f"{name}: aiter requires {dtype}, got {t.dtype}")
    if shape is not None:
        expect(tuple(t.shape) == shape, f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    return t


def expect_scalar_scale(name: str, t: object) -> torch.Tensor:
    """A static per-tensor scale: one float32 value in a tensor (the kernel loads a pointer)."""
    scale = expect_tensor(name, t, torch.float32)
    expect(scale.numel() == 1, f"{name}: expected one value, got {scale.numel()}")
    return scale
