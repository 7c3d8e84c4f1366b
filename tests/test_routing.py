"""Routing: every method of ``mxmoe.route`` against a plain per-token computation."""

from __future__ import annotations

import math

import pytest
import torch

from mxmoe import MoEConfig, route


def config(routing: str = "renormalize", **changes: object) -> MoEConfig:
    fields = dict(num_experts=16, top_k=4, hidden_size=32, intermediate_size=32, routing=routing)
    return MoEConfig(**{**fields, **changes})


def logits_for(m: int, e: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(m, e, generator=gen) * 2).to(dtype)


def top(values: list[float], k: int) -> list[int]:
    """Indices of the k largest values, largest first (ties: lower index first)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def softmax(values: list[float]) -> list[float]:
    peak = max(values)
    exps = [math.exp(v - peak) for v in values]
    total = sum(exps)
    return [x / total for x in exps]


def expected_plain(logits: torch.Tensor, k: int, method: str) -> tuple[list, list]:
    """Renormalize / RenormalizeNaive / Default written out per token, in float64."""
    weights, ids = [], []
    for row in logits.double().tolist():
        if method == "renormalize":
            chosen = top(row, k)
            w = softmax([row[i] for i in chosen])
        else:
            probs = softmax(row)
            chosen = top(probs, k)
            w = [probs[i] for i in chosen]
            if method == "renormalize_naive":
                w = [x / sum(w) for x in w]
        weights.append(w)
        ids.append(chosen)
    return weights, ids


def expected_grouped(logits: torch.Tensor, cfg: MoEConfig,
                     bias: list[float] | None) -> tuple[list, list]:
    """DeepSeek-V3 grouped top-k written out per token, in float64."""
    groups, keep, k = cfg.num_expert_group, cfg.topk_group, cfg.top_k
    size = cfg.num_experts // groups
    weights, ids = [], []
    for row in logits.double().tolist():
        if cfg.scoring_func.value == "softmax":
            scores = softmax(row)
        else:
            scores = [1 / (1 + math.exp(-v)) for v in row]
        choice = scores if bias is None else [s + b for s, b in zip(scores, bias)]
        group_scores = []
        for g in range(groups):
            members = sorted(choice[g * size:(g + 1) * size], reverse=True)
            group_scores.append(members[0] if bias is None else members[0] + members[1])
        kept = set(top(group_scores, keep))
        candidates = [c if i // size in kept else -math.inf for i, c in enumerate(choice)]
        chosen = top(candidates, k)
        w = [scores[i] for i in chosen]
        if cfg.renormalize_grouped:
            w = [x / sum(w) for x in w]
        weights.append([x * cfg.routed_scaling_factor for x in w])
        ids.append(chosen)
    return weights, ids


def check(result: tuple[torch.Tensor, torch.Tensor], expected: tuple[list, list],
          m: int, k: int) -> None:
    weights, ids = result
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == (m, k) and ids.shape == (m, k)
    assert ids.tolist() == expected[1]
    torch.testing.assert_close(weights, torch.tensor(expected[0], dtype=torch.float32).reshape(m, k),
                               rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("method", ["renormalize", "renormalize_naive", "default"])
@pytest.mark.parametrize(("m", "e", "k"), [(1, 4, 1), (7, 16, 4), (33, 32, 8), (5, 8, 8)])
def test_plain_methods_match_a_per_token_computation(method: str, dtype: torch.dtype, m: int,
                                                     e: int, k: int) -> None:
    cfg = config(method, num_experts=e, top_k=k)
    logits = logits_for(m, e, seed=m * e + k, dtype=dtype)
    check(route(logits, cfg), expected_plain(logits, k, method), m, k)


def test_renormalize_equals_renormalize_naive_up_to_rounding() -> None:
    logits = logits_for(64, 32, seed=5)
    w1, i1 = route(logits, config("renormalize", num_experts=32, top_k=4))
    w2, i2 = route(logits, config("renormalize_naive", num_experts=32, top_k=4))
    assert torch.equal(i1, i2)
    torch.testing.assert_close(w1, w2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w1.sum(-1), torch.ones(64), rtol=1e-6, atol=1e-6)


def test_default_weights_do_not_sum_to_one() -> None:
    weights, _ = route(logits_for(8, 16, seed=2), config("default"))
    assert (weights.sum(-1) < 1 - 1e-3).all()


GROUPED = [
    dict(num_expert_group=4, topk_group=2),
    dict(num_expert_group=4, topk_group=2, scoring_func="sigmoid"),
    dict(num_expert_group=8, topk_group=3, scoring_func="sigmoid", routed_scaling_factor=2.5),
    dict(num_expert_group=2, topk_group=1, renormalize_grouped=False),
    dict(num_expert_group=1, topk_group=1, routed_scaling_factor=0.5),
]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("fields", GROUPED)
def test_grouped_topk_matches_a_per_token_computation(fields: dict, with_bias: bool) -> None:
    cfg = config("grouped_topk", has_correction_bias=with_bias, **fields)
    logits = logits_for(19, 16, seed=len(fields) + with_bias)
    bias = (torch.randn(16, generator=torch.Generator().manual_seed(3)) * 0.3) if with_bias else None
    result = route(logits, cfg, bias)
    check(result, expected_grouped(logits, cfg, None if bias is None else bias.tolist()),
          19, cfg.top_k)
    groups = result[1].long() // (16 // cfg.num_expert_group)
    for row in groups.tolist():  # every pick lies in one of the kept groups
        assert len(set(row)) <= cfg.topk_group


def test_correction_bias_changes_the_choice_but_not_the_weights() -> None:
    cfg = config("grouped_topk", num_expert_group=4, topk_group=4, has_correction_bias=True,
                 scoring_func="sigmoid", renormalize_grouped=False)
    logits = logits_for(10, 16, seed=9)
    bias = torch.zeros(16)
    bias[13] = 100.0  # expert 13 always chosen
    weights, ids = route(logits, cfg, bias)
    assert (ids == 13).any(dim=1).all()
    slot = (ids == 13).int().argmax(dim=1)
    picked = weights[torch.arange(10), slot]
    torch.testing.assert_close(picked, torch.sigmoid(logits[:, 13]))


def test_grouped_topk_routed_scaling_multiplies_the_weights() -> None:
    logits = logits_for(6, 16, seed=4)
    base = config("grouped_topk", num_expert_group=4, topk_group=2)
    w1, i1 = route(logits, base)
    w2, i2 = route(logits, base.replace(routed_scaling_factor=3.0))
    assert torch.equal(i1, i2)
    torch.testing.assert_close(w2, w1 * 3.0)


def test_empty_batch() -> None:
    for cfg in (config(), config("grouped_topk", num_expert_group=4, topk_group=2)):
        weights, ids = route(torch.empty(0, 16), cfg)
        assert weights.shape == (0, 4) and ids.shape == (0, 4)
        assert weights.dtype == torch.float32 and ids.dtype == torch.int32


def test_route_does_not_modify_the_logits() -> None:
    logits = logits_for(4, 16, seed=1)
    copy = logits.clone()
    route(logits, config("renormalize_naive"))
    assert torch.equal(logits, copy)


@pytest.mark.parametrize("shape", [(16,), (4, 15), (4, 17), (2, 4, 16)])
def test_bad_logit_shapes_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"^router_logits: expected shape \[M, 16\]"):
        route(torch.randn(shape), config())


def test_correction_bias_must_match_the_config() -> None:
    logits = logits_for(4, 16, seed=1)
    with pytest.raises(ValueError, match="^correction_bias: required exactly when"):
        route(logits, config(), torch.zeros(16))
    grouped = config("grouped_topk", num_expert_group=4, topk_group=2, has_correction_bias=True)
    with pytest.raises(ValueError, match="^correction_bias: required exactly when"):
        route(logits, grouped)
    for shape in ((1,), (15,), (1, 16)):
        with pytest.raises(ValueError, match=r"^correction_bias: expected shape \[16\]"):
            route(logits, grouped, torch.zeros(shape))


@pytest.mark.parametrize("method", ["renormalize", "renormalize_naive", "default", "grouped_topk"])
def test_ties_resolve_to_the_lower_expert_id(method: str) -> None:
    """Equal logits (common in bf16) are chosen and ordered by increasing expert id, also
    across the k-th place: the documented order, the same on every device."""
    extra = {"num_expert_group": 2, "topk_group": 2} if method == "grouped_topk" else {}
    cfg = config(method, num_experts=8, top_k=3, **extra)
    logits = torch.tensor([[0.5, 2.0, 0.5, 2.0, -1.0, 2.0, 2.0, 0.0],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.bfloat16)
    weights, ids = route(logits, cfg)
    assert ids.tolist() == [[1, 3, 5], [0, 1, 2]]
    assert torch.allclose(weights[1], weights[1, :1].expand(3))
