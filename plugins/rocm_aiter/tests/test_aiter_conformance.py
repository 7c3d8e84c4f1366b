"""Both backends end to end through the aiter test double, with the device check patched
so the CPU counts as gfx950: the conformance kit, and further layers each backend
claims that the kit's matrix does not cover.

This proves the glue — layouts, argument conventions, conversions, the expert mask —
against aiter's documented contracts; what only real MI355-class hardware can confirm
is listed in HARDWARE.md.
"""

from __future__ import annotations

import pytest
import torch

from aiter_layers import MXFP8, MXFP8_LAYER, W4A8, W4A8_LAYER
from mxmoe.testing import BackendConformance, Case, check_case, check_convert_deterministic

pytestmark = pytest.mark.usefixtures("fake_aiter", "on_gfx950")


class TestW4A8Conformance(BackendConformance):
    backend = W4A8
    device = "cpu"


class TestMXFP8Conformance(BackendConformance):
    """aiter-mxfp8 runs the kit's MXFP8 x RCEIL-MXFP8 SwiGLU layers without biases
    (interleaved and halves, and a reordering expert map); the rest of the matrix skips
    with the backend's reasons."""

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

# What the kit's MXFP8 x RCEIL-MXFP8 cases leave out: the last global expert local
# (next to the mask's sentinel slot), fp16 output with grouped routing, odd sizes with
# another clamp limit, many experts. The kit runs 0 and 1 tokens; these run 7 (measured
# over the kit's minimum of tokens, see mxmoe.testing.checks) and 67. The double rounds
# GEMM1's output to bf16 before re-quantizing; over 16 tokens with half the experts
# remote that alone spread the error past 3e-2 in 1 to 5 draws in 100 (median 1.6e-2),
# and over the kit's former minimum of 24 in under 1 in 1000 (one CI failure, 3.2e-2).
MXFP8_TOKENS = (7, 67)
MXFP8_CASES = [
    Case("ep-rank1of2", MXFP8_LAYER.with_expert_parallel(2, 1), MXFP8_TOKENS),
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


def test_mxfp8_convert_weights_is_deterministic_with_an_expert_mask():
    """The kit checks a layer without expert parallelism; this one converts a mask too."""
    check_convert_deterministic(MXFP8, MXFP8_LAYER.with_expert_parallel(2, 0), "cpu")
