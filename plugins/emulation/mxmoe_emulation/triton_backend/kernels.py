"""The Triton kernels of the ``triton`` backend (imported only once Triton is known to work).

One layer is at most four launches, all on the device, none waiting for the host (five
with split K, see :mod:`.launch`), after :func:`route_kernel` when the backend routes:

1. :func:`align_kernel` (one program; skipped for small calls, where each GEMM1 program
   finds its block from the ids itself, see :func:`_slot_led_block`, and publishes it
   in the same table for GEMM2): counts the tokens
   routed to each local expert and lays the (token, k) *slots* out expert by expert in
   blocks of ``BLOCK_M`` rows.
   It writes ``sorted_slots[row]`` (the slot at each padded row), and per block its
   local expert and its number of real rows (0 for the unused tail of the worst-case
   grid), so the GEMMs need no sentinel rows and no host-known counts. In large calls
   slots get their row inside an expert from an atomic counter, so the order of rows
   within an expert may differ between runs; no result depends on it (each output row of a
   matrix product depends only on its own input row), so outputs are bitwise
   reproducible.
2. :func:`moe_gemm_kernel` as GEMM1: gathers each block's token rows, multiplies them
   by the expert's gate and up weight tiles (MX bytes dequantized in registers),
   adds the biases and applies the activation in the epilogue, writing each slot's
   row of the intermediate activation (with split K: float32 partial sums, finished
   by :func:`activation_kernel`). A block with few rows (an expert's last) may run as
   a narrower tile (``TAIL_M``), so it pays no MMA on padding rows.
3. :func:`moe_gemm_kernel` as GEMM2: the activation rows times ``w2``, plus bias,
   times the router weight, written to the slot's own row.
4. :func:`sum_slots_kernel`: each token's output is the sum of its ``top_k`` slot
   rows (and K splits), in a fixed order (deterministic; slots of non-local experts
   are skipped).

MXFP4 tiles are fragment words (:mod:`.layout`): each 32-bit word holds the eight
E2M1 codes one thread needs for its tensor-core operand registers, so a tile is loaded
as 16-byte vectors and decoded without moving data between threads
(:func:`_fragment_tile`):

* ``ASM`` (NVIDIA): inline PTX per word: a mask, or a rotate and a mask, or a mask, a
  multiply and a mask make each pair of weights a bf16x2 bit pattern of value *
  2**-126 (exact, the subnormal 0.5 included); one packed multiply by the scale pair,
  which carries the 2**126, finishes two weights: about 1.6 instructions per weight
  (the fp16 form adds a multiply, a mask and a second packed multiply).
* otherwise (the interpreter, ROCm): the same bit patterns read back into codes and
  values in float32 with Triton operations, one element at a time.

E4M3 (MXFP8) bytes convert with Triton's float8 cast and are scaled in float32.
``SWAP`` picks the orientation of the product: ``W @ X^T`` (weights as the left
operand, so a block of 16 tokens needs no padding to the MMA's 64 rows) or ``X @ W^T``.

``INTERPRET`` (set when running under ``TRITON_INTERPRET=1``) works around two traps
of Triton's CPU interpreter (seen with Triton 3.9): its ``tl.dot`` of two bf16 tiles
returns garbage, so the tiles are multiplied as float32 (exact: bf16 products fit
float32, as on the GPU's float32-accumulating tensor cores); and its float32 -> bf16
cast truncates instead of rounding to nearest even, so :func:`_round` rounds the
bits first. Both branches are compiled out on the GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

try:  # grid dependency control, from Triton's CUDA backend
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton build without it (ROCm-only): launch.use_pdl is False there

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

__all__ = ["activation_kernel", "align_kernel", "moe_gemm_kernel", "route_kernel",
           "sum_slots_kernel"]


# -- programmatic dependent launch ----------------------------------------------------


@triton.jit
def _wait_for_inputs(PDL: tl.constexpr):
    """With programmatic dependent launch (Hopper), a kernel starts while the previous one
    finishes; it waits here, before reading anything, until that kernel's writes are
    visible. Every launch of a layer is a dependent one, so each waits for the one before
    (and so, transitively, for all earlier ones)."""
    if PDL:
        gdc_wait()


@triton.jit
def _release_dependents(PDL: tl.constexpr):
    """Let the next launch start its programs (they wait in _wait_for_inputs). GEMMs call
    this after their K loop, so at large M the next kernel does not take SM slots from
    the GEMM's later waves."""
    if PDL:
        gdc_launch_dependents()


# -- routing: logits -> top-k ---------------------------------------------------------


@triton.jit
def route_kernel(
    logits_ptr, stride_logits, weights_ptr, ids_ptr, num_tokens, num_experts,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, METHOD: tl.constexpr, E_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr, PDL: tl.constexpr,
):
    """mxmoe.routing's plain methods for BLOCK_T tokens in one launch: the top-k by
    repeated arg-max (ties to the lower expert id, as ``route`` documents), chosen on the
    logits for "renormalize" and on the float32 softmax otherwise, then the weights
    (softmax of the k logits; the k probabilities, divided by their sum for
    "renormalize_naive"). Replaces the several small PyTorch kernels of ``route`` where
    a decode-size layer is only a few tens of microseconds of work."""
    _wait_for_inputs(PDL)
    _release_dependents(PDL)
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    experts = tl.arange(0, E_PAD)
    t_mask = tokens < num_tokens
    mask = t_mask[:, None] & (experts < num_experts)[None, :]
    x = tl.load(logits_ptr + tokens.to(tl.int64)[:, None] * stride_logits + experts[None, :],
                mask=mask, other=float("-inf")).to(tl.float32)
    if METHOD == "renormalize":
        score = x
    else:
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        score = e / tl.sum(e, axis=1)[:, None]
    slots = tl.arange(0, K_PAD)
    chosen = tl.zeros([BLOCK_T, K_PAD], dtype=tl.int32)
    values = tl.full([BLOCK_T, K_PAD], float("-inf"), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(score, axis=1)
        pick = tl.min(tl.where(score == best[:, None], experts[None, :], E_PAD), axis=1)
        chosen = tl.where(slots[None, :] == j, pick[:, None], chosen)
        values = tl.where(slots[None, :] == j, best[:, None], values)
        score = tl.where(experts[None, :] == pick[:, None], float("-inf"), score)
    if METHOD == "renormalize":
        e = tl.exp(values - tl.max(values, axis=1)[:, None])  # the padding slots give 0
        values = e / tl.sum(e, axis=1)[:, None]
    elif METHOD == "renormalize_naive":
        values = tl.where(slots[None, :] < TOP_K, values, 0.0)
        values = values / tl.sum(values, axis=1)[:, None]
    out = tokens.to(tl.int64)[:, None] * TOP_K + slots[None, :]
    out_mask = t_mask[:, None] & (slots < TOP_K)[None, :]
    tl.store(weights_ptr + out, values, mask=out_mask)
    tl.store(ids_ptr + out, chosen, mask=out_mask)


# -- routing: slots grouped by local expert -------------------------------------------


@triton.jit
def _local_experts(ids_ptr, map_ptr, slots, mask, num_experts, HAS_MAP: tl.constexpr):
    """Local expert of each slot, -1 for masked slots, non-local experts and ids outside
    [0, num_experts) (apply is also called with caller-made ids: one out of range must
    not send a kernel outside its tensors; such a slot contributes nothing)."""
    ids = tl.load(ids_ptr + slots, mask=mask, other=-1)
    ids = tl.where((ids >= 0) & (ids < num_experts), ids, -1)
    if HAS_MAP:
        ids = tl.load(map_ptr + ids, mask=ids >= 0, other=-1)
    return ids


@triton.jit
def _chunk_experts(ids_ptr, map_ptr, start, num_slots, num_experts, HAS_MAP: tl.constexpr,
                   CHUNK: tl.constexpr):
    """(slots, local expert of each or -1) of the CHUNK slots from ``start`` on."""
    slots = start + tl.arange(0, CHUNK)
    return slots, _local_experts(ids_ptr, map_ptr, slots, slots < num_slots, num_experts,
                                 HAS_MAP)


@triton.jit
def _expert_blocks(counts, BLOCK_M: tl.constexpr):
    """(block_end, block_start) per expert: where its blocks of BLOCK_M rows end and start
    when the experts' blocks follow each other in expert order."""
    blocks = (counts + BLOCK_M - 1) // BLOCK_M
    block_end = tl.cumsum(blocks, axis=0)
    return block_end, block_end - blocks


@triton.jit
def _slot_led_block(ids_ptr, map_ptr, slot, num_slots, num_experts, HAS_MAP: tl.constexpr,
                    BLOCK_M: tl.constexpr, SLOTS_PAD: tl.constexpr):
    """The block that slot ``slot`` leads, computed in registers from the ids alone (small
    calls, no align launch): the slots of each local expert in slot order, cut into runs of
    BLOCK_M; a slot leads a block when its rank among its expert's slots is a multiple of
    BLOCK_M, and the block's rows are that run. Returns (local expert, whether the slot
    leads, the run's slots [BLOCK_M], which of them are real rows). Every slot of a local
    expert is a row of exactly one block, as with the align step, and the rows keep slot
    order (deterministic)."""
    offs = tl.arange(0, SLOTS_PAD)
    local = _local_experts(ids_ptr, map_ptr, offs, offs < num_slots, num_experts, HAS_MAP)
    own = tl.sum(tl.where(offs == slot, local, 0), axis=0)
    same = (local == own) & (own >= 0)
    members = same.to(tl.int32)
    rank = tl.cumsum(members, axis=0) - 1
    first = tl.sum(tl.where(offs == slot, rank, 0), axis=0)
    leads = (own >= 0) & (first % BLOCK_M == 0)
    want = first + tl.arange(0, BLOCK_M)
    pick = same[None, :] & (rank[None, :] == want[:, None])
    slots = tl.sum(tl.where(pick, offs[None, :], 0), axis=1)
    return own, leads, slots, want < tl.sum(members, axis=0)


@triton.jit
def _publish_block(sorted_slots_ptr, block_expert_ptr, block_rows_ptr, blk, expert, leads,
                   slots, m_mask, BLOCK_M: tl.constexpr):
    """Write slot-led block ``blk`` as a row of the align step's table (0 rows when its slot
    leads none), so that GEMM2, which runs after GEMM1 anyway, reads its block instead of
    scanning the ids again (GEMM2's programs are short at decode sizes: the scan was a
    third of their ncu samples at M = 8; in the layer, under programmatic dependent
    launch, dropping it saves ~1 %, benchmarks/triton_notes.md v24)."""
    tl.store(block_rows_ptr + blk, tl.where(leads, tl.sum(m_mask.to(tl.int32), axis=0), 0))
    tl.store(block_expert_ptr + blk, expert)
    tl.store(sorted_slots_ptr + blk * BLOCK_M + tl.arange(0, BLOCK_M), slots, mask=m_mask)


@triton.jit
def align_kernel(
    ids_ptr, map_ptr, sorted_slots_ptr, block_expert_ptr, block_rows_ptr,
    counts_ptr, rank_ptr, row_start_ptr,
    num_slots, num_blocks, num_experts,
    NUM_LOCAL: tl.constexpr, E_PAD: tl.constexpr, HAS_MAP: tl.constexpr,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, ONE_STEP: tl.constexpr,
    BLOCK_CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    """Group the slots by local expert into blocks of BLOCK_M rows (one program).

    ``ONE_STEP`` (every slot in one CHUNK, small enough for a [CHUNK, E_PAD] one-hot in
    registers): counts, ranks and rows come from the one-hot (a column cumsum), with no
    global round trip between loading the ids and storing the table; rows keep slot
    order. Otherwise CHUNK slots a step take their ranks from atomic per-expert
    counters, and ``counts_ptr``/``row_start_ptr`` ([E_PAD]) and ``rank_ptr``
    ([num_slots]) are scratch. Every one of the ``num_blocks`` block entries is written
    (unused ones get 0 rows), so no buffer needs clearing by the caller.
    """
    _wait_for_inputs(PDL)
    _release_dependents(PDL)
    experts = tl.arange(0, E_PAD)
    if ONE_STEP:
        slots, local = _chunk_experts(ids_ptr, map_ptr, 0, num_slots, num_experts, HAS_MAP,
                                      CHUNK)
        onehot = (local[:, None] == experts[None, :]).to(tl.int32)
        counts = tl.sum(onehot, axis=0)
        block_end, block_start = _expert_blocks(counts, BLOCK_M)
        # a slot's rank: how many slots of its expert come before it (column cumsum)
        rank = tl.sum(onehot * tl.cumsum(onehot, axis=0), axis=1) - 1
        row = tl.sum(onehot * (block_start * BLOCK_M)[None, :], axis=1) + rank
        tl.store(sorted_slots_ptr + row, slots, mask=local >= 0)
    else:
        tl.store(counts_ptr + experts, tl.zeros([E_PAD], dtype=tl.int32))
        tl.debug_barrier()
        for start in range(0, num_slots, CHUNK):
            slots, local = _chunk_experts(ids_ptr, map_ptr, start, num_slots, num_experts,
                                          HAS_MAP, CHUNK)
            valid = local >= 0
            rank = tl.atomic_add(counts_ptr + local, tl.full([CHUNK], 1, tl.int32), mask=valid,
                                 sem="relaxed")
            tl.store(rank_ptr + slots, rank, mask=valid)
        tl.debug_barrier()
        counts = tl.load(counts_ptr + experts, volatile=True)
        block_end, block_start = _expert_blocks(counts, BLOCK_M)
        tl.store(row_start_ptr + experts, block_start * BLOCK_M)
        tl.debug_barrier()
        for start in range(0, num_slots, CHUNK):
            slots, local = _chunk_experts(ids_ptr, map_ptr, start, num_slots, num_experts,
                                          HAS_MAP, CHUNK)
            valid = local >= 0
            row = (tl.load(row_start_ptr + local, mask=valid, other=0)
                   + tl.load(rank_ptr + slots, mask=valid, other=0))
            tl.store(sorted_slots_ptr + row, slots, mask=valid)
    for start in range(0, num_blocks, BLOCK_CHUNK):
        blk = start + tl.arange(0, BLOCK_CHUNK)
        # the owner of a block: the number of experts whose blocks all come before it
        owner = tl.sum((block_end[None, :] <= blk[:, None]).to(tl.int32), axis=1)
        pick = (experts[None, :] == owner[:, None]).to(tl.int32)
        count = tl.sum(pick * counts[None, :], axis=1)
        first = tl.sum(pick * block_start[None, :], axis=1)
        rows = tl.minimum(count - (blk - first) * BLOCK_M, BLOCK_M)
        rows = tl.where(owner < NUM_LOCAL, rows, 0)
        tl.store(block_expert_ptr + blk, owner, mask=blk < num_blocks)
        tl.store(block_rows_ptr + blk, rows, mask=blk < num_blocks)


@triton.jit
def _round(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """float32 ``x`` rounded to nearest even in DTYPE (see INTERPRET above)."""
    if INTERPRET and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # exactly a bf16 now
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


# -- MX weight tiles -----------------------------------------------------------------

# The PTX decode of one fragment word (layout.py): four bf16x2 bit patterns of value *
# 2**-126 (magnitude bits at 6-8, sign at 15, exact: the subnormal 0.5 included), by a
# mask ($8 & MASK), two rotations and a mask, and a mask, a multiply and a mask; then
# one packed multiply each by the scale pair of its row ($9: row r, $10: row r + 8),
# which carries the missing 2**126 (SCALE_BIAS in moe_gemm_kernel). The fp16 form
# moves the magnitude bits to 9-11 (times 9: a copy 3 bits up, no overlap, so no
# carries; then a mask), giving value * 2**-14, and applies 2**14 and the scale as two
# packed multiplies (their product might not fit float16). Outputs: $0-$7, the two
# halves of the four patterns (see layout.FRAGMENT_BITS).
_FRAGMENT_MASK = "0x81C081C0"


def _fragment_ptx(fp16: bool) -> str:
    patterns = (f"and.b32 p0, $8, {_FRAGMENT_MASK};\n"
                f"shf.l.wrap.b32 p1, $8, $8, 10; and.b32 p1, p1, {_FRAGMENT_MASK};\n"
                f"shf.l.wrap.b32 p2, $8, $8, 13; and.b32 p2, p2, {_FRAGMENT_MASK};\n"
                "and.b32 p3, $8, 0x001B001B; mul.lo.u32 p3, p3, 0x1084; "
                f"and.b32 p3, p3, {_FRAGMENT_MASK};\n")
    body = ""
    for i, scale in enumerate(("$9", "$10", "$9", "$10")):
        if fp16:
            body += (f"mul.lo.u32 p{i}, p{i}, 9; and.b32 p{i}, p{i}, 0x8E008E00;\n"
                     f"fma.rn.f16x2 p{i}, p{i}, k, z; fma.rn.f16x2 p{i}, p{i}, {scale}, z;\n")
        else:
            body += f"fma.rn.bf16x2 p{i}, p{i}, {scale}, z;\n"
        body += f"mov.b32 {{${2 * i}, ${2 * i + 1}}}, p{i};\n"
    head = ".reg .b32 p0, p1, p2, p3, z, k;\nmov.b32 z, 0x80008000;\n"
    if fp16:
        head += "mov.b32 k, 0x74007400;\n"
    return "{\n" + head + patterns + body + "}"


_FRAGMENT_TO_BF16 = tl.constexpr(_fragment_ptx(fp16=False))
_FRAGMENT_TO_FP16 = tl.constexpr(_fragment_ptx(fp16=True))


@triton.jit
def _scales(ws, bias, DTYPE: tl.constexpr):
    """E8M0 bytes -> 2**(s + bias - 127) in DTYPE (byte 0 with bias 0 gives 0; layout.py
    bounds the rest), through the float32 exponent field."""
    return ((ws.to(tl.int32) + bias) << 23).to(tl.float32, bitcast=True).to(DTYPE)


@triton.jit
def _e2m1_values(codes):
    """E2M1 codes (0..15, any integer type) -> float32, exactly, through float16 bit
    patterns: s|e1 e0|m becomes s|00 0 e1 e0|m 0..0, the value times 2**-14 (0.5 is
    subnormal)."""
    c = codes.to(tl.uint16)
    half = (((c & 7) << 9) | ((c & 8) << 12)).to(tl.float16, bitcast=True)
    return half.to(tl.float32) * 16384.0


@triton.jit
def _rotl(w, BITS: tl.constexpr):
    return (w << BITS) | (w >> (32 - BITS))


@triton.jit
def _pattern_values(p, scale):
    """The two weights of a bf16x2 pattern (uint32, see _fragment_ptx) times ``scale``
    (float32), portably: the codes are read back from the pattern's bits."""
    lo = ((p >> 6) & 7) | ((p >> 12) & 8)
    hi = ((p >> 22) & 7) | ((p >> 28) & 8)
    return _e2m1_values(lo) * scale, _e2m1_values(hi) * scale


@triton.jit
def _fragment_tile(words, ws, SCALE_BIAS: tl.constexpr, DTYPE: tl.constexpr,
                   ASM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Fragment words [BN/16, BK/64, 128] (uint32: 16-row group, 64-column run, then row r,
    lane column c and 16-column step in the run) and their scale bytes [BN/16, 8, 2,
    BK/32] (group, row r, rows r and r + 8, MX block) -> the weight tile [BN, BK] in
    DTYPE (for the bf16 PTX decode: times 2**(SCALE_BIAS - 126)). Every reshape here
    keeps each word's eight weights in the registers of the thread that decoded them
    (the operand layout of mma/wgmma); Triton sees the permutation and moves no data."""
    N16: tl.constexpr = BLOCK_N // 16
    KB: tl.constexpr = BLOCK_K // 16
    NB: tl.constexpr = BLOCK_K // 32
    words = words.reshape(N16, BLOCK_K // 64, 8, 4, 4)  # group, run, r, c, step in run
    words = tl.permute(words, (0, 2, 1, 4, 3)).reshape(N16, 8, KB, 4)  # group, r, step, c
    if ASM and DTYPE == tl.bfloat16:
        scale = (ws.to(tl.uint32) + SCALE_BIAS) * 0x00800080  # the bf16 pair, exponent field
    elif ASM:
        bits = _scales(ws, 0, DTYPE).to(tl.uint16, bitcast=True).to(tl.uint32)
        scale = bits | (bits << 16)
    else:
        scale = _scales(ws, 0, tl.float32)
    s_r, s_r8 = tl.permute(scale, (0, 1, 3, 2)).split()  # [N16, 8, NB] each
    # each scale serves the two 16-column steps of its MX block and all four lanes
    s_r = tl.broadcast_to(s_r[:, :, :, None, None], (N16, 8, NB, 2, 4)).reshape(N16, 8, KB, 4)
    s_r8 = tl.broadcast_to(s_r8[:, :, :, None, None], (N16, 8, NB, 2, 4)).reshape(N16, 8, KB, 4)
    if ASM and DTYPE == tl.bfloat16:
        o = tl.inline_asm_elementwise(_FRAGMENT_TO_BF16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r",
                                      [words, s_r, s_r8], dtype=(tl.bfloat16,) * 8,
                                      is_pure=True, pack=1)
    elif ASM:
        o = tl.inline_asm_elementwise(_FRAGMENT_TO_FP16, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r",
                                      [words, s_r, s_r8], dtype=(tl.float16,) * 8,
                                      is_pure=True, pack=1)
    else:
        mask = 0x81C081C0
        w = words.to(tl.uint32, bitcast=True)
        o0, o1 = _pattern_values(w & mask, s_r)
        o2, o3 = _pattern_values(_rotl(w, 10) & mask, s_r8)
        o4, o5 = _pattern_values(_rotl(w, 13) & mask, s_r)
        o6, o7 = _pattern_values(((w & 0x001B001B) * 0x1084) & mask, s_r8)
        o = (o0.to(DTYPE), o1.to(DTYPE), o2.to(DTYPE), o3.to(DTYPE), o4.to(DTYPE),
             o5.to(DTYPE), o6.to(DTYPE), o7.to(DTYPE))
    # (element, row r / r + 8) per column half, then the halves: [N16, 8, KB, 4, 2, 2, 2]
    left = tl.join(tl.join(o[0], o[1]), tl.join(o[2], o[3]))
    right = tl.join(tl.join(o[4], o[5]), tl.join(o[6], o[7]))
    tile = tl.permute(tl.join(left, right), (0, 5, 1, 2, 6, 3, 4))
    return tl.reshape(tile, (BLOCK_N, BLOCK_K))


@triton.jit
def _decode_fp8(wq, ws, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DTYPE: tl.constexpr):
    """E4M3 bytes [BN, BK] and their scales [BN, BK/32] -> weights [BN, BK] in DTYPE."""
    values = wq.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    blocks = values.reshape(BLOCK_N, BLOCK_K // 32, 32) * _scales(ws, 0, tl.float32)[:, :, None]
    return blocks.reshape(BLOCK_N, BLOCK_K).to(DTYPE)


@triton.jit
def _mma(w, a, acc, SWAP: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + a [BM, K] times w [BN, K] transposed, as [BN, BM] if SWAP else [BM, BN]."""
    if INTERPRET:
        w = w.to(tl.float32)
        a = a.to(tl.float32)
    if SWAP:
        acc = tl.dot(w, tl.trans(a), acc)
    else:
        acc = tl.dot(a, tl.trans(w), acc)
    return acc


@triton.jit
def _weight_tile_ptrs(w_base, s_base, n_start, stride_wn, stride_sn, EPB: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pointers to the first K step of the weight tile of rows n_start.. and to its scale
    bytes: MXFP4 fragment words [BN/16, BK/64, 128] and scales [BN/16, 8, 2, BK/32] (see
    _fragment_tile; ``stride_wn`` in words), MXFP8 bytes [BN, BK] and scales [BN, BK/32]."""
    if EPB == 2:
        # [group, 64-column run, 128 words (r, c, step in the run)]: a run's words as one
        # contiguous dimension, so Triton copies them as coalesced 16-byte vectors
        g = tl.arange(0, BLOCK_N // 16)[:, None, None]
        run = tl.arange(0, BLOCK_K // 64)[None, :, None]
        rows = (n_start + 16 * g).to(tl.int64)  # 16 rows of a group share its words
        w_ptrs = w_base + rows * stride_wn + run * 128 + tl.arange(0, 128)[None, None, :]
        g = tl.arange(0, BLOCK_N // 16)[:, None, None, None]
        r = tl.arange(0, 8)[None, :, None, None]
        half = tl.arange(0, 2)[None, None, :, None]
        block = tl.arange(0, BLOCK_K // 32)[None, None, None, :]
        s_rows = (n_start + 16 * g + 8 * half + r).to(tl.int64)
        s_ptrs = s_base + s_rows * stride_sn + block
    else:
        rows = (n_start + tl.arange(0, BLOCK_N)).to(tl.int64)
        w_ptrs = w_base + rows[:, None] * stride_wn + tl.arange(0, BLOCK_K)[None, :]
        s_ptrs = s_base + rows[:, None] * stride_sn + tl.arange(0, BLOCK_K // 32)[None, :]
    return w_ptrs, s_ptrs


@triton.jit
def _weight_mask(n_start, N, k0, k_end, EPB: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """The mask of the weight tile of the K step at k0, shaped as _weight_tile_ptrs's.
    MXFP4 masks are constant over whole 16-row groups and 64 columns (N and K are
    multiples of 16 and 64), so each thread's 16-byte word vector stays one load."""
    if EPB == 2:
        groups = (n_start + 16 * tl.arange(0, BLOCK_N // 16)) < N
        run = tl.arange(0, BLOCK_K // 64)[None, :, None]
        mask = groups[:, None, None] & ((k0 + run * 64) < k_end)
    else:
        n_mask = (n_start + tl.arange(0, BLOCK_N)) < N
        mask = n_mask[:, None] & ((k0 + tl.arange(0, BLOCK_K)) < k_end)[None, :]
    return mask


@triton.jit
def _scale_mask(n_start, N, k0, scale_cols, EPB: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """The mask of the scale tile of the K step at k0, shaped as _weight_tile_ptrs's.
    The scales are bounded by the stored row width ``scale_cols`` (a multiple of 16, see
    layout.py), not by the program's K slice: the mask is then constant over each
    vector of bytes (one wide load instead of one load per byte); the scales read past
    the slice (the next slice's, or padding) only ever multiply weights and
    activations that are masked to zero."""
    blocks = (k0 // 32 + tl.arange(0, BLOCK_K // 32)) < scale_cols
    if EPB == 2:
        groups = (n_start + 16 * tl.arange(0, BLOCK_N // 16)) < N
        mask = groups[:, None, None, None] & blocks[None, None, None, :]
    else:
        mask = ((n_start + tl.arange(0, BLOCK_N)) < N)[:, None] & blocks[None, :]
    return mask


@triton.jit
def _mx_tile_product(acc, a, w_ptrs, ws, w_mask, SCALE_BIAS: tl.constexpr, EPB: tl.constexpr,
                     ASM: tl.constexpr, SWAP: tl.constexpr, INTERPRET: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + the activations [BM, BK] times one MX weight tile whose scale bytes are
    ``ws``."""
    wq = tl.load(w_ptrs, mask=w_mask, other=0)
    if EPB == 2:
        w = _fragment_tile(wq, ws, SCALE_BIAS, a.dtype, ASM, BLOCK_N, BLOCK_K)
    else:
        w = _decode_fp8(wq, ws, BLOCK_N, BLOCK_K, a.dtype)
    return _mma(w, a, acc, SWAP, INTERPRET)


@triton.jit
def _along_n(v, SWAP: tl.constexpr):
    """A vector over the N (weight row) axis, broadcast against the accumulator."""
    if SWAP:
        return v[:, None]
    else:
        return v[None, :]


@triton.jit
def _along_m(v, SWAP: tl.constexpr):
    """A vector over the M (token row) axis, broadcast against the accumulator."""
    if SWAP:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def _activate(gate, up, alpha, beta, limit, ACTIVATION: tl.constexpr, HAS_LIMIT: tl.constexpr):
    """The gated activation of mxmoe.activations, in float32."""
    if ACTIVATION == "silu":
        out = gate * tl.sigmoid(gate) * up
    elif ACTIVATION == "swiglustep":
        act = gate * tl.sigmoid(gate)
        if HAS_LIMIT:
            act = tl.minimum(act, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        out = act * up
    else:  # swigluoai (beta = 1) and swigluoai_uninterleave
        if HAS_LIMIT:
            gate = tl.minimum(gate, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        out = gate * tl.sigmoid(alpha * gate) * (up + beta)
    return out


# -- the grouped GEMMs ------------------------------------------------------------------


@triton.jit
def _table_rows(sorted_slots_ptr, blk, rows, BLOCK_M: tl.constexpr, M: tl.constexpr):
    """(slots [M], which are real rows) of align-table block ``blk``: its first M of
    BLOCK_M entries, ``rows`` of them real."""
    offs = tl.arange(0, M)
    m_mask = offs < rows
    return tl.load(sorted_slots_ptr + blk * BLOCK_M + offs, mask=m_mask, other=0), m_mask


@triton.jit
def _block_product(
    a_ptr, stride_a, w_ptr, stride_we, stride_wn, s_ptr, stride_se, stride_sn, scale_cols,
    bias_ptr, stride_be, out_ptr, stride_out, stride_split, route_w_ptr,
    N, K, acc_scale, alpha, beta, limit, split, tile, n_tiles, expert, slots, m_mask,
    TOP_K: tl.constexpr, GATED: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr,
    WEIGHT_ON_INPUT: tl.constexpr, WEIGHT_ON_OUTPUT: tl.constexpr, GATHER_A: tl.constexpr,
    EPB: tl.constexpr, ASM: tl.constexpr, SWAP: tl.constexpr,
    INTERPRET: tl.constexpr, SCALE_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    """The body of :func:`moe_gemm_kernel` for one block of expert ``expert`` whose
    ``slots`` [BLOCK_M] are real rows where ``m_mask``: the K loop and the epilogue."""
    if GATHER_A:
        a_rows = (slots // TOP_K).to(tl.int64)
    else:
        a_rows = slots.to(tl.int64)
    route_w = tl.load(route_w_ptr + slots, mask=m_mask, other=0.0)

    n_start = (tile % n_tiles) * BLOCK_N
    offs_n = n_start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    # this program's slice of K, whole BLOCK_K steps
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    # a K step advances a tile by BLOCK_K columns: BLOCK_K // EPB bytes, or for MXFP4's
    # fragment words 2 * BLOCK_K words (a 16-row group's 64 columns are 128 words)
    W_STEP: tl.constexpr = 2 * BLOCK_K if EPB == 2 else BLOCK_K

    w_base = w_ptr + expert * stride_we + (k_start // BLOCK_K) * W_STEP
    s_base = s_ptr + expert * stride_se + k_start // 32
    a_ptrs = a_ptr + a_rows[:, None] * stride_a + (k_start + offs_k)[None, :]
    wg_ptrs, sg_ptrs = _weight_tile_ptrs(w_base, s_base, n_start, stride_wn, stride_sn, EPB,
                                         BLOCK_N, BLOCK_K)
    wu_ptrs = wg_ptrs + N * stride_wn  # w13's up rows: the second half
    su_ptrs = sg_ptrs + N * stride_sn

    if SWAP:
        acc_g = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros_like(acc_g)
    # The scale tiles are loaded one K step ahead into registers: Triton's pipeliner
    # stages the weight and activation tiles through shared memory but leaves these
    # small loads in the loop, where each step would wait a full global-memory latency.
    s_mask = _scale_mask(n_start, N, k_start, scale_cols, EPB, BLOCK_N, BLOCK_K)
    ws_g = tl.load(sg_ptrs, mask=s_mask, other=0)
    ws_u = ws_g
    if GATED:
        ws_u = tl.load(su_ptrs, mask=s_mask, other=0)
    # At least one step, even for an empty K slice (its loads are all masked off): a loop
    # that may run zero times leaves a path on which the accumulators are set by plain
    # moves, and ptxas then serializes every wgmma of the loop (C7515).
    for step in range(0, tl.maximum(tl.cdiv(k_end - k_start, BLOCK_K), 1)):
        k0 = k_start + step * BLOCK_K
        # masked by whole MX blocks (K is a multiple of 32), so the pipeliner sees
        # 32-element runs and copies the tile in 16-byte pieces
        a_mask = m_mask[:, None] & (((k0 + offs_k) // 32) * 32 < k_end)[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        if WEIGHT_ON_INPUT:
            a = _round(a.to(tl.float32) * route_w[:, None], a.dtype, INTERPRET)
        w_mask = _weight_mask(n_start, N, k0, k_end, EPB, BLOCK_N, BLOCK_K)
        s_mask_next = _scale_mask(n_start, N, k0 + BLOCK_K, scale_cols, EPB, BLOCK_N, BLOCK_K)
        sg_ptrs += BLOCK_K // 32
        su_ptrs += BLOCK_K // 32
        ws_g_next = tl.load(sg_ptrs, mask=s_mask_next, other=0)
        ws_u_next = ws_g_next
        if GATED:
            ws_u_next = tl.load(su_ptrs, mask=s_mask_next, other=0)
        acc_g = _mx_tile_product(acc_g, a, wg_ptrs, ws_g, w_mask, SCALE_BIAS, EPB, ASM, SWAP,
                                 INTERPRET, BLOCK_N, BLOCK_K)
        if GATED:
            acc_u = _mx_tile_product(acc_u, a, wu_ptrs, ws_u, w_mask, SCALE_BIAS, EPB, ASM,
                                     SWAP, INTERPRET, BLOCK_N, BLOCK_K)
        ws_g = ws_g_next
        ws_u = ws_u_next
        a_ptrs += BLOCK_K
        wg_ptrs += W_STEP
        wu_ptrs += W_STEP

    _release_dependents(PDL)
    acc_g = acc_g * acc_scale
    acc_u = acc_u * acc_scale
    out_rows = slots.to(tl.int64)
    out_mask = _along_m(m_mask, SWAP) & _along_n(n_mask, SWAP)
    out_ptrs = (out_ptr + split * stride_split + _along_m(out_rows, SWAP) * stride_out
                + _along_n(offs_n, SWAP))
    if GATED and SPLIT_K > 1:
        tl.store(out_ptrs, acc_g, mask=out_mask)
        tl.store(out_ptrs + N, acc_u, mask=out_mask)
    else:
        if HAS_BIAS and split == 0:
            b_ptrs = bias_ptr + expert * stride_be + offs_n
            acc_g += _along_n(tl.load(b_ptrs, mask=n_mask, other=0.0), SWAP)
            if GATED:
                acc_u += _along_n(tl.load(b_ptrs + N, mask=n_mask, other=0.0), SWAP)
        if GATED:
            result = _activate(acc_g, acc_u, alpha, beta, limit, ACTIVATION, HAS_LIMIT)
        else:
            result = acc_g
            if WEIGHT_ON_OUTPUT:
                result = result * _along_m(route_w, SWAP)
        tl.store(out_ptrs, _round(result, out_ptr.dtype.element_ty, INTERPRET), mask=out_mask)


@triton.jit
def moe_gemm_kernel(
    a_ptr, stride_a,
    w_ptr, stride_we, stride_wn,
    s_ptr, stride_se, stride_sn, scale_cols,
    bias_ptr, stride_be,
    out_ptr, stride_out, stride_split,
    sorted_slots_ptr, block_expert_ptr, block_rows_ptr, ids_ptr, map_ptr, route_w_ptr,
    N, K, num_slots, num_experts, acc_scale, alpha, beta, limit,
    TOP_K: tl.constexpr, GATED: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr,
    WEIGHT_ON_INPUT: tl.constexpr, WEIGHT_ON_OUTPUT: tl.constexpr, GATHER_A: tl.constexpr,
    EPB: tl.constexpr, ASM: tl.constexpr, SWAP: tl.constexpr,
    INTERPRET: tl.constexpr, SCALE_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    HAS_MAP: tl.constexpr, SLOTS_PAD: tl.constexpr, TAIL_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    """One (block of BLOCK_M rows of one expert) x (BLOCK_N output columns) x (one of
    SPLIT_K slices of K) tile.

    GEMM1 (``GATED``, ``GATHER_A``): A rows are hidden-state rows of the block's
    tokens; gate rows ``n`` and up rows ``N + n`` of ``w13`` (halves, see
    layout.py). GEMM2: A rows are the block's activation rows. Both write the rows of
    their slots: GEMM1 the activation (with SPLIT_K > 1: float32 partial gate and up
    sums [split, slot, 2N] for :func:`activation_kernel`), GEMM2 bias + router-weighted
    results (with SPLIT_K > 1: float32 partials [split, slot, N], bias in split 0).
    ``EPB`` is 2 for MXFP4 (fragment words, ``w_ptr`` as 32-bit words, ``stride_wn`` in
    words; N and K multiples of 16 and 64) and 1 for MXFP8 (bytes). The products are
    multiplied by ``acc_scale``, undoing the bf16 PTX decode's ``SCALE_BIAS`` (a
    compile-time constant: a run-time bias makes Triton route the scales through shared
    memory; real layers all share the value 126, so it compiles once). With
    ``SLOTS_PAD`` > 0 (a small call: at most that many slots) there is no align step:
    block ``b`` is the one slot ``b`` leads (:func:`_slot_led_block`), from ``ids_ptr``
    (and ``map_ptr`` with ``HAS_MAP``), and the block's first program writes it to the
    three block-table pointers (:func:`_publish_block`; GEMM1 runs this way, GEMM2 then
    reads the table). Otherwise ``ids_ptr``/``map_ptr`` are unused and the table (the
    align step's, or the one GEMM1 published) gives the blocks. With ``TAIL_M`` > 0, a
    table block of at most TAIL_M rows is computed as a TAIL_M-row tile
    (:func:`_block_product` is compiled for both widths), so an expert's nearly empty
    last block does not pay BLOCK_M rows of MMA.
    """
    _wait_for_inputs(PDL)
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    split = pid % SPLIT_K
    tile = pid // SPLIT_K
    blk = tile // n_tiles
    if SLOTS_PAD > 0:
        expert, leads, slots, m_mask = _slot_led_block(ids_ptr, map_ptr, blk, num_slots,
                                                       num_experts, HAS_MAP, BLOCK_M, SLOTS_PAD)
        if (tile % n_tiles == 0) & (split == 0):
            _publish_block(sorted_slots_ptr, block_expert_ptr, block_rows_ptr, blk, expert,
                           leads, slots, m_mask, BLOCK_M)
        if not leads:
            return
        rows = BLOCK_M  # a slot-led block takes the full path
        expert = expert.to(tl.int64)
    else:
        rows = tl.load(block_rows_ptr + blk)
        if rows == 0:
            return
        expert = tl.load(block_expert_ptr + blk).to(tl.int64)
        slots, m_mask = _table_rows(sorted_slots_ptr, blk, rows, BLOCK_M, BLOCK_M)
    if TAIL_M > 0 and rows <= TAIL_M:
        # a block of at most TAIL_M rows (an expert's last): a narrower MMA, no padding
        tail_slots, tail_mask = _table_rows(sorted_slots_ptr, blk, rows, BLOCK_M, TAIL_M)
        _block_product(
            a_ptr, stride_a, w_ptr, stride_we, stride_wn, s_ptr, stride_se, stride_sn,
            scale_cols, bias_ptr, stride_be, out_ptr, stride_out, stride_split, route_w_ptr,
            N, K, acc_scale, alpha, beta, limit, split, tile, n_tiles, expert, tail_slots,
            tail_mask,
            TOP_K, GATED, ACTIVATION, HAS_LIMIT, HAS_BIAS, WEIGHT_ON_INPUT, WEIGHT_ON_OUTPUT,
            GATHER_A, EPB, ASM, SWAP, INTERPRET, SCALE_BIAS, SPLIT_K, TAIL_M, BLOCK_N,
            BLOCK_K, PDL)
    else:
        _block_product(
            a_ptr, stride_a, w_ptr, stride_we, stride_wn, s_ptr, stride_se, stride_sn,
            scale_cols, bias_ptr, stride_be, out_ptr, stride_out, stride_split, route_w_ptr,
            N, K, acc_scale, alpha, beta, limit, split, tile, n_tiles, expert, slots, m_mask,
            TOP_K, GATED, ACTIVATION, HAS_LIMIT, HAS_BIAS, WEIGHT_ON_INPUT, WEIGHT_ON_OUTPUT,
            GATHER_A, EPB, ASM, SWAP, INTERPRET, SCALE_BIAS, SPLIT_K, BLOCK_M, BLOCK_N,
            BLOCK_K, PDL)


@triton.jit
def activation_kernel(
    partial_ptr, ids_ptr, map_ptr, bias_ptr, stride_be, act_ptr,
    num_slots, num_experts, N, alpha, beta, limit,
    SPLIT_K: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_LIMIT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MAP: tl.constexpr,
    INTERPRET: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    """GEMM1's epilogue after a split K: act[slot] = activation(sum of the float32
    partials [split, slot, (gate | up), N] + bias), splits summed in order."""
    _wait_for_inputs(PDL)
    _release_dependents(PDL)
    slot = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    # the slot's local expert, as a vector over the columns (see sum_slots_kernel)
    local = _local_experts(ids_ptr, map_ptr, slot + tl.zeros_like(cols), cols >= 0, num_experts,
                           HAS_MAP)
    mask = (cols < N) & (local >= 0)
    gate = tl.zeros([BLOCK], dtype=tl.float32)
    up = tl.zeros([BLOCK], dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        row = partial_ptr + (split * num_slots + slot) * 2 * N + cols
        gate += tl.load(row, mask=mask, other=0.0)
        up += tl.load(row + N, mask=mask, other=0.0)
    if HAS_BIAS:
        b_ptrs = bias_ptr + local.to(tl.int64) * stride_be + cols
        gate += tl.load(b_ptrs, mask=mask, other=0.0)
        up += tl.load(b_ptrs + N, mask=mask, other=0.0)
    result = _activate(gate, up, alpha, beta, limit, ACTIVATION, HAS_LIMIT)
    tl.store(act_ptr + slot * N + cols, _round(result, act_ptr.dtype.element_ty, INTERPRET),
             mask=mask)


# -- the top-k reduction ----------------------------------------------------------------


@triton.jit
def sum_slots_kernel(
    slot_out_ptr, ids_ptr, map_ptr, out_ptr, H, num_slots, num_experts,
    TOP_K: tl.constexpr, SPLIT_K: tl.constexpr, HAS_MAP: tl.constexpr, BLOCK_H: tl.constexpr,
    INTERPRET: tl.constexpr, PDL: tl.constexpr,
):
    """out[t] = sum over j (and over K splits) of slot_out[split, t * TOP_K + j], local
    experts only, in a fixed order."""
    _wait_for_inputs(PDL)
    _release_dependents(PDL)
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        slot = token * TOP_K + j
        # the slot's expert, loaded as a vector over the columns (a broadcast load):
        # the interpreter rejects masks mixing a scalar condition into a tensor
        local = _local_experts(ids_ptr, map_ptr, slot + tl.zeros_like(cols), cols >= 0,
                               num_experts, HAS_MAP)
        for split in tl.static_range(SPLIT_K):
            acc += tl.load(slot_out_ptr + (split * num_slots + slot) * H + cols,
                           mask=col_mask & (local >= 0), other=0.0).to(tl.float32)
    tl.store(out_ptr + token * H + cols, _round(acc, out_ptr.dtype.element_ty, INTERPRET),
             mask=col_mask)
