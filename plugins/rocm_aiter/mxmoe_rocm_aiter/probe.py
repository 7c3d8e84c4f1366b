"""The probes' skeleton: checks in order, the first gap becomes the verdict, nothing raises."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mxmoe import ActivationFormat, MoEConfig, Verdict, WeightFormat

__all__ = ["Check", "PADDING", "PRIORITY", "decide", "epilogue_gap", "scheme_gap"]

#: A vendor kernel on its own hardware: preferred over the portable backends.
PRIORITY = 100
#: Both backends pad hidden and intermediate sizes to this multiple: the CDNA4 scale
#: layout covers 8 scales (256 elements of K) per run.
PADDING = 256

#: One probe step: the reason the backend cannot run, or None.
Check = Callable[[], "str | None"]


def decide(checks: Iterable[Check], supported: Verdict) -> Verdict:
    """``Verdict.no`` with the first failing check's reason, else ``supported``.

    Checks run in the order given (cheapest and most fundamental first) and stop at
    the first gap. An exception in a check is itself a reason: a probe never raises.
    """
    try:
        for check in checks:
            reason = check()
            if reason:
                return Verdict.no(reason)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return Verdict.no(f"probe failed: {type(exc).__name__}: {exc}")
    return supported


def scheme_gap(config: MoEConfig, weights: WeightFormat, activations: ActivationFormat,
               what: str) -> str | None:
    """Why ``config``'s quantization scheme is not the one a backend runs, or None."""
    if (config.weight_format, config.activation_format) == (weights, activations):
        return None
    return (f"supports {what} ({weights} x {activations}) only, "
            f"found {config.weight_format} x {config.activation_format}")


def epilogue_gap(config: MoEConfig) -> str | None:
    """What neither aiter path does around GEMM1: an unclamped SwiGLU, or router weights
    applied to the input (aiter scales GEMM1's activated output instead), or None."""
    if config.swiglu_limit is None:
        return "requires a SwiGLU clamp limit (swiglu_limit), found None"
    if config.apply_router_weight_on_input:
        return ("does not support apply_router_weight_on_input (aiter scales GEMM1's "
                "activated output, not its input)")
    return None
