"""The command line: `mxmoe backends` and `mxmoe run`, in a subprocess like a user."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def mxmoe(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MXMOE_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "mxmoe.cli", *args], capture_output=True,
                          text=True, env=environ, timeout=300)


def test_backends_with_no_backend_installed():
    proc = mxmoe("backends", MXMOE_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode == 0, proc.stderr
    assert "no backends installed" in proc.stdout
    assert "pip install mxmoe-emulation" in proc.stdout


def test_backends_json_is_a_list_of_records():
    proc = mxmoe("backends", "--json", "--preset", "gpt-oss-20b", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert isinstance(records, list)
    for record in records:
        assert {"name", "distribution", "version", "supported", "reason", "priority",
                "selected"} <= record.keys()
    assert sum(r["selected"] for r in records) <= 1


def test_run_with_no_backend_fails_clearly():
    proc = mxmoe("run", MXMOE_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode == 2
    assert "no backend can run" in proc.stderr
    assert "pip install mxmoe-emulation" in proc.stderr


def test_run_forcing_an_unknown_backend_names_it():
    proc = mxmoe("run", "--backend", "nonexistent")
    assert proc.returncode == 2
    assert "'nonexistent'" in proc.stderr and "no such backend is installed" in proc.stderr


def test_unknown_preset_is_rejected():
    proc = mxmoe("run", "--preset", "gpt-5")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


@pytest.mark.skipif(
    not any(ep.name == "emulation" for ep in __import__("importlib.metadata").metadata
            .entry_points(group="mxmoe.backends")),
    reason="needs the emulation plugin installed (runs in the core+emulation and everything legs)",
)
def test_run_default_checks_against_reference():
    proc = mxmoe("run", "--device", "cpu", "--repeats", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "relative error vs mxmoe.reference" in proc.stdout and "(ok" in proc.stdout
    assert "backend: " in proc.stdout
