"""mxmoe-emulation: the mxmoe backends that need no vendor library.

Two backends, registered through the ``mxmoe.backends`` entry points:

* ``emulation`` (:mod:`mxmoe_emulation.torch_backend`): plain PyTorch on any device,
  every scheme mxmoe can express; the always-available, lowest-priority fallback.
* ``triton`` (:mod:`mxmoe_emulation.triton_backend`): Triton kernels that keep the
  weights in MX layout and dequantize them inside the grouped GEMMs.

Importing this package imports neither backend.
"""
