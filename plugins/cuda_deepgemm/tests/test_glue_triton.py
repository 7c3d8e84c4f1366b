"""The Triton glue under the Triton interpreter, on the CPU: it must agree with the
PyTorch glue step by step (tests/glue_checks.py) and, inside the whole backend
through the fake deep_gemm, with the reference. Each run is a subprocess because
``TRITON_INTERPRET`` is read when Triton is imported; sizes are small because the
interpreter runs every program in Python. tests/test_gpu_glue.py repeats the
comparisons at gpt-oss sizes on a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import FAKE_VENDOR, TESTS


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="Triton is not installed (pip install mxmoe-cuda-deepgemm[triton])")
@pytest.mark.parametrize("what", ["interpreted", "pipeline"])
def test_triton_glue_under_the_interpreter(what: str) -> None:
    path = os.pathsep.join([str(TESTS), str(FAKE_VENDOR), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, str(TESTS / "glue_checks.py"), what], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "matches" in done.stdout
