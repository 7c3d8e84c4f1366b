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
    ``block_n2`` output columns per program of GEMM1 (intermediate channels: each
    reads a gate and an up row per channel) and GEMM2 (hidden channels); ``block_k``
    reduction depth per step (a multiple of 64: whole 64-column runs of MXFP4
    fragment words, see :mod:`.layout`); ``decode``: how MXFP4 bytes become weights, "asm" (inline PTX, used
    on NVIDIA GPUs) or "manual" (portable Triton operations, used elsewhere), see
    :mod:`.kernels`; ``swap``: weights as the left operand; ``split_k``: slices of K
    computed by separate programs and summed in a fixed order afterwards (more
    programs in flight when few blocks exist, at decode sizes). ``max_registers``:
    the GEMMs' register limit per thread (PTX ``.maxnreg``; None leaves it to ptxas). Besides capping, a limit changes ptxas's allocation below it:
    without one ptxas trades registers for occupancy on its own, with a generous one it
    does not. A tuning knob for sweeps (benchmarks/triton_notes.md, v13b): the current
    table measured best without it.
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

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n1", "block_n2", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name}: expected a power of two >= 16, got {value}")
        if self.block_k % 64:
            raise ValueError(f"block_k: expected a multiple of 64, got {self.block_k}")
        if not 1 <= self.split_k <= 16:
            raise ValueError(f"split_k: expected 1..16, got {self.split_k}")
        if self.max_registers is not None and not 32 <= self.max_registers <= 255:
            raise ValueError(f"max_registers: expected None or 32..255, got {self.max_registers}")
        if self.decode not in ("asm", "manual"):
            raise ValueError(f"decode: expected 'asm' or 'manual', got {self.decode!r}")


# (largest M, largest mean rows per expert or None for any, tiles), in increasing M;
# the first entry whose two bounds hold is taken, the last (None, None) covers the rest.
_GPU_TABLE: tuple[tuple[int | None, float | None, Tiles], ...] = (
    # Decode sizes take 64-row N tiles on wgmma with K split so
    # that enough programs are in flight (after the C7515 fix, v13g; sweeps 27-29, graph
    # ms against the previous table): one token in two slices (gpt-oss-120b 0.0407 vs
    # 0.0445 for two-warp mma.sync tiles), up to 8 rows per expert in three (M = 4 0.115
    # vs 0.128, 8 0.199 vs 0.217, 64 0.689 vs 0.742, 256 0.846 vs 0.865; gpt-oss-20b
    # M = 8 0.148 vs 0.165). Four slices and a register limit were slower.
    (1, None, Tiles(16, 64, 64, 128, 4, 3, split_k=2)),
    (256, 8.0, Tiles(16, 64, 64, 128, 4, 3, split_k=3)),
    # 8-32 rows per expert (gpt-oss-120b at M = 257..1024, gpt-oss-20b at 65..256):
    # 32-row blocks halve the padded MMA work of 64-row ones and still decode each
    # weight about once (gpt-oss-120b M = 512 1.13 vs 1.51 ms; after v13g, M = 1024 1.23
    # vs 1.25-1.27, gpt-oss-20b M = 128 0.24 vs 0.27 and M = 256 0.33 vs 0.43 for the
    # 16-row tile). With more rows per expert (gpt-oss-20b: 64 at M = 512) they would
    # decode each weight 2.5 times instead of 1.5, so 64-row blocks stay.
    (1024, 32.0, Tiles(32, 64, 64, 128, 4, 3)),
    (1024, None, Tiles(64, 128, 128, 64, 8, 3)),
    # up to 64 rows per expert the 64-row blocks also beat 128-row ones (gpt-oss-120b
    # M = 2048: 1.91 vs 2.24 ms)
    (2048, 64.0, Tiles(64, 128, 128, 64, 8, 3)),
    # 128-row blocks, three stages: M = 4096 3.17 vs 3.30 ms for a two-stage tile;
    # M = 16384 (after v13g) 8.75 vs 9.61-9.85 ms eager
    (None, None, Tiles(128, 64, 64, 128, 4, 3)),
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
        if num_tokens <= largest and (most_rows is None or rows_per_expert <= most_rows):
            return tiles
    return _GPU_TABLE[-1][2]
