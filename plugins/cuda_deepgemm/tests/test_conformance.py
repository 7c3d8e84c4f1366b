"""The conformance kit through the fake deep_gemm, with the CPU taken for an SM100 GPU.

What passes here is this package's real code end to end -- probe, weight conversion,
permutation plan, FP8 quantization, activation, reduction -- with DeepGEMM's GEMMs
replaced by the fake (tests/fake_vendor), which checks every argument against the
documented contract and computes the product with reference math.

Tolerance: ``mxmoe.reference.tolerance(config)``, 3e-2 for FP8 activations. Why that
value fits this backend: FC1's input is quantized exactly as the reference does it
(same power-of-two 1x128 scales, same E4M3 rounding: identical bits), so it adds no
error; DeepGEMM writes FC1's output in BF16 (relative rounding 2**-9) before our
activation, which tips a few percent of the re-quantized E4M3 values one step (an
eighth of their binade) away from the reference's; FC2's BF16 output adds 2**-9.
Measured over 100 seeds, 16 tokens each: median 1.2%, worst 2.3%. (A single token's
error is carried by a handful of such elements and reaches 5%, so the kit judges FP8
layers over ``mxmoe.testing.checks.MIN_QUANTIZED_TOKENS`` tokens.)
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

import mxmoe
from mxmoe.testing import BackendConformance, Case, check_case, conformance_cases
from mxmoe_cuda_deepgemm.glue import workspace_rows

NAME = "deepgemm-mxfp4"
POW2 = "fp8_dynamic_1x128_pow2"


class TestDeepGEMMThroughFake(BackendConformance):
    """The kit's matrix: its MXFP4 x pow2-FP8 layers run; the rest skip with our reason."""

    backend = NAME
    device = "cpu"

    @pytest.fixture(autouse=True)
    def _sm100(self, sm100_with_fake: ModuleType) -> None:
        """CPU counted as SM100, deep_gemm the fake, a CUDA toolkit on CUDA_HOME."""


# The kit's other axes, moved to this backend's scheme: each activation with its
# alpha/beta/limit, no biases, fp16, a strided expert map, the router weight on the
# input (top-1) and 32 experts at top-4. (Routing is the core's, so its axes add
# nothing here; the kit's own cases above are gpt-oss's SWIGLUOAI with biases.)
AXES = ("act-silu", "act-swigluoai_uninterleave-beta0", "act-swiglustep-limit2", "nobias",
        "dtype-fp16", "ep-strided", "weight-on-input-top1", "many-experts-top4")
KIT_AXES = [Case(f"{c.id}-as-pow2", c.config.replace(activation_format=POW2), (67,))
            for c in conformance_cases() if c.id in AXES]


@pytest.mark.parametrize("case", KIT_AXES, ids=str)
def test_every_axis_of_the_kit(sm100_with_fake: ModuleType, case: Case) -> None:
    check_case(NAME, case, "cpu")


def test_deepgemm_packs_its_own_float32_scales(sm100_with_fake: ModuleType,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXMOE_DEEPGEMM_SCALE_FORMAT", "float32_pow2")
    base = KIT_AXES[0]
    check_case(NAME, base, "cpu")
    assert {call["scale_dtypes"] for call in sm100_with_fake.calls} == {
        (torch.float32, torch.int32)}


def test_alignment_is_deepgemms(sm100_with_fake: ModuleType) -> None:
    sm100_with_fake.set_mk_alignment_for_contiguous_layout(256)  # SM100's theoretical one
    base = next(c for c in KIT_AXES if c.id == "ep-strided-as-pow2")
    check_case(NAME, Case("align-256-ep", base.config, (7,)), "cpu")
    local = base.config.num_local_experts
    for call in sm100_with_fake.calls:
        assert call["rows"] == workspace_rows(7, base.config.top_k, local, 256)
        assert int(call["grouped_layout"].max()) < local  # only local experts reach it


def test_bad_scale_format_switch_names_itself(sm100_with_fake: ModuleType,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MXMOE_DEEPGEMM_SCALE_FORMAT", "float32")
    config = KIT_AXES[0].config
    layer = mxmoe.FusedMoE(config, backend=NAME, device="cpu")
    with pytest.raises(ValueError, match="MXMOE_DEEPGEMM_SCALE_FORMAT"):
        layer.load_weights(**mxmoe.random_weights(config).tensors())
