"""The Triton glue on an NVIDIA GPU at gpt-oss sizes: step by step against the PyTorch
glue, without host synchronisation, and inside the whole backend (through the fake
deep_gemm, whose reference math runs on the GPU too) against the reference.

DeepGEMM's FP8 x FP4 GEMMs need SM100; these glue kernels do not, so any NVIDIA GPU
(an H100 here) runs this module. Sizes: gpt-oss-120b's 128 experts and top-4, with
H = I = 2944 -- 2880 rounded up to whole 128-channel groups, as the backend pads it.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
import torch

import mxmoe
from mxmoe.testing import Case, check_case
from mxmoe_cuda_deepgemm import glue_torch
from mxmoe_cuda_deepgemm.layouts import ScaleFormat

from glue_checks import (
    ACTIVATIONS,
    activation_config,
    compare_activate_quantize,
    compare_plans,
    compare_quantize_permute,
    compare_unpermute_reduce,
    random_routing,
)

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: runs the Triton glue at gpt-oss sizes"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                       reason="Triton is not installed (pip install mxmoe-cuda-deepgemm[triton])"),
]

EXPERTS, TOP_K, HIDDEN, ALIGNMENT = 128, 4, 2944, 128
TOKENS = (1, 64, 4096)
CUDA = "cuda"
# A rank of four under expert parallelism: 32 of the 128 experts, strided.
EP_MAP = torch.full((EXPERTS,), -1, dtype=torch.int32)
EP_MAP[1::4] = torch.arange(EXPERTS // 4, dtype=torch.int32)


@pytest.fixture(scope="module")
def glue_triton() -> ModuleType:
    from mxmoe_cuda_deepgemm import glue_triton

    return glue_triton


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("expert_map", [None, EP_MAP], ids=["all-local", "ep-32-of-128"])
def test_plan(glue_triton: ModuleType, tokens: int, expert_map: torch.Tensor | None) -> None:
    emap = None if expert_map is None else expert_map.to(CUDA)
    compare_plans(glue_triton, glue_torch, CUDA, tokens, TOP_K, EXPERTS, ALIGNMENT, emap)


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("fmt", list(ScaleFormat))
def test_quantize_permute(glue_triton: ModuleType, tokens: int, fmt: ScaleFormat) -> None:
    # float32 (non power-of-two) scales: PyTorch's CUDA division is 1 ulp off at times.
    slack = 2e-3 if fmt is ScaleFormat.FLOAT32 else 0.0  # measured: 7.5e-4 of values
    compare_quantize_permute(glue_triton, glue_torch, CUDA, tokens, TOP_K, EXPERTS, HIDDEN,
                             ALIGNMENT, fmt, torch.bfloat16, max_flip_fraction=slack)


def test_quantize_permute_router_weight_on_input(glue_triton: ModuleType) -> None:
    compare_quantize_permute(glue_triton, glue_torch, CUDA, 512, 1, EXPERTS, HIDDEN,
                             ALIGNMENT, ScaleFormat.UE8M0, torch.bfloat16, on_input=True)


@pytest.mark.parametrize("name, limit", ACTIVATIONS)
def test_activate_quantize(glue_triton: ModuleType, name: str, limit: float | None) -> None:
    config = activation_config(name, limit, EXPERTS, TOP_K, HIDDEN, HIDDEN, bias=True)
    # The GPU's exp is not the CPU's: a rare value may round one E4M3 step apart.
    compare_activate_quantize(glue_triton, glue_torch, CUDA, config, 1024, ALIGNMENT,
                              ScaleFormat.UE8M0, max_flip_fraction=1e-3)
    compare_activate_quantize(glue_triton, glue_torch, CUDA, config, 64, ALIGNMENT,
                              ScaleFormat.UE8M0, max_flip_fraction=1e-3,
                              expert_map=EP_MAP.to(CUDA))


@pytest.mark.parametrize("tokens", TOKENS)
def test_unpermute_reduce(glue_triton: ModuleType, tokens: int) -> None:
    compare_unpermute_reduce(glue_triton, glue_torch, CUDA, tokens, TOP_K, EXPERTS, HIDDEN,
                             ALIGNMENT, None, True, True, torch.bfloat16)
    compare_unpermute_reduce(glue_triton, glue_torch, CUDA, tokens, TOP_K, EXPERTS, HIDDEN,
                             ALIGNMENT, EP_MAP.to(CUDA), True, False, torch.bfloat16)


@pytest.mark.parametrize("glue_name", ["torch", "triton"])
def test_no_host_synchronisation(glue_triton: ModuleType, glue_name: str) -> None:
    glue = glue_triton if glue_name == "triton" else glue_torch
    config = activation_config("swigluoai", 7.0, EXPERTS, TOP_K, HIDDEN, HIDDEN, bias=True)
    topk_ids = random_routing(256, TOP_K, EXPERTS, 0, CUDA)
    x = torch.randn(256, HIDDEN, device=CUDA, dtype=torch.bfloat16)
    weights = torch.rand(256, TOP_K, device=CUDA)
    bias = torch.randn(EXPERTS, 2 * HIDDEN, device=CUDA)
    expert_map = EP_MAP.to(CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        plan = glue.plan_permutation(topk_ids, expert_map, 32, ALIGNMENT)
        glue.quantize_permute(x, plan, ScaleFormat.UE8M0)
        h = torch.empty(plan.rows, 2 * HIDDEN, device=CUDA, dtype=torch.bfloat16).normal_()
        glue.activate_quantize(h, plan, bias[:32], config, ScaleFormat.UE8M0)
        y = torch.empty(plan.rows, HIDDEN, device=CUDA, dtype=torch.bfloat16).normal_()
        glue.unpermute_reduce(y, plan, weights, None, torch.bfloat16)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("tokens", [(1, 7, 67), (300,)], ids=["few", "many"])
def test_backend_through_fake_on_gpu(sm100_with_fake: ModuleType, tokens: tuple[int, ...]) -> None:
    """The whole backend with the Triton glue (the default on CUDA) on a layer of
    gpt-oss's shape at a CPU-reference-friendly size."""
    config = mxmoe.preset("gpt-oss-mini", activation_format="fp8_dynamic_1x128_pow2")
    layer = mxmoe.FusedMoE(config, backend="deepgemm-mxfp4", device=CUDA)
    layer.load_weights(**mxmoe.random_weights(config).tensors())
    assert layer._converted.glue == "triton"
    check_case("deepgemm-mxfp4", Case("gpt-oss-mini-pow2", config, tokens), CUDA)
