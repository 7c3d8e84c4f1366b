"""MoEConfig: validation of every field, enum parsing, presets, hashing, expert parallelism."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mxmoe import (
    PRESETS,
    Activation,
    ActivationFormat,
    MoEConfig,
    RoutingMethod,
    ScoringFunc,
    WeightFormat,
    preset,
)

BASE = dict(num_experts=8, top_k=2, hidden_size=64, intermediate_size=96)


def make(**changes: object) -> MoEConfig:
    return MoEConfig(**{**BASE, **changes})


# -- sizes and counts -------------------------------------------------------------


@pytest.mark.parametrize("field", ["num_experts", "top_k", "hidden_size", "intermediate_size",
                                   "dp_size"])
@pytest.mark.parametrize("value", [0, -32])
def test_counts_must_be_positive(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: must be positive"):
        make(**{field: value})


@pytest.mark.parametrize("field", ["num_experts", "top_k", "hidden_size", "intermediate_size",
                                   "dp_size"])
@pytest.mark.parametrize("value", [64.0, "64", True, None])
def test_counts_must_be_ints(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"^{field}: expected an int"):
        make(**{field: value})


@pytest.mark.parametrize("field", ["hidden_size", "intermediate_size"])
@pytest.mark.parametrize("value", [16, 33, 48, 100])
def test_sizes_must_be_whole_mx_blocks(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: must be a multiple of the MX block size 32"):
        make(**{field: value})


def test_top_k_cannot_exceed_experts() -> None:
    with pytest.raises(ValueError, match=r"^top_k: 9 exceeds num_experts 8"):
        make(top_k=9)
    assert make(top_k=8).top_k == 8


# -- enums: names and members both accepted -------------------------------------------


ENUM_FIELDS = [
    ("activation", Activation),
    ("routing", RoutingMethod),
    ("scoring_func", ScoringFunc),
    ("weight_format", WeightFormat),
    ("activation_format", ActivationFormat),
]


def _valid_changes(field: str, member: object) -> dict[str, object]:
    """Extra fields a member needs to form a valid config on its own."""
    changes: dict[str, object] = {field: member}
    if member is RoutingMethod.GROUPED_TOPK or field == "scoring_func":
        changes["routing"] = RoutingMethod.GROUPED_TOPK
    return changes


@pytest.mark.parametrize(("field", "enum"), ENUM_FIELDS)
def test_enum_fields_accept_members_and_names(field: str, enum: type) -> None:
    for member in enum:
        by_member = make(**_valid_changes(field, member))
        by_name = make(**{**_valid_changes(field, member), field: member.value})
        by_upper = make(**{**_valid_changes(field, member), field: member.value.upper()})
        for config in (by_member, by_name, by_upper):
            assert getattr(config, field) is member
        assert by_member == by_name == by_upper


@pytest.mark.parametrize(("field", "enum"), ENUM_FIELDS)
@pytest.mark.parametrize("bad", ["nope", 3, None])
def test_enum_fields_reject_unknown_values_listing_choices(field: str, enum: type,
                                                          bad: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: unknown value") as info:
        make(**{field: bad})
    for member in enum:
        assert repr(member.value) in str(info.value)


def test_enum_member_of_another_vocabulary_is_rejected() -> None:
    with pytest.raises(ValueError, match="^activation: unknown value"):
        make(activation=RoutingMethod.DEFAULT)


@pytest.mark.parametrize(("given", "expected"), [
    ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("fp16", torch.float16),
    ("float16", torch.float16), ("float32", torch.float32), ("FP32", torch.float32),
    (torch.float16, torch.float16), (torch.float32, torch.float32),
])
def test_dtype_accepts_names_and_dtypes(given: object, expected: torch.dtype) -> None:
    assert make(dtype=given).dtype is expected


@pytest.mark.parametrize("bad", [torch.float64, torch.int8, torch.float8_e4m3fn, "int8", 3])
def test_dtype_rejects_other_types(bad: object) -> None:
    with pytest.raises(ValueError, match="^dtype: unsupported activation dtype"):
        make(dtype=bad)


def test_defaults_are_gpt_oss_swiglu_constants_and_bf16() -> None:
    config = make()
    assert (config.swiglu_alpha, config.swiglu_beta, config.swiglu_limit) == (1.702, 1.0, 7.0)
    assert config.dtype is torch.bfloat16
    assert config.activation_format is ActivationFormat.BF16
    assert config.weight_format is WeightFormat.MXFP4
    assert config.activation is Activation.SILU
    assert config.routing is RoutingMethod.RENORMALIZE


# -- floats and flags ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["swiglu_alpha", "swiglu_beta", "swiglu_limit",
                                   "routed_scaling_factor"])
@pytest.mark.parametrize("bad", ["1.0", [1.0], True])
def test_float_fields_reject_non_numbers(field: str, bad: object) -> None:
    changes: dict[str, object] = {field: bad}
    if field == "routed_scaling_factor":
        changes["routing"] = "grouped_topk"
    with pytest.raises(TypeError, match=rf"^{field}: expected a number"):
        make(**changes)


@pytest.mark.parametrize("field", ["swiglu_alpha", "swiglu_beta", "swiglu_limit"])
def test_float_fields_reject_non_finite(field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: must be finite"):
        make(**{field: float("nan")})


def test_float_fields_are_stored_as_float() -> None:
    config = make(swiglu_alpha=2, swiglu_beta=0, swiglu_limit=5)
    assert (config.swiglu_alpha, config.swiglu_beta, config.swiglu_limit) == (2.0, 0.0, 5.0)
    assert all(type(v) is float for v in (config.swiglu_alpha, config.swiglu_beta,
                                          config.swiglu_limit))


@pytest.mark.parametrize("bad", [0, -1.0])
def test_swiglu_limit_must_be_positive_or_none(bad: float) -> None:
    with pytest.raises(ValueError, match="^swiglu_limit: must be positive"):
        make(swiglu_limit=bad)
    assert make(swiglu_limit=None).swiglu_limit is None


@pytest.mark.parametrize("field", ["has_bias", "apply_router_weight_on_input",
                                   "has_correction_bias", "renormalize_grouped"])
@pytest.mark.parametrize("bad", ["no", 1, None])
def test_flags_must_be_bools(field: str, bad: object) -> None:
    with pytest.raises(TypeError, match=rf"^{field}: expected a bool"):
        make(**{field: bad})


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="^name: expected a str"):
        make(name=42)


# -- combinations ------------------------------------------------------------------------


def test_router_weight_on_input_needs_top_k_1() -> None:
    with pytest.raises(ValueError, match="^apply_router_weight_on_input: .*top_k=2"):
        make(apply_router_weight_on_input=True)
    assert make(top_k=1, apply_router_weight_on_input=True).apply_router_weight_on_input


@pytest.mark.parametrize("fmt", ["fp8_dynamic_1x128", "fp8_dynamic_1x128_pow2"])
def test_fp8_dynamic_1x128_takes_sizes_that_are_not_multiples_of_128(fmt: str) -> None:
    # gpt-oss: 2880 = 22.5 groups of 128; the last group is shorter (formats.py).
    config = make(activation_format=fmt, hidden_size=2880, intermediate_size=2880)
    assert config.activation_format.value == fmt


@pytest.mark.parametrize("fmt", ["fp8_static", "fp8_dynamic_1x128", "mxfp8_dynamic"])
def test_quantized_activations_reject_float32(fmt: str) -> None:
    with pytest.raises(ValueError, match="^dtype: quantized activation formats"):
        make(activation_format=fmt, dtype=torch.float32, hidden_size=128, intermediate_size=128)


# -- grouped top-k ------------------------------------------------------------------------


def test_grouped_topk_defaults_to_one_group() -> None:
    config = make(routing="grouped_topk")
    assert (config.num_expert_group, config.topk_group) == (1, 1)


def test_grouped_topk_fields_are_stored() -> None:
    config = make(routing="grouped_topk", num_expert_group=4, topk_group=2,
                  has_correction_bias=True, routed_scaling_factor=2.5, scoring_func="sigmoid")
    assert (config.num_expert_group, config.topk_group) == (4, 2)
    assert config.has_correction_bias and config.routed_scaling_factor == 2.5
    assert config.scoring_func is ScoringFunc.SIGMOID


@pytest.mark.parametrize(("changes", "message"), [
    (dict(num_expert_group=3), "^num_expert_group: 3 does not divide num_experts 8"),
    (dict(num_expert_group=2, topk_group=3), "^topk_group: 3 exceeds num_expert_group 2"),
    (dict(num_expert_group=8), "^num_expert_group: each group needs at least 2 experts"),
    (dict(num_expert_group=4, topk_group=1, top_k=3), "^top_k: 3 exceeds the 2 experts"),
    (dict(num_expert_group=0), "^num_expert_group: must be positive"),
    (dict(num_expert_group=2, topk_group=0), "^topk_group: must be positive"),
    (dict(routed_scaling_factor=0.0), "^routed_scaling_factor: must be positive"),
    (dict(routed_scaling_factor=-1.0), "^routed_scaling_factor: must be positive"),
])
def test_grouped_topk_parameters_are_checked(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(routing="grouped_topk", **changes)


@pytest.mark.parametrize("routing", ["renormalize", "renormalize_naive", "default"])
@pytest.mark.parametrize(("changes", "field"), [
    (dict(num_expert_group=2), "num_expert_group"),
    (dict(topk_group=1), "topk_group"),
    (dict(has_correction_bias=True), "has_correction_bias"),
    (dict(routed_scaling_factor=2.0), "routed_scaling_factor"),
])
def test_grouped_parameters_only_with_grouped_routing(routing: str, changes: dict,
                                                      field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make(routing=routing, **changes)


# -- expert map ---------------------------------------------------------------------------


@pytest.mark.parametrize("emap", [
    (0, 1, 2, 3, 4, 5, 6, 7),
    (-1, -1, 0, 1, -1, -1, -1, -1),
    [3, -1, 2, -1, 1, -1, 0, -1],
    torch.tensor([-1, 0, -1, 1, -1, 2, -1, 3], dtype=torch.int32),
])
def test_expert_map_accepts_sequences_and_tensors(emap: object) -> None:
    config = make(expert_map=emap)
    assert isinstance(config.expert_map, tuple)
    assert all(type(v) is int for v in config.expert_map)
    expected = emap.tolist() if isinstance(emap, torch.Tensor) else list(emap)
    assert list(config.expert_map) == expected
    assert config.num_local_experts == sum(v != -1 for v in expected)
    hash(config)


@pytest.mark.parametrize(("emap", "error", "message"), [
    ((0, 1, 2), ValueError, "^expert_map: length 3 != num_experts 8"),
    ((0, 0, -1, -1, -1, -1, -1, -1), ValueError, "^expert_map: entries must be"),
    ((1, 2, -1, -1, -1, -1, -1, -1), ValueError, "^expert_map: entries must be"),
    ((0, -2, -1, -1, -1, -1, -1, -1), ValueError, "^expert_map: entries must be"),
    ((-1,) * 8, ValueError, "^expert_map: at least one expert must be local"),
    ((0, 1.5, -1, -1, -1, -1, -1, -1), TypeError, "^expert_map: expected"),
    (("0", -1, -1, -1, -1, -1, -1, -1), TypeError, "^expert_map: expected"),
    ("01234567", TypeError, "^expert_map: expected"),
    (8, TypeError, "^expert_map: expected"),
    (torch.zeros(8), TypeError, "^expert_map: expected"),
])
def test_expert_map_is_validated(emap: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make(expert_map=emap)


def test_with_expert_parallel_splits_contiguously() -> None:
    base = make()
    maps = [base.with_expert_parallel(4, rank).expert_map for rank in range(4)]
    assert maps[0] == (0, 1, -1, -1, -1, -1, -1, -1)
    assert maps[2] == (-1, -1, -1, -1, 0, 1, -1, -1)
    for rank, emap in enumerate(maps):
        local = [g for g, v in enumerate(emap) if v != -1]
        assert local == [2 * rank, 2 * rank + 1]
    # every expert is local on exactly one rank
    owners = [sum(m[g] != -1 for m in maps) for g in range(8)]
    assert owners == [1] * 8
    ranked = base.with_expert_parallel(4, 3)
    assert ranked.num_local_experts == 2
    assert dataclasses.replace(ranked, expert_map=None) == base


@pytest.mark.parametrize(("size", "rank", "error", "message"), [
    (3, 0, ValueError, "^ep_size: 3 does not divide num_experts 8"),
    (4, 4, ValueError, "^ep_rank: expected 0 <= ep_rank < 4"),
    (4, -1, ValueError, "^ep_rank"),
    (0, 0, ValueError, "^ep_size: must be positive"),
    (2.0, 0, TypeError, "^ep_size: expected an int"),
])
def test_with_expert_parallel_checks_its_arguments(size: object, rank: int, error: type,
                                                   message: str) -> None:
    with pytest.raises(error, match=message):
        make().with_expert_parallel(size, rank)  # type: ignore[arg-type]


# -- presets, identity ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "experts"), [("gpt-oss-20b", 32), ("gpt-oss-120b", 128)])
def test_gpt_oss_presets_have_the_model_shapes(name: str, experts: int) -> None:
    config = preset(name)
    assert config is PRESETS[name]
    assert config.name == name
    assert (config.num_experts, config.top_k) == (experts, 4)
    assert (config.hidden_size, config.intermediate_size) == (2880, 2880)
    assert config.activation is Activation.SWIGLUOAI
    assert (config.swiglu_alpha, config.swiglu_limit) == (1.702, 7.0)
    assert config.routing is RoutingMethod.RENORMALIZE
    assert config.weight_format is WeightFormat.MXFP4
    assert config.activation_format is ActivationFormat.BF16
    assert config.has_bias
    assert config.dtype is torch.bfloat16


def test_preset_overrides_are_validated() -> None:
    config = preset("gpt-oss-20b", top_k=2, dtype="float32")
    assert (config.top_k, config.dtype, config.num_experts) == (2, torch.float32, 32)
    assert preset("gpt-oss-20b").top_k == 4  # the registered preset is untouched
    with pytest.raises(ValueError, match="^top_k: 64 exceeds num_experts 32"):
        preset("gpt-oss-20b", top_k=64)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="^preset: unknown name 'gpt-5'") as info:
        preset("gpt-5")
    assert "gpt-oss-20b" in str(info.value) and "gpt-oss-120b" in str(info.value)


def test_config_is_frozen() -> None:
    config = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 4  # type: ignore[misc]


def test_config_is_hashable_and_equal_by_value_not_name() -> None:
    a, b = make(activation="silu", name="a"), make(activation=Activation.SILU, name="b")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, make(top_k=3)}) == 2
    assert make(expert_map=(0,) + (-1,) * 7) != make(expert_map=(-1, 0) + (-1,) * 6)
    assert make(dtype="fp16") != make(dtype="bf16")


def test_replace_revalidates() -> None:
    config = make()
    assert config.replace(top_k=3).top_k == 3
    with pytest.raises(ValueError, match="^hidden_size"):
        config.replace(hidden_size=40)


def test_describe_names_the_important_fields() -> None:
    text = make(has_bias=True, name="demo").with_expert_parallel(2, 0).describe()
    for part in ("demo:", "E=8", "top_k=2", "H=64", "I=96", "mxfp4xbf16", "silu",
                 "renormalize", "bfloat16", "bias", "local_experts=4"):
        assert part in text


def test_activation_beta_is_fixed_for_interleaved_swigluoai() -> None:
    assert make(activation="swigluoai", swiglu_beta=0.25).activation_beta == 1.0
    assert make(activation="swigluoai_uninterleave", swiglu_beta=0.25).activation_beta == 0.25
