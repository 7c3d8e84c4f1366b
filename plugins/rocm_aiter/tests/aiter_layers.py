"""Layers each backend supports, shared by the tests: small, with gpt-oss's math."""

from __future__ import annotations

from mxmoe import MoEConfig

W4A8 = "aiter-w4a8"
MXFP8 = "aiter-mxfp8"
BACKENDS = (W4A8, MXFP8)

#: MXFP4 x static FP8, SwiGLU-OAI with biases, Renormalize: what aiter-w4a8 runs.
W4A8_LAYER = MoEConfig(
    num_experts=8, top_k=2, hidden_size=128, intermediate_size=128, activation="swigluoai",
    routing="renormalize", weight_format="mxfp4", activation_format="fp8_static",
    has_bias=True, name="w4a8-small",
)

#: MXFP8 x dynamic MXFP8 with scales rounded up (RCEIL, as aiter's quantizer computes
#: them), SwiGLU-OAI without biases: what aiter-mxfp8 runs.
MXFP8_LAYER = MoEConfig(
    num_experts=8, top_k=2, hidden_size=128, intermediate_size=128, activation="swigluoai",
    routing="renormalize", weight_format="mxfp8", activation_format="mxfp8_dynamic_rceil",
    has_bias=False, name="mxfp8-small",
)

LAYER = {W4A8: W4A8_LAYER, MXFP8: MXFP8_LAYER}
