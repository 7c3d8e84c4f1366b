"""The probes: on this CPU machine, with each piece of the vendor stack missing or broken,
and for every feature the backends leave out — each a distinct Verdict.no, none raising,
the device checked first and without creating a GPU context."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import mxmoe
from aiter_layers import BACKENDS, LAYER, MXFP8, MXFP8_LAYER, W4A8, W4A8_LAYER
from conftest import FAKE_AITER, FAKE_FLYDSL
from mxmoe import BackendError, FusedMoE, Verdict, select_backend
from mxmoe.registry import get_registry
from mxmoe.selection import probe
from mxmoe_rocm_aiter import device, vendor

HARDWARE = "requires ROCm gfx950 (MI355-class), found "


def verdict(backend: str, config: mxmoe.MoEConfig, dev: str = "cpu") -> Verdict:
    """The backend's own hook, called directly (no cache, nothing caught for it)."""
    return get_registry().backends[backend].call("supports_config", config=config,
                                                  device=torch.device(dev))


def vendor_imported() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in ("aiter", "flydsl"))


# -- discovery and import -------------------------------------------------------------------


def test_registered_through_entry_points():
    records = {r.name: r for r in mxmoe.explain(W4A8_LAYER, "cpu")}
    for name in BACKENDS:
        assert records[name].distribution == "mxmoe-rocm-aiter"
        assert records[name].version == "0.1.0"


def test_plugin_imports_without_aiter(no_real_aiter):
    import importlib

    for module in ("mxmoe_rocm_aiter", "mxmoe_rocm_aiter.w4a8", "mxmoe_rocm_aiter.mxfp8",
                   "mxmoe_rocm_aiter.layouts", "mxmoe_rocm_aiter.vendor"):
        importlib.import_module(module)
    assert vendor_imported() == []
    assert vendor.aiter_missing() is not None


def test_importing_and_probing_never_imports_aiter_even_when_installed():
    """In a fresh interpreter that *can* import aiter (the double), discovering the
    plugin and probing it on this CPU leaves aiter and FlyDSL unimported."""
    script = (
        "import sys, torch, mxmoe, mxmoe_rocm_aiter.w4a8, mxmoe_rocm_aiter.mxfp8\n"
        "import importlib.util; assert importlib.util.find_spec('aiter') is not None\n"
        "records = mxmoe.explain(mxmoe.preset('gpt-oss-mini'), 'cpu')\n"
        "assert any(r.name == 'aiter-w4a8' for r in records)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('aiter', 'flydsl')]\n"
        "assert not bad, bad\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(FAKE_AITER), str(FAKE_FLYDSL), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- this machine: the hardware is what is missing --------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dev", ["cpu", "meta"])
def test_this_machine_lacks_the_hardware(backend, dev):
    v = verdict(backend, LAYER[backend], dev)
    assert not v.supported and v.reason == HARDWARE + dev


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cuda_device_on_a_non_rocm_build_creates_no_context(backend):
    assert torch.version.hip is None
    v = verdict(backend, LAYER[backend], "cuda:0")
    assert not v.supported
    assert v.reason.startswith(HARDWARE + "cuda:0 on a ") and "(not ROCm)" in v.reason
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("backend", BACKENDS)
def test_forcing_a_backend_raises_its_reason(backend):
    with pytest.raises(BackendError, match=r"requires ROCm gfx950 \(MI355-class\), found cpu"):
        select_backend(LAYER[backend], "cpu", backend=backend)
    with pytest.raises(BackendError, match=backend):
        FusedMoE(LAYER[backend], backend=backend, device="cpu")


def test_the_device_is_checked_before_aiter_is_touched(vendor_sites, tmp_path):
    vendor_sites(_broken_aiter(tmp_path), FAKE_FLYDSL)
    for backend in BACKENDS:
        assert verdict(backend, LAYER[backend]).reason == HARDWARE + "cpu"
    assert vendor_imported() == []


# -- the device check on hardware this machine does not have ----------------------------------


def _rocm_gpu(monkeypatch: pytest.MonkeyPatch, arch: str, name: str) -> None:
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(gcnArchName=arch, name=name))


def test_device_check_names_other_amd_gpus(monkeypatch):
    _rocm_gpu(monkeypatch, "gfx942:sramecc+:xnack-", "AMD Instinct MI300X")
    assert device.gfx950_missing(torch.device("cuda", 0)) == (
        HARDWARE + "gfx942 (AMD Instinct MI300X) at cuda:0")
    assert "only 1 ROCm GPU" in device.gfx950_missing(torch.device("cuda", 3))


def test_device_check_accepts_gfx950(monkeypatch):
    _rocm_gpu(monkeypatch, "gfx950:sramecc+:xnack-", "AMD Instinct MI355X")
    assert device.gfx950_missing(torch.device("cuda", 0)) is None
    assert device.gfx950_missing(torch.device("cuda")) is None


def test_device_check_never_queries_an_nvidia_gpu(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.version, "hip", None)

    def touched(*args, **kwargs):
        raise AssertionError("the device check queried a non-ROCm GPU")

    for name in ("is_available", "device_count", "current_device", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, name, touched)
    reason = device.gfx950_missing(torch.device("cuda", 0))
    assert reason == HARDWARE + "cuda:0 on a CUDA 12.8 build of PyTorch (not ROCm)"


# -- the vendor stack, piece by piece (device patched to pass) -----------------------------------


def _aiter_copy(tmp_path: Path, with_tuned_config: bool) -> Path:
    root = tmp_path / "aiter_copy"
    shutil.copytree(FAKE_AITER, root, ignore=None if with_tuned_config
                    else shutil.ignore_patterns("minimax_m3_mxfp8_tuned_fmoe.csv"))
    return root


def _broken_aiter(tmp_path: Path) -> Path:
    """An aiter that is installed (with the MXFP8 tuned config) but fails to import."""
    root = _aiter_copy(tmp_path, with_tuned_config=True)
    (root / "aiter" / "__init__.py").write_text(
        "raise ImportError('JIT build of module_aiter_enum failed: hipcc not found')\n")
    return root


@pytest.mark.usefixtures("on_gfx950")
class TestVendorStack:
    def test_aiter_not_installed(self, no_real_aiter):
        for backend in BACKENDS:
            v = verdict(backend, LAYER[backend])
            assert not v.supported and v.reason.startswith("requires the 'amd-aiter' package")
            assert "mxmoe-rocm-aiter[aiter]" in v.reason

    def test_flydsl_not_installed(self, no_real_aiter, vendor_sites):
        vendor_sites(FAKE_AITER)
        v = verdict(MXFP8, MXFP8_LAYER)
        assert not v.supported and v.reason.startswith("requires the 'flydsl' package")
        assert verdict(W4A8, W4A8_LAYER).supported  # the Triton path needs no FlyDSL

    def test_aiter_too_old_for_mxfp8(self, vendor_sites, tmp_path):
        vendor_sites(_aiter_copy(tmp_path, with_tuned_config=False), FAKE_FLYDSL)
        v = verdict(MXFP8, MXFP8_LAYER)
        assert not v.supported and "is too old" in v.reason
        assert "configs/model_configs/minimax_m3_mxfp8_tuned_fmoe.csv" in v.reason
        assert verdict(W4A8, W4A8_LAYER).supported

    def test_aiter_failing_to_import(self, vendor_sites, tmp_path):
        vendor_sites(_broken_aiter(tmp_path), FAKE_FLYDSL)
        for backend in BACKENDS:
            v = verdict(backend, LAYER[backend])
            assert not v.supported
            assert v.reason.startswith("aiter is installed but its ")
            assert "failed to load (ImportError: JIT build of module_aiter_enum failed" in v.reason

    def test_an_import_failure_is_remembered(self, vendor_sites, tmp_path, monkeypatch):
        vendor_sites(_broken_aiter(tmp_path), FAKE_FLYDSL)
        assert not verdict(W4A8, W4A8_LAYER).supported
        monkeypatch.syspath_prepend(str(FAKE_AITER))  # a working aiter appears...
        assert not verdict(W4A8, W4A8_LAYER).supported  # ...not retried: JIT builds are slow
        vendor.forget()
        assert verdict(W4A8, W4A8_LAYER).supported

    def test_flydsl_unavailable_to_aiter(self, fake_aiter, monkeypatch):
        import aiter.ops.flydsl.utils as flydsl_utils

        monkeypatch.setattr(flydsl_utils, "is_flydsl_available", lambda: False)
        assert "is_flydsl_available() is False" in verdict(MXFP8, MXFP8_LAYER).reason

    def test_a8w4_gemm_without_unpadded_sizes_is_too_old(self, fake_aiter, monkeypatch):
        import aiter.ops.triton.moe_op_gemm_a8w4 as gemm

        def old_gemm(x, w, x_scales, w_scales, x_static_scale=None, quant_static_scale=None,
                     bias=None, routing_data=None, gather_indx=None, scatter_indx=None,
                     gammas=None, swizzle_mx_scale=None, out_dtype=None):
            raise AssertionError("never called")

        monkeypatch.setattr(gemm, "moe_gemm_a8w4", old_gemm)
        reason = verdict(W4A8, W4A8_LAYER).reason
        assert "lacks parameter(s) unpadded_N, unpadded_K" in reason and "too old" in reason

    def test_everything_present(self, fake_aiter):
        w4a8, mxfp8 = verdict(W4A8, W4A8_LAYER), verdict(MXFP8, MXFP8_LAYER)
        assert w4a8 == Verdict.yes(100, hidden_multiple=256, intermediate_multiple=256,
                                   routes_internally=True)
        assert mxfp8 == Verdict.yes(100, hidden_multiple=256, intermediate_multiple=256)
        assert w4a8.padded_sizes(W4A8_LAYER) == (256, 256)

    def test_a_raising_check_becomes_a_verdict(self, monkeypatch):
        def explode(dev):
            raise RuntimeError("driver went away")

        monkeypatch.setattr(device, "gfx950_missing", explode)
        for backend in BACKENDS:
            v = verdict(backend, LAYER[backend])
            assert v == Verdict.no("probe failed: RuntimeError: driver went away")


# -- features -------------------------------------------------------------------------------------

W4A8_GAPS = [
    ({"weight_format": "mxfp8"}, "mxfp4 x fp8_static"),
    ({"activation_format": "bf16"}, "found mxfp4 x bf16"),
    ({"activation": "silu"}, "swigluoai activation only"),
    ({"activation": "swigluoai_uninterleave"}, "found swigluoai_uninterleave"),
    ({"swiglu_limit": None}, "clamp limit"),
    ({"routing": "default"}, "found default"),
    ({"routing": "grouped_topk", "num_expert_group": 2, "topk_group": 1}, "found grouped_topk"),
    ({"expert_map": W4A8_LAYER.with_expert_parallel(2, 0).expert_map}, "expert parallelism"),
    ({"dp_size": 2}, "dp_size=2"),
    ({"top_k": 1, "apply_router_weight_on_input": True}, "apply_router_weight_on_input"),
    ({"dtype": torch.float16}, "bfloat16 activations only"),
]

MXFP8_GAPS = [
    ({"weight_format": "mxfp4"}, "(mxfp8 x mxfp8_dynamic_rceil) only, found mxfp4 x "),
    ({"activation_format": "mxfp8_dynamic"}, "rounds MXFP8 activation scales up (RCEIL)"),
    ({"activation_format": "fp8_dynamic_1x128"}, "found mxfp8 x fp8_dynamic_1x128"),
    ({"activation": "silu"}, "clamped SwiGLU only"),
    ({"activation": "swiglustep"}, "found swiglustep"),
    ({"swiglu_alpha": 1.0}, "swiglu_alpha at 1.702"),
    ({"activation": "swigluoai_uninterleave", "swiglu_beta": 0.0}, "swiglu_beta at 1.0"),
    ({"swiglu_limit": None}, "clamp limit"),
    ({"has_bias": True}, "biases"),
    ({"top_k": 1, "apply_router_weight_on_input": True}, "apply_router_weight_on_input"),
]


@pytest.mark.usefixtures("on_gfx950", "fake_aiter")
@pytest.mark.parametrize("backend, changes, expected", [
    *[(W4A8, c, e) for c, e in W4A8_GAPS], *[(MXFP8, c, e) for c, e in MXFP8_GAPS]])
def test_feature_gaps(backend, changes, expected):
    v = verdict(backend, LAYER[backend].replace(**changes))
    assert not v.supported and expected in v.reason


@pytest.mark.usefixtures("on_gfx950", "fake_aiter")
def test_floor_scaled_mxfp8_activations_name_the_format_to_use():
    v = verdict(MXFP8, MXFP8_LAYER.replace(activation_format="mxfp8_dynamic"))
    assert not v.supported
    assert "found mxfp8_dynamic (OCP floor scales)" in v.reason
    assert v.reason.endswith("use activation_format mxfp8_dynamic_rceil")


@pytest.mark.usefixtures("on_gfx950")
def test_feature_reasons_are_distinct(fake_aiter):
    for backend, gaps in ((W4A8, W4A8_GAPS), (MXFP8, MXFP8_GAPS)):
        reasons = {verdict(backend, LAYER[backend].replace(**c)).reason for c, _ in gaps}
        assert len(reasons) == len(gaps)


@pytest.mark.usefixtures("on_gfx950")
@pytest.mark.parametrize("backend, changes", [
    (MXFP8, {"activation": "swigluoai_uninterleave"}),
    (MXFP8, {"expert_map": (1, -1, 0, -1, -1, 3, 2, -1)}),
    (MXFP8, {"dp_size": 4}),
    (MXFP8, {"routing": "grouped_topk", "num_expert_group": 2, "topk_group": 1}),
    (MXFP8, {"dtype": torch.float16}),
    (W4A8, {"routing": "renormalize_naive", "has_bias": False}),
    (W4A8, {"swiglu_alpha": 1.0, "swiglu_limit": 3.0}),
])
def test_supported_variants(fake_aiter, backend, changes):
    assert verdict(backend, LAYER[backend].replace(**changes)).supported


@pytest.mark.usefixtures("on_gfx950")
def test_features_are_checked_before_aiter_is_imported(vendor_sites, tmp_path):
    vendor_sites(_broken_aiter(tmp_path), FAKE_FLYDSL)
    v = verdict(W4A8, W4A8_LAYER.replace(activation="silu"))
    assert "swigluoai activation only" in v.reason
    assert vendor_imported() == []


@pytest.mark.usefixtures("on_gfx950")
def test_selection_caches_and_explains(fake_aiter):
    backend = get_registry().backends[MXFP8]
    assert probe(backend, MXFP8_LAYER, torch.device("cpu")).supported
    record = next(r for r in mxmoe.explain(MXFP8_LAYER, "cpu") if r.name == MXFP8)
    assert record.selected and record.padded_sizes == (256, 256)
