"""Plugin discovery: the ``mxmoe.backends`` entry points, loaded one at a time, each
inside its own error boundary, into a pluggy plugin manager.

Environment switches, read when discovery runs and applied before anything is
imported:

``MXMOE_DISABLE``                 comma-separated backend names never imported
``MXMOE_PLUGINS``                 comma-separated allow-list; other entry points are
                                  never imported
``MXMOE_DISABLE_PLUGIN_AUTOLOAD`` ``1``: import no entry point at all (backends can
                                  still be added with :func:`register_backend`)
``MXMOE_STRICT_PLUGINS``          ``1``: re-raise load and probe failures instead of
                                  recording them (for plugin authors and CI)

(``MXMOE_BACKEND``, forcing one backend, is read by :mod:`mxmoe.selection`.)
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .hookspecs import HOOK_API_VERSION, HOOK_NAMES, PROJECT_NAME

__all__ = [
    "Backend",
    "ENTRY_POINT_GROUP",
    "LoadFailure",
    "Registry",
    "get_registry",
    "register_backend",
    "reset_registry",
    "unregister_backend",
]

ENTRY_POINT_GROUP = "mxmoe.backends"

ENV_DISABLE = "MXMOE_DISABLE"
ENV_ALLOW = "MXMOE_PLUGINS"
ENV_NO_AUTOLOAD = "MXMOE_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "MXMOE_STRICT_PLUGINS"


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def strict_mode() -> bool:
    """Whether ``MXMOE_STRICT_PLUGINS`` asks for failures to be re-raised."""
    return _env_flag(ENV_STRICT)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` — the form every recorded failure takes."""
    message = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {message}"


@dataclasses.dataclass(frozen=True)
class LoadFailure:
    """A backend that was found but not registered, and why."""

    name: str
    distribution: str | None
    version: str | None
    error: str


class Backend:
    """One registered backend: its identity and its three hook implementations.

    ``apply`` is exposed as a plain callable taking the hook's arguments
    positionally, bound once at registration, so the hot path pays no plugin lookup.
    """

    def __init__(self, name: str, plugin: object, distribution: str | None,
                 version: str | None, impls: dict[str, pluggy.HookImpl]) -> None:
        self.name = name
        self.plugin = plugin
        self.distribution = distribution
        self.version = version
        self._impls = impls
        self.apply: Callable[..., Any] = self._bind("apply")

    def _bind(self, hook: str) -> Callable[..., Any]:
        """The implementation as a function of the hookspec's arguments, in order."""
        impl = self._impls[hook]
        spec_args = _SPEC_ARGNAMES[hook]
        if tuple(impl.argnames) == spec_args:
            return impl.function
        picks = tuple(spec_args.index(a) for a in impl.argnames)
        function = impl.function
        return lambda *args: function(*(args[i] for i in picks))

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Call one of this backend's hooks with keyword arguments (not the hot path)."""
        impl = self._impls[hook]
        return impl.function(*(kwargs[a] for a in impl.argnames))

    def __repr__(self) -> str:
        dist = f" from {self.distribution} {self.version}" if self.distribution else ""
        return f"<mxmoe backend {self.name!r}{dist}>"


def _spec_argnames() -> dict[str, tuple[str, ...]]:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return {name: tuple(getattr(pm.hook, name).spec.argnames) for name in HOOK_NAMES}


_SPEC_ARGNAMES = _spec_argnames()


class Registry:
    """The backends known to this process and the plugins that failed to load."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.backends: dict[str, Backend] = {}
        self.failures: list[LoadFailure] = []
        self.disabled: list[str] = []  # entry points skipped by the environment
        # Probe results of mxmoe.selection, keyed (backend, config, device); they stay
        # valid until the set of backends changes.
        self.verdicts: dict[tuple[str, Any, Any], Any] = {}

    # -- registration ---------------------------------------------------------

    def register(self, name: str, plugin: object, *, distribution: str | None = None,
                 version: str | None = None) -> Backend:
        """Validate ``plugin`` and register it as backend ``name``.

        Raises ValueError/TypeError (or pluggy's PluginValidationError) describing what
        is wrong; :meth:`load_entry_points` turns these into recorded failures.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty backend name, got {name!r}")
        if name in self.backends:
            other = self.backends[name]
            raise ValueError(
                f"duplicate backend name {name!r}: provided by "
                f"{other.distribution or 'an in-process registration'} and by "
                f"{distribution or 'an in-process registration'}"
            )
        api = getattr(plugin, "MXMOE_API_VERSION", None)
        if api != HOOK_API_VERSION:
            raise TypeError(
                f"incompatible hook API: plugin declares MXMOE_API_VERSION={api!r}, "
                f"this mxmoe implements version {HOOK_API_VERSION}"
            )
        pm = self.plugin_manager
        try:
            pm.register(plugin, name=name)  # validates signatures against the hookspecs
            impls = self._own_impls(name)
        except Exception as exc:
            if pm.has_plugin(name):  # pluggy may have added some hooks before failing
                pm.unregister(name=name)
            if isinstance(exc, pluggy.PluginValidationError):
                raise TypeError(f"backend {name!r}: {exc}") from exc
            raise
        backend = Backend(name, plugin, distribution, version, impls)
        self.backends[name] = backend
        self.verdicts.clear()
        return backend

    def _own_impls(self, name: str) -> dict[str, pluggy.HookImpl]:
        pm = self.plugin_manager
        plugin = pm.get_plugin(name)
        unknown = [
            caller.name for caller in pm.get_hookcallers(plugin) or []
            if caller.name not in HOOK_NAMES
        ]
        if unknown:
            raise TypeError(f"unknown hook(s) {', '.join(sorted(unknown))}; "
                            f"mxmoe's hooks are {', '.join(HOOK_NAMES)}")
        impls = {}
        for hook in HOOK_NAMES:
            for impl in getattr(pm.hook, hook).get_hookimpls():
                if impl.plugin_name == name:
                    impls[hook] = impl
        missing = [h for h in HOOK_NAMES if h not in impls]
        if missing:
            raise TypeError(f"missing hook implementation(s): {', '.join(missing)}")
        return impls

    def unregister(self, name: str) -> None:
        if self.backends.pop(name, None) is not None:
            self.plugin_manager.unregister(name=name)
            self.verdicts.clear()

    # -- discovery --------------------------------------------------------------

    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Import and register every allowed ``mxmoe.backends`` entry point.

        Each entry point is loaded on its own; any exception, or a ``SystemExit`` from
        a misbehaving native library, is recorded as a :class:`LoadFailure` (or
        re-raised in strict mode) and the next one is tried.
        """
        if _env_flag(ENV_NO_AUTOLOAD):
            return
        disabled = _env_names(ENV_DISABLE) or set()
        allowed = _env_names(ENV_ALLOW)
        strict = strict_mode()
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        ordered = sorted(entry_points, key=lambda ep: (ep.name, _dist_name(ep) or ""))
        for ep in ordered:
            if ep.name in disabled or (allowed is not None and ep.name not in allowed):
                self.disabled.append(ep.name)
                continue
            dist, version = _dist_name(ep), _dist_version(ep)
            try:
                plugin = ep.load()
                self.register(ep.name, plugin, distribution=dist, version=version)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the error boundary
                if strict:
                    raise
                self.failures.append(LoadFailure(ep.name, dist, version, describe_exception(exc)))


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _dist_version(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, discovering entry points on first use."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                registry = Registry()
                registry.load_entry_points()
                _registry = registry
    return _registry


def reset_registry() -> None:
    """Forget every backend; the next :func:`get_registry` rediscovers (re-reading the
    environment switches). For tests and long-lived tools."""
    global _registry
    with _lock:
        _registry = None


def register_backend(name: str, plugin: object, *, distribution: str | None = None,
                     version: str | None = None) -> Backend:
    """Register a backend in this process without packaging it (notebooks, tests)."""
    return get_registry().register(name, plugin, distribution=distribution, version=version)


def unregister_backend(name: str) -> None:
    """Remove a backend registered in this process."""
    get_registry().unregister(name)
