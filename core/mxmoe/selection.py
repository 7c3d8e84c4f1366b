"""Backend selection: probe every backend, keep the supported, order them, explain.

Verdicts are cached per (backend, config, device) until the registry changes. A
backend forced by argument or by ``MXMOE_BACKEND`` must be known and supported, or
:class:`BackendError` says why and lists the alternatives; automatic selection takes
the supported backend of highest priority (ties broken by name, so the choice is
deterministic).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from .config import MoEConfig
from .registry import Backend, Registry, describe_exception, get_registry, strict_mode
from .verdict import Verdict

__all__ = [
    "BackendError", "BackendRecord", "clear_verdict_cache", "default_device", "explain", "probe",
    "select_backend",
]

ENV_FORCE = "MXMOE_BACKEND"


class BackendError(ValueError):
    """No backend can run the layer, or the one asked for cannot."""


@dataclasses.dataclass(frozen=True)
class BackendRecord:
    """One line of :func:`explain`: a backend (or a plugin that failed to load)."""

    name: str
    distribution: str | None
    version: str | None
    supported: bool
    reason: str | None
    priority: float | None
    selected: bool = False
    routes_internally: bool = False
    padded_sizes: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["padded_sizes"] = list(self.padded_sizes) if self.padded_sizes else None
        return data


def default_device() -> torch.device:
    """The best device present: the current CUDA/ROCm GPU if there is one, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _as_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return default_device()
    if isinstance(device, (str, torch.device)):
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device()) \
                if torch.cuda.is_available() else device
        return device
    raise TypeError(f"device: expected a torch.device or str, got {type(device).__name__}")


def clear_verdict_cache() -> None:
    """Forget cached verdicts (after changing what a probe looks at, e.g. in tests)."""
    get_registry().verdicts.clear()


def probe(backend: Backend, config: MoEConfig, device: torch.device) -> Verdict:
    """``backend``'s verdict on (config, device); never raises (except in strict mode).

    An exception (``SystemExit`` included: vendor libraries are imported lazily inside
    probes, and a native one may exit), or a return value that is not a
    :class:`Verdict`, becomes an unsupported verdict that says what happened.
    """
    cache = get_registry().verdicts
    key = (backend.name, config, device)
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        verdict = backend.call("supports_config", config=config, device=device)
        if not isinstance(verdict, Verdict):
            raise TypeError(
                f"supports_config returned {type(verdict).__name__}, expected mxmoe.Verdict"
            )
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a probe never takes the host down
        if strict_mode():
            raise
        verdict = Verdict.no(f"probe failed: {describe_exception(exc)}")
    cache[key] = verdict
    return verdict


def _ranked(registry: Registry, config: MoEConfig,
            device: torch.device) -> list[tuple[Backend, Verdict]]:
    supported = []
    for backend in registry.backends.values():
        verdict = probe(backend, config, device)
        if verdict.supported:
            supported.append((backend, verdict))
    supported.sort(key=lambda bv: (-bv[1].priority, bv[0].name))
    return supported


def _summary(registry: Registry, config: MoEConfig, device: torch.device) -> str:
    lines = []
    for backend in sorted(registry.backends.values(), key=lambda b: b.name):
        verdict = probe(backend, config, device)
        state = "supported" if verdict.supported else f"unsupported: {verdict.reason}"
        lines.append(f"  {backend.name}: {state}")
    for failure in registry.failures:
        lines.append(f"  {failure.name}: failed to load: {failure.error}")
    if not lines:
        lines.append("  (none installed: pip install mxmoe-emulation, or a vendor plugin)")
    return "\n".join(lines)


def select_backend(
    config: MoEConfig,
    device: torch.device | str | None = None,
    backend: str | None = None,
) -> tuple[Backend, Verdict]:
    """The backend that will run ``config`` on ``device``, with its verdict.

    ``backend`` (or else ``MXMOE_BACKEND``) forces one by name. Raises
    :class:`BackendError` naming the backend, its reason and the alternatives when the
    forced backend is unknown or unsupported, or when none is supported.
    """
    if not isinstance(config, MoEConfig):
        raise TypeError(f"config: expected mxmoe.MoEConfig, got {type(config).__name__}")
    dev = _as_device(device)
    registry = get_registry()
    forced = backend if backend is not None else (os.environ.get(ENV_FORCE) or None)
    where = f"{config.describe()} on {dev}"
    if forced is not None:
        source = "backend argument" if backend is not None else ENV_FORCE
        chosen = registry.backends.get(forced)
        if chosen is None:
            failure = next((f for f in registry.failures if f.name == forced), None)
            why = f"it failed to load: {failure.error}" if failure else "no such backend is installed"
            raise BackendError(
                f"backend {forced!r} (from {source}) cannot run {where}: {why}.\n"
                f"Backends:\n{_summary(registry, config, dev)}"
            )
        verdict = probe(chosen, config, dev)
        if not verdict.supported:
            raise BackendError(
                f"backend {forced!r} (from {source}) cannot run {where}: {verdict.reason}.\n"
                f"Backends:\n{_summary(registry, config, dev)}"
            )
        return chosen, verdict
    ranked = _ranked(registry, config, dev)
    if not ranked:
        raise BackendError(f"no backend can run {where}.\nBackends:\n{_summary(registry, config, dev)}")
    return ranked[0]


def explain(config: MoEConfig, device: torch.device | str | None = None,
            backend: str | None = None) -> list[BackendRecord]:
    """One record per discovered backend and per plugin that failed to load, with its
    verdict for (config, device) and which one selection picks (``backend`` and
    ``MXMOE_BACKEND`` force a choice as in :func:`select_backend`)."""
    dev = _as_device(device)
    registry = get_registry()
    try:
        chosen = select_backend(config, dev, backend)[0].name
    except BackendError:
        chosen = None
    records = []
    for backend in sorted(registry.backends.values(), key=lambda b: b.name):
        verdict = probe(backend, config, dev)
        records.append(BackendRecord(
            name=backend.name, distribution=backend.distribution, version=backend.version,
            supported=verdict.supported, reason=verdict.reason,
            priority=verdict.priority if verdict.supported else None,
            selected=backend.name == chosen, routes_internally=verdict.routes_internally,
            padded_sizes=verdict.padded_sizes(config) if verdict.supported else None,
        ))
    for failure in registry.failures:
        records.append(BackendRecord(
            name=failure.name, distribution=failure.distribution, version=failure.version,
            supported=False, reason=f"failed to load: {failure.error}", priority=None,
        ))
    for name in registry.disabled:
        records.append(BackendRecord(
            name=name, distribution=None, version=None, supported=False,
            reason="not imported: disabled by MXMOE_DISABLE / MXMOE_PLUGINS", priority=None,
        ))
    return records
