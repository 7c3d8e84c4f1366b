"""Tile shapes and launch settings per token count: a small fixed table, no autotuning.

A call's token count M decides how many rows each expert gets (about M * top_k / E)
and so what bounds the GEMMs: at decode sizes (few rows per expert) every weight
byte is read for one or two tokens, the kernels are memory-bound and want many small
output tiles in flight; at prefill sizes the same weight tile serves a whole block of
tokens and the kernels want large tiles for the tensor cores. The table is the best
of the variants swept on an H100 with gpt-oss-120b and gpt-oss-20b shapes
(benchmarks/triton_notes.md has the measurements; the rows per expert, M * top_k / E,
pick the token block): at decode sizes three pipeline stages beat deeper pipelines,
because registers and shared memory, not bandwidth, cap how many programs an SM holds,
and splitting K puts more programs in flight.
"""

from __future__ import annotations

import dataclasses

__all__ = ["INTERPRETER_TILES", "Tiles", "tiles_for"]


@dataclasses.dataclass(frozen=True)
class Tiles:
    """One launch configuration of the grouped GEMMs.

    ``block_m`` token rows per block (>= 16 for tensor cores); ``block_n1`` /
    ``block_n2`` output columns per program of GEMM1 (intermediate channels: each reads
    a gate and an up row per channel) and GEMM2 (hidden channels); ``block_k`` reduction
    depth per step (a multiple of 64: whole 64-column runs of MXFP4 fragment words, see
    :mod:`.layout`); ``decode``: how MXFP4 bytes become weights, "asm" (inline PTX, used
    on NVIDIA GPUs) or "manual" (portable Triton operations, used elsewhere), see
    :mod:`.kernels`; ``swap``: weights as the left operand; ``split_k``: slices of K
    computed by separate programs and summed in a fixed order afterwards (more programs
    in flight when few blocks exist, at decode sizes); ``split_k2``: GEMM2's own number
    of slices (None: ``split_k``; GEMM2's programs read half the bytes of GEMM1's, so the
    best split can differ); ``num_stages2``: GEMM2's pipeline depth (None:
    ``num_stages``). ``max_registers``: the GEMMs' register limit per thread
    (PTX ``.maxnreg``; None leaves it to ptxas). Besides capping, a limit changes
    ptxas's allocation below it: without one ptxas trades registers for occupancy on
    its own, with a generous one it does not. A tuning knob
    for sweeps (benchmarks/triton_notes.md, v13b): the current table measured best
    without it. ``tail_m``: blocks with at most this many rows (an expert's last, partly
    filled block) multiply as a narrower tile of ``tail_m`` token rows instead of
    ``block_m``, so they pay no MMA on padding rows (0: off; a power of two >= 16 below
    ``block_m``).
    """

    block_m: int
    block_n1: int
    block_n2: int
    block_k: int
    num_warps: int
    num_stages: int
    decode: str = "asm"
    swap: bool = True
    split_k: int = 1
    max_registers: int | None = None
    tail_m: int = 0
    split_k2: int | None = None
    num_stages2: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n1", "block_n2", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name}: expected a power of two >= 16, got {value}")
        if self.block_k % 64:
            raise ValueError(f"block_k: expected a multiple of 64, got {self.block_k}")
        if not 1 <= self.split_k <= 16:
            raise ValueError(f"split_k: expected 1..16, got {self.split_k}")
        if self.split_k2 is not None and not 1 <= self.split_k2 <= 16:
            raise ValueError(f"split_k2: expected None or 1..16, got {self.split_k2}")
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages: expected 1..8, got {self.num_stages}")
        if self.num_stages2 is not None and not 1 <= self.num_stages2 <= 8:
            raise ValueError(f"num_stages2: expected None or 1..8, got {self.num_stages2}")
        if self.max_registers is not None and not 32 <= self.max_registers <= 255:
            raise ValueError(f"max_registers: expected None or 32..255, got {self.max_registers}")
        if self.tail_m and (self.tail_m < 16 or self.tail_m & (self.tail_m - 1)
                            or self.tail_m >= self.block_m):
            raise ValueError(f"tail_m: expected 0 or a power of two >= 16 below block_m "
                             f"({self.block_m}), got {self.tail_m}")
        if self.decode not in ("asm", "manual"):
            raise ValueError(f"decode: expected 'asm' or 'manual', got {self.decode!r}")

    @property
    def gemm2_stages(self) -> int:
        """GEMM2's pipeline depth."""
        return self.num_stages if self.num_stages2 is None else self.num_stages2

    @property
    def gemm2_split(self) -> int:
        """GEMM2's number of K slices."""
        return self.split_k if self.split_k2 is None else self.split_k2


# (largest M or None for any, largest mean rows per expert or None for any, tiles), in
# increasing size; the first entry whose two bounds hold is taken, the last covers the
# rest. Measured with the fragment-word decode (v15, benchmarks/triton_notes.md; sweeps
# 34-37, gpt-oss-120b, CUDA-graph ms):
_GPU_TABLE: tuple[tuple[int | None, float | None, Tiles], ...] = (
    # Decode sizes: 64 weight rows (one wgmma per warpgroup) by 16 tokens. One token in
    # two K slices, for enough programs in flight (0.044-0.045 vs 0.047-0.049 for three,
    # 0.048-0.052 for one); two tokens unsplit (0.058-0.059 vs 0.063-0.067); up to half a
    # row per expert two slices (M = 4 0.101 vs 0.108 unsplit, 8 0.167 vs 0.170, 16
    # 0.269 vs 0.274; three slices 0.100, 0.173, 0.279); then unsplit (M = 32 0.428 vs
    # 0.435 for two slices, 64 0.563 vs 0.582, 256 0.657 vs 0.706).
    (1, None, Tiles(16, 64, 64, 128, 4, 3, split_k=2)),
    (2, None, Tiles(16, 64, 64, 128, 4, 3)),
    (256, 0.125, Tiles(16, 64, 64, 128, 4, 3, split_k=2)),
    # above an eighth of a row per expert GEMM2 unsplit (v25, sweep 62: gpt-oss-120b M = 8
    # 0.157-0.158 vs 0.162-0.163, 16 0.271 vs 0.275, gpt-oss-20b M = 4 0.0844 vs 0.0856;
    # at 120b M = 4 0.102 vs 0.100, so not below): its programs then read as many bytes
    # as GEMM1's. From an eighth of a row per expert to eight rows GEMM2 runs four stages
    # deep (v26, sweep 65: M = 8-64 -0.4 to -0.9 %): its programs hold half as many bytes
    # per stage as GEMM1's.
    (256, 0.5, Tiles(16, 64, 64, 128, 4, 3, split_k=2, split_k2=1, num_stages2=4)),
    (256, 8.0, Tiles(16, 64, 64, 128, 4, 3, num_stages2=4)),
    # 8-16 rows per expert: 32-token blocks halve the padded MMA work of 64-token ones
    # and still decode each weight about once (M = 512 0.72 vs 0.94 ms for the 64-token
    # eight-warp tile, 0.79 for the 16-token one).
    (1024, 16.0, Tiles(32, 64, 64, 128, 4, 3)),
    # up to 128 rows per expert: 64 tokens by 128 weight rows, eight warps (M = 1024 0.98
    # vs 1.02 for 32-token blocks, 2048 1.41 vs 1.61 for four warps, 4096 2.42 vs 2.54
    # for 128-token blocks and 2.67 for the previous table's 128 x 64 four-warp tile);
    # an expert's last block of <= 32 rows as a 32-token tile (v19: M = 1024 0.923 vs
    # 0.972-0.985 untailed, 2048 1.381 vs 1.435-1.449, 4096 2.362 vs 2.439-2.446; a
    # 16-row tail 0.980, 1.367, 2.392)
    (None, 128.0, Tiles(64, 128, 128, 64, 8, 3, tail_m=32)),
    # more rows per expert: 128-token blocks (M = 16384 7.80 vs 8.50 for 64-token ones
    # and 8.33 for the previous table's tile), the last block of <= 16 rows as a 16-token
    # tile (v19: 7.250 vs 7.766-7.854 untailed, 7.450 with a 32-row tail)
    (None, None, Tiles(128, 128, 128, 64, 8, 3, tail_m=16)),
)

#: Tiles for TRITON_INTERPRET=1, where every program and every nested jit call is
#: Python: few programs (wide N tiles, deep K steps) keep the CPU tests fast.
INTERPRETER_TILES = Tiles(16, 64, 64, 128, 1, 1)


def tiles_for(num_tokens: int, rows_per_expert: float, *, interpret: bool = False) -> Tiles:
    """The launch configuration for a call with ``num_tokens`` tokens and, on average,
    ``rows_per_expert`` (M * top_k / E) token rows per expert."""
    if interpret:
        return INTERPRETER_TILES
    for largest, most_rows, tiles in _GPU_TABLE[:-1]:
        if ((largest is None or num_tokens <= largest)
                and (most_rows is None or rows_per_expert <= most_rows)):
            return tiles
    return _GPU_TABLE[-1][2]
