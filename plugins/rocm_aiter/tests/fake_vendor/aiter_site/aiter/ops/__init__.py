"""Test double of ``aiter.ops``."""
