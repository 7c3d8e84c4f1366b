"""Test double of ``aiter.ops.flydsl``."""
