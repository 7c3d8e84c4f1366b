"""Test double of ``aiter.ops.triton``."""
