"""The ``triton`` backend: fused MX-dequantizing grouped GEMMs for GPUs through Triton.

The fast path on hardware without native MX tensor cores (NVIDIA SM80+, AMD through
Triton). The weights stay in MX layout in device memory, never copied to BF16; each
weight tile is dequantized in registers inside the GEMM. One call of ``apply`` is one
custom op (``torch.ops.mxmoe_emulation.triton_moe``, opaque to ``torch.compile``) of
four kernel launches and no host synchronisation, so it can be captured in a CUDA
graph:

1. align: tokens' (token, k) slots grouped per local expert into blocks of BLOCK_M
   rows (counts, offsets and the sorted slot list computed on the device; slots of
   experts the expert map marks non-local dropped);
2. GEMM1: gathered token rows x w13 (gate and up tiles), + bias, activation
   (silu, swigluoai, swigluoai_uninterleave, swiglustep; alpha, beta, clamp limit)
   in the epilogue, router weight on the input when the config asks for it;
3. GEMM2: activation rows x w2, + bias, x router weight, one row per slot;
4. each token's top-k slot rows summed in a fixed order (deterministic).

Weight layout (what ``convert_weights`` returns, :class:`.layout.TritonWeights`): the
checkpoint's bytes, still packed, regrouped for the kernels (see :mod:`.layout`):

=============  ===========================================  ======================
tensor         MXFP4                                        MXFP8
=============  ===========================================  ======================
``w13``        uint8 [E, 2I, H/2], E2M1 codes as fragment   uint8 [E, 2I, H] (E4M3
               words: each 32-bit word the eight codes one  bytes viewed as uint8)
               thread holds of a 16 x 16 tensor-core
               operand piece, bit-placed for a cheap decode
``w13_scale``  uint8 E8M0 [E, 2I, ceil16(H/32)] (rows       same
               padded with zeros to 16 bytes)
``w2``         uint8 [E, H, I/2], fragment words            uint8 [E, H, I]
``w2_scale``   uint8 E8M0 [E, H, ceil16(I/32)]              same
biases         float32 [E, 2I] and [E, H]                   same
=============  ===========================================  ======================

w13's gate/up rows (interleaved in gpt-oss's checkpoints) become halves, all gate rows
then all up rows, in the weights, scales and biases: GEMM1 reads a tile's gate rows and
up rows as two runs of whole 16-row groups. H and I are padded to 64 for MXFP4 (a
fragment word's 64-column runs) and to the MX block (32) for MXFP8; partial tiles are
masked.

Supported: MXFP4 and MXFP8 weights, bf16 and fp16 activations, every activation,
biases, expert maps, ``apply_router_weight_on_input``. Not supported (the probe says
so): float32 activations and quantized activation formats.
"""

from .hooks import apply, convert_weights, supports_config

#: The version of the mxmoe hook contract this backend implements.
MXMOE_API_VERSION = 1

__all__ = ["MXMOE_API_VERSION", "apply", "convert_weights", "supports_config"]
