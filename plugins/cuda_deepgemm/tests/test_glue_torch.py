"""The PyTorch glue against plain definitions: the layout contract, the core's FP8
quantizer per token, the core's activation per row, and a loop over each token's slots."""

from __future__ import annotations

import pytest
import torch

from mxmoe.activations import apply_activation
from mxmoe.formats import dequantize_fp8_per_token_group, quantize_fp8_per_token_group
from mxmoe_cuda_deepgemm import glue_torch
from mxmoe_cuda_deepgemm.layouts import ScaleFormat

from glue_checks import (
    ACTIVATIONS,
    scale_values,
    activation_config,
    assert_valid_plan,
    random_routing,
)

STRIDED_MAP = torch.tensor([0, -1, 1, -1, -1, 2, 3, -1, 4, -1, 5, -1], dtype=torch.int32)


@pytest.mark.parametrize("tokens, top_k, experts, alignment, expert_map", [
    (1, 1, 12, 128, None), (37, 4, 12, 16, None), (37, 4, 12, 32, STRIDED_MAP),
    (64, 8, 12, 1, None), (5, 2, 12, 128, STRIDED_MAP),
])
def test_plan_meets_the_layout_contract(tokens: int, top_k: int, experts: int, alignment: int,
                                        expert_map: torch.Tensor | None) -> None:
    topk_ids = random_routing(tokens, top_k, experts, tokens + alignment, "cpu")
    local = experts if expert_map is None else int((expert_map >= 0).sum())
    plan = glue_torch.plan_permutation(topk_ids, expert_map, local, alignment)
    assert_valid_plan(plan, topk_ids, expert_map, local, alignment)
    assert all(t.dtype == torch.int32 for t in (plan.slot_row, plan.grouped_layout))


def test_plan_with_no_local_slot() -> None:
    only_last_two = torch.tensor([-1] * 10 + [0, 1], dtype=torch.int32)
    topk_ids = torch.tensor([[0, 3], [5, 2]], dtype=torch.int32)
    plan = glue_torch.plan_permutation(topk_ids, only_last_two, 2, 128)
    assert bool((plan.slot_row == -1).all()) and bool((plan.grouped_layout == -1).all())
    out = glue_torch.unpermute_reduce(torch.full((plan.rows, 256), float("nan")), plan,
                                      torch.ones(2, 2), None, torch.bfloat16)
    assert bool((out == 0).all()), "tokens with no local expert give exact zeros"


@pytest.mark.parametrize("fmt", list(ScaleFormat))
@pytest.mark.parametrize("on_input", [False, True])
def test_quantize_permute_copies_each_quantized_token_to_its_rows(fmt: ScaleFormat,
                                                                   on_input: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    tokens, top_k, hidden = 9, 1 if on_input else 3, 640
    x = (torch.randn(tokens, hidden, generator=gen) * 5).to(torch.bfloat16)
    topk_ids = random_routing(tokens, top_k, 8, 1, "cpu")
    weights = torch.rand(tokens, top_k, generator=gen) if on_input else None
    plan = glue_torch.plan_permutation(topk_ids, None, 8, 16)
    q, scales = glue_torch.quantize_permute(x, plan, fmt, weights)
    source = x if weights is None else (x.float() * weights).to(torch.bfloat16)
    rounding = "pow2" if fmt.power_of_two else "float32"
    expected_q, expected_s = quantize_fp8_per_token_group(source, 128, scale_format=rounding)
    values = scale_values(scales, fmt, hidden // 128)
    for slot, row in enumerate(plan.slot_row.tolist()):
        token = slot // top_k
        assert torch.equal(q[row].view(torch.uint8), expected_q[token].view(torch.uint8))
        assert torch.equal(values[row], expected_s[token])


@pytest.mark.parametrize("name, limit", ACTIVATIONS)
def test_activate_quantize_is_bias_activation_quantize_per_row(name: str,
                                                               limit: float | None) -> None:
    gen = torch.Generator().manual_seed(2)
    config = activation_config(name, limit, 4, 2, 128, 256, bias=True)
    plan = glue_torch.plan_permutation(random_routing(6, 2, 4, 2, "cpu"), None, 4, 16)
    h = (torch.randn(plan.rows, 512, generator=gen) * 4).to(torch.bfloat16)
    bias = torch.randn(4, 512, generator=gen)
    q, scales = glue_torch.activate_quantize(h, plan, bias, config,
                                             ScaleFormat.UE8M0)
    got = dequantize_fp8_per_token_group(q, scale_values(scales, ScaleFormat.UE8M0, 2))
    for row, expert in enumerate(plan.grouped_layout.tolist()):
        if expert < 0:
            assert bool((got[row] == 0).all()), "padding rows are zero"
            continue
        act = apply_activation(h[row].float() + bias[expert], config).unsqueeze(0)
        qr, sr = quantize_fp8_per_token_group(act, 128, scale_format="pow2")
        assert torch.equal(got[row], dequantize_fp8_per_token_group(qr, sr)[0])


@pytest.mark.parametrize("weighted, bias, expert_map", [
    (True, True, STRIDED_MAP), (False, False, None), (True, False, None)])
def test_unpermute_reduce_sums_each_tokens_slots(weighted: bool, bias: bool,
                                                 expert_map: torch.Tensor | None) -> None:
    gen = torch.Generator().manual_seed(3)
    tokens, top_k, hidden = 11, 4 if weighted else 1, 200
    topk_ids = random_routing(tokens, top_k, 12, 3, "cpu")
    local = 12 if expert_map is None else 6
    plan = glue_torch.plan_permutation(topk_ids, expert_map, local, 16)
    y = torch.randn(plan.rows, hidden, generator=gen).to(torch.bfloat16)
    y[plan.grouped_layout < 0] = float("nan")  # padding must never be read
    weights = torch.rand(tokens, top_k, generator=gen) if weighted else None
    b = torch.randn(local, hidden, generator=gen) if bias else None
    out = glue_torch.unpermute_reduce(y, plan, weights, b, torch.float16)
    expected = torch.zeros(tokens, hidden, dtype=torch.float64)
    for slot, (row, expert) in enumerate(zip(plan.slot_row.tolist(), plan.slot_expert.tolist())):
        if row < 0:
            continue
        value = y[row].double() + (b[expert].double() if bias else 0)
        expected[slot // top_k] += value * (weights.flatten()[slot].double() if weighted else 1)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), expected, rtol=2 ** -10, atol=1e-6)
