"""mxmoe-cuda-deepgemm: the ``deepgemm-mxfp4`` backend (MXFP4 x FP8 experts on NVIDIA
Blackwell through DeepGEMM). The backend itself is :mod:`mxmoe_cuda_deepgemm.backend`;
importing this package imports no vendor library and does not touch CUDA."""

__version__ = "0.1.0"
