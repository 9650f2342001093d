"""Importing sasg changes nothing process-wide (docs/DESIGN: "no process-wide side effects from
library objects"): not ``sys.path``, the environment, matplotlib's backend, torch's settings,
signal handlers or exit hooks. What a command needs (threads, SIGTERM, a run lock's exit hook) is
set by the function that needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Imports every module of sasg in a fresh interpreter, after the third-party packages it uses (what
# their own imports do is theirs), and prints what differs from before.
PROBE = r"""
import atexit, importlib, json, logging, os, pkgutil, signal, sys, warnings
import matplotlib
matplotlib.use("svg")  # a user's choice: sasg must keep it
import numpy, torch

registered = []
_register = atexit.register
def register(fn, *args, **kwargs):
    registered.append(f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}")
    return _register(fn, *args, **kwargs)
atexit.register = register

def state():
    return {
        "sys.path": list(sys.path), "environ": dict(os.environ), "backend": matplotlib.get_backend(),
        "torch threads": torch.get_num_threads(), "torch dtype": str(torch.get_default_dtype()),
        "torch deterministic": torch.are_deterministic_algorithms_enabled(),
        "torch matmul precision": torch.get_float32_matmul_precision(),
        "torch rng": torch.random.get_rng_state().tolist(),
        "SIGTERM": str(signal.getsignal(signal.SIGTERM)), "SIGINT": str(signal.getsignal(signal.SIGINT)),
        "warnings filters": len(warnings.filters), "root logger level": logging.getLogger().level,
    }

before = state()
import sasg
names = [m.name for m in pkgutil.walk_packages(sasg.__path__, "sasg.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
after = state()
changed = {key: [before[key], after[key]] for key in before if before[key] != after[key]}
ours = [name for name in registered if name.startswith("sasg")]
print(json.dumps({"modules": len(names), "changed": changed, "exit hooks": ours}, default=str))
"""


def test_importing_every_module_changes_nothing_process_wide():
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "PYTHONPATH")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src  # the checkout's sources, as the tests import them
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen["modules"] > 100
    assert seen["changed"] == {}, f"importing sasg changed: {seen['changed']}"
    assert seen["exit hooks"] == [], f"importing sasg registered exit hooks: {seen['exit hooks']}"
