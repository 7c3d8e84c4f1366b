#!/usr/bin/env python3
"""Run mxmoe's test-suite the way CI does: one clean virtual environment per leg.

Legs: the core alone; the core with each plugin that exists in plugins/; the core with
the example third-party backend; everything together. Each leg installs from this
checkout into .venvs/<leg> (torch 2.13.0, the CPU build; Triton from the index where
a plugin asks for it), runs that leg's tests and deletes the environment again: each
one holds 1-2 GB, and keeping them all would fill a small CI disk. Usage:

    python3 scripts/test.py [LEG ...]        # default: every leg
    python3 scripts/test.py --keep-envs LEG  # keep .venvs/<leg> to debug in it
    python3 scripts/test.py --list

Exit status 0 only if every leg passes. The last line sums the legs' pytest counts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"
TORCH = os.environ.get("MXMOE_TEST_TORCH", "torch==2.13.0")

PLUGINS = {  # leg name -> (plugin dir, pip extras to install with it)
    "emulation": ("plugins/emulation", "[triton,test]"),
    "rocm_aiter": ("plugins/rocm_aiter", "[test]"),
    "cuda_deepgemm": ("plugins/cuda_deepgemm", "[triton,test]"),
}
EXAMPLE = "examples/mxmoe-example-backend"


def legs() -> dict[str, tuple[list[str], list[str]]]:
    """leg name -> (pip install arguments after the core, test paths)."""
    result = {"core": ([], ["tests"])}
    everything: list[str] = []
    for name, (path, extras) in PLUGINS.items():
        if (ROOT / path / "pyproject.toml").exists():
            result[f"core+{name}"] = ([f"./{path}{extras}"], [f"{path}/tests"])
            everything.append(f"./{path}{extras}")
        else:
            print(f"[skip] leg core+{name}: {path} does not exist yet", flush=True)
    result["core+example"] = ([f"./{EXAMPLE}[test]"], [f"{EXAMPLE}/tests"])
    everything.append(f"./{EXAMPLE}[test]")
    result["everything"] = (everything, ["tests/test_installed_plugins.py"])
    return result


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, **kw)


def leg_env(leg: str) -> Path:
    """The leg's virtual environment directory."""
    return VENVS / leg.replace("+", "-")


def install(leg: str, extra: list[str]) -> Path:
    env = leg_env(leg)
    shutil.rmtree(env, ignore_errors=True)
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if run(pip + [TORCH]).returncode:
        raise SystemExit(f"leg {leg}: installing {TORCH} failed")
    if run(pip + [".[test]", *extra]).returncode:
        raise SystemExit(f"leg {leg}: installing the checkout failed")
    return py


COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def test(leg: str, py: Path, paths: list[str]) -> tuple[int, dict[str, int]]:
    env = dict(os.environ, MXMOE_STRICT_PLUGINS="1", PYTHONDONTWRITEBYTECODE="1")
    proc = run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
              for n, kind in COUNT.findall(tail)}
    code = proc.returncode
    if code == 5:  # pytest: no tests collected
        print(f"[warn] leg {leg}: pytest collected no tests in {paths}", flush=True)
        code = 0
    return code, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("legs", nargs="*", help="legs to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the legs and exit")
    parser.add_argument("--keep-envs", action="store_true",
                        help="keep each leg's environment in .venvs/ after its tests")
    args = parser.parse_args()
    table = legs()
    if args.list:
        print("\n".join(table))
        return 0
    unknown = [leg for leg in args.legs if leg not in table]
    if unknown:
        parser.error(f"unknown leg(s) {unknown}; legs: {', '.join(table)}")
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed_legs = []
    for leg in args.legs or list(table):
        extra, paths = table[leg]
        start = time.monotonic()
        print(f"\n=== leg {leg} ===", flush=True)
        try:
            py = install(leg, extra)
            code, counts = test(leg, py, paths)
        finally:
            if not args.keep_envs:
                shutil.rmtree(leg_env(leg), ignore_errors=True)
        for kind in totals:
            totals[kind] += counts.get(kind, 0)
        if code:
            failed_legs.append(leg)
        print(f"=== leg {leg}: {'FAILED' if code else 'ok'} in {time.monotonic() - start:.0f} s",
              flush=True)
    if failed_legs:
        print(f"\nfailed legs: {', '.join(failed_legs)}")
    failed = totals["failed"] + totals["error"]
    if failed_legs and not failed:
        failed = len(failed_legs)  # a leg failed outside its tests (e.g. collection)
    print(f"\ntotal: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if failed_legs else 0


if __name__ == "__main__":
    sys.exit(main())
