"""Probe: does a hand-written Hopper kernel that decodes a warpgroup's next MXFP4 weights
while its own wgmma runs reach the BF16 tensor rate at gpt-oss-120b's shapes, and what
does it make of the whole layer? (triton_notes.md, v35-v37; the premise of the CUDA path
the notes ask the owners about.)

One grouped GEMM, E experts x R token rows, N x K weights (default: GEMM1 at M = 4096
with no padding, 128 x 128 x 5760 x 2880; ``--rows 16 --experts 29``: the weight bytes of
GEMM1 at M = 8, where each touched expert has a token row or two and the GEMM is a
stream of weights), on the same inputs:

* ``cuda-overlap``: ``hopper_mixed_probe.cu`` (see its header), compiled with nvcc for
  sm_90a and launched through the CUDA driver API (no torch extension, so no C++ build
  of torch's headers); variants by token stages and grid (one CTA per tile, or one per
  SM looping over tiles);
* ``triton-table``: the ``triton`` backend's own GEMM kernel (``moe_gemm_kernel``, no
  gate, no bias, no router weight) on the same weights, with its M = 4096 tile and the
  128-token one;
* ``bf16-dense-bmm``: ``torch.bmm`` of the same shapes in BF16 (cuBLAS, reading BF16
  weights);

each checked against the float32 product of the same MXFP4 weights (relative error).

``--layer M [--balanced]`` runs the layer instead: routing as the bench draws it (or one
that gives every expert the same number of slots), the kernel's GEMM1 and GEMM2 modes
with the torch glue of :class:`SortedTokens`, checked against ``mxmoe.reference`` and
timed against the ``triton`` backend's layer on the same inputs.

Run on the GPU machine: ``python3 benchmarks/hopper_mixed_probe.py [--json PATH]``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import torch
import triton
from mxmoe import preset, reference_experts, relative_error, route
from mxmoe.bench.workload import device_weights, input_sets
from mxmoe.formats import dequantize_mx, quantize_mx
from mxmoe.reference import tolerance
from mxmoe_emulation.triton_backend.kernels import moe_gemm_kernel
from mxmoe_emulation.triton_backend.launch import moe_forward
from mxmoe_emulation.triton_backend.layout import convert, fragment_words
from w4a8_probe import bf16_bmm_row, checked_error, time_ms

SOURCE = pathlib.Path(__file__).with_name("hopper_mixed_probe.cu")
CONSUMER_THREADS, PRODUCER_THREADS = 256, 32
#: CTAs an SM holds, by token rows (registers: 165 at 128 rows, 96 at 16)
CTAS_PER_SM = {128: 1, 16: 2}
#: the backend's tiles for comparison, by token rows: (block_m, block_n, warps, stages,
#: block_k), its M = 4096 and 16384 tiles, or its decode tile (unsplit)
TRITON_TILES = {128: ((64, 128, 8, 3, 64), (128, 128, 8, 3, 64)),
                16: ((16, 64, 4, 3, 128), (16, 64, 4, 4, 128))}


def nvcc() -> str:
    """The nvcc to build with: $CUDA_HOME's, /usr/local/cuda's or the one on PATH."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if not found:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    return found


class Driver:
    """The few CUDA driver calls the probe needs, through ctypes."""

    _MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(rc, ctypes.byref(name))
            raise RuntimeError(f"{what}: CUDA driver error {rc} ({name.value})")

    def function(self, cubin: str, name: str, shared: int) -> ctypes.c_void_p:
        module, fn = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cuModuleLoad(ctypes.byref(module), cubin.encode()), "cuModuleLoad")
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()),
                   "cuModuleGetFunction")
        self.check(self.lib.cuFuncSetAttribute(fn, self._MAX_DYNAMIC_SHARED, shared),
                   "cuFuncSetAttribute")
        return fn

    _DTYPES = {torch.bfloat16: 9, torch.int32: 3}  # CUtensorMapDataType

    def tensor_map_2d(self, t: torch.Tensor, box_cols: int, box_rows: int,
                      swizzle: bool = True) -> ctypes.Array:
        """A TMA descriptor of the 2-D tensor ``t`` (row-major, bf16 or int32) with boxes
        of box_rows x box_cols, with the 128-byte swizzle (box_cols elements must then
        be 128 bytes) or none."""
        if t.dtype not in self._DTYPES or t.dim() != 2 or t.stride(1) != 1:
            raise ValueError("t: expected a row-major 2-D bfloat16 or int32 tensor")
        desc = (ctypes.c_uint64 * 16)()
        dims = (ctypes.c_uint64 * 2)(t.shape[1], t.shape[0])
        strides = (ctypes.c_uint64 * 1)(t.stride(0) * t.element_size())
        box = (ctypes.c_uint32 * 2)(box_cols, box_rows)
        unit = (ctypes.c_uint32 * 2)(1, 1)
        no_interleave, l2_256b, no_oob_fill = 0, 3, 0
        swizzle_mode = 3 if swizzle else 0  # 128-byte, or none
        self.check(self.lib.cuTensorMapEncodeTiled(
            desc, self._DTYPES[t.dtype], 2, ctypes.c_void_p(t.data_ptr()), dims, strides, box,
            unit, no_interleave, swizzle_mode, l2_256b, no_oob_fill), "cuTensorMapEncodeTiled")
        return desc

    def launch(self, fn: ctypes.c_void_p, grid: int, block: int, shared: int,
               args: list) -> None:
        """Launch ``fn`` on torch's current stream; ``args`` are ctypes values (a tensor
        map is passed by value, as the kernel's __grid_constant__ parameter)."""
        params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self.check(self.lib.cuLaunchKernel(fn, grid, 1, 1, block, 1, 1, shared, stream,
                                           params, None), "cuLaunchKernel")


#: Variant flags (after the stages and grid letter, each after a "-"): their -D options.
FLAGS = {"f4": "PREFETCH=4", "l2": "L2_AHEAD=5", "l2x8": "L2_AHEAD=8", "wt": "W_TMA=1",
         "over0": "OVER_RUN=0", "over1": "OVER_RUN=1", "nodecode": "NO_DECODE=1",
         "nostore": "NO_STORE=1"}


def build(rows: int, stages: int, flags: list[str], workdir: str, mode: int = 0
          ) -> tuple[str, str]:
    """(cubin path, ptxas report) of the kernel for this many token rows, token stages,
    flags and mode (0: the plain GEMM, 1: the layer's GEMM1, 2: its GEMM2)."""
    cubin = os.path.join(workdir, "mixed_m{}_r{}_s{}{}.cubin".format(mode, rows, stages,
                                                                    "".join(flags)))
    defines = [f"-DTOKENS={rows}", f"-DSTAGES={stages}", f"-DMODE={mode}"]
    defines += [f"-D{FLAGS[f]}" for f in flags]
    cmd = [nvcc(), "-cubin", "-arch=sm_90a", "-O3", "-Xptxas", "-v", *defines,
           "-o", cubin, str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nvcc failed:\n{done.stderr[-3000:]}")
    report = " ".join(re.findall(r"Used \d+ registers|\d+ bytes spill stores|C75\d\d[^\n]*",
                                 done.stderr))
    return cubin, report


@dataclasses.dataclass
class MixedKernel:
    """One build of the kernel, loaded, with the shared memory it launches with."""

    driver: Driver
    fn: ctypes.c_void_p
    shared: int
    report: str

    @classmethod
    def load(cls, driver: Driver, workdir: str, rows: int, stages: int, flags: list[str],
             mode: int = 0) -> "MixedKernel":
        cubin, report = build(rows, stages, flags, workdir, mode)
        block = rows + (32 if mode else 0)  # the layer modes' blocks: 32 overflow rows more
        box = block * 64 * 2  # a stage's tokens (64 columns), or an output box (64 rows)
        stage_words = 128 * 64 // 2 if "wt" in flags else 0
        exchange = block // 2 * 128 * 4 if mode == 1 else 0  # a float per accumulator
        shared = stages * (box + stage_words + 16) + 2 * box + exchange + 1024
        return cls(driver, driver.function(cubin, "mixed_gemm", shared), shared, report)

    def launch(self, grid: int, args: list) -> None:
        self.driver.launch(self.fn, grid, CONSUMER_THREADS + PRODUCER_THREADS, self.shared, args)


def kernel_args(x_map, out_map, w_map, words: torch.Tensor, scales: torch.Tensor, n: int,
                k: int, n_tiles: int, units: int, block_expert: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, route_w: torch.Tensor | None = None,
                alpha: float = 0.0, limit: float = 0.0, half_rows: int = 0,
                block_list: torch.Tensor | None = None,
                list_bounds: torch.Tensor | None = None) -> list:
    """mixed_gemm's parameters, in its order."""
    def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
        return ctypes.c_void_p(0 if t is None else t.data_ptr())
    return [x_map, out_map, w_map, ptr(words), ptr(scales), ctypes.c_int(n), ctypes.c_int(k),
            ctypes.c_int(scales.shape[2]), ctypes.c_int(n_tiles), ctypes.c_int(units),
            ptr(block_expert), ptr(bias), ptr(route_w), ctypes.c_float(alpha),
            ctypes.c_float(limit), ctypes.c_int(half_rows), ptr(block_list), ptr(list_bounds)]


def triton_gemm(x, words, scales, out, experts: int, rows: int, n: int, k: int, block_m: int,
                block_n: int, warps: int, stages: int, block_k: int):
    """The backend's GEMM kernel as a plain grouped GEMM: every block a full run of
    block_m consecutive rows of one expert, no gate, bias or router weight."""
    dev = x.device
    blocks = experts * rows // block_m
    sorted_slots = torch.arange(experts * rows, device=dev, dtype=torch.int32)
    block_expert = torch.arange(experts, device=dev, dtype=torch.int32).repeat_interleave(
        rows // block_m)
    block_rows = torch.full((blocks,), block_m, device=dev, dtype=torch.int32)
    ones = torch.ones(experts * rows, device=dev, dtype=torch.float32)
    w32 = words.view(torch.int32)
    grid = (blocks * triton.cdiv(n, block_n),)

    def call() -> None:
        moe_gemm_kernel[grid](
            x, x.stride(0), w32, w32.stride(0), w32.stride(1),
            scales, scales.stride(0), scales.stride(1), scales.shape[2],
            w32, 0, out, out.stride(0), 0,
            sorted_slots, block_expert, block_rows, sorted_slots, sorted_slots, ones,
            n, k, experts * rows, experts, 1.0, 1.0, 0.0, 0.0,
            TOP_K=1, GATED=False, ACTIVATION="swigluoai", HAS_LIMIT=False, HAS_BIAS=False,
            WEIGHT_ON_INPUT=False, WEIGHT_ON_OUTPUT=False, GATHER_A=False, EPB=2, ASM=True,
            SWAP=True, INTERPRET=False, SCALE_BIAS=126, SPLIT_K=1, HAS_MAP=False,
            SLOTS_PAD=0, TAIL_M=0, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PDL=False,
            num_warps=warps, num_stages=stages, enable_fp_fusion=True)
    return call


class SortedTokens:
    """The torch glue of the layer probe: each expert's slots in blocks of up to BLOCK
    rows, as the kernels' layer modes read them (rows past 128 of a block go through the
    kernel's overflow MMA). ``align`` (no host synchronization) fills the block table, each
    block's row count, a list of the used blocks with those of more than 128 rows first
    and its bounds ([0, n_over, n_over, used]: one launch per kind), each slot's row in the
    sorted order, the tokens gathered into that order (padding rows repeat token 0; their
    router weight is 0, so GEMM2 zeroes them) and the router weights; ``combine`` sums
    GEMM2's rows back per token."""

    BLOCK = 160

    def __init__(self, m: int, top_k: int, experts: int, hidden: int,
                 intermediate: int, dtype: torch.dtype, device: torch.device) -> None:
        self.m, self.top_k, self.experts, self.slots = m, top_k, experts, m * top_k
        self.blocks = self.slots // self.BLOCK + experts  # at most: every expert's last partial
        rows = self.blocks * self.BLOCK
        self.block_expert = torch.empty(self.blocks, dtype=torch.int32, device=device)
        self.block_rows = torch.empty(self.blocks, dtype=torch.int32, device=device)
        self.block_list = torch.empty(self.blocks, dtype=torch.int32, device=device)
        self.list_bounds = torch.zeros(4, dtype=torch.int32, device=device)
        self.position = torch.empty(self.slots, dtype=torch.int64, device=device)
        self.source = torch.empty(rows, dtype=torch.int64, device=device)
        self.tokens = torch.empty(rows, hidden, dtype=dtype, device=device)
        self.route_w = torch.empty(rows, dtype=torch.float32, device=device)
        self.act = torch.empty(rows, intermediate, dtype=dtype, device=device)
        self.out = torch.empty(rows, hidden, dtype=dtype, device=device)
        self.slot_index = torch.arange(self.slots, device=device)

    def align(self, x: torch.Tensor, topk_w: torch.Tensor, topk_ids: torch.Tensor) -> None:
        ids = topk_ids.reshape(-1).to(torch.int64)
        counts = torch.zeros(self.experts, dtype=torch.int64, device=ids.device)
        counts.scatter_add_(0, ids, torch.ones_like(ids))
        blocks = (counts + self.BLOCK - 1) // self.BLOCK
        ends = torch.cumsum(blocks, 0)
        first_block = ends - blocks
        first_slot = torch.cumsum(counts, 0) - counts
        order = torch.argsort(ids, stable=True)
        expert = ids[order]
        row = first_block[expert] * self.BLOCK + (self.slot_index - first_slot[expert])
        self.position[order] = row
        block = row // self.BLOCK
        self.block_expert.fill_(-1)
        self.block_expert[block] = expert.to(torch.int32)
        self.block_rows.zero_()
        self.block_rows.scatter_add_(0, block, torch.ones_like(block, dtype=torch.int32))
        over = self.block_rows > 128
        self.block_list.copy_(torch.argsort((~over).to(torch.int8), stable=True))
        n_over = over.sum().view(1).to(torch.int32)
        self.list_bounds[1:3].copy_(n_over.expand(2))
        self.list_bounds[3:4].copy_(ends[-1:])
        self.source.zero_()
        self.source[row] = order // self.top_k
        torch.index_select(x, 0, self.source, out=self.tokens)
        self.route_w.zero_()
        self.route_w[row] = topk_w.reshape(-1)[order].to(torch.float32)

    def combine(self) -> torch.Tensor:
        rows = self.out.index_select(0, self.position).view(self.m, self.top_k, -1)
        return rows.sum(1, dtype=torch.float32).to(self.out.dtype)


def layer(args: argparse.Namespace) -> None:
    """The whole layer at --layer M tokens: the two GEMMs in the kernel's layer modes with
    the torch glue of SortedTokens, against the triton backend's layer on the same inputs
    and the float64 reference."""
    dev = torch.device("cuda")
    config = preset(args.preset)
    raw = device_weights(config, dev, seed=1)
    tw = convert(config, raw)
    if (tw.w13_scale_bias, tw.w2_scale_bias) != (126, 126):
        raise SystemExit("the kernel assumes unbiased scales (scale_bias 126)")
    m, top_k, E = args.layer, config.top_k, config.num_experts
    H, I = config.hidden_size, config.intermediate_size
    inputs = input_sets(config, m, 1, dev, seed=2)[0]
    x = inputs.hidden_states
    topk_w, topk_ids = route(inputs.router_logits, config)
    if args.balanced:  # every expert the same number of slots: the bound without padding
        slot = torch.arange(m * top_k, device=dev).view(m, top_k)
        topk_ids = (slot % E).to(topk_ids.dtype)
    sorted_tokens = SortedTokens(m, top_k, E, H, I, x.dtype, dev)
    driver = Driver()
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    w13, w2 = tw.w13.view(torch.int32), tw.w2.view(torch.int32)
    # boxes of a whole block for the overflow launches, of 128 rows for the others
    maps = {kind: [driver.tensor_map_2d(t, 64, SortedTokens.BLOCK if kind else 128)
                   for t in (sorted_tokens.tokens, sorted_tokens.act, sorted_tokens.out)]
            for kind in (1, 0)}
    units1 = sorted_tokens.blocks * (I // 64)
    units2 = sorted_tokens.blocks * -(-H // 128)
    bounds = sorted_tokens.list_bounds

    def layer_args(kind: int) -> tuple[list, list]:
        """GEMM1's and GEMM2's parameters for the blocks of one kind (1: over 128 rows)."""
        part = bounds[2 * (1 - kind):]  # [0, n_over) or [n_over, used)
        tokens_map, act_map, out_map = maps[kind]
        one = kernel_args(tokens_map, act_map, tokens_map, w13, tw.w13_scale, 2 * I, H,
                          I // 64, units1, sorted_tokens.block_expert, tw.w13_bias, None,
                          config.swiglu_alpha, config.swiglu_limit, I,
                          sorted_tokens.block_list, part)
        two = kernel_args(act_map, out_map, act_map, w2, tw.w2_scale, H, I, -(-H // 128),
                          units2, sorted_tokens.block_expert, tw.w2_bias, sorted_tokens.route_w,
                          block_list=sorted_tokens.block_list, list_bounds=part)
        return one, two

    args_over, args_rest = layer_args(1), layer_args(0)
    results = {"device": torch.cuda.get_device_name(), "preset": args.preset, "M": m,
               "balanced": args.balanced, "blocks_used": None, "blocks_over": None, "rows": []}

    def timed(name: str, fn, extra: dict | None = None) -> None:
        ms = time_ms(fn)
        row = {"impl": name, "ms": ms, **(extra or {})}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    stages = 4  # 6 stages were slower in every layer run (v37a-c)
    with tempfile.TemporaryDirectory() as workdir:
        kernels = {(mode, over): MixedKernel.load(driver, workdir, 128, stages,
                                                  ["l2", f"over{over}"], mode=mode)
                   for mode in (1, 2) for over in (1, 0)}

        def gemm(mode: int) -> None:
            for over, params in ((1, args_over), (0, args_rest)):
                kernels[mode, over].launch(min(units1 if mode == 1 else units2, sms),
                                           params[mode - 1])

        def experts() -> torch.Tensor:
            sorted_tokens.align(x, topk_w, topk_ids)
            gemm(1)
            gemm(2)
            return sorted_tokens.combine()

        rows = min(m, 64)
        ref = reference_experts(config, raw, x[:rows], topk_w[:rows], topk_ids[:rows])
        err = relative_error(experts()[:rows], ref)
        bounds_now = sorted_tokens.list_bounds.tolist()
        results["blocks_used"], results["blocks_over"] = bounds_now[3], bounds_now[1]
        reports = {f"ptxas{mode}{over}": k.report for (mode, over), k in kernels.items()}
        timed(f"cuda-layer-s{stages}", experts,
              {**reports, "rel_err": err, "tolerance": tolerance(config)})
        timed(f"cuda-gemm1-s{stages}", lambda: gemm(1))
        timed(f"cuda-gemm2-s{stages}", lambda: gemm(2))
    timed("glue-align", lambda: sorted_tokens.align(x, topk_w, topk_ids))
    timed("glue-gather", lambda: torch.index_select(x, 0, sorted_tokens.source,
                                                  out=sorted_tokens.tokens))
    timed("glue-combine", sorted_tokens.combine)
    expected = moe_forward(x, topk_w, topk_ids, None, tw)
    timed("triton-layer", lambda: moe_forward(x, topk_w, topk_ids, None, tw),
          {"rel_err": relative_error(expected[:rows], ref)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--rows", type=int, default=128, choices=sorted(CTAS_PER_SM),
                   help="token rows per expert (the kernel's wgmma N)")
    p.add_argument("--n", type=int, default=5760)
    p.add_argument("--k", type=int, default=2880)
    p.add_argument("--variants", default="4p-l2,4p,4p-l2x8,5p-l2,6p-l2,3p-l2,4a-l2,"
                                         "4p-l2-nostore,4p-l2-nodecode,4p-l2",
                   help="cuda-overlap variants, comma-separated: token stages, then 'p' "
                        "(one CTA per SM, looping over tiles) or 'a' (one CTA per tile), "
                        "then flags: -f4 (weights four steps ahead), -l2 / -l2x8 (and five "
                        "/ eight ahead into L2), -wt (the words by TMA in the stages), and "
                        "the bounds "
                        "-nostore (no epilogue stores) and -nodecode (raw words multiplied)")
    p.add_argument("--layer", type=int, default=0,
                   help="instead: the whole layer at this many tokens (GEMM1, GEMM2 and "
                        "torch glue), against the triton backend's layer")
    p.add_argument("--preset", default="gpt-oss-120b", help="the layer's preset (--layer)")
    p.add_argument("--balanced", action="store_true",
                   help="--layer with a routing that gives every expert M * top_k / E slots")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.layer:
        layer(args)
        return
    E, N, K, R = args.experts, args.n, args.k, args.rows
    if N % 128 or K % 64:
        raise SystemExit(f"--n must be a multiple of 128 and --k of 64, got {N}, {K}")
    torch.manual_seed(0)
    dev = torch.device("cuda")
    packed, scales = quantize_mx(torch.randn(E, N, K, device=dev) * 0.02, "mxfp4")
    words = fragment_words(packed)
    scales_padded = torch.nn.functional.pad(scales, (0, -scales.shape[-1] % 16)).contiguous()
    x = torch.randn(E * R, K, device=dev, dtype=torch.bfloat16)
    ref = torch.empty(E * R, N, device=dev, dtype=torch.float32)
    for e in range(E):
        wd = dequantize_mx(packed[e], scales[e], "mxfp4", dtype=torch.float32)
        ref[e * R:(e + 1) * R] = x[e * R:(e + 1) * R].float() @ wd.T
    out = torch.empty(E * R, N, device=dev, dtype=torch.bfloat16)
    flops = 2.0 * E * R * N * K
    # bytes a call must move: the packed weights and their scales, tokens in, outputs out
    moved = packed.numel() + scales.numel() + x.numel() * 2 + out.numel() * 2
    results = {"shape": dict(E=E, R=R, N=N, K=K), "device": torch.cuda.get_device_name(),
               "rows": []}

    def record(impl: str, variant: str, fn, extra: dict | None = None) -> None:
        out.fill_(float("nan"))
        err = checked_error(fn, f"{impl} {variant}", out, ref)
        if err is None:
            return
        ms = time_ms(fn)
        row = {"impl": impl, "variant": variant, "ms": ms, "TFLOPs": flops / ms / 1e9,
               "TBps": moved / ms / 1e9, "rel_err": err, **(extra or {})}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)

    driver = Driver()
    x_map = driver.tensor_map_2d(x, 64, R)
    out_map = driver.tensor_map_2d(out, 64, R)
    # the words as rows of 16-row groups (a group's 64-column runs of 128 words in a row):
    # a box is a step's 128 words of 8 groups, the 128 weight rows of a tile
    w_map = driver.tensor_map_2d(words.view(torch.int32).reshape(E * N // 16, 2 * K), 128, 8,
                                 swizzle=False)
    tiles = E * (N // 128)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    with tempfile.TemporaryDirectory() as workdir:
        for spec in filter(None, args.variants.split(",")):
            head, *flags = spec.split("-")
            stages, grid_kind = int(head[:-1]), head[-1]
            grid = min(tiles, sms * CTAS_PER_SM[R]) if grid_kind == "p" else tiles
            kernel = MixedKernel.load(driver, workdir, R, stages, flags)
            kargs = kernel_args(x_map, out_map, w_map, words, scales_padded, N, K, N // 128,
                                tiles)
            record("cuda-overlap", spec, lambda: kernel.launch(grid, kargs),
                   {"ptxas": kernel.report})
    for block_m, block_n, warps, stages, block_k in TRITON_TILES[R]:
        record("triton-table", f"{block_m}x{block_n}x{warps}x{stages}-k{block_k}",
               triton_gemm(x, words, scales_padded, out, E, R, N, K, block_m, block_n,
                           warps, stages, block_k))
    # the same weight bytes read by torch.sum (the bench's ceiling kernel), at this size
    as_float = words.view(torch.float32)
    ms = time_ms(lambda: as_float.sum())
    results["rows"].append({"impl": "plain-read-torch-sum", "ms": ms,
                            "TBps": as_float.numel() * 4 / ms / 1e9})
    print(f"torch.sum of the weight bytes: {ms:.4f} ms "
          f"{as_float.numel() * 4 / ms / 1e9:.2f} TB/s", flush=True)
    results["rows"].append(bf16_bmm_row(x.reshape(E, R, K), N, flops))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
