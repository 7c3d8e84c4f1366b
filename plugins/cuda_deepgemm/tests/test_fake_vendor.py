"""The fake deep_gemm itself: it computes the documented product, and each of its
precondition checks fires on the argument that breaks it (so a test that passes
through it proves the backend met the contract)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch

from mxmoe.formats import dequantize_mx

G, N, K, ALIGN = 2, 64, 256, 128
M = 2 * ALIGN
REAL = {0: range(0, 10), 1: range(128, 131)}  # expert -> its rows; the rest is padding


def _valid_call(seed: int = 0) -> dict:
    """Arguments of a call that meets every precondition (float32 pow2 scales)."""
    gen = torch.Generator().manual_seed(seed)
    a = (torch.randn(M, K, generator=gen) * 40).to(torch.float8_e4m3fn)
    sfa = torch.ldexp(torch.ones(M, K // 128), torch.randint(-8, 3, (M, K // 128), generator=gen))
    b = torch.randint(0, 256, (G, N, K // 2), generator=gen, dtype=torch.uint8)
    sfb_bytes = torch.randint(120, 131, (G, N, K // 32), generator=gen, dtype=torch.uint8)
    layout = torch.full((M,), -1, dtype=torch.int32)
    for expert, rows in REAL.items():
        layout[list(rows)] = expert
    return {"a": (a, sfa), "b": (b.view(torch.int8), torch.ldexp(torch.ones(G, N, K // 32),
                                                                   sfb_bytes.int() - 127)),
            "d": torch.empty(M, N, dtype=torch.bfloat16), "grouped_layout": layout,
            "recipe_a": (1, 128), "recipe_b": (1, 32), "_b_bytes": (b, sfb_bytes)}


def _expected(call: dict) -> torch.Tensor:
    a, sfa = call["a"]
    b, sfb_bytes = call["_b_bytes"]
    x = a.float() * sfa.repeat_interleave(128, dim=1)
    out = torch.full((M, N), float("nan"))
    for expert, rows in REAL.items():
        w = dequantize_mx(b[expert], sfb_bytes[expert], "mxfp4")  # the core's MXFP4 decode
        out[list(rows)] = x[list(rows)] @ w.T
    return out


def _call(fake: ModuleType, call: dict) -> None:
    fake.m_grouped_fp8_fp4_gemm_nt_contiguous(**{k: v for k, v in call.items() if k[0] != "_"})


def _pack(scales: torch.Tensor) -> torch.Tensor:
    from mxmoe_cuda_deepgemm.layouts import pack_ue8m0, pow2_scales_to_ue8m0

    return pack_ue8m0(pow2_scales_to_ue8m0(scales))


@pytest.mark.parametrize("packed", [False, True], ids=["float32-scales", "ue8m0-scales"])
def test_fake_computes_the_documented_product(fake_deep_gemm: ModuleType, packed: bool) -> None:
    call = _valid_call()
    expected = _expected(call)
    if packed:
        call["a"] = (call["a"][0], _pack(call["a"][1]))
        call["b"] = (call["b"][0], _pack(call["b"][1]))
    _call(fake_deep_gemm, call)
    real = ~expected.isnan()
    assert bool(call["d"].float().isnan().eq(~real).all()), "padding rows must be poisoned"
    torch.testing.assert_close(call["d"].float()[real], expected[real], rtol=2 ** -8, atol=1e-3)


def test_alignment_query(fake_deep_gemm: ModuleType) -> None:
    assert fake_deep_gemm.get_mk_alignment_for_contiguous_layout() == 128
    fake_deep_gemm.set_mk_alignment_for_contiguous_layout(256)
    assert fake_deep_gemm.get_mk_alignment_for_contiguous_layout() == 256


def _odd_column_stride(packed: torch.Tensor) -> torch.Tensor:
    """The same [M, 1] scales, MN-major, with a column stride of M + 2 (not 16-byte aligned)."""
    storage = torch.zeros(2 * (M + 2), dtype=torch.int32)
    out = storage.as_strided(packed.shape, (1, M + 2))
    out.copy_(packed)
    return out


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda call: call.__setitem__(key, value)


def _a(change: Callable[[torch.Tensor, torch.Tensor], tuple]) -> Callable[[dict], None]:
    return lambda call: call.__setitem__("a", change(*call["a"]))


def _b(change: Callable[[torch.Tensor, torch.Tensor], tuple]) -> Callable[[dict], None]:
    return lambda call: call.__setitem__("b", change(*call["b"]))


def _layout(rows: list[int], value: int) -> Callable[[dict], None]:
    def change(call: dict) -> None:
        layout = call["grouped_layout"].clone()
        layout[rows] = value
        call["grouped_layout"] = layout
    return change




VIOLATIONS = {
    "uint8-weights": (_b(lambda b, s: (b.view(torch.uint8), s)), "kPackedFP4"),
    "a-not-k-major": (_a(lambda a, s: (a.t().contiguous().t(), s)), "a: must be K-major"),
    "a-bf16": (_a(lambda a, s: (a.to(torch.bfloat16), s)), "a: expected torch.float8_e4m3fn"),
    "b-not-k-major": (_b(lambda b, s: (b.transpose(1, 2).contiguous().transpose(1, 2), s)),
                      "b: must be K-major"),
    "k-mismatch": (_b(lambda b, s: (b[:, :, :64].contiguous(), s)), "does not match"),
    "sfa-not-pow2": (_a(lambda a, s: (a, s * 1.5)), "powers of two"),
    "sfa-float-no-cast": (_set("disable_ue8m0_cast", True), "UE8M0 cast"),
    "sfb-packed-k-major": (_b(lambda b, s: (b, _pack(s).contiguous())), "MN-major"),
    "sfa-packed-unaligned": (_a(lambda a, s: (a, _odd_column_stride(_pack(s)))),
                             "multiple of 4"),
    "sfb-packed-experts-gapped": (_b(lambda b, s: (b, _pack(torch.cat([s, s]))[::2])),
                                  "experts must be dense"),
    "sfb-wrong-shape": (_b(lambda b, s: (b, s[:, :, ::2].contiguous())), "float32 scales must be"),
    "no-recipe": (lambda call: [call.pop("recipe_a"), call.pop("recipe_b")], "no recipe"),
    "recipe-and-pair": (_set("recipe", (1, 1, 128)), "either recipe"),
    "recipe-gran-mn": (_set("recipe_b", (32, 32)), "granularity 1"),
    "d-float32": (_set("d", torch.empty(M, N)), "d: expected torch.bfloat16"),
    "layout-int64": (lambda call: call.__setitem__("grouped_layout",
                                                   call["grouped_layout"].long()), "int32"),
    "layout-unaligned-m": (lambda call: [
        call.__setitem__("a", (call["a"][0][:200], call["a"][1][:200])),
        call.__setitem__("d", call["d"][:200]),
        call.__setitem__("grouped_layout", call["grouped_layout"][:200].contiguous())],
        "not a multiple of the alignment"),
    "layout-block-starts-padded": (_layout([128], -1), "first row"),
    "layout-padding-inside": (_layout([5], -1), "comes before a real row"),
    "layout-two-experts": (_layout([3], 1), "two experts"),
    "layout-unknown-expert": (_layout([0], 7), "expert ids below 2"),
    "psum-layout": (_set("use_psum_layout", True), "psum"),
}


@pytest.mark.parametrize("name", VIOLATIONS)
def test_each_precondition_fires(fake_deep_gemm: ModuleType, name: str) -> None:
    change, message = VIOLATIONS[name]
    call = _valid_call()
    _call(fake_deep_gemm, call)  # the unchanged call is accepted...
    change(call)
    with pytest.raises(fake_deep_gemm.ContractError, match=message):  # ...the changed one not
        _call(fake_deep_gemm, call)
