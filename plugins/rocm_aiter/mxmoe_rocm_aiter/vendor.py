"""aiter and FlyDSL, found and loaded lazily: installation checks and the entry points.

Nothing here imports a vendor library at import time. The probes ask, cheapest
first: is the package installed (an import-system lookup, no import), is the
installed aiter new enough (a file it ships), and finally does it import and build
its kernels (:class:`VendorEntry`, which remembers the outcome, success or failure,
so a broken JIT build is attempted once per process).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = [
    "MXFP8",
    "MXFP8Kernels",
    "MXFP8_TUNED_CONFIG",
    "VendorEntry",
    "W4A8",
    "W4A8Kernels",
    "aiter_missing",
    "flydsl_missing",
    "forget",
    "mxfp8_support_missing",
]

#: The tuned-config file that aiter builds carrying the FlyDSL MXFP8 two-stage MoE
#: ship (relative to the aiter package); it has no importable marker of its own.
MXFP8_TUNED_CONFIG = ("configs", "model_configs", "minimax_m3_mxfp8_tuned_fmoe.csv")


def _package_dir(name: str) -> Path | None:
    """Where package ``name`` would be imported from, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a half-imported module, or a broken parent
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _not_installed(module: str, distribution: str, extra: str) -> str | None:
    if _package_dir(module) is not None:
        return None
    return (f"requires the {distribution!r} package (pip install "
            f"'mxmoe-rocm-aiter[{extra}]'), which is not installed")


def aiter_missing() -> str | None:
    """Why aiter cannot be found, or None."""
    return _not_installed("aiter", "amd-aiter", "aiter")


def flydsl_missing() -> str | None:
    """Why FlyDSL cannot be found, or None."""
    return _not_installed("flydsl", "flydsl", "flydsl")


def _aiter_version() -> str:
    try:
        return metadata.version("amd-aiter")
    except metadata.PackageNotFoundError:
        return "of unknown version"


def mxfp8_support_missing() -> str | None:
    """Why the installed aiter lacks the FlyDSL MXFP8 two-stage MoE, or None."""
    root = _package_dir("aiter")
    if root is None:
        return aiter_missing()
    if root.joinpath(*MXFP8_TUNED_CONFIG).is_file():
        return None
    return (f"requires an aiter with the FlyDSL MXFP8 two-stage MoE; the installed aiter "
            f"{_aiter_version()} at {root} is too old (it lacks "
            f"{'/'.join(MXFP8_TUNED_CONFIG)})")


T = TypeVar("T")


class VendorEntry(Generic[T]):
    """Some of aiter's entry points, resolved on first use and remembered.

    ``resolve`` imports what a backend calls and checks its signature; whatever it
    raises becomes the reason the backend is unsupported.
    """

    def __init__(self, what: str, resolve: Callable[[], T]) -> None:
        self.what = what
        self._resolve = resolve
        self._outcome: tuple[T | None, str | None] | None = None

    def _load(self) -> tuple[T | None, str | None]:
        if self._outcome is None:
            try:
                self._outcome = (self._resolve(), None)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, never raised
                detail = str(exc).strip() or repr(exc)
                self._outcome = (None, f"aiter is installed but {self.what} failed to load "
                                       f"({type(exc).__name__}: {detail})")
        return self._outcome

    def failure(self) -> str | None:
        """Why the entry points cannot be loaded, or None once they are."""
        return self._load()[1]

    def get(self) -> T:
        """The resolved entry points (RuntimeError with the reason if they failed)."""
        entry, reason = self._load()
        if entry is None:
            raise RuntimeError(reason)
        return entry

    def forget(self) -> None:
        """Resolve again on next use (after the installation changed, e.g. in tests)."""
        self._outcome = None


def _require_parameters(function: Callable[..., Any], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in inspect.signature(function).parameters]
    if missing:
        raise RuntimeError(f"{function.__module__}.{function.__qualname__} lacks parameter(s) "
                           f"{', '.join(missing)}: the installed aiter is too old")


@dataclasses.dataclass(frozen=True)
class W4A8Kernels:
    """aiter's Triton MXFP4 x static-FP8 MoE: routing, input quantization, grouped GEMM."""

    routing: Callable[..., Any]
    downcast_to_static_fp8: Callable[..., Any]
    moe_gemm_a8w4: Callable[..., Any]


def _resolve_w4a8() -> W4A8Kernels:
    from aiter.ops.triton.moe_op_gemm_a8w4 import moe_gemm_a8w4
    from aiter.ops.triton.moe_routing.routing import routing
    from aiter.ops.triton.quant_moe import downcast_to_static_fp8

    _require_parameters(moe_gemm_a8w4, ("x_static_scale", "quant_static_scale", "gammas",
                                        "swizzle_mx_scale", "unpadded_N", "unpadded_K"))
    _require_parameters(routing, ("sm_first",))
    return W4A8Kernels(routing, downcast_to_static_fp8, moe_gemm_a8w4)


@dataclasses.dataclass(frozen=True)
class MXFP8Kernels:
    """``aiter.fused_moe`` and the enum values its MXFP8 FlyDSL path is selected by."""

    fused_moe: Callable[..., Any]
    swiglu: Any  # aiter.ActivationType.Swiglu
    per_1x32: Any  # aiter.QuantType.per_1x32
    gate_interleave: str  # aiter.ops.flydsl.moe_common.GateMode.INTERLEAVE.value


def _resolve_mxfp8() -> MXFP8Kernels:
    from aiter import ActivationType, QuantType
    from aiter.fused_moe import fused_moe
    from aiter.ops.flydsl.moe_common import GateMode
    from aiter.ops.flydsl.utils import is_flydsl_available

    if not is_flydsl_available():
        raise RuntimeError("aiter.ops.flydsl.utils.is_flydsl_available() is False")
    _require_parameters(fused_moe, ("expert_mask", "quant_type", "w1_scale", "w2_scale",
                                    "dtype", "swiglu_limit", "gate_mode"))
    return MXFP8Kernels(fused_moe, ActivationType.Swiglu, QuantType.per_1x32,
                        GateMode.INTERLEAVE.value)


W4A8: VendorEntry[W4A8Kernels] = VendorEntry("its Triton a8w4 MoE kernels", _resolve_w4a8)
MXFP8: VendorEntry[MXFP8Kernels] = VendorEntry("its FlyDSL MXFP8 fused_moe", _resolve_mxfp8)


def forget() -> None:
    """Forget every resolved entry point."""
    W4A8.forget()
    MXFP8.forget()
