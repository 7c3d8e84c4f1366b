"""``BackendConformance``: the pytest base class every backend's test-suite subclasses.

    from mxmoe.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "my-backend"
        device = "cuda"

Each case of :func:`mxmoe.testing.conformance_cases` becomes a test; cases the
backend reports unsupported are skipped with the backend's own reason (so the report
shows exactly what the backend does not cover), and ``supports_case`` may narrow the
matrix further (say why in its docstring: e.g. the Triton interpreter's speed).
"""

from __future__ import annotations

import pytest
import torch

from ..registry import get_registry
from ..selection import probe
from ..verdict import Verdict
from .cases import Case, conformance_cases
from .checks import (
    check_apply_leaves_inputs,
    check_case,
    check_convert_deterministic,
    check_verdicts_never_raise,
)

__all__ = ["BackendConformance"]

_CASES = conformance_cases()


class BackendConformance:
    """Conformance tests for the backend named by ``backend`` on ``device``."""

    backend: str = ""
    device: str = "cpu"

    def supports_case(self, case: Case) -> bool:
        """Override to leave cases out of this run (default: all)."""
        return True

    # -- helpers ------------------------------------------------------------------

    def _registered(self) -> None:
        if not self.backend:
            raise TypeError(f"{type(self).__name__}: set the class attribute 'backend'")
        registry = get_registry()
        if self.backend not in registry.backends:
            failure = next((f for f in registry.failures if f.name == self.backend), None)
            why = f"it failed to load: {failure.error}" if failure else "it is not installed"
            pytest.fail(f"backend {self.backend!r} is not registered: {why}")

    def _verdict(self, case: Case) -> Verdict:
        return probe(get_registry().backends[self.backend], case.config,
                     torch.device(self.device))

    def _runnable(self, case: Case) -> None:
        self._registered()
        if not self.supports_case(case):
            pytest.skip(f"{type(self).__name__}.supports_case leaves out {case.id}")
        verdict = self._verdict(case)
        if not verdict.supported:
            pytest.skip(f"{self.backend} reports unsupported: {verdict.reason}")

    def _first_supported(self) -> Case:
        self._registered()
        for case in _CASES:
            if self.supports_case(case) and self._verdict(case).supported:
                return case
        pytest.skip(f"{self.backend} supports no conformance case on {self.device}")

    # -- the tests -----------------------------------------------------------------

    @pytest.mark.parametrize("case", _CASES, ids=str)
    def test_matches_reference(self, case: Case) -> None:
        self._runnable(case)
        check_case(self.backend, case, self.device)

    def test_verdicts_never_raise(self) -> None:
        self._registered()
        check_verdicts_never_raise(self.backend, _CASES[0].config)

    def test_convert_weights_is_deterministic(self) -> None:
        check_convert_deterministic(self.backend, self._first_supported().config, self.device)

    def test_apply_does_not_modify_inputs(self) -> None:
        check_apply_leaves_inputs(self.backend, self._first_supported().config, self.device)
