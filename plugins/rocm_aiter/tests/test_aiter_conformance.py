"""Both backends end to end through the aiter test double, with the device check patched
so the CPU counts as gfx950: the conformance kit, further layers each backend claims,
and bounds on what aiter's own activation-scale rule does to the error.

This proves the glue — layouts, argument conventions, conversions, the expert mask —
against aiter's documented contracts; what only real MI355-class hardware can confirm
is listed in HARDWARE.md.
"""

from __future__ import annotations

import pytest
import torch

import mxmoe
from aiter_layers import MXFP8, MXFP8_LAYER, W4A8, W4A8_LAYER
from mxmoe.testing import (
    BackendConformance,
    Case,
    check_apply_leaves_inputs,
    check_case,
    check_convert_deterministic,
)

pytestmark = pytest.mark.usefixtures("fake_aiter", "on_gfx950")


class TestW4A8Conformance(BackendConformance):
    backend = W4A8
    device = "cpu"


class TestMXFP8Conformance(BackendConformance):
    """The kit's matrix has no layer aiter-mxfp8 runs (its MXFP8 x MXFP8 layers have
    biases or SiLU), so its cases skip with the backend's reasons; the layers below
    and the two generic checks at the end cover the backend instead."""

    backend = MXFP8
    device = "cpu"


W4A8_CASES = [
    # 1 and 7 tokens: aiter's small-batch tiles (block_m 16), where it honours the
    # unpadded sizes; 200: block_m 64, where it computes the zero padding instead.
    Case("gpt-oss-math", W4A8_LAYER, (1, 7, 200)),
    Case("nobias-renormalize-naive", W4A8_LAYER.replace(has_bias=False,
                                                        routing="renormalize_naive"), (1, 67)),
    Case("odd-shape", W4A8_LAYER.replace(hidden_size=96, intermediate_size=160), (1, 33)),
    Case("unpadded-shape", W4A8_LAYER.replace(hidden_size=256, intermediate_size=256), (3,)),
    Case("32-experts-top4-alpha1-limit3", W4A8_LAYER.replace(
        num_experts=32, top_k=4, swiglu_alpha=1.0, swiglu_limit=3.0), (1, 40)),
]

# Token counts of at least 16: aiter re-quantizes GEMM1's bf16 output to MXFP8, and
# over fewer tokens the spread of that rounding alone (also for mxmoe's emulation
# backend) reaches the kit's 3e-2 on a few percent of draws (see the report on the
# issue); the per-token computation is the same at every count.
MXFP8_TOKENS = (16, 67)
MXFP8_CASES = [
    Case("swigluoai", MXFP8_LAYER, MXFP8_TOKENS),
    Case("swigluoai-uninterleave", MXFP8_LAYER.replace(activation="swigluoai_uninterleave"),
         MXFP8_TOKENS),
    Case("ep-rank1of2", MXFP8_LAYER.with_expert_parallel(2, 1), MXFP8_TOKENS),
    Case("ep-strided-reordered", MXFP8_LAYER.replace(expert_map=(1, -1, 0, -1, -1, 3, 2, -1)),
         MXFP8_TOKENS),
    Case("grouped-routing-fp16", MXFP8_LAYER.replace(
        routing="grouped_topk", num_expert_group=2, topk_group=1, dtype=torch.float16),
        MXFP8_TOKENS),
    Case("odd-shape-limit2", MXFP8_LAYER.replace(hidden_size=96, intermediate_size=160,
                                                 swiglu_limit=2.0), MXFP8_TOKENS),
    Case("32-experts-top4", MXFP8_LAYER.replace(num_experts=32, top_k=4), MXFP8_TOKENS),
]


@pytest.mark.parametrize("case", W4A8_CASES, ids=str)
def test_w4a8_layers(case):
    check_case(W4A8, case, "cpu")


@pytest.mark.parametrize("case", MXFP8_CASES, ids=str)
def test_mxfp8_layers(case):
    check_case(MXFP8, case, "cpu")


def test_mxfp8_convert_weights_is_deterministic():
    check_convert_deterministic(MXFP8, MXFP8_LAYER.with_expert_parallel(2, 0), "cpu")


def test_mxfp8_apply_does_not_modify_inputs():
    check_apply_leaves_inputs(MXFP8, MXFP8_LAYER, "cpu")


def test_mxfp8_with_aiters_rceil_activation_scales(monkeypatch):
    """With the E8M0 rule aiter documents for its HIP quantizer (RCEIL) instead of the
    reference's OCP floor, the layer stays within 6e-2 of mxmoe.reference (measured
    about 4e-2: the floor rule clips block maxima that RCEIL keeps) — the glue holds;
    the gap to the kit's 3e-2 is the reference's choice of rule, not a layout error
    (those give errors of order 1)."""
    import aiter.fused_moe as fused

    monkeypatch.setattr(fused, "ACTIVATION_SCALE_ROUNDING", "rceil")
    config = MXFP8_LAYER
    weights = mxmoe.random_weights(config, seed=7)
    layer = mxmoe.FusedMoE(config, backend=MXFP8, device="cpu")
    layer.load_weights(**weights.tensors())
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(67, config.hidden_size, generator=gen).to(config.dtype)
    logits = torch.randn(67, config.num_experts, generator=gen) * 2
    err = mxmoe.relative_error(layer(x, logits), mxmoe.reference_moe(config, weights, x, logits))
    assert err < 6e-2, f"relative error {err:.3e} with aiter's RCEIL activation scales"
