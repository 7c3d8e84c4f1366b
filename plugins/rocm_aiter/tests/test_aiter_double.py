"""The aiter test double can fail: every convention it checks, and every layout and size
its math depends on, is broken here on purpose — between the plugin and the double, or
in the plugin's conversions — and each breakage is caught, either as the double's
ContractViolation or as the conformance check's error against mxmoe.reference."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

import mxmoe
from aiter_layers import MXFP8, MXFP8_LAYER, W4A8, W4A8_LAYER
from mxmoe.testing import Case, ConformanceError, check_case
from mxmoe_rocm_aiter import layouts, mxfp8, vendor

pytestmark = pytest.mark.usefixtures("fake_aiter", "on_gfx950")

EP_REORDERED = MXFP8_LAYER.replace(expert_map=(1, -1, 0, -1, -1, 3, 2, -1))
EP_LAST_RANK = MXFP8_LAYER.with_expert_parallel(2, 1)  # the last global expert is local


def contract_violation() -> type[Exception]:
    from aiter._contract import ContractViolation

    return ContractViolation


def corrupt(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
            change: Callable[[dict[str, Any]], None]) -> None:
    """Let ``change`` edit the arguments the plugin passes to the double's ``name``."""
    real = getattr(module, name)
    signature = inspect.signature(real)

    @functools.wraps(real)
    def corrupted(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        change(bound.arguments)
        return real(*bound.args, **bound.kwargs)

    monkeypatch.setattr(module, name, corrupted)
    vendor.forget()  # the plugin resolves aiter's entry points afresh


def run_layer(backend: str, config: mxmoe.MoEConfig, tokens: int = 7) -> torch.Tensor:
    weights = mxmoe.random_weights(config, seed=1)
    layer = mxmoe.FusedMoE(config, backend=backend, device="cpu")
    layer.load_weights(**weights.tensors())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(tokens, config.hidden_size, generator=gen).to(config.dtype)
    return layer(x, torch.randn(tokens, config.num_experts, generator=gen))


# -- argument conventions: the double raises ----------------------------------------------------


def _set(key: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def change(arguments: dict[str, Any]) -> None:
        arguments[key] = value(arguments[key])

    return change


MXFP8_VIOLATIONS = [
    ("bf16 router weights", MXFP8_LAYER, _set("topk_weight", lambda t: t.bfloat16()),
     "topk_weight: aiter requires torch.float32"),
    ("int64 expert ids", MXFP8_LAYER, _set("topk_ids", lambda t: t.long()),
     "topk_ids: aiter requires torch.int32"),
    ("untagged weights", MXFP8_LAYER, _set("w1", lambda t: t.clone()), "not tagged is_shuffled"),
    ("uint8 scales", MXFP8_LAYER, _set("w1_scale", lambda t: t.view(torch.uint8)),
     "w1_scale: aiter requires torch.float8_e8m0fnu"),
    ("separate gate/up mode", MXFP8_LAYER, _set("gate_mode", lambda v: "separated"),
     "gate_mode"),
    ("no clamp limit", MXFP8_LAYER, _set("swiglu_limit", lambda v: None), "swiglu_limit"),
    ("mask without sentinel", EP_LAST_RANK, _set("expert_mask", lambda t: t[:-1]),
     "trailing sentinel slot must be 0"),
    ("expert map as mask", EP_REORDERED,
     _set("expert_mask", lambda t: torch.tensor(EP_REORDERED.expert_map + (0,),
                                                dtype=torch.int32)),
     "entries must be 0 or 1"),
]

W4A8_VIOLATIONS = [
    ("bf16 bias", _set("bias", lambda t: t.bfloat16()), "bias: aiter requires torch.float32"),
    ("row-major weights", _set("w", lambda t: t.contiguous()), "column-major"),
    ("scale as a float", _set("x_static_scale", lambda t: float(t)), "x_static_scale"),
    ("unswizzled scale flag", _set("swizzle_mx_scale", lambda v: None), "swizzle_mx_scale"),
]


@pytest.mark.parametrize("what, config, change, match", MXFP8_VIOLATIONS,
                         ids=[v[0] for v in MXFP8_VIOLATIONS])
def test_fused_moe_conventions(monkeypatch, what, config, change, match):
    import aiter.fused_moe as fused

    corrupt(monkeypatch, fused, "fused_moe", change)
    with pytest.raises(contract_violation(), match=match):
        run_layer(MXFP8, config)


@pytest.mark.parametrize("what, change, match", W4A8_VIOLATIONS,
                         ids=[v[0] for v in W4A8_VIOLATIONS])
def test_a8w4_gemm_conventions(monkeypatch, what, change, match):
    import aiter.ops.triton.moe_op_gemm_a8w4 as gemm

    corrupt(monkeypatch, gemm, "moe_gemm_a8w4", change)
    with pytest.raises(contract_violation(), match=match):
        run_layer(W4A8, W4A8_LAYER)


def test_static_quantization_conventions(monkeypatch):
    import aiter.ops.triton.quant_moe as quant

    corrupt(monkeypatch, quant, "downcast_to_static_fp8", _set("scale", lambda t: t.double()))
    with pytest.raises(contract_violation(), match="scale: aiter requires torch.float32"):
        run_layer(W4A8, W4A8_LAYER)


# -- layouts and sizes: the double's math disagrees with the reference ------------------------------


def _first_gemm(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def on_gemm1(arguments: dict[str, Any]) -> None:
        if arguments.get("apply_swiglu"):
            change(arguments)

    return on_gemm1


@pytest.mark.parametrize("what, module, name, replacement, config", [
    ("a8w4 scales not swizzled", layouts, "cdna4_scale_order", lambda s: s.clone(), W4A8_LAYER),
    ("mxfp8 scales not in CDNA4 order", layouts, "cdna4_scale_order", lambda s: s.clone(),
     MXFP8_LAYER),
    ("mxfp8 weights not tiled", layouts, "preshuffle_weight_tiles", lambda w: w.clone(),
     MXFP8_LAYER),
    ("gate/up not in 16-row blocks", layouts, "gate_up_halves_to_blocks",
     lambda t, block: t.clone(), MXFP8_LAYER),
    ("gpt-oss rows not de-interleaved", layouts, "gate_up_blocks_to_halves",
     lambda t, block: t.clone(), MXFP8_LAYER),
    ("local experts left in map order", mxfp8, "_in_global_order", lambda config, w: w,
     EP_REORDERED),
], ids=lambda v: v if isinstance(v, str) else "")
def test_layout_mistakes_are_caught(monkeypatch, what, module, name, replacement, config):
    monkeypatch.setattr(module, name, replacement)
    backend = W4A8 if config is W4A8_LAYER else MXFP8
    with pytest.raises(ConformanceError, match="relative error"):
        check_case(backend, Case(what, config, (16,)), "cpu", seed=3)


@pytest.mark.parametrize("what, change, match", [
    ("GEMM1 unpadded N too small", _first_gemm(_set("unpadded_N", lambda n: n // 2)),
     "non-finite"),
    ("GEMM1 unpadded K too small", _first_gemm(_set("unpadded_K", lambda k: k // 2)),
     "relative error"),
    ("router weights applied in GEMM1 too",
     _first_gemm(lambda a: a.update(gammas=a["routing_data"].gate_scal)), "relative error"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_size_and_weighting_mistakes_are_caught(monkeypatch, what, change, match):
    import aiter.ops.triton.moe_op_gemm_a8w4 as gemm

    corrupt(monkeypatch, gemm, "moe_gemm_a8w4", change)
    with pytest.raises(ConformanceError, match=match):
        check_case(W4A8, Case(what, W4A8_LAYER, (7,)), "cpu", seed=4)


def test_softmax_first_routing_is_caught(monkeypatch):
    import aiter.ops.triton.moe_routing.routing as routing

    corrupt(monkeypatch, routing, "routing", _set("sm_first", lambda v: True))
    with pytest.raises(ConformanceError, match="relative error"):
        check_case(W4A8, Case("softmax first", W4A8_LAYER, (16,)), "cpu", seed=5)


# -- what the double leaves unwritten ----------------------------------------------------------------


@pytest.mark.parametrize("tokens, padding", [(3, "unwritten"), (200, "zero")])
def test_a8w4_padded_output_columns(tokens, padding):
    """At small batch aiter never writes columns past the unpadded hidden size (NaN in
    the double); at large batch it computes the zero padding. The layer slices both."""
    config = W4A8_LAYER
    layer = mxmoe.FusedMoE(config, backend=W4A8, device="cpu")
    layer.load_weights(**mxmoe.random_weights(config, seed=6).tensors())
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(tokens, config.hidden_size, generator=gen).to(config.dtype)
    logits = torch.randn(tokens, config.num_experts, generator=gen)
    padded = torch.nn.functional.pad(x, (0, layer.hidden_size_padded - config.hidden_size))
    out = layer.backend.apply(config, layer._converted, padded, None, None, logits, None)
    assert out.shape == (tokens, 256) and torch.isfinite(out[:, :128]).all()
    tail = out[:, 128:].float()
    assert tail.isnan().all() if padding == "unwritten" else (tail == 0).all()
    assert torch.isfinite(layer(x, logits)).all()
