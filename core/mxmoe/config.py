"""The description of one MoE expert layer: :class:`MoEConfig` and its vocabularies.

A config is frozen and validated when it is built, so every later stage (backend
probes, weight allocation, the reference) may trust it. It is hashable: selection
caches verdicts per (config, device).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "Activation",
    "ActivationFormat",
    "MoEConfig",
    "PRESETS",
    "RoutingMethod",
    "ScoringFunc",
    "WeightFormat",
    "preset",
]

MX_BLOCK = 32


class _NamedEnum(str, enum.Enum):
    """An enum whose members are their lowercase names, parsed with a clear error."""

    @classmethod
    def parse(cls, value: Any, field: str) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{field}: unknown value {value!r}; expected one of {choices}")

    def __str__(self) -> str:
        return self.value


class Activation(_NamedEnum):
    """How GEMM1's gate/up output becomes GEMM2's input (see FACTS.md)."""

    SILU = "silu"  # halves [gate | up]; silu(gate) * up
    SWIGLUOAI = "swigluoai"  # rows interleaved gate/up (gpt-oss)
    SWIGLUOAI_UNINTERLEAVE = "swigluoai_uninterleave"  # halves, with beta
    SWIGLUSTEP = "swiglustep"  # halves; min(silu(gate), L) * clamp(up, -L, L)

    @property
    def interleaved(self) -> bool:
        """Whether w13's rows alternate gate/up (otherwise: all gates, then all ups)."""
        return self is Activation.SWIGLUOAI


class RoutingMethod(_NamedEnum):
    """How router logits become (top-k weights, top-k expert ids)."""

    RENORMALIZE = "renormalize"  # top-k on logits, softmax over the k
    RENORMALIZE_NAIVE = "renormalize_naive"  # softmax, top-k, divide by their sum
    DEFAULT = "default"  # softmax, top-k
    GROUPED_TOPK = "grouped_topk"  # DeepSeek-V3 style groups, bias, scaling


class ScoringFunc(_NamedEnum):
    """Scores of grouped top-k routing."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"


class WeightFormat(_NamedEnum):
    """Storage format of the expert weights."""

    MXFP4 = "mxfp4"  # E2M1 elements, two per byte, E8M0 scale per 32
    MXFP8 = "mxfp8"  # E4M3 elements, one per byte, E8M0 scale per 32

    @property
    def elements_per_byte(self) -> int:
        return 2 if self is WeightFormat.MXFP4 else 1

    @property
    def mx_name(self) -> str:
        """The element-format name :func:`mxmoe.formats.quantize_mx` takes."""
        return "mxfp4" if self is WeightFormat.MXFP4 else "mxfp8_e4m3"


class ActivationFormat(_NamedEnum):
    """How the activations entering each GEMM are represented."""

    BF16 = "bf16"  # unquantized: the config's ``dtype``
    FP8_STATIC = "fp8_static"  # E4M3, one checkpoint scale per GEMM input
    FP8_DYNAMIC_1X128 = "fp8_dynamic_1x128"  # E4M3, float32 scale per token per 128
    # The same with each scale rounded up to a power of two: what UE8M0 scale hardware
    # (DeepGEMM on SM100) computes; a coarser scale, so different roundings.
    FP8_DYNAMIC_1X128_POW2 = "fp8_dynamic_1x128_pow2"
    MXFP8_DYNAMIC = "mxfp8_dynamic"  # E4M3, E8M0 scale per token per 32 (OCP floor rule)
    # The same with scales rounded up (RCEIL), as NVIDIA's and AMD's quantizers do:
    # the block maximum never clips, so its numerics differ from the floor rule's.
    MXFP8_DYNAMIC_RCEIL = "mxfp8_dynamic_rceil"

    @property
    def quantized(self) -> bool:
        return self is not ActivationFormat.BF16


_ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _parse_dtype(value: Any) -> torch.dtype:
    if isinstance(value, str):
        value = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16, "half": torch.float16, "fp32": torch.float32,
                 "float32": torch.float32, "float": torch.float32}.get(value.lower(), value)
    if value not in _ACTIVATION_DTYPES:
        raise ValueError(
            f"dtype: unsupported activation dtype {value!r}; expected torch.bfloat16, "
            "torch.float16 or torch.float32"
        )
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")
    return value


def _finite_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """One expert layer: shapes, math, quantization scheme and parallel layout.

    Sizes are the model's (unpadded) sizes; backends may pad them (see
    :class:`mxmoe.Verdict`). Strings are accepted for every enum field and for
    ``dtype``. ``expert_map`` (expert parallelism) maps each global expert id to its
    local index on this rank or -1; it is stored as a tuple so the config stays
    hashable. Use :meth:`with_expert_parallel` to build the usual contiguous split.
    """

    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    activation: Activation = Activation.SILU
    swiglu_alpha: float = 1.702
    swiglu_beta: float = 1.0
    swiglu_limit: float | None = 7.0
    routing: RoutingMethod = RoutingMethod.RENORMALIZE
    scoring_func: ScoringFunc = ScoringFunc.SOFTMAX
    num_expert_group: int | None = None
    topk_group: int | None = None
    has_correction_bias: bool = False
    routed_scaling_factor: float = 1.0
    renormalize_grouped: bool = True
    weight_format: WeightFormat = WeightFormat.MXFP4
    activation_format: ActivationFormat = ActivationFormat.BF16
    has_bias: bool = False
    dtype: torch.dtype = torch.bfloat16
    apply_router_weight_on_input: bool = False
    expert_map: tuple[int, ...] | None = None
    dp_size: int = 1
    name: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for field in ("num_experts", "top_k", "hidden_size", "intermediate_size", "dp_size"):
            _positive_int(field, getattr(self, field))
        set_("activation", Activation.parse(self.activation, "activation"))
        set_("routing", RoutingMethod.parse(self.routing, "routing"))
        set_("scoring_func", ScoringFunc.parse(self.scoring_func, "scoring_func"))
        set_("weight_format", WeightFormat.parse(self.weight_format, "weight_format"))
        set_("activation_format",
             ActivationFormat.parse(self.activation_format, "activation_format"))
        set_("dtype", _parse_dtype(self.dtype))
        for field in ("swiglu_alpha", "swiglu_beta", "routed_scaling_factor"):
            set_(field, _finite_float(field, getattr(self, field)))
        if self.swiglu_limit is not None:
            set_("swiglu_limit", _finite_float("swiglu_limit", self.swiglu_limit))
            if not self.swiglu_limit > 0:
                raise ValueError(f"swiglu_limit: must be positive or None, got {self.swiglu_limit}")
        for field in ("has_bias", "apply_router_weight_on_input", "has_correction_bias",
                      "renormalize_grouped"):
            _flag(field, getattr(self, field))
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"name: expected a str or None, got {type(self.name).__name__}")
        for field in ("hidden_size", "intermediate_size"):
            if getattr(self, field) % MX_BLOCK:
                raise ValueError(
                    f"{field}: must be a multiple of the MX block size {MX_BLOCK}, "
                    f"got {getattr(self, field)}"
                )
        if self.top_k > self.num_experts:
            raise ValueError(
                f"top_k: {self.top_k} exceeds num_experts {self.num_experts}"
            )
        if self.activation_format.quantized and self.dtype is torch.float32:
            raise ValueError(
                "dtype: quantized activation formats take bf16 or fp16 activations, "
                "not float32"
            )
        if self.apply_router_weight_on_input and self.top_k != 1:
            raise ValueError(
                "apply_router_weight_on_input: only meaningful with top_k == 1, "
                f"got top_k={self.top_k}"
            )
        self._validate_routing()
        self._validate_expert_map()

    def _validate_routing(self) -> None:
        grouped = self.routing is RoutingMethod.GROUPED_TOPK
        if not grouped:
            if self.num_expert_group is not None or self.topk_group is not None:
                raise ValueError(
                    "num_expert_group/topk_group: only valid with routing='grouped_topk'"
                )
            if self.has_correction_bias:
                raise ValueError("has_correction_bias: only valid with routing='grouped_topk'")
            if self.routed_scaling_factor != 1.0:
                raise ValueError(
                    "routed_scaling_factor: only valid with routing='grouped_topk'"
                )
            return
        groups = self.num_expert_group if self.num_expert_group is not None else 1
        keep = self.topk_group if self.topk_group is not None else groups
        _positive_int("num_expert_group", groups)
        _positive_int("topk_group", keep)
        if self.num_experts % groups:
            raise ValueError(
                f"num_expert_group: {groups} does not divide num_experts {self.num_experts}"
            )
        if keep > groups:
            raise ValueError(f"topk_group: {keep} exceeds num_expert_group {groups}")
        per_group = self.num_experts // groups
        if per_group < 2 and groups > 1:
            raise ValueError("num_expert_group: each group needs at least 2 experts")
        if self.top_k > keep * per_group:
            raise ValueError(
                f"top_k: {self.top_k} exceeds the {keep * per_group} experts in "
                f"topk_group={keep} groups"
            )
        if not self.routed_scaling_factor > 0:
            raise ValueError("routed_scaling_factor: must be positive")
        object.__setattr__(self, "num_expert_group", groups)
        object.__setattr__(self, "topk_group", keep)

    def _validate_expert_map(self) -> None:
        if self.expert_map is None:
            return
        values = self.expert_map
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if not isinstance(values, Iterable) or isinstance(values, str):
            raise TypeError("expert_map: expected a sequence or tensor of ints")
        values = tuple(values)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
            raise TypeError("expert_map: expected a sequence or tensor of ints")
        object.__setattr__(self, "expert_map", tuple(int(v) for v in values))
        emap = self.expert_map
        if len(emap) != self.num_experts:
            raise ValueError(
                f"expert_map: length {len(emap)} != num_experts {self.num_experts}"
            )
        local = sorted(v for v in emap if v != -1)
        if any(v < -1 for v in emap) or local != list(range(len(local))):
            raise ValueError(
                "expert_map: entries must be -1 or the local indices 0..n-1, each once"
            )
        if not local:
            raise ValueError("expert_map: at least one expert must be local")

    # -- derived properties --------------------------------------------------

    @property
    def num_local_experts(self) -> int:
        """Experts whose weights live on this rank."""
        if self.expert_map is None:
            return self.num_experts
        return sum(1 for v in self.expert_map if v != -1)

    @property
    def activation_beta(self) -> float:
        """The beta added to ``up`` by the SWIGLUOAI activations: gpt-oss's interleaved
        SWIGLUOAI fixes it at 1.0; SWIGLUOAI_UNINTERLEAVE takes ``swiglu_beta``."""
        return 1.0 if self.activation is Activation.SWIGLUOAI else self.swiglu_beta

    def with_expert_parallel(self, ep_size: int, ep_rank: int) -> MoEConfig:
        """This config on rank ``ep_rank`` of ``ep_size``, experts split contiguously."""
        _positive_int("ep_size", ep_size)
        if not 0 <= ep_rank < ep_size:
            raise ValueError(f"ep_rank: expected 0 <= ep_rank < {ep_size}, got {ep_rank}")
        if self.num_experts % ep_size:
            raise ValueError(f"ep_size: {ep_size} does not divide num_experts {self.num_experts}")
        per_rank = self.num_experts // ep_size
        emap = [-1] * self.num_experts
        for i in range(per_rank):
            emap[ep_rank * per_rank + i] = i
        return self.replace(expert_map=tuple(emap))

    def replace(self, **changes: Any) -> MoEConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for humans: the fields that matter."""
        parts = [
            f"E={self.num_experts}", f"top_k={self.top_k}", f"H={self.hidden_size}",
            f"I={self.intermediate_size}", f"{self.weight_format}x{self.activation_format}",
            str(self.activation), str(self.routing), str(self.dtype).removeprefix("torch."),
        ]
        if self.has_bias:
            parts.append("bias")
        if self.expert_map is not None:
            parts.append(f"local_experts={self.num_local_experts}")
        head = f"{self.name}: " if self.name else ""
        return head + " ".join(parts)


def _gpt_oss(name: str, num_experts: int, hidden: int, intermediate: int) -> MoEConfig:
    return MoEConfig(
        name=name,
        num_experts=num_experts,
        top_k=4,
        hidden_size=hidden,
        intermediate_size=intermediate,
        activation=Activation.SWIGLUOAI,
        routing=RoutingMethod.RENORMALIZE,
        weight_format=WeightFormat.MXFP4,
        has_bias=True,
    )


PRESETS: dict[str, MoEConfig] = {
    # The real layer shapes (FACTS.md).
    "gpt-oss-20b": _gpt_oss("gpt-oss-20b", 32, 2880, 2880),
    "gpt-oss-120b": _gpt_oss("gpt-oss-120b", 128, 2880, 2880),
    # gpt-oss's math at a size a 2-core CPU runs in a second: the default of `mxmoe run`.
    "gpt-oss-mini": _gpt_oss("gpt-oss-mini", 32, 512, 512),
}


def preset(name: str, **overrides: Any) -> MoEConfig:
    """A named preset, optionally with fields replaced (``preset("gpt-oss-20b", top_k=2)``)."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(
            f"preset: unknown name {name!r}; expected one of {', '.join(sorted(PRESETS))}"
        ) from None
    return config.replace(**overrides) if overrides else config
