"""benchmarks/checkout.py: a benchmark run as a script imports its own checkout's sasg, and hands
that path on to the processes it starts; imported from elsewhere (a test) it changes nothing."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import checkout  # noqa: E402  (benchmarks/checkout.py)

PROBE = """
import os, sys
sys.argv = [{argv0!r}]
sys.path.insert(1, {bench!r})
import checkout
print(sys.path[0])
print(os.environ.get("PYTHONPATH", ""))
"""


def _probe(argv0: str, pythonpath: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = PROBE.format(argv0=argv0, bench=str(BENCH))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_a_benchmark_run_as_a_script_puts_its_checkout_first():
    first, pythonpath = _probe(str(BENCH / "round_floor.py"), "/elsewhere/src")
    assert first == str(ROOT / "src")
    assert pythonpath.split(os.pathsep) == [str(ROOT / "src"), "/elsewhere/src"]


def test_anything_else_keeps_its_path():
    first, pythonpath = _probe(str(ROOT / "tests" / "x.py"), "/elsewhere/src")
    assert first != str(ROOT / "src") and pythonpath == "/elsewhere/src"
    assert not checkout.run_as_script("") and not checkout.run_as_script(str(ROOT / "tests" / "x.py"))


def test_put_first_keeps_one_entry_each():
    path, environ = ["a", "/s", "b"], {"PYTHONPATH": os.pathsep.join(["/s", "c", "/s"])}
    checkout.put_first(Path("/s"), path, environ)
    assert path == ["/s", "a", "b"] and environ["PYTHONPATH"] == os.pathsep.join(["/s", "c"])
