"""mxmoe: MX-quantized (MXFP4 / MXFP8) Mixture-of-Experts layers on any accelerator.

The core defines the backend contract (:mod:`mxmoe.hookspecs`), the layer description
(:class:`MoEConfig`), MX numerics (:mod:`mxmoe.formats`), routing, the float64
reference, plugin discovery and backend selection, and the :class:`FusedMoE` layer.
Backends arrive as plugins through the ``mxmoe.backends`` entry-point group.
"""

from .config import (
    PRESETS,
    Activation,
    ActivationFormat,
    MoEConfig,
    RoutingMethod,
    ScoringFunc,
    WeightFormat,
    preset,
)
from .hookspecs import HOOK_API_VERSION, hookimpl
from .layer import FusedMoE
from .reference import reference_experts, reference_moe, relative_error
from .registry import ENTRY_POINT_GROUP, register_backend, unregister_backend
from .routing import route
from .selection import BackendError, BackendRecord, explain, select_backend
from .verdict import Verdict
from .weights import ExpertWeights, random_weights

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "ActivationFormat",
    "BackendError",
    "BackendRecord",
    "ENTRY_POINT_GROUP",
    "ExpertWeights",
    "FusedMoE",
    "HOOK_API_VERSION",
    "MoEConfig",
    "PRESETS",
    "RoutingMethod",
    "ScoringFunc",
    "Verdict",
    "WeightFormat",
    "explain",
    "hookimpl",
    "preset",
    "random_weights",
    "reference_experts",
    "reference_moe",
    "register_backend",
    "relative_error",
    "route",
    "select_backend",
    "unregister_backend",
]
