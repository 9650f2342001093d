"""Per-rank memory of `sasg launch`: a rank holds its own worker state plus the server replica,
not the state of all M workers, so its peak RSS should barely depend on M.

    .venv/bin/python benchmarks/rank_memory.py            # M = 4 and M = 16, sasg and lasg
    .venv/bin/python benchmarks/rank_memory.py --quick    # sasg only

Each case runs `sasg launch --nproc-per-node M --algo ALGO` on the default setting (FC 784-512-10,
embedded mnist5k, batch 10) for a few iterations, with SASG's window D = 1 so that the second
gradient is already computed in round 2, and reads every rank's peak resident memory (VmHWM,
`peak_rss_bytes` in distributed.json). Figures are the largest rank's, in MiB.

The last line is JSON: ``{"<algo>_m16_over_m4": ratio, ...}`` (the issue's bound: at most 1.2).
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_rss(algo: str, workers: int, iterations: int) -> list[int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "sasg", "launch", "--nproc-per-node", str(workers), "--algo", algo,
               "--iterations", str(iterations), "--eval-every", str(iterations), "--window", "1",
               "--device", "cpu", "--quiet", "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        info = json.loads((out / "distributed.json").read_text())
        return info["runs"][0]["peak_rss_bytes"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="sasg only")
    p.add_argument("--iterations", type=int, default=6)
    args = p.parse_args()
    algos = ("sasg",) if args.quick else ("sasg", "lasg")
    mib = 2**20
    print(f"{'algorithm':<10} {'M':>4} {'max rank MiB':>13} {'min rank MiB':>13}")
    result = {}
    for algo in algos:
        peaks = {}
        for m in (4, 16):
            rss = peak_rss(algo, m, args.iterations)
            peaks[m] = max(rss)
            print(f"{algo:<10} {m:>4} {max(rss) / mib:>13.1f} {min(rss) / mib:>13.1f}", flush=True)
        result[f"{algo}_m16_over_m4"] = round(peaks[16] / peaks[4], 3)
        result[f"{algo}_m4_mib"] = round(peaks[4] / mib, 1)
        result[f"{algo}_m16_mib"] = round(peaks[16] / mib, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
