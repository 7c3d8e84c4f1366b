"""The conformance kit: what every mxmoe backend, ours or a third party's, runs.

* :class:`BackendConformance` — a pytest base class (import needs pytest);
* :func:`conformance_cases` — the matrix of layers, token counts 0, 1, odd, > block;
* :func:`check_case` and friends — the same checks as plain functions.

See docs/writing-a-backend.md.
"""

from .cases import TOKEN_COUNTS, Case, conformance_cases
from .checks import (
    ConformanceError,
    check_apply_leaves_inputs,
    check_case,
    check_convert_deterministic,
    check_verdicts_never_raise,
)

__all__ = [
    "BackendConformance",
    "Case",
    "ConformanceError",
    "TOKEN_COUNTS",
    "check_apply_leaves_inputs",
    "check_case",
    "check_convert_deterministic",
    "check_verdicts_never_raise",
    "conformance_cases",
]


def __getattr__(name: str) -> object:
    # The pytest base class is imported on first use, so the plain checks work
    # where pytest is not installed.
    if name == "BackendConformance":
        from .conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module 'mxmoe.testing' has no attribute {name!r}")
