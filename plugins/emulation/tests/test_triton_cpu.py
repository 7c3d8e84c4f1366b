"""Runs the interpreted kernel tests (test_triton_interpreter.py) in a child process.

The child gets ``TRITON_INTERPRET=1`` before anything imports Triton; this process
keeps its environment, so backend selection in the other test modules is unaffected
(see test_triton_interpreter.py for why that matters).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

INTERPRETED_MODULE = pathlib.Path(__file__).with_name("test_triton_interpreter.py")


def test_kernels_under_the_triton_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(INTERPRETED_MODULE)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    print(report)
    assert proc.returncode == 0, f"interpreted kernel tests failed:\n{report}"
