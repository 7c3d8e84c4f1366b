"""A test double of DeepGEMM: the two functions mxmoe-cuda-deepgemm calls, computed with
reference math on any device, and every documented precondition checked.

The contract is DeepGEMM's (sources read at commit 0274ad7b, ``__version__ = '2.8.0'``:
``csrc/apis/gemm.hpp`` ``m_grouped_fp8_fp4_gemm_nt_contiguous``,
``csrc/apis/layout.hpp`` ``transform_sf_into_required_layout``,
``csrc/utils/layout.hpp`` ``check_sf_layout`` / ``check_grouped_ab_fp8_fp4``,
``csrc/jit_kernels/impls/smxx_layout.hpp``, ``deep_gemm/include/deep_gemm/scheduler/gemm.cuh``),
as it behaves on SM100:

* ``a``: float8_e4m3fn ``[M, K]``, K-major; ``b``: int8 (``kPackedFP4``) ``[G, N, K/2]``,
  two E2M1 codes per byte, low nibble first, K-major, experts dense; ``d``: bf16
  ``[M, N]``, N-major; rows 16-byte aligned (TMA);
* recipes: ``recipe`` or the pair ``recipe_a``/``recipe_b``, granularity 1 along M/N and
  32 or 128 along K; without any recipe SM100 assumes FP8 weights (1, 1, 128);
* scales: float32 ``[.., MN, ceil(K / gran_k)]`` -- which SM100 packs into UE8M0 by
  keeping the exponent bits, so they must be powers of two here (the real library would
  silently truncate), and ``disable_ue8m0_cast`` must be False -- or int32 UE8M0
  ``[.., MN, ceil(K / (4 gran_k))]``, four groups per int32 (first group in the lowest
  byte), MN-major (stride 1 along MN), column stride at least MN rounded up to 4 and a
  multiple of 4, experts dense;
* ``grouped_layout``: contiguous int32 ``[M]``, the expert of each row or -1; M a multiple
  of the alignment and, in every aligned block, the rows of one expert first and only
  padding after them (the kernel takes a block's expert from its first row).

Any violation raises :class:`ContractError`. Output rows whose layout entry is -1 are
filled with NaN, since DeepGEMM computes them against an arbitrary expert: a caller
that reads them is caught.
"""

from __future__ import annotations

import torch

from mxmoe.formats import e2m1_to_float, unpack_fp4

__version__ = "2.8.0+fake"

__all__ = [
    "ContractError",
    "get_mk_alignment_for_contiguous_layout",
    "m_grouped_fp8_fp4_gemm_nt_contiguous",
    "set_mk_alignment_for_contiguous_layout",
]

_LEGACY_ALIGNMENT = 128
_state = {"alignment": _LEGACY_ALIGNMENT}
#: What every call received (rows, layout, scale dtypes) -- tests read what was sent.
calls: list[dict] = []


class ContractError(RuntimeError):
    """An argument breaks DeepGEMM's documented contract."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ContractError(message)


def get_mk_alignment_for_contiguous_layout() -> int:
    return _state["alignment"]


def set_mk_alignment_for_contiguous_layout(value: int) -> None:
    _require(isinstance(value, int) and value > 0, f"alignment must be a positive int, got {value!r}")
    _state["alignment"] = value


def _tma_aligned(n: int, element_size: int) -> int:
    per = 16 // element_size
    return -(-n // per) * per


def _granularities(recipe, recipe_a, recipe_b) -> tuple[tuple[int, int], tuple[int, int]]:
    _require(recipe is None or recipe_a is None,
             "give either recipe or recipe_a/recipe_b, not both")
    _require((recipe_a is None) == (recipe_b is None), "recipe_a and recipe_b go together")
    _require(recipe is not None or recipe_a is not None,
             "no recipe: SM100's default (1, 1, 128) describes FP8 weights; packed FP4 "
             "weights need recipe_b=(1, 32)")
    if recipe is not None:
        gran_a, gran_b = (recipe[0], recipe[2]), (recipe[1], recipe[2])
    else:
        gran_a, gran_b = tuple(recipe_a), tuple(recipe_b)
    for name, (gran_mn, gran_k) in (("a", gran_a), ("b", gran_b)):
        _require(gran_mn == 1, f"recipe for {name}: the 1D1D SM100 kernel needs granularity 1 "
                               f"along M/N, got {gran_mn}")
        _require(gran_k in (32, 128), f"recipe for {name}: granularity along K must be 32 or "
                                      f"128, got {gran_k}")
    return gran_a, gran_b


def _decode_scales(name: str, sf: torch.Tensor, mn: int, k: int, gran_k: int,
                   num_groups: int | None, disable_ue8m0_cast: bool) -> torch.Tensor:
    """Check one scale tensor; return its values as float32 [.., mn, ceil(k / gran_k)]."""
    _require(isinstance(sf, torch.Tensor), f"{name}: expected a tensor")
    dims = 2 if num_groups is None else 3
    _require(sf.dim() == dims, f"{name}: expected {dims} dims, got shape {list(sf.shape)}")
    if num_groups is not None:
        _require(sf.shape[0] == num_groups, f"{name}: expected {num_groups} groups, got {sf.shape[0]}")
    groups = -(-k // gran_k)
    if sf.dtype == torch.float32:
        _require(not disable_ue8m0_cast,
                 f"{name}: float32 scales on SM100 need the UE8M0 cast (disable_ue8m0_cast=False)")
        _require(tuple(sf.shape[-2:]) == (mn, groups),
                 f"{name}: float32 scales must be [.., {mn}, {groups}], got {list(sf.shape)}")
        bits = sf.contiguous().view(torch.int32)
        pow2 = (sf > 0) & ((bits & 0x7FFFFF) == 0) & torch.isfinite(sf)
        _require(bool(pow2.all()),
                 f"{name}: float32 scales must be positive powers of two on SM100, where "
                 "DeepGEMM packs them into UE8M0 by keeping only the exponent bits")
        return sf.float()
    _require(sf.dtype == torch.int32,
             f"{name}: scales must be float32 or packed UE8M0 int32, got {sf.dtype}")
    cols = -(-groups // 4)
    _require(tuple(sf.shape[-2:]) == (mn, cols),
             f"{name}: packed UE8M0 scales must be [.., {mn}, {cols}], got {list(sf.shape)}")
    _require(sf.stride(-2) == 1 or mn == 1, f"{name}: packed scales must be MN-major "
                                            f"(stride 1 along MN), got strides {sf.stride()}")
    aligned = _tma_aligned(mn, 4)
    _require(sf.stride(-1) >= aligned and sf.stride(-1) % 4 == 0,
             f"{name}: column stride must be >= {aligned} (MN rounded up to 16 bytes) and a "
             f"multiple of 4, got {sf.stride(-1)}")
    if num_groups is not None:
        _require(sf.stride(0) == sf.stride(-1) * sf.shape[-1],
                 f"{name}: experts must be dense, stride(0) {sf.stride(0)} != "
                 f"{sf.stride(-1) * sf.shape[-1]}")
    words = sf.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 8, device=sf.device)
    exponents = ((words.unsqueeze(-1) >> shifts) & 0xFF).flatten(-2)[..., :groups]
    return torch.ldexp(torch.ones_like(exponents, dtype=torch.float32), exponents - 127)


def _check_layout(grouped_layout: torch.Tensor, m: int, num_groups: int, device) -> None:
    _require(isinstance(grouped_layout, torch.Tensor) and grouped_layout.dtype == torch.int32,
             "grouped_layout: expected an int32 tensor")
    _require(grouped_layout.is_contiguous(), "grouped_layout: must be contiguous")
    _require(tuple(grouped_layout.shape) == (m,),
             f"grouped_layout: expected shape [{m}], got {list(grouped_layout.shape)}")
    _require(grouped_layout.device == device, "grouped_layout: on another device than a")
    alignment = _state["alignment"]
    _require(m % alignment == 0, f"grouped_layout: M={m} is not a multiple of the alignment "
                                 f"{alignment}: every expert segment must be padded to it")
    layout = grouped_layout.long()
    _require(bool(((layout >= -1) & (layout < num_groups)).all()),
             f"grouped_layout: entries must be -1 or expert ids below {num_groups}")
    blocks = layout.view(-1, alignment)
    real = blocks >= 0
    first = blocks[:, :1]
    _require(not bool((real & (blocks != first)).any()),
             "grouped_layout: an aligned block holds rows of two experts, or starts with a "
             "padding row (-1) before real rows; the kernel takes a block's expert from its "
             "first row")
    _require(not bool((real[:, 1:] & ~real[:, :-1]).any()),
             "grouped_layout: a padding row (-1) comes before a real row inside a block")


def _expand(scales: torch.Tensor, gran_k: int, k: int) -> torch.Tensor:
    return scales.repeat_interleave(gran_k, dim=-1)[..., :k]


def m_grouped_fp8_fp4_gemm_nt_contiguous(a, b, d, grouped_layout, recipe=None, recipe_a=None,
                                         recipe_b=None, compiled_dims="nk",
                                         disable_ue8m0_cast=False, use_psum_layout=False,
                                         ensure_zero_padding=True,
                                         expected_m_for_psum_layout=None) -> None:
    """``d[r] = a[r] @ b[grouped_layout[r]].T`` (BF16) for every real row ``r``."""
    _require(not use_psum_layout and expected_m_for_psum_layout is None,
             "this fake implements the per-row contiguous layout, not the psum layout")
    _require(isinstance(a, tuple) and len(a) == 2 and isinstance(b, tuple) and len(b) == 2,
             "a and b: expected (data, scales) pairs")
    (a_data, sfa), (b_data, sfb) = a, b
    gran_a, gran_b = _granularities(recipe, recipe_a, recipe_b)

    _require(a_data.dtype == torch.float8_e4m3fn,
             f"a: expected torch.float8_e4m3fn, got {a_data.dtype}")
    _require(a_data.dim() == 2, f"a: expected [M, K], got shape {list(a_data.shape)}")
    _require(a_data.stride(-1) == 1, f"a: must be K-major (stride 1 along K), got strides "
                                     f"{a_data.stride()}")
    m, k = a_data.shape
    _require(b_data.dtype == torch.int8, f"b: packed FP4 must be torch.int8 (DeepGEMM's "
                                         f"kPackedFP4), got {b_data.dtype}")
    _require(b_data.dim() == 3, f"b: expected [G, N, K/2], got shape {list(b_data.shape)}")
    _require(b_data.stride(-1) == 1, f"b: must be K-major, got strides {b_data.stride()}")
    _require(b_data.stride(0) == b_data.shape[1] * b_data.shape[2],
             "b: experts must be dense (stride(0) == N * K/2)")
    num_groups, n, half_k = b_data.shape
    _require(2 * half_k == k, f"b: K/2 = {half_k} does not match a's K = {k}")
    _require(n > 0 and k > 0 and num_groups > 0, "empty N, K or G")
    _require(isinstance(d, torch.Tensor) and d.dtype == torch.bfloat16,
             f"d: expected torch.bfloat16, got {getattr(d, 'dtype', type(d))}")
    _require(tuple(d.shape) == (m, n), f"d: expected shape [{m}, {n}], got {list(d.shape)}")
    _require(d.stride(-1) == 1, "d: must be N-major (row-major)")
    for name, t in (("b", b_data), ("d", d), ("sfa", sfa), ("sfb", sfb)):
        _require(t.device == a_data.device, f"{name}: on {t.device}, a on {a_data.device}")
    for name, t in (("a", a_data), ("b", b_data), ("d", d)):
        _require(m == 0 or (t.stride(-2) * t.element_size()) % 16 == 0,
                 f"{name}: rows must start on 16-byte boundaries (TMA)")
    _check_layout(grouped_layout, m, num_groups, a_data.device)
    a_scales = _decode_scales("sfa", sfa, m, k, gran_a[1], None, disable_ue8m0_cast)
    b_scales = _decode_scales("sfb", sfb, n, k, gran_b[1], num_groups, disable_ue8m0_cast)
    calls.append({"rows": m, "grouped_layout": grouped_layout.clone(),
                  "scale_dtypes": (sfa.dtype, sfb.dtype)})
    if m == 0:
        return
    a_values = a_data.float() * _expand(a_scales, gran_a[1], k)
    d.fill_(float("nan"))
    layout = grouped_layout.long()
    for expert in torch.unique(layout[layout >= 0]).tolist():
        rows = (layout == expert).nonzero().flatten()
        codes = unpack_fp4(b_data[expert].view(torch.uint8))
        b_values = e2m1_to_float(codes) * _expand(b_scales[expert], gran_b[1], k)
        d[rows] = (a_values[rows] @ b_values.T).to(torch.bfloat16)
