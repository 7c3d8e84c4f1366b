"""Fake installed plugins: modules written to a directory on ``sys.path`` plus a
``*.dist-info`` directory whose ``entry_points.txt`` registers them under
``mxmoe.backends``, so ``importlib.metadata`` discovers them exactly as it discovers
a pip-installed distribution (name and version included)."""

from __future__ import annotations

import itertools
import re
from importlib import metadata
from pathlib import Path

from mxmoe import ENTRY_POINT_GROUP

#: Prefix of every fake plugin module, so tests can find (and forget) them.
MODULE_PREFIX = "_mxmoe_fake_plugin_"

_counter = itertools.count()


def plugin_source(
    *,
    at_import: str = "",
    api_version: str = "1",
    probe: str = "return Verdict.yes(1)",
    probe_name: str = "supports_config",
    probe_args: str = "config, device",
    with_apply: bool = True,
) -> str:
    """The text of a plugin module; each keyword changes one thing a plugin can get
    wrong: statements run at import, its API version, its probe's body, name and
    signature, a missing ``apply``."""
    lines = [
        "from mxmoe import Verdict, hookimpl",
        at_import,
        f"MXMOE_API_VERSION = {api_version}",
        "",
        "@hookimpl",
        f"def {probe_name}({probe_args}):",
        *("    " + line for line in probe.splitlines()),
        "",
        "@hookimpl",
        "def convert_weights(weights):",
        "    return weights",
    ]
    if with_apply:
        lines += ["", "@hookimpl", "def apply(hidden_states):", "    return hidden_states"]
    return "\n".join(lines) + "\n"


def unique_module_name(hint: str) -> str:
    return f"{MODULE_PREFIX}{re.sub(r'[^0-9a-zA-Z]', '_', hint)}_{next(_counter)}"


def write_module(root: Path, hint: str, source: str) -> str:
    """Write ``source`` as a fresh module under ``root``; return its import name."""
    name = unique_module_name(hint)
    (root / f"{name}.py").write_text(source)
    return name


def install_distribution(root: Path, name: str, version: str,
                         plugins: dict[str, str]) -> dict[str, str]:
    """Create distribution ``name`` ``version`` under ``root`` whose entry points are
    ``plugins`` (backend name -> module source). Returns backend name -> module name."""
    modules = {backend: write_module(root, f"{name}_{backend}", source)
               for backend, source in plugins.items()}
    dist_info = root / f"{re.sub(r'[^0-9a-zA-Z.]', '_', name)}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{b} = {m}" for b, m in modules.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return modules


def entry_point(root: Path, backend: str, source: str) -> tuple[metadata.EntryPoint, str]:
    """A bare entry point (no distribution) for a module written under ``root``."""
    module = write_module(root, backend, source)
    return metadata.EntryPoint(name=backend, value=module, group=ENTRY_POINT_GROUP), module
