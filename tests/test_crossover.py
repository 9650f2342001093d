"""benchmarks/crossover.py without namespaces or timing: its flags, its layouts, its summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import crossover  # noqa: E402  (benchmarks/crossover.py)


def test_help_runs_and_names_the_rows():
    r = subprocess.run([sys.executable, str(BENCH / "crossover.py"), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--loopback" in r.stdout and "--quick" in r.stdout


def test_bad_flags_are_refused_in_one_line():
    r = subprocess.run([sys.executable, str(BENCH / "crossover.py"), "--models", "3M"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--models" in r.stderr


def test_layouts_have_the_documented_sizes():
    sizes = {}
    for key, (_, shapes) in crossover.LAYOUTS.items():
        s = shapes()
        sizes[key] = (sum(crossover._numel(shape) for _, shape in s), len(s))
    assert sizes == {"0.4M": (407_050, 4), "11M": (11_173_962, 62), "25M": (25_557_032, 161)}


def test_summary_names_the_winner_and_per_turn_ratios():
    rows = ["ddp", "powersgd-r2", "sasg", "compute"]
    got = {"wall": {"ddp": [100.0, 120.0, 110.0], "powersgd-r2": [20.0, 30.0, 25.0], "sasg": [10.0, 12.0, 50.0],
                    "compute": [1.0, 1.0, 1.0]},
           "tx_bytes_per_step": {r: 1e6 for r in rows}, "steps_per_turn": 2, "load_1min": 1.0}
    s = crossover.summarize(got, rows)
    assert s["winner"] == "sasg"  # the floor row is no candidate
    assert s["ms"]["sasg"] == 12.0
    assert s["ratios"]["sasg"] == {"over_ddp": 0.1, "over_powersgd": 0.5}  # medians of .1, .1, .45 and .5, .4, 2
    assert s["mb_per_step"]["ddp"] == 1.0
