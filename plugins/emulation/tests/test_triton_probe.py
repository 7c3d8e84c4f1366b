"""The ``triton`` backend's probe, plugin import and bad-input handling, on any machine.

Nothing here launches a kernel, so it runs without a GPU and without the Triton
interpreter. Each probe test sets exactly the environment it describes
(``TRITON_INTERPRET`` on or off) and fakes the hardware it needs through
monkeypatched ``torch.cuda`` queries.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from mxmoe import BackendError, FusedMoE, MoEConfig, random_weights
from mxmoe.selection import clear_verdict_cache
from mxmoe_emulation.triton_backend import hooks, probe
from mxmoe_emulation.triton_backend.tiles import Tiles
from test_triton_helpers import BACKEND, ensure_registered

CONFIG = MoEConfig(num_experts=4, top_k=2, hidden_size=64, intermediate_size=64,
                   activation="swigluoai", has_bias=True)


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MXMOE_BACKEND", raising=False)
    ensure_registered()
    clear_verdict_cache()
    yield
    clear_verdict_cache()


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], name: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.version, "hip", None)


def test_forced_on_cpu_without_interpreter_raises_the_probe_reason() -> None:
    with pytest.raises(BackendError, match=r"requires a GPU \(CUDA or ROCm\), found cpu"):
        FusedMoE(CONFIG, backend=BACKEND, device="cpu")


def test_cpu_is_accepted_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    verdict = probe.supports(CONFIG, torch.device("cpu"))
    assert verdict.supported and verdict.priority == probe.PRIORITY


def test_missing_triton_is_the_first_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else real(name, *a))
    verdict = probe.supports(CONFIG, torch.device("cpu"))
    assert not verdict.supported and verdict.reason.startswith("requires triton")


def test_other_devices_are_refused() -> None:
    verdict = probe.supports(CONFIG, torch.device("meta"))
    assert verdict.reason == "requires a GPU (CUDA or ROCm), found meta"


def test_old_gpu_is_refused_with_its_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    verdict = probe.supports(CONFIG, torch.device("cuda", 0))
    assert verdict.reason == "requires compute capability >= 8.0, found 7.5 (Tesla T4)"


def test_ampere_and_newer_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    assert probe.supports(CONFIG, torch.device("cuda", 0)).supported


def test_cuda_device_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    verdict = probe.supports(CONFIG, torch.device("cuda", 0))
    assert not verdict.supported and "torch.cuda.is_available() is False" in verdict.reason


@pytest.mark.parametrize(("changes", "reason"), [
    ({"dtype": torch.float32}, "requires bf16 or fp16 activations, found float32"),
    ({"activation_format": "fp8_static"}, "activation_format='fp8_static'"),
    ({"activation_format": "mxfp8_dynamic"}, "activation_format='mxfp8_dynamic'"),
])
def test_unsupported_schemes_say_why(monkeypatch: pytest.MonkeyPatch, changes: dict,
                                     reason: str) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    verdict = probe.supports(CONFIG.replace(**changes), torch.device("cpu"))
    assert not verdict.supported and reason in verdict.reason


def test_a_failing_query_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, (9, 0), "x")

    def broken(index=None):
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(torch.cuda, "get_device_capability", broken)
    verdict = probe.supports(CONFIG, torch.device("cuda", 0))
    assert not verdict.supported and "driver exploded" in verdict.reason


def test_importing_the_plugin_imports_neither_triton_nor_cuda() -> None:
    code = ("import sys, torch, mxmoe_emulation.triton_backend as b; "
            "print('triton' in sys.modules, torch.cuda.is_initialized(), b.MXMOE_API_VERSION)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "1"]


# -- convert_weights and apply reject bad input with a clear error ---------------------


def test_nan_scales_are_rejected() -> None:
    weights = random_weights(CONFIG, seed=1)
    weights.w2_scale[0, 0, 0] = 0xFF
    with pytest.raises(ValueError, match="w2_scale: contains the E8M0 NaN encoding"):
        hooks.convert_weights(CONFIG, weights, torch.device("cpu"))


def test_fp16_out_of_range_scales_are_rejected() -> None:
    config = CONFIG.replace(dtype=torch.float16)
    weights = random_weights(config, seed=1)
    weights.w13_scale[1, 2, 0] = 127 + 14  # 6 * 2**14 > float16's 65504
    with pytest.raises(ValueError, match="w13_scale: scale byte 141"):
        hooks.convert_weights(config, weights, torch.device("cpu"))


def _converted() -> object:
    return hooks.convert_weights(CONFIG, random_weights(CONFIG, seed=2), torch.device("cpu"))


@pytest.mark.parametrize(("args", "error", "match"), [
    ({"hidden_states": torch.zeros(3, 64, dtype=torch.float16)}, TypeError, "hidden_states: expected dtype"),
    ({"hidden_states": torch.zeros(3, 32, dtype=torch.bfloat16)}, ValueError, r"hidden_states: expected shape \[M, 64\]"),
    ({"topk_ids": None}, ValueError, "topk_weights, topk_ids: expected both or neither"),
    ({"topk_ids": None, "topk_weights": None, "router_logits": torch.zeros(3, 5)}, ValueError,
     r"router_logits: expected shape \[3, 4\]"),
    ({"topk_ids": None, "topk_weights": None, "router_logits": torch.zeros(3, 4, dtype=torch.int32)},
     TypeError, "router_logits: expected a floating-point tensor"),
    ({"topk_ids": torch.zeros(3, 3, dtype=torch.int32)}, ValueError, "expected shape"),
    ({"topk_ids": torch.zeros(3, 2)}, TypeError, "topk_ids: expected an int32 tensor"),
    ({"weights": "not converted"}, TypeError, "weights: expected what convert_weights returned"),
])
def test_apply_names_the_bad_argument(args: dict, error: type, match: str) -> None:
    call = {"config": CONFIG, "weights": _converted(),
            "hidden_states": torch.zeros(3, 64, dtype=torch.bfloat16),
            "topk_weights": torch.full((3, 2), 0.5), "topk_ids": torch.zeros(3, 2, dtype=torch.int32),
            "router_logits": torch.zeros(3, 4), "expert_map": None}
    call.update(args)
    with pytest.raises(error, match=match):
        hooks.apply(**call)


def test_pdl_switch_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Programmatic dependent launch is off on the CPU; the switch takes 0 or 1 only."""
    pytest.importorskip("triton", reason="the launch module needs Triton")
    from mxmoe_emulation.triton_backend.launch import PDL_ENV, use_pdl

    assert not use_pdl(torch.device("cpu"))
    monkeypatch.setenv(PDL_ENV, "yes")
    with pytest.raises(ValueError, match="MXMOE_TRITON_PDL: expected '0' or '1', got 'yes'"):
        use_pdl(torch.device("cpu"))


@pytest.mark.parametrize(("change", "message"), [
    ({"block_k": 96}, r"block_k: expected a power of two"),
    ({"block_k": 32}, r"block_k: expected a multiple of 64"),
    ({"split_k": 0}, r"split_k: expected 1\.\.16"),
    ({"split_k2": 17}, r"split_k2: expected None or 1\.\.16, got 17"),
    ({"num_stages": 0}, r"num_stages: expected 1\.\.8, got 0"),
    ({"num_stages2": 9}, r"num_stages2: expected None or 1\.\.8, got 9"),
    ({"max_registers": 16}, r"max_registers: expected None or 32\.\.255"),
    ({"decode": "lut"}, r"decode: expected 'asm' or 'manual'"),
    ({"tail_m": 8}, r"tail_m: expected 0 or a power of two >= 16 below block_m \(16\), got 8"),
    ({"tail_m": 16}, r"tail_m: expected 0 or a power of two >= 16 below block_m"),
    ({"block_m": 64, "tail_m": 24}, r"tail_m: expected .* got 24"),
])
def test_tiles_reject_bad_fields_by_name(change: dict, message: str) -> None:
    fields = {"block_m": 16, "block_n1": 64, "block_n2": 64, "block_k": 128,
              "num_warps": 4, "num_stages": 3} | change
    with pytest.raises(ValueError, match=message):
        Tiles(**fields)
