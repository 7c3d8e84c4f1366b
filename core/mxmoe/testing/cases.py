"""The conformance matrix: which layers every backend is checked on.

The matrix varies one thing at a time around a small base layer (E=8, top_k=2,
H=I=128, gpt-oss's SWIGLUOAI with biases, MXFP4 × BF16) and then adds the pairs
that matter (format × activation, format × activation quantization), so each axis
of :class:`mxmoe.MoEConfig` is covered without the full product. Every case runs at
token counts 0, 1, an odd count and one larger than a typical block (67).
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import MoEConfig

__all__ = ["Case", "TOKEN_COUNTS", "conformance_cases"]

TOKEN_COUNTS = (0, 1, 7, 67)


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer to check, and the token counts to run it at."""

    id: str
    config: MoEConfig
    tokens: tuple[int, ...] = TOKEN_COUNTS

    def __str__(self) -> str:
        return self.id


_BASE = MoEConfig(
    num_experts=8, top_k=2, hidden_size=128, intermediate_size=128,
    activation="swigluoai", routing="renormalize", weight_format="mxfp4",
    has_bias=True, dtype=torch.bfloat16,
)


def _variants() -> list[tuple[str, dict]]:
    v: list[tuple[str, dict]] = [("base", {})]
    # one axis at a time
    for fmt in ("mxfp8",):
        v.append((f"w-{fmt}", {"weight_format": fmt}))
    for act in ("silu", "swigluoai_uninterleave", "swiglustep"):
        v.append((f"act-{act}", {"activation": act}))
    v.append(("act-swigluoai_uninterleave-beta0", {"activation": "swigluoai_uninterleave",
                                                   "swiglu_alpha": 1.0, "swiglu_beta": 0.0}))
    v.append(("act-swiglustep-limit2", {"activation": "swiglustep", "swiglu_limit": 2.0}))
    v.append(("act-silu-nolimit", {"activation": "silu", "swiglu_limit": None}))
    for routing in ("renormalize_naive", "default"):
        v.append((f"route-{routing}", {"routing": routing}))
    v.append(("route-grouped-sigmoid-bias", {
        "routing": "grouped_topk", "scoring_func": "sigmoid", "num_expert_group": 4,
        "topk_group": 2, "has_correction_bias": True, "routed_scaling_factor": 2.5}))
    v.append(("route-grouped-softmax", {"routing": "grouped_topk", "num_expert_group": 2,
                                        "topk_group": 1, "renormalize_grouped": False}))
    v.append(("nobias", {"has_bias": False}))
    v.append(("dtype-fp16", {"dtype": torch.float16}))
    v.append(("dtype-fp32", {"dtype": torch.float32}))
    v.append(("ep-rank1of2", {"expert_map": _BASE.with_expert_parallel(2, 1).expert_map}))
    v.append(("ep-strided", {"expert_map": (0, -1, 1, -1, -1, 2, -1, 3)}))
    v.append(("weight-on-input-top1", {"top_k": 1, "apply_router_weight_on_input": True}))
    v.append(("top1", {"top_k": 1}))
    v.append(("odd-shape", {"hidden_size": 96, "intermediate_size": 160}))
    v.append(("many-experts-top4", {"num_experts": 32, "top_k": 4}))
    # activation quantization, with each weight format
    for fmt in ("mxfp4", "mxfp8"):
        for act_fmt in ("fp8_static", "fp8_dynamic_1x128", "fp8_dynamic_1x128_pow2",
                        "mxfp8_dynamic", "mxfp8_dynamic_rceil"):
            v.append((f"w-{fmt}-a-{act_fmt}", {"weight_format": fmt, "activation_format": act_fmt}))
    # weight format x activation pairs
    for act in ("silu", "swigluoai_uninterleave", "swiglustep"):
        v.append((f"w-mxfp8-act-{act}", {"weight_format": "mxfp8", "activation": act}))
    # MXFP8 x MXFP8 as MXFP8-native kernels run it: SwiGLU variants without biases,
    # hardware (RCEIL) activation scales, with and without a reordering expert map.
    for act in ("swigluoai", "swigluoai_uninterleave"):
        v.append((f"w-mxfp8-a-mxfp8_rceil-{act}-nobias", {
            "weight_format": "mxfp8", "activation_format": "mxfp8_dynamic_rceil",
            "activation": act, "has_bias": False}))
    v.append(("w-mxfp8-a-mxfp8_rceil-nobias-ep-strided", {
        "weight_format": "mxfp8", "activation_format": "mxfp8_dynamic_rceil",
        "has_bias": False, "expert_map": (3, -1, 0, -1, 2, -1, 1, -1)}))
    v.append(("w-mxfp8-a-mxfp8-silu-ep", {
        "weight_format": "mxfp8", "activation_format": "mxfp8_dynamic", "activation": "silu",
        "expert_map": _BASE.with_expert_parallel(2, 0).expert_map}))
    v.append(("w-mxfp4-a-fp8_1x128-swiglustep-ep", {
        "activation_format": "fp8_dynamic_1x128", "activation": "swiglustep",
        "expert_map": _BASE.with_expert_parallel(4, 2).expert_map}))
    v.append(("w-mxfp4-a-fp8_1x128_pow2-swiglustep-ep", {
        "activation_format": "fp8_dynamic_1x128_pow2", "activation": "swiglustep",
        "expert_map": _BASE.with_expert_parallel(4, 2).expert_map}))
    return v


def conformance_cases() -> list[Case]:
    """Every case of the matrix (about 40 layers, each at :data:`TOKEN_COUNTS`)."""
    return [Case(name, _BASE.replace(name=name, **changes)) for name, changes in _variants()]
