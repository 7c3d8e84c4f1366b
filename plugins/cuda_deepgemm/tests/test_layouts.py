"""DeepGEMM's layouts as we build them: packed UE8M0 scales, the converted weights, the
scale-format switch, the workspace bound and the glue choice."""

from __future__ import annotations

import pytest
import torch

import mxmoe
from mxmoe_cuda_deepgemm import glue_torch
from mxmoe_cuda_deepgemm.glue import glue_name_for, workspace_rows
from mxmoe_cuda_deepgemm.layouts import (
    ScaleFormat,
    empty_activation_scales,
    pack_ue8m0,
    pow2_scales_to_ue8m0,
    scale_format_from_env,
    tma_aligned_size,
)
from mxmoe_cuda_deepgemm.weights import convert_experts

from glue_checks import assert_valid_plan, random_routing


def _unpack(words: torch.Tensor, groups: int) -> torch.Tensor:
    """Packed int32 words -> their bytes, group 4j + b from byte b of word j."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 8)
    return ((w.unsqueeze(-1) >> shifts) & 0xFF).flatten(-2)[..., :groups].to(torch.uint8)


def test_tma_aligned_size() -> None:
    assert [tma_aligned_size(n, 4) for n in (1, 4, 5, 127, 128)] == [4, 4, 8, 128, 128]
    assert tma_aligned_size(3, 1) == 16 and tma_aligned_size(9, 2) == 16


def test_pack_ue8m0_layout_and_byte_order() -> None:
    gen = torch.Generator().manual_seed(0)
    scale_bytes = torch.randint(0, 256, (3, 10, 9), generator=gen, dtype=torch.uint8)
    packed = pack_ue8m0(scale_bytes)
    assert packed.dtype == torch.int32 and packed.shape == (3, 10, 3)
    assert packed.stride() == (3 * 12, 1, 12)  # MN-major, columns 16-byte aligned, dense
    assert torch.equal(_unpack(packed, 9), scale_bytes)
    assert int(packed[1, 2, 0]) & 0xFF == int(scale_bytes[1, 2, 0])  # first group, low byte
    assert int(packed[1, 2, 2]) >> 8 == 0, "groups past the last must be zero"
    flat = pack_ue8m0(scale_bytes[0])
    assert flat.shape == (10, 3) and flat.stride() == (1, 12)
    with pytest.raises(TypeError, match="scale_bytes"):
        pack_ue8m0(scale_bytes.float())


def test_pow2_scales_to_ue8m0() -> None:
    scales = torch.tensor([1.0, 0.125, 2.0 ** -20, 2.0 ** 10])
    assert pow2_scales_to_ue8m0(scales).tolist() == [127, 124, 107, 137]
    with pytest.raises(TypeError, match="scales"):
        pow2_scales_to_ue8m0(scales.double())


def test_scale_format_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scale_format_from_env() is ScaleFormat.UE8M0
    monkeypatch.setenv("MXMOE_DEEPGEMM_SCALE_FORMAT", "float32_pow2")
    assert scale_format_from_env() is ScaleFormat.FLOAT32_POW2
    monkeypatch.setenv("MXMOE_DEEPGEMM_SCALE_FORMAT", "float32")  # SM100 would truncate it
    with pytest.raises(ValueError, match="MXMOE_DEEPGEMM_SCALE_FORMAT"):
        scale_format_from_env()


def test_activation_scale_layouts() -> None:
    packed = empty_activation_scales(130, 23, ScaleFormat.UE8M0, torch.device("cpu"))
    assert packed.shape == (130, 6) and packed.stride() == (1, 132)
    dense = empty_activation_scales(130, 23, ScaleFormat.FLOAT32_POW2, torch.device("cpu"))
    assert dense.shape == (130, 23) and dense.dtype == torch.float32 and dense.is_contiguous()


def test_convert_weights() -> None:
    config = mxmoe.preset("gpt-oss-mini", num_experts=4, activation_format="fp8_dynamic_1x128_pow2")
    weights = mxmoe.random_weights(config, seed=3)
    experts = convert_experts(config, weights, torch.device("cpu"))
    for name in ("w13", "w2"):
        converted, original = getattr(experts, name), getattr(weights, name)
        assert converted.dtype == torch.int8 and converted.is_contiguous()
        assert torch.equal(converted.view(torch.uint8), original)  # same bytes, low nibble first
        scales, raw = getattr(experts, f"{name}_scale"), getattr(weights, f"{name}_scale")
        assert scales.dtype == torch.int32 and scales.stride(1) == 1  # MN-major
        assert torch.equal(_unpack(scales, raw.shape[-1]), raw)  # E8M0 bytes are UE8M0 bytes
    assert experts.w13_bias.dtype == torch.float32
    assert torch.equal(experts.w13_bias, weights.w13_bias.float())
    assert experts.glue == "torch" and experts.scale_format is ScaleFormat.UE8M0
    with pytest.raises(TypeError, match="MXFP4"):
        convert_experts(config, mxmoe.random_weights(config.replace(weight_format="mxfp8")),
                        torch.device("cpu"))


def test_glue_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert glue_name_for(torch.device("cpu")) == "torch"
    monkeypatch.setenv("MXMOE_DEEPGEMM_GLUE", "triton")
    assert glue_name_for(torch.device("cpu")) == "triton"
    monkeypatch.setenv("MXMOE_DEEPGEMM_GLUE", "cuda")
    with pytest.raises(ValueError, match="MXMOE_DEEPGEMM_GLUE"):
        glue_name_for(torch.device("cpu"))


def test_workspace_rows_bound() -> None:
    assert workspace_rows(0, 4, 128, 128) == 0
    assert workspace_rows(1, 4, 128, 128) == 512  # four experts, a block each: exact
    assert workspace_rows(4096, 4, 128, 128) == (16384 + 128 * 127) // 128 * 128
    with pytest.raises(ValueError, match="alignment"):
        workspace_rows(1, 1, 1, 0)
    # Whatever the routing, the segments fit: the sum of aligned counts never exceeds it.
    for seed, (tokens, top_k, experts, alignment) in enumerate(
            [(1, 1, 8, 128), (3, 2, 8, 16), (50, 4, 32, 64), (200, 8, 16, 128), (7, 4, 4, 1)]):
        topk_ids = random_routing(tokens, top_k, experts, seed, "cpu")
        counts = torch.bincount(topk_ids.flatten().long(), minlength=experts)
        needed = int(((counts + alignment - 1) // alignment * alignment).sum())
        assert needed <= workspace_rows(tokens, top_k, experts, alignment)
        plan = glue_torch.plan_permutation(topk_ids, None, experts, alignment)
        assert_valid_plan(plan, topk_ids, None, experts, alignment)
