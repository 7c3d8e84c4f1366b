"""The ``triton`` backend's kernels run by Triton's CPU interpreter, against the reference.

``TRITON_INTERPRET=1`` must be in the environment before Triton decorates the kernels,
and once set it changes backend selection for the whole process (the triton backend
then accepts CPU layers, ahead of ``emulation``). So this module does not set it:
``test_triton_cpu.py`` runs this module in a child process that has it, and a plain
run skips it (with that reason). Run it directly with
``TRITON_INTERPRET=1 python -m pytest plugins/emulation/tests/test_triton_interpreter.py``.

Interpreter traps the kernels work around (see mxmoe_emulation.triton_backend.kernels):
a ``tl.dot`` of two bf16 tiles returns garbage, so interpreted kernels multiply in
float32; float32 -> bf16 casts truncate, so interpreted kernels round by hand. The
sizes are small (E=4..8, H, I = 64..160, M in 0, 1, 7, 33) because every program is
Python: the whole module takes about two minutes on a 2-core CPU.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before Triton is imported; test_triton_cpu.py "
                "runs this module in such a child process", allow_module_level=True)

import dataclasses

import torch

from mxmoe import MoEConfig, random_weights, reference_experts, reference_moe, relative_error, route
from mxmoe.reference import tolerance
from mxmoe.testing import BackendConformance, Case
from mxmoe_emulation.triton_backend import hooks
from mxmoe_emulation.triton_backend import launch
from mxmoe_emulation.triton_backend.launch import _align, moe_forward, route_topk
from mxmoe_emulation.triton_backend.op import op_arguments
from mxmoe_emulation.triton_backend.probe import ROUTED_HERE
from mxmoe_emulation.triton_backend.tiles import INTERPRETER_TILES
from test_triton_helpers import BACKEND, ensure_registered, fresh_seed, inputs, loaded_layer

CPU = torch.device("cpu")
TOKENS = (0, 1, 7, 33)

_BASE = MoEConfig(num_experts=8, top_k=2, hidden_size=128, intermediate_size=128,
                  activation="swigluoai", has_bias=True)

# Formats x activations x bias x expert map x dtype, each value at least twice.
LAYERS = {
    "mxfp4-swigluoai-bias-bf16": _BASE,
    "mxfp8-swigluoai-bias-bf16": _BASE.replace(weight_format="mxfp8"),
    "mxfp4-silu-fp16-E4-H64": _BASE.replace(num_experts=4, hidden_size=64, activation="silu",
                                            has_bias=False, dtype=torch.float16),
    "mxfp8-swiglustep-limit2-bias-fp16": _BASE.replace(weight_format="mxfp8", activation="swiglustep",
                                                       swiglu_limit=2.0, dtype=torch.float16),
    "mxfp4-uninterleave-beta-map-bf16": _BASE.replace(
        activation="swigluoai_uninterleave", swiglu_alpha=1.3, swiglu_beta=0.5,
        expert_map=(0, -1, 1, -1, -1, 2, -1, 3)),
    "mxfp8-silu-nolimit-ep-bf16": _BASE.replace(weight_format="mxfp8", activation="silu",
                                                swiglu_limit=None, has_bias=False,
                                                expert_map=_BASE.with_expert_parallel(2, 1).expert_map),
    "mxfp4-top1-weight-on-input-I160": _BASE.replace(top_k=1, apply_router_weight_on_input=True,
                                                     intermediate_size=160, hidden_size=96),
    "mxfp4-top1-swiglustep-nolimit-fp16": _BASE.replace(top_k=1, activation="swiglustep",
                                                        swiglu_limit=None, dtype=torch.float16),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_reference(name: str) -> None:
    config, seed = LAYERS[name], fresh_seed()
    weights = random_weights(config, seed=seed)
    layer = loaded_layer(config, weights, CPU)
    for m in TOKENS:
        x, logits = inputs(config, m, seed + m)
        out = layer(x, logits)
        assert out.shape == (m, config.hidden_size) and out.dtype == config.dtype
        if m == 0:
            continue
        assert torch.isfinite(out).all(), f"{name} M={m} seed={seed}: non-finite rows"
        err = relative_error(out, reference_moe(config, weights, x, logits))
        assert err <= tolerance(config), f"{name} M={m} seed={seed}: relative error {err:.2e}"


@pytest.mark.parametrize(("fmt", "swap", "split_k", "split_k2", "expert_map", "max_registers"), [
    ("mxfp4", True, 1, 3, None, None), ("mxfp4", False, 2, 1, None, 64),
    ("mxfp8", True, 3, None, (0, -1, 1, -1, -1, 2, -1, 3), None),
    ("mxfp8", False, 1, None, None, None),
])
def test_tiles_orientations_and_split_k(fmt: str, swap: bool, split_k: int,
                                        split_k2: int | None,
                                        expert_map: tuple[int, ...] | None,
                                        max_registers: int | None) -> None:
    """Both operand orders and split K (3 slices of 2 K tiles: one slice is empty; GEMM2
    split differently from GEMM1 where ``split_k2`` is given), with K and N spanning
    several tiles (BLOCK_K 64 over H=128, BLOCK_N 32 over I=128), for 9 tokens (aligned
    blocks) and for one (slot-led blocks, no align launch). The interpreter runs the
    portable decode; the inline-PTX one is checked on the GPU (test_triton_gpu.py). A
    register limit (PTX's ``.maxnreg``, applied with that decode only) leaves the
    portable path as it is."""
    config, seed = _BASE.replace(weight_format=fmt, expert_map=expert_map), fresh_seed()
    weights = random_weights(config, seed=seed)
    converted = hooks.convert_weights(config, weights, CPU)
    emap = None if expert_map is None else torch.tensor(expert_map, dtype=torch.int32)
    tiles = dataclasses.replace(INTERPRETER_TILES, block_n1=32, block_n2=32, block_k=64,
                                swap=swap, split_k=split_k, split_k2=split_k2,
                                max_registers=max_registers)
    for m in (9, 1):
        x, logits = inputs(config, m, seed + m)
        topk_weights, topk_ids = route(logits, config)
        out = moe_forward(x, topk_weights, topk_ids, emap, converted, tiles)
        err = relative_error(out, reference_experts(config, weights, x, topk_weights, topk_ids))
        assert err <= tolerance(config), f"M={m} seed={seed}: relative error {err:.2e}"


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8"])
def test_tail_blocks_match_full_blocks(fmt: str) -> None:
    """With ``tail_m``, blocks of at most tail_m rows run as narrower tiles. Caller-made ids
    give one expert 40 rows (a full 32-row block and an 8-row tail), one 20 rows (one
    block above the tail width: the full path), and two 15 and 5 rows (tails). Every
    row's product is the same computation either way, so the output equals the
    untailed run bit for bit, and it matches the reference."""
    config, seed = _BASE.replace(weight_format=fmt), fresh_seed()
    weights = random_weights(config, seed=seed)
    converted = hooks.convert_weights(config, weights, CPU)
    m = 40
    x, logits = inputs(config, m, seed)
    topk_weights, _ = route(logits, config)
    tokens = torch.arange(m)
    topk_ids = torch.stack((torch.full((m,), 1), torch.where(
        tokens < 20, 2, torch.where(tokens < 35, 3, 5))), dim=1).to(torch.int32)
    full = dataclasses.replace(INTERPRETER_TILES, block_m=32, block_n1=32, block_n2=32,
                               block_k=64)
    tailed = dataclasses.replace(full, tail_m=16)
    got = moe_forward(x, topk_weights, topk_ids, None, converted, tailed)
    torch.testing.assert_close(got, moe_forward(x, topk_weights, topk_ids, None, converted, full),
                               rtol=0, atol=0)
    err = relative_error(got, reference_experts(config, weights, x, topk_weights, topk_ids))
    assert err <= tolerance(config), f"seed={seed}: relative error {err:.2e}"


@pytest.mark.parametrize("num_slots", [150, 9000])  # one step, several 4096-slot steps
@pytest.mark.parametrize("expert_map", [None, (2, -1, 0, -1, 1, -1)], ids=["all-local", "map"])
def test_alignment_groups_every_local_slot_once(expert_map: tuple[int, ...] | None,
                                                num_slots: int) -> None:
    num_experts, block_m = 6, 16
    gen = torch.Generator().manual_seed(fresh_seed())
    ids = torch.randint(0, num_experts, (num_slots,), generator=gen, dtype=torch.int32)
    emap = None if expert_map is None else torch.tensor(expert_map, dtype=torch.int32)
    local = ids.long() if emap is None else emap[ids.long()].long()
    num_local = num_experts if emap is None else int((emap >= 0).sum())
    sorted_slots, block_expert, block_rows = _align(ids, emap, num_local, num_experts, block_m)
    seen = []
    for blk in range(block_expert.numel()):
        rows = int(block_rows[blk])
        if rows == 0:
            continue
        assert 0 < rows <= block_m
        slots = sorted_slots[blk * block_m: blk * block_m + rows].long()
        assert (local[slots] == int(block_expert[blk])).all()
        seen += slots.tolist()
    expected = torch.nonzero(local >= 0).flatten().tolist()
    assert sorted(seen) == expected and len(seen) == len(set(seen))
    # slots keep their order inside an expert, and experts come in order
    order = [(int(local[s]), s) for s in seen]
    assert order == sorted(order)


@pytest.mark.parametrize(("slots", "local_experts", "expected"), [
    (4, 128, True), (8, 8, True), (32, 128, True), (16, 64, True),  # few slots per expert
    (64, 128, False), (32, 32, False), (16, 32, False),  # experts repeat: align launch
    (8, 4, False),  # a block per slot would outgrow the align step's grid
    (256, 2048, False),  # more ids than a program scans
])
def test_slot_led_only_while_slots_rarely_share_an_expert(slots: int, local_experts: int,
                                                          expected: bool) -> None:
    assert launch.slot_led(slots, local_experts, 16) is expected


@pytest.mark.parametrize("mapped", [False, True], ids=["all-local", "map"])
def test_slot_led_blocks_match_the_align_step(mapped: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Small calls have no align launch: each GEMM program finds the block its slot leads
    from the ids. Caller-made ids repeat one expert, also within a token, so that it gets
    more than BLOCK_M rows (blocks led by its slots of rank 0 and 16), and one id per
    token is out of range (every other token). The output equals the align step's bit
    for bit (the two only differ in which program computes a row) and matches the
    reference."""
    emap = tuple(i // 2 if i % 2 == 0 else -1 for i in range(128)) if mapped else None
    config = _BASE.replace(num_experts=128, top_k=4, hidden_size=64, intermediate_size=64,
                           expert_map=emap)
    m = 4 if mapped else 8  # 16 or 32 slots: a quarter of a slot per local expert
    assert launch.slot_led(m * config.top_k, 64 if mapped else 128, INTERPRETER_TILES.block_m)
    seed = fresh_seed()
    weights = random_weights(config, seed=seed)
    converted = hooks.convert_weights(config, weights, CPU)
    x, logits = inputs(config, m, seed)
    topk_weights, topk_ids = route(logits, config)
    tokens = torch.arange(m)
    topk_ids[:, :3] = 6  # expert 6 (local 3 with the map): 3 * m rows, repeated per token
    topk_ids[:, 3] = torch.where(tokens % 2 == 0, 200, (7 * tokens + 1) % 128).to(torch.int32)
    emap_t = None if emap is None else torch.tensor(emap, dtype=torch.int32)
    got = moe_forward(x, topk_weights, topk_ids, emap_t, converted)
    monkeypatch.setattr(launch, "SLOT_LED_MAX_SLOTS", 0)
    aligned = moe_forward(x, topk_weights, topk_ids, emap_t, converted)
    torch.testing.assert_close(got, aligned, rtol=0, atol=0)
    zeroed, safe_ids = topk_weights.clone(), topk_ids.clone()
    zeroed[tokens % 2 == 0, 3] = 0.0
    safe_ids[tokens % 2 == 0, 3] = 0
    err = relative_error(got, reference_experts(config, weights, x, zeroed, safe_ids))
    assert err <= tolerance(config), f"seed={seed}: relative error {err:.2e}"


@pytest.mark.parametrize("method", [r.value for r in ROUTED_HERE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("m", "e", "k"), [(1, 8, 2), (7, 32, 4), (33, 128, 4), (5, 6, 3),
                                           (3, 16, 1), (2, 20, 6)])
def test_routing_kernel_matches_route(method: str, dtype: torch.dtype, m: int, e: int,
                                      k: int) -> None:
    """One launch computes what mxmoe.route does: the same experts in the same order,
    weights to float32 rounding (non-power-of-two E and k included)."""
    config = MoEConfig(num_experts=e, top_k=k, hidden_size=64, intermediate_size=64,
                       routing=method)
    gen = torch.Generator().manual_seed(fresh_seed())
    logits = (torch.randn(m, e, generator=gen) * 3).to(dtype)
    weights, ids = route_topk(logits, method, k)
    want_weights, want_ids = route(logits, config)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert torch.equal(ids, want_ids), f"{method} {dtype} M={m} E={e} k={k}"
    torch.testing.assert_close(weights, want_weights, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("method", [r.value for r in ROUTED_HERE])
def test_routing_kernel_breaks_ties_like_route(method: str) -> None:
    """Equal logits, inside the top k and across its boundary: lower expert id first."""
    logits = torch.tensor([[0.5, 2.0, 0.5, 2.0, -1.0, 2.0, 2.0, 0.0],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.bfloat16)
    weights, ids = route_topk(logits, method, 3)
    config = MoEConfig(num_experts=8, top_k=3, hidden_size=64, intermediate_size=64,
                       routing=method)
    want_weights, want_ids = route(logits, config)
    assert ids.tolist() == [[1, 3, 5], [0, 1, 2]] == want_ids.tolist()
    torch.testing.assert_close(weights, want_weights, rtol=2e-6, atol=1e-7)


def test_layer_routes_internally_for_plain_methods_only() -> None:
    """The verdict says so for renormalize / renormalize_naive / default; grouped top-k
    is routed by mxmoe before apply; apply without top-k for it is a ValueError."""
    assert hooks.supports_config(_BASE, CPU).routes_internally
    grouped = _BASE.replace(routing="grouped_topk", num_expert_group=2, topk_group=1)
    assert not hooks.supports_config(grouped, CPU).routes_internally
    converted = hooks.convert_weights(grouped, random_weights(grouped, seed=1), CPU)
    x, logits = inputs(grouped, 3, 1)
    with pytest.raises(ValueError, match="topk_weights, topk_ids: required for routing='grouped_topk'"):
        hooks.apply(grouped, converted, x, None, None, logits, None)
    with pytest.raises(ValueError, match="router_logits: expected shape"):
        hooks.apply(_BASE, hooks.convert_weights(_BASE, random_weights(_BASE, seed=1), CPU),
                    x, None, None, logits[:, :3], None)


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("m", [1, 7])
@pytest.mark.parametrize("mapped", [False, True], ids=["no-map", "map"])
def test_out_of_range_ids_contribute_nothing(m: int, mapped: bool, split: int) -> None:
    """apply with caller-made ids outside [0, E): no kernel leaves its tensors (on a GPU
    that would be a fault), and such a slot adds nothing, like a slot of another rank."""
    config = _BASE.replace(expert_map=(0, -1, 1, -1, -1, 2, -1, 3)) if mapped else _BASE
    seed = fresh_seed()
    converted = hooks.convert_weights(config, random_weights(config, seed=seed), CPU)
    x, logits = inputs(config, m, seed)
    topk_weights, topk_ids = route(logits, config)
    emap = torch.tensor(config.expert_map, dtype=torch.int32) if mapped else None
    bad_ids, zeroed = topk_ids.clone(), topk_weights.clone()
    bad_ids[:, 0] = torch.tensor([config.num_experts, -5, 1 << 20])[torch.arange(m) % 3].to(torch.int32)
    zeroed[:, 0] = 0.0
    safe_ids = topk_ids.clone()
    safe_ids[:, 0] = 0
    tiles = dataclasses.replace(INTERPRETER_TILES, split_k=split)
    got = moe_forward(x, topk_weights, bad_ids, emap, converted, tiles)
    want = moe_forward(x, zeroed, safe_ids, emap, converted, tiles)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_non_contiguous_inputs_are_accepted() -> None:
    config, seed = _BASE, fresh_seed()
    layer = loaded_layer(config, random_weights(config, seed=seed), CPU)
    x, logits = inputs(config, 7, seed)
    topk_weights, topk_ids = route(logits, config)
    wide = torch.zeros(7, 2 * config.hidden_size, dtype=config.dtype)
    wide[:, ::2] = x
    apply = layer.backend.apply
    expected = apply(config, layer._converted, x, topk_weights, topk_ids, logits, None)
    strided = apply(config, layer._converted, wide[:, ::2], topk_weights.t().contiguous().t(),
                    topk_ids.t().contiguous().t(), logits, None)
    assert torch.equal(expected, strided)


def test_custom_op_is_opaque_to_torch_compile() -> None:
    config, seed = _BASE, fresh_seed()
    layer = loaded_layer(config, random_weights(config, seed=seed), CPU)
    x, logits = inputs(config, 5, seed)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, logits), layer(x, logits))


def test_custom_op_schema_and_fake_implementation() -> None:
    config, seed = _BASE, fresh_seed()
    converted = hooks.convert_weights(config, random_weights(config, seed=seed), CPU)
    x, logits = inputs(config, 3, seed)
    topk_weights, topk_ids = route(logits, config)
    args = op_arguments(x, topk_weights, topk_ids, None, converted)
    torch.library.opcheck(torch.ops.mxmoe_emulation.triton_moe.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.mxmoe_emulation.triton_route.default, (logits, "renormalize", 2),
                          test_utils=("test_schema", "test_faketensor"))


_CONFORMANCE_SUBSET = {"base", "w-mxfp8", "dtype-fp16", "ep-strided", "weight-on-input-top1",
                       "odd-shape"}


class TestTritonConformanceInterpreted(BackendConformance):
    """The conformance kit on CPU tensors under the Triton interpreter.

    ``supports_case`` keeps six cases (base, MXFP8, fp16, a strided expert map, router
    weight on input, unaligned shapes), because interpreted kernels run at Python
    speed: the full matrix takes many minutes on a 2-core CPU. Activations, limits and
    biases are covered by ``test_layer_matches_reference`` above; routing variants
    run in the core before ``apply``; the GPU suite (test_triton_gpu.py) runs every
    case.
    """

    backend = BACKEND
    device = "cpu"

    @pytest.fixture(autouse=True)
    def _registered_backend(self) -> None:
        ensure_registered()

    def supports_case(self, case: Case) -> bool:
        return case.id in _CONFORMANCE_SUBSET
