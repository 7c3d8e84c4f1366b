"""Test double of ``aiter.ops.flydsl.moe_common``: the stage-1 gate/up modes."""

import enum


class GateMode(str, enum.Enum):
    """SEPARATED: gate and up tiles streamed apart; INTERLEAVE: the weight rows
    alternate gate and up blocks of 16 (even N subtiles gate, odd ones up)."""

    SEPARATED = "separated"
    MOCK_GATE_ONLY = "mock_gate_only"
    GATE_ONLY = "gate_only"
    INTERLEAVE = "interleave"
