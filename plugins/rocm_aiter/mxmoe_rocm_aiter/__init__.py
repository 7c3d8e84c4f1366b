"""mxmoe backends for AMD MI355-class GPUs (gfx950) through ROCm aiter.

Two backends, registered under the ``mxmoe.backends`` entry-point group:

* ``aiter-w4a8`` (:mod:`mxmoe_rocm_aiter.w4a8`): MXFP4 weights x static FP8
  activations through aiter's Triton kernels; routes inside aiter.
* ``aiter-mxfp8`` (:mod:`mxmoe_rocm_aiter.mxfp8`): MXFP8 weights x MXFP8 activations
  through ``aiter.fused_moe`` and its FlyDSL two-stage GEMM; expert parallelism
  through aiter's expert mask.

aiter and FlyDSL are optional extras, imported lazily by the probes and hot paths
(:mod:`mxmoe_rocm_aiter.vendor`); importing this package imports neither. The weight
layouts are pure PyTorch in :mod:`mxmoe_rocm_aiter.layouts`.
"""

__version__ = "0.1.0"
