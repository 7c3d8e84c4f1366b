"""Isolation for the core suite: every test starts with no MXMOE_* environment
switches and an empty backend registry, and leaves none behind.

Automatic entry-point discovery is switched off by default so that whatever plugins
happen to be installed in this environment cannot change which backend a core test
selects; the discovery tests turn it back on explicitly.

The tensors here are tiny: handing each op to a second intra-op thread costs more than
the op (tens of milliseconds per call on a busy 2-core machine), so torch runs on one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from mxmoe.registry import reset_registry

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in [v for v in os.environ if v.startswith("MXMOE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("MXMOE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_registry()
    yield
    reset_registry()
