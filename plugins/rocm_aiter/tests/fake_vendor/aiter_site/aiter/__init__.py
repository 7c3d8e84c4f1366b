"""Test double of aiter (see ../../README.md): the enums fused_moe is driven by.

The real values come from a JIT-built extension; these stand-ins are compared by
identity only.
"""

import enum


class ActivationType(enum.Enum):
    No = -1
    Silu = 0
    Gelu = 1
    Swiglu = 2


class QuantType(enum.Enum):
    No = 0
    per_Tensor = 1
    per_Token = 2
    per_1x32 = 3
    per_1x128 = 4
