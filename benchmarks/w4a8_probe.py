"""Feasibility probe for an FP8-activation (W4A8) GEMM on Hopper, before building it into
the ``triton`` backend (triton_notes.md, v28).

One grouped GEMM the shape of gpt-oss-120b's GEMM1 at M = 4096 (E experts, R token rows
each, N x K weights), several ways on the same inputs:

* ``w4a8``: MXFP4 weights decoded in registers to E4M3 by a byte table (one ``prmt``
  per four weights), multiplied with E4M3 activations on the FP8 tensor cores; the
  activations' 1x128 group scales are applied to each 128-column step's partial sum
  (a tile ending in ``np`` skips that: the speed bound of a per-token scale), the
  weights' MX scales are folded into the E4M3 values relative to a per-row exponent
  applied in the epilogue;
* ``fp8-dense-no-decode``: the same weights as E4M3 bytes read as they are, a plain
  Triton FP8 grouped GEMM: the bound without a decode (it reads twice the bytes);
* ``bf16-dense-bmm``: ``torch.bmm`` of the same shapes in BF16;
* the float32 product of the same quantized values, for the relative error.

The MX scale fold: a weight is ``v * 2**(s - 127)`` with ``v`` an E2M1 value and ``s``
its block's scale byte. With ``c`` the largest scale byte of its row and ``t = s - c +
6`` (at most 6), ``v * 2**t`` is an E4M3 value exactly while ``t >= -5`` (the E2M1 0.5
is then still a normal E4M3 number); the row factor ``2**(c - 133)`` restores it.
Blocks more than eleven binades below their row's largest are re-quantized at
``t = -5`` (their weights are under 2**-11 of the row's largest ones).

Run on the GPU machine: ``python3 benchmarks/w4a8_probe.py [--experts 128 --rows 128]``.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl
from mxmoe.bench.timing import time_calls
from mxmoe.formats import (dequantize_mx, e2m1_to_float, float_to_e2m1, pack_fp4,
                           quantize_fp8_per_token_group, quantize_mx, unpack_fp4)

# $0/$1: the E4M3 bytes of the low / high nibbles of the four input bytes ($2); $3: the
# table shift U = (t + 5) << 3 in every byte. Table bytes, index = the E2M1 magnitude
# code: 0, U+8 (0.5), U+16 (1), U+20 (1.5) | U+24 (2), U+28 (3), U+32 (4), U+36 (6).
_DECODE = tl.constexpr("""{
.reg .b32 t1, t2, s, sel, lo, hi, m;
shr.b32 t1, $2, 4;
and.b32 s, $2, 0x00070007;
and.b32 m, t1, 0x00700070;
or.b32 s, s, m;
prmt.b32 sel, s, s, 0x0020;
and.b32 lo, $3, 0xFFFFFF00;
add.u32 lo, lo, 0x14100800;
add.u32 hi, $3, 0x24201C18;
prmt.b32 m, lo, hi, sel;
shl.b32 t2, $2, 4;
and.b32 t2, t2, 0x80808080;
or.b32 $0, m, t2;
shr.b32 t2, $2, 8;
and.b32 t2, t2, 0x00700070;
and.b32 s, t1, 0x00070007;
or.b32 s, s, t2;
prmt.b32 sel, s, s, 0x0020;
prmt.b32 m, lo, hi, sel;
and.b32 t2, $2, 0x80808080;
or.b32 $1, m, t2;
}""")


@triton.jit
def _block_and_tile(N, BLOCK_N: tl.constexpr):
    """(token block, weight tile) of this program: a block's tiles are consecutive
    programs, so its activation rows stay in L2 while every tile reads them (the order
    of the backend's GEMMs)."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    return pid // n_tiles, pid % n_tiles


@triton.jit
def w4a8_kernel(x_ptr, xs_ptr, w_ptr, u_ptr, rowf_ptr, out_ptr, R, N, K, K_PAD, GROUPS,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PROMOTE: tl.constexpr):
    """One [BLOCK_N weight rows, BLOCK_M token rows] output tile, 128 columns of K a step.
    Weight words (see to_words) give each thread the bytes of its own operand registers;
    the step's low-nibble weights are the true columns 32 s + 4 c + i of the step (s the
    32-column block, c the lane's column, i the byte), the high ones those + 16, so the
    activation tile is read as two matching halves and no register moves between the
    decode and the tensor cores."""
    blk, nt = _block_and_tile(N, BLOCK_N)
    blocks_per_expert = tl.cdiv(R, BLOCK_M)
    expert = blk // blocks_per_expert
    m0 = (blk % blocks_per_expert) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_mask = offs_m < R
    rows = (expert * R + offs_m).to(tl.int64)
    N16: tl.constexpr = BLOCK_N // 16
    g0 = nt * N16
    # weight bytes: [group, lane (r, c), 32 bytes (rr, s, i)], 1024 bytes a group and step
    wg = (expert * (N // 16) + g0 + tl.arange(0, N16)).to(tl.int64)
    w_ptrs = (w_ptr + wg[:, None, None] * (K_PAD * 8) + tl.arange(0, 32)[None, :, None] * 32
              + tl.arange(0, 32)[None, None, :])
    # table shifts: [group, r, rr, s] -> rows 16 g + 8 rr + r, blocks 4 q + s
    ur = (expert * N + 16 * (g0 + tl.arange(0, N16)))[:, None, None, None] \
        + tl.arange(0, 8)[None, :, None, None] + 8 * tl.arange(0, 2)[None, None, :, None]
    u_ptrs = u_ptr + ur.to(tl.int64) * (K_PAD // 32) + tl.arange(0, 4)[None, None, None, :]
    # activation halves: column k' = 16 s + 4 c + i of a half is 32 s + 4 c + i (+ 16)
    kp = tl.arange(0, 64)
    a_cols = 32 * (kp // 16) + kp % 16
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # the table shifts and the group scales are loaded one step ahead into registers:
    # the pipeliner stages only the tiles that feed the dots
    u = tl.load(u_ptrs)  # [N16, 8, 2, 4]
    xs = tl.load(xs_ptr + rows * GROUPS, mask=m_mask, other=0.0)
    for k0 in range(0, K, 128):
        cols = k0 + a_cols
        a_lo = tl.load(x_ptr + rows[:, None] * K + cols[None, :],
                       mask=m_mask[:, None] & (cols < K)[None, :], other=0.0)
        a_hi = tl.load(x_ptr + rows[:, None] * K + (cols + 16)[None, :],
                       mask=m_mask[:, None] & ((cols + 16) < K)[None, :], other=0.0)
        wb = tl.load(w_ptrs)
        u_ptrs += 4
        more = k0 + 128 < K
        u_next = tl.load(u_ptrs, mask=more, other=0)
        xs_next = tl.load(xs_ptr + rows * GROUPS + k0 // 128 + 1, mask=m_mask & more, other=0.0)
        ub = tl.broadcast_to(u[:, :, None, :, :, None], (N16, 8, 4, 2, 4, 4)).reshape(N16, 32, 32)
        lo, hi = tl.inline_asm_elementwise(_DECODE, "=r,=r,r,r", [wb, ub],
                                           dtype=(tl.uint8, tl.uint8), is_pure=True, pack=4)
        lo = tl.permute(lo.reshape(N16, 8, 4, 2, 4, 4), (0, 3, 1, 4, 2, 5)).reshape(BLOCK_N, 64)
        hi = tl.permute(hi.reshape(N16, 8, 4, 2, 4, 4), (0, 3, 1, 4, 2, 5)).reshape(BLOCK_N, 64)
        if PROMOTE:  # each 128-column group's partial sum times its activation scales
            part = tl.dot(lo.to(tl.float8e4nv, bitcast=True), tl.trans(a_lo))
            part = tl.dot(hi.to(tl.float8e4nv, bitcast=True), tl.trans(a_hi), part)
            acc += part * xs[None, :]
        else:  # speed bound: activation scales taken as 1 (a per-token scale would do)
            acc = tl.dot(lo.to(tl.float8e4nv, bitcast=True), tl.trans(a_lo), acc)
            acc = tl.dot(hi.to(tl.float8e4nv, bitcast=True), tl.trans(a_hi), acc)
        u = u_next
        xs = xs_next
        w_ptrs += 1024
    offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    rowf = tl.load(rowf_ptr + expert * N + offs_n)
    out = acc * rowf[:, None]
    tl.store(out_ptr + rows[None, :] * N + offs_n[:, None], out.to(tl.bfloat16),
             mask=m_mask[None, :])


@triton.jit
def fp8_dense_kernel(x_ptr, w_ptr, out_ptr, R, N, K,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The bound without a decode: E4M3 weights [E, N, K] read as they are (a plain
    FP8 grouped GEMM, both operands through shared memory), 128 columns a step."""
    blk, nt = _block_and_tile(N, BLOCK_N)
    blocks_per_expert = tl.cdiv(R, BLOCK_M)
    expert = blk // blocks_per_expert
    offs_m = (blk % blocks_per_expert) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < R
    rows = (expert * R + offs_m).to(tl.int64)
    offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    n_rows = (expert * N + offs_n).to(tl.int64)
    offs_k = tl.arange(0, 128)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, 128):
        k_mask = (k0 + offs_k) < K
        a = tl.load(x_ptr + rows[:, None] * K + (k0 + offs_k)[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + n_rows[:, None] * K + (k0 + offs_k)[None, :], mask=k_mask[None, :],
                    other=0.0)
        acc = tl.dot(w, tl.trans(a), acc)
    tl.store(out_ptr + rows[None, :] * N + offs_n[:, None], acc.to(tl.bfloat16),
             mask=m_mask[None, :])


def fold_scales(packed: torch.Tensor,
                scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MXFP4 [E, N, K/2] codes and scale bytes [E, N, K/32] -> (codes re-quantized where
    a block is below the window, table shift bytes U [E, N, K/32], row factors [E, N])."""
    s = scales.to(torch.int32)
    c = s.amax(dim=-1, keepdim=True)
    t = s - c + 6
    low = t < -5
    if low.any():  # re-quantize those blocks at t = -5
        vals = e2m1_to_float(unpack_fp4(packed)).reshape(*s.shape, 32)
        shift = torch.exp2((t.clamp(max=-5) - (-5)).to(torch.float32)).unsqueeze(-1)
        codes = float_to_e2m1(vals * shift).reshape(*packed.shape[:-1], -1)
        packed = torch.where(low.repeat_interleave(16, dim=-1), pack_fp4(codes), packed)
    u = ((t.clamp(min=-5) + 5) << 3).to(torch.uint8)
    rowf = torch.exp2((c.squeeze(-1) - 133).to(torch.float32))
    return packed.contiguous(), u.contiguous(), rowf.contiguous()


def to_words(packed: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Packed codes [E, N, K/2] -> weight words [E, N/16, K_PAD/128, 8 r, 4 c, 2 rr, 4 s,
    4 i] bytes (low nibble: row 16 g + 8 rr + r, column 128 q + 32 s + 4 c + i; high
    nibble: that column + 16), K padded to 128 with zero codes; u padded to K_PAD/32."""
    E, N, half = packed.shape
    K = 2 * half
    k_pad = -(-K // 128) * 128
    codes = unpack_fp4(packed).reshape(E, N, K)
    codes = torch.nn.functional.pad(codes, (0, k_pad - K))
    c = codes.reshape(E, N // 16, 2, 8, k_pad // 128, 4, 2, 4, 4)  # e g rr r q s h c i
    c = c.permute(0, 1, 4, 3, 7, 2, 5, 8, 6)  # e g q r c rr s i h
    byte = (c[..., 0] | (c[..., 1] << 4)).to(torch.uint8).contiguous()
    u = torch.nn.functional.pad(u, (0, k_pad // 32 - u.shape[-1])).contiguous()
    return byte.reshape(E, -1), u, k_pad


def time_ms(fn) -> float:
    """Median ms of ``fn()`` over CUDA events (mxmoe.bench.timing)."""
    return time_calls(lambda _: fn(), torch.device("cuda"), warmup=5, repeats=50,
                      budget_s=5.0).ms


def checked_error(fn, label: str, out: torch.Tensor, want: torch.Tensor) -> float | None:
    """Run a probe variant ``fn`` once (it writes ``out``) and return its relative error
    against ``want``; None, after printing why, if it fails to compile or run (a probe
    reports the variant and goes on)."""
    try:
        fn()
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 (a probe: report and go on)
        print(f"{label}: failed: {type(exc).__name__}: {exc}"[:600], flush=True)
        return None
    return float((out.float() - want).norm() / want.norm())


def bf16_bmm_row(x: torch.Tensor, n: int, flops: float) -> dict:
    """The cuBLAS peer of a probe's grouped GEMM: ``torch.bmm`` of its tokens ``x``
    [E, R, K] with random BF16 weights [E, K, n] (4x the MXFP4 bytes). Prints and returns
    its result row; ``flops`` is the GEMM's."""
    weights = torch.randn(x.shape[0], x.shape[2], n, device=x.device, dtype=torch.bfloat16)
    ms = time_ms(lambda: torch.bmm(x, weights))
    print(f"bf16 bmm: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    return {"impl": "bf16-dense-bmm", "ms": ms, "TFLOPs": flops / ms / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--n", type=int, default=5760)
    p.add_argument("--k", type=int, default=2880)
    p.add_argument("--tiles", default="64x128x8x3,128x128x8x2,128x64x4x3,64x64x4x3",
                   help="BLOCK_M x BLOCK_N x warps x stages, comma-separated")
    p.add_argument("--dense-tiles", default="128x128x8x3,64x128x4x3,128x128x8x4",
                   help="tiles of the no-decode FP8 bound, same form")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    E, R, N, K = args.experts, args.rows, args.n, args.k
    torch.manual_seed(0)
    dev = "cuda"
    w = torch.randn(E, N, K, device=dev) * 0.02
    packed, scales = quantize_mx(w, "mxfp4")
    del w
    wq, u, rowf = fold_scales(packed, scales)
    wq, u, k_pad = to_words(wq, u)
    x = torch.randn(E * R, K, device=dev, dtype=torch.bfloat16)
    x8, xs = quantize_fp8_per_token_group(x, 128)
    out = torch.empty(E * R, N, device=dev, dtype=torch.bfloat16)
    # reference in float32, one expert at a time
    ref = torch.empty(E * R, N, device=dev, dtype=torch.float32)
    xdeq = torch.nn.functional.pad(x8.float(), (0, -K % 128)).reshape(E * R, -1, 128)
    xdeq = (xdeq * xs[..., None]).reshape(E * R, -1)[:, :K]
    ref_unscaled = torch.empty_like(ref)
    for e in range(E):
        wd = dequantize_mx(packed[e], scales[e], "mxfp4", dtype=torch.float32)
        ref[e * R:(e + 1) * R] = xdeq[e * R:(e + 1) * R] @ wd.T
        ref_unscaled[e * R:(e + 1) * R] = x8[e * R:(e + 1) * R].float() @ wd.T
    flops = 2.0 * E * R * N * K
    results = {"shape": dict(E=E, R=R, N=N, K=K), "device": torch.cuda.get_device_name(),
               "rows": []}
    results["rows"].append(bf16_bmm_row(x.reshape(E, R, K), N, flops))
    for spec in args.tiles.split(","):
        promote = not spec.endswith("np")
        bm, bn, nw, ns = (int(v) for v in spec.removesuffix("np").split("x"))
        grid = (E * triton.cdiv(R, bm) * triton.cdiv(N, bn),)
        fn = lambda: w4a8_kernel[grid](x8, xs, wq, u, rowf, out, R, N, K, k_pad,  # noqa: E731
                                       xs.shape[1], BLOCK_M=bm, BLOCK_N=bn, PROMOTE=promote,
                                       num_warps=nw, num_stages=ns)
        err = checked_error(fn, f"w4a8 {spec}", out, ref if promote else ref_unscaled)
        if err is None:
            continue
        ms = time_ms(fn)
        print(f"w4a8 {spec}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s rel err {err:.2e}",
              flush=True)
        results["rows"].append({"impl": "w4a8", "tile": spec, "ms": ms,
                                "TFLOPs": flops / ms / 1e9, "rel_err": err})
    # the no-decode bound: the same weights as E4M3 values v * 2**t (row factors dropped)
    w8 = torch.empty(E, N, K, device=dev, dtype=torch.float8_e4m3fn)
    for e in range(E):
        wd = dequantize_mx(packed[e], scales[e], "mxfp4", dtype=torch.float32)
        w8[e] = (wd / rowf[e][:, None]).to(torch.float8_e4m3fn)
    for spec in filter(None, args.dense_tiles.split(",")):
        bm, bn, nw, ns = (int(v) for v in spec.split("x"))
        grid = (E * triton.cdiv(R, bm) * triton.cdiv(N, bn),)
        fn = lambda: fp8_dense_kernel[grid](x8, w8, out, R, N, K, BLOCK_M=bm,  # noqa: E731
                                            BLOCK_N=bn, num_warps=nw, num_stages=ns)
        fn()
        torch.cuda.synchronize()
        ms = time_ms(fn)
        print(f"fp8 dense (no decode) {spec}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s",
              flush=True)
        results["rows"].append({"impl": "fp8-dense-no-decode", "tile": spec, "ms": ms,
                                "TFLOPs": flops / ms / 1e9})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
