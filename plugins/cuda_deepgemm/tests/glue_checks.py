"""Checks of the glue, shared by the CPU tests, the Triton-interpreter run and the GPU run.

``assert_valid_plan`` states the grouped layout's contract independently of any
implementation; the ``compare_*`` functions run one glue step of two implementations
on the same random inputs and require the same answer (the Triton glue against the
PyTorch glue). Run as a script (``python glue_checks.py interpreted``) it performs the
comparisons at small sizes, as ``tests/test_glue_triton.py`` does under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

from mxmoe import MoEConfig
from mxmoe_cuda_deepgemm.glue import RoutingPlan, workspace_rows
from mxmoe_cuda_deepgemm.layouts import ScaleFormat

ACTIVATIONS = (
    ("silu", 7.0), ("silu", None), ("swigluoai", 7.0), ("swigluoai", None),
    ("swigluoai_uninterleave", 7.0), ("swiglustep", 7.0), ("swiglustep", None),
)


def random_routing(tokens: int, top_k: int, num_experts: int, seed: int,
                   device: torch.device | str) -> torch.Tensor:
    """int32 [tokens, top_k] distinct expert ids per token, skewed towards low ids."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, num_experts, generator=gen) - torch.linspace(0, 3, num_experts)
    return logits.topk(top_k, dim=1).indices.to(torch.int32).to(device)


def local_ids(topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    ids = topk_ids.reshape(-1).long()
    return expert_map.long()[ids] if expert_map is not None else ids


def assert_valid_plan(plan: RoutingPlan, topk_ids: torch.Tensor, expert_map: torch.Tensor | None,
                      num_local_experts: int, alignment: int) -> None:
    """The contract of :class:`RoutingPlan`, checked from first principles."""
    tokens, top_k = topk_ids.shape
    local = local_ids(topk_ids, expert_map).cpu()
    slot_expert, slot_row = plan.slot_expert.cpu().long(), plan.slot_row.cpu().long()
    layout = plan.grouped_layout.cpu().long()
    assert plan.top_k == top_k
    assert plan.rows == workspace_rows(tokens, top_k, num_local_experts, alignment)
    assert plan.rows % alignment == 0
    assert torch.equal(slot_expert, torch.where(local >= 0, local, -1))
    valid = slot_expert >= 0
    counts = torch.bincount(slot_expert[valid], minlength=num_local_experts)
    assert torch.equal(plan.expert_counts.cpu().long(), counts)
    assert bool((slot_row[~valid] == -1).all())
    rows = slot_row[valid]
    assert rows.unique().numel() == rows.numel(), "two slots share a row"
    assert bool((layout[rows] == slot_expert[valid]).all()), "a slot's row names another expert"
    assert int((layout >= 0).sum()) == rows.numel(), "a row names an expert but holds no slot"
    for expert in range(num_local_experts):
        mine = torch.sort(rows[slot_expert[valid] == expert]).values
        if mine.numel():
            start = int(mine[0])
            assert start % alignment == 0, f"expert {expert}'s segment starts at {start}"
            assert torch.equal(mine, torch.arange(start, start + mine.numel())), \
                f"expert {expert}'s rows are not contiguous"
    blocks = layout.view(-1, alignment)
    real = blocks >= 0
    assert not bool((real[:, 1:] & ~real[:, :-1]).any()), "padding before a real row"
    assert not bool((real & (blocks != blocks[:, :1])).any()), "a block mixes experts"


def _e4m3_step_fraction(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(fraction of differing E4M3 values, largest difference in E4M3 steps)."""
    fa, fb = a.float(), b.float()
    differ = fa != fb
    if not bool(differ.any()):
        return 0.0, 0.0
    mag = torch.maximum(fa.abs(), fb.abs())[differ]
    step = torch.exp2(torch.floor(torch.log2(mag.clamp(min=2.0 ** -6))) - 3)
    return float(differ.float().mean()), float(((fa - fb).abs()[differ] / step).max())


def scale_values(scales: torch.Tensor, fmt: ScaleFormat, num_groups: int) -> torch.Tensor:
    """Activation scales as float32 [rows, groups], whatever their layout."""
    if fmt is not ScaleFormat.UE8M0:
        return scales.float()
    words = scales.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 8, device=scales.device)
    exponents = ((words.unsqueeze(-1) >> shifts) & 0xFF).flatten(-2)[:, :num_groups]
    return torch.ldexp(torch.ones_like(exponents, dtype=torch.float32), exponents - 127)


def assert_same_quantized(q_a: torch.Tensor, s_a: torch.Tensor, q_b: torch.Tensor,
                          s_b: torch.Tensor, rows: torch.Tensor, fmt: ScaleFormat,
                          num_groups: int, *, max_flip_fraction: float = 0.0) -> None:
    """Rows ``rows`` of two FP8 tensors and their scales agree: scales exactly, values
    exactly or, for a fraction at most ``max_flip_fraction``, one E4M3 step apart."""
    sa = scale_values(s_a, fmt, num_groups)[rows]
    sb = scale_values(s_b, fmt, num_groups)[rows]
    if max_flip_fraction and fmt is ScaleFormat.FLOAT32:  # see compare_quantize_permute
        torch.testing.assert_close(sa, sb, rtol=2.0 ** -23, atol=0.0)
    else:
        assert torch.equal(sa, sb), f"scales differ in {int((sa != sb).sum())} of {sa.numel()}"
    fraction, steps = _e4m3_step_fraction(q_a[rows], q_b[rows])
    assert fraction <= max_flip_fraction and steps <= 1.0, \
        f"{fraction:.2e} of FP8 values differ, by up to {steps} steps"


def compare_plans(glue: ModuleType, ref: ModuleType, device: torch.device | str,
                  tokens: int, top_k: int, num_experts: int, alignment: int,
                  expert_map: torch.Tensor | None, seed: int = 0) -> None:
    topk_ids = random_routing(tokens, top_k, num_experts, seed, device)
    local = num_experts if expert_map is None else int((expert_map >= 0).sum())
    plan = glue.plan_permutation(topk_ids, expert_map, local, alignment)
    expected = ref.plan_permutation(topk_ids, expert_map, local, alignment)
    assert_valid_plan(plan, topk_ids, expert_map, local, alignment)
    assert_valid_plan(expected, topk_ids, expert_map, local, alignment)
    # Segments start where the scan puts them: the expert of every row is determined.
    assert torch.equal(plan.grouped_layout, expected.grouped_layout)


def compare_quantize_permute(glue: ModuleType, ref: ModuleType, device: torch.device | str,
                             tokens: int, top_k: int, num_experts: int, hidden: int,
                             alignment: int, fmt: ScaleFormat, dtype: torch.dtype,
                             on_input: bool = False, seed: int = 0,
                             max_flip_fraction: float = 0.0) -> None:
    """With ``max_flip_fraction``, float32 scales may also differ by one ulp: PyTorch on
    CUDA divides by a scalar as a multiplication by its reciprocal, the Triton glue (and
    the CPU reference) divide correctly rounded."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, hidden, generator=gen) * torch.rand(tokens, 1, generator=gen) * 8)
    x = x.to(dtype).to(device)
    x[0, :min(hidden, 128)] = 0  # an all-zero group
    topk_ids = random_routing(tokens, top_k, num_experts, seed, device)
    weights = torch.rand(tokens, top_k, generator=gen).to(device) if on_input else None
    plan = ref.plan_permutation(topk_ids, None, num_experts, alignment)
    q, s = glue.quantize_permute(x, plan, fmt, weights)
    q_ref, s_ref = ref.quantize_permute(x, plan, fmt, weights)
    rows = plan.slot_row[plan.slot_row >= 0].long()
    assert_same_quantized(q, s, q_ref, s_ref, rows, fmt, hidden // 128,
                          max_flip_fraction=max_flip_fraction)


def activation_config(name: str, limit: float | None, num_experts: int, top_k: int,
                      hidden: int, inter: int, bias: bool) -> MoEConfig:
    return MoEConfig(num_experts=num_experts, top_k=top_k, hidden_size=hidden,
                     intermediate_size=inter, activation=name, swiglu_limit=limit,
                     swiglu_alpha=1.702, swiglu_beta=0.5, has_bias=bias,
                     activation_format="fp8_dynamic_1x128_pow2")


def compare_activate_quantize(glue: ModuleType, ref: ModuleType, device: torch.device | str,
                              config: MoEConfig, tokens: int, alignment: int,
                              fmt: ScaleFormat, seed: int = 0,
                              max_flip_fraction: float = 0.0,
                              expert_map: torch.Tensor | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    inter, experts = config.intermediate_size, config.num_experts
    topk_ids = random_routing(tokens, config.top_k, experts, seed, device)
    local = experts if expert_map is None else int((expert_map >= 0).sum())
    plan = ref.plan_permutation(topk_ids, expert_map, local, alignment)
    h = (torch.randn(plan.rows, 2 * inter, generator=gen) * 4).to(torch.bfloat16).to(device)
    bias = (torch.randn(local, 2 * inter, generator=gen)).to(device) if config.has_bias else None
    q, s = glue.activate_quantize(h, plan, bias, config, fmt)
    q_ref, s_ref = ref.activate_quantize(h, plan, bias, config, fmt)
    rows = (plan.grouped_layout >= 0).nonzero().flatten()
    assert_same_quantized(q, s, q_ref, s_ref, rows, fmt, inter // 128,
                          max_flip_fraction=max_flip_fraction)


def compare_unpermute_reduce(glue: ModuleType, ref: ModuleType, device: torch.device | str,
                             tokens: int, top_k: int, num_experts: int, hidden: int,
                             alignment: int, expert_map: torch.Tensor | None, weighted: bool,
                             bias: bool, dtype: torch.dtype, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    topk_ids = random_routing(tokens, top_k, num_experts, seed, device)
    local = num_experts if expert_map is None else int((expert_map >= 0).sum())
    plan = ref.plan_permutation(topk_ids, expert_map, local, alignment)
    y = torch.randn(plan.rows, hidden, generator=gen).to(torch.bfloat16)
    y[(plan.grouped_layout < 0).cpu()] = float("nan")  # padding rows must not be read
    y = y.to(device)
    weights = torch.rand(tokens, top_k, generator=gen).to(device) if weighted else None
    b = torch.randn(local, hidden, generator=gen).to(device) if bias else None
    out = glue.unpermute_reduce(y, plan, weights, b, dtype)
    expected = ref.unpermute_reduce(y, plan, weights, b, dtype)
    assert out.dtype == dtype and out.shape == (tokens, hidden)
    assert bool(torch.isfinite(out).all()), "a padding row was read"
    # Summation order may differ: one rounding of the output dtype apart at most.
    torch.testing.assert_close(out.float(), expected.float(), rtol=2.0 ** -7, atol=1e-5)


def compare_every_activation(glue: ModuleType, ref: ModuleType, device: torch.device | str,
                             tokens: int, alignment: int) -> None:
    """Each activation, with and without its clamp limit, biases on every other one."""
    for i, (name, limit) in enumerate(ACTIVATIONS):
        config = activation_config(name, limit, 4, 2, 128, 384, bias=i % 2 == 0)
        compare_activate_quantize(glue, ref, device, config, tokens, alignment,
                                  ScaleFormat.UE8M0, seed=i)


def run_interpreted() -> None:
    """Every comparison at sizes the Triton interpreter runs in seconds."""
    from mxmoe_cuda_deepgemm import glue_torch, glue_triton

    cpu = torch.device("cpu")
    strided = torch.tensor([0, -1, 1, -1, -1, 2, 3, -1, 4, -1, 5, -1], dtype=torch.int32)
    for alignment in (16, 128):
        compare_plans(glue_triton, glue_torch, cpu, 37, 4, 12, alignment, None)
        compare_plans(glue_triton, glue_torch, cpu, 37, 4, 12, alignment, strided, seed=1)
    compare_plans(glue_triton, glue_torch, cpu, 1, 1, 12, 128, strided, seed=2)
    for fmt in ScaleFormat:
        compare_quantize_permute(glue_triton, glue_torch, cpu, 7, 3, 8, 640, 8, fmt,
                                 torch.bfloat16)
    compare_quantize_permute(glue_triton, glue_torch, cpu, 9, 1, 8, 256, 16,
                             ScaleFormat.UE8M0, torch.float16, on_input=True)
    compare_every_activation(glue_triton, glue_torch, cpu, 5, 8)
    for fmt in (ScaleFormat.FLOAT32, ScaleFormat.FLOAT32_POW2):
        compare_activate_quantize(glue_triton, glue_torch, cpu,
                                  activation_config("swigluoai", 7.0, 4, 2, 128, 256, True),
                                  5, 8, fmt)
    compare_activate_quantize(glue_triton, glue_torch, cpu,
                              activation_config("silu", None, 12, 4, 128, 128, True), 5, 8,
                              ScaleFormat.UE8M0, expert_map=strided)
    compare_unpermute_reduce(glue_triton, glue_torch, cpu, 9, 4, 12, 1100, 16, strided,
                             True, True, torch.bfloat16)
    compare_unpermute_reduce(glue_triton, glue_torch, cpu, 9, 1, 12, 256, 16, None,
                             False, False, torch.float16)
    print("glue_triton matches glue_torch")


def run_pipeline_interpreted() -> None:
    """The whole backend with the Triton glue, through the fake deep_gemm (which must be
    on ``sys.path``), against the reference: the conformance check of one layer."""
    import os

    import deep_gemm

    from mxmoe.selection import clear_verdict_cache
    from mxmoe.testing import Case, check_case
    from mxmoe.testing.cases import conformance_cases
    from mxmoe_cuda_deepgemm import probes

    os.environ["MXMOE_DEEPGEMM_GLUE"] = "triton"
    probes.check_device = lambda device: None
    probes.check_jit_toolchain = lambda: None
    clear_verdict_cache()
    deep_gemm.set_mk_alignment_for_contiguous_layout(8)  # few padding rows: interpreter time
    base = next(c for c in conformance_cases() if c.id == "w-mxfp4-a-fp8_dynamic_1x128_pow2")
    errors = check_case("deepgemm-mxfp4", Case("triton-glue", base.config, (0, 16)), "cpu")
    assert deep_gemm.calls and len(deep_gemm.calls) % 2 == 0, "FC1 and FC2 of every forward"
    print(f"pipeline with the Triton glue matches the reference: {errors}")


if __name__ == "__main__":
    {"interpreted": run_interpreted, "pipeline": run_pipeline_interpreted}[sys.argv[1]]()
