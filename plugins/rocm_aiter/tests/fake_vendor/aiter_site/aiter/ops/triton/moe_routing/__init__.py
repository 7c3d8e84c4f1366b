"""Test double of ``aiter.ops.triton.moe_routing``."""
