"""Test double of ``aiter.ops.flydsl.utils``."""

import importlib.util


def is_flydsl_available() -> bool:
    """True when the ``flydsl`` package can be imported (the real one also checks the GPU)."""
    return importlib.util.find_spec("flydsl") is not None
