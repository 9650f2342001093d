"""Regenerate the FC tables of docs/results.md (the default run, the codecs, the family) over several seeds.

    python benchmarks/readme_tables.py                       # all three tables, seeds 0,1,2
    python benchmarks/readme_tables.py --tables default --seeds 0,1,2,3,4 --jobs 2

Why seeds: a lazy rule decides by comparing two float sums, and another CPU can round a kernel
differently in the last bit; over 800 rounds one flipped decision moves uploads, the iteration
that reaches the target and sometimes the final accuracy. One seed's number from one machine
cannot tell a reader whether their own figure is a bug or rounding; the spread over seeds can.
So every cell is the mean over seeds with its range (min–max) where the seeds differ.

Each (table, seed, codec) is one ``sasg compare`` run in ``--out/TABLE/...``; a run whose
``summary.json`` is already there is reused, so a second call only renders (``--render-only``
never trains). Runs go ``--jobs`` at a time, each with one torch thread. The codec table's
runs leave ``sgd`` out: SGD is the same run as in the default table of that seed, whose final
accuracy − 0.5 they are given as ``--target-acc`` and whose bits the ratios use. The Markdown
printed at the end names the commands, the CPU (``lscpu``'s model name), torch and the seeds.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

CODECS = ("paper32", "rice+fp32", "rice+fp16", "rice+bf16", "rice+int8", "rice+sign", "bitmap+fp32", "auto+sign")
KEPT_PER_MESSAGE = 4071  # top-k entries of FC 784-512-10 at h = 1 %: bits per kept entry
COMPRESSORS = ("identity", "topk", "randomk", "globaltopk", "sign", "terngrad", "qsgd", "dgc", "powersgd")
OWN_CODEC = {"sign": "sign", "terngrad": "ternary", "qsgd": "elias"}
TRIGGERS = ("always", "wk2", "wk1", "ps")  # every rule at its own default c (the default setting's c = 2)


def zoo_algorithms(rows: str = "all") -> list[str]:
    """The family table's algorithms; ``rows="wk1"`` (or ``"ps"``): sgd and that rule's rows only
    (no second gradient, so the cheapest lazy rows, and those whose decisions moved most between
    CPUs)."""
    algos = ["sgd"]
    for comp in COMPRESSORS:
        algos += [f"{t}+{comp}" for t in TRIGGERS if not (comp == "identity" and t == "always")]
    return algos if rows == "all" else [a for a in algos if a == "sgd" or a.startswith(f"{rows}+")]


def zoo_flags(rows: str = "all") -> list[str]:
    algos = zoo_algorithms(rows)
    codecs = ["rice+fp32"] + [f"{a}={OWN_CODEC[a.split('+')[1]]}" for a in algos if a.split("+")[-1] in OWN_CODEC]
    return ["--algos", ",".join(algos), "--codec", ",".join(codecs)]


def runs(tables: list[str], seeds: list[int], out: Path, zoo_rows: str = "all") -> list[tuple[Path, list[str]]]:
    """(folder, compare flags) of the default and zoo tables' runs."""
    todo = []
    for seed in seeds:
        if "default" in tables:
            todo.append((out / "default" / f"seed{seed}", ["--seed", str(seed)]))
        if "zoo" in tables:
            todo.append((out / zoo_folder(zoo_rows) / f"seed{seed}", ["--seed", str(seed), *zoo_flags(zoo_rows)]))
    return todo


def zoo_folder(rows: str) -> str:
    return "zoo" if rows == "all" else f"zoo-{rows}"


def codec_runs(seeds, out: Path, sgd_target, algos: list[str]) -> list[tuple[Path, list[str]]]:
    """The codec table's runs of ``algos``; ``sgd_target(seed)``: that seed's default-table target."""
    todo = []
    for seed in seeds:
        for codec in CODECS[1:]:  # paper32: the default table's sparse and sasg
            todo.append((out / codec_folder(algos) / f"seed{seed}-{codec}",
                         ["--seed", str(seed), "--algos", ",".join(algos),
                          "--codec", ",".join(f"{a}={codec}" for a in algos), "--target-acc", f"{sgd_target(seed):.6g}"]))
    return todo


def codec_folder(algos: list[str]) -> str:
    return "codec" if list(algos) == ["sparse", "sasg"] else "codec-" + "-".join(algos)


def run_all(todo, jobs: int) -> None:
    def one(item):
        folder, flags = item
        if (folder / "summary.json").exists():
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sasg.cli.main", "compare", *flags, "--quiet", "--threads", "1",
               "--out", str(folder), "--overwrite"]
        print("running:", " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))


def load(folder: Path) -> dict:
    return {r["algorithm"]: r for r in json.loads((folder / "summary.json").read_text())["records"]}


# ----- cells: mean over seeds, and the range where they differ ---------------------------------------------
def spread(values, fmt) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "not reached" if fmt is not saving else "—"
    text = fmt(statistics.fmean(known))
    low, high = fmt(min(known)), fmt(max(known))
    if low != high:  # seeds that differ only below the printed digits show one value
        text += f" ({low}–{high})"
    if len(known) < len(values):
        text += f" [{len(known)}/{len(values)} seeds]"
    return text


def count(x: float) -> str:
    return f"{x:,.0f}"


def sci(x: float) -> str:
    return f"{x:.3g}"


def pct(x: float) -> str:
    return f"{x:.1f}"


def saving(x: float) -> str:
    """A fraction of SGD's bits: ``1/98`` for savings, ``0.9`` near one."""
    return f"1/{1 / x:.0f}" if x <= 0.5 else f"{x:.2f}"


def ratio(records: list[dict], base: list[dict], key: str) -> list:
    return [None if r[key] is None or b[key] in (None, 0) else r[key] / b[key] for r, b in zip(records, base)]


def row(first: list[str], columns: list[tuple[list, Callable]]) -> str:
    """One Markdown row: the ``first`` cells as given, then a :func:`spread` cell per column."""
    return "| " + " | ".join([*first, *(spread(values, fmt) for values, fmt in columns)]) + " |"


def values(rs: list[dict], key: str) -> list:
    return [r[key] for r in rs]


def default_table(seeds, out: Path) -> list[str]:
    per = [load(out / "default" / f"seed{s}") for s in seeds]
    lines = ["| algorithm | uploads | bits up | final top-1 % | iters→target | uploads→target | bits→target |",
             "|---|---|---|---|---|---|---|"]
    for algo in per[0]:
        rs = [p[algo] for p in per]
        lines.append(row([algo], [(values(rs, "uploads"), count), (values(rs, "bits_up"), sci),
                                  (values(rs, "final_test_acc"), pct), (values(rs, "iters_to_target"), count),
                                  (values(rs, "uploads_to_target"), count), (values(rs, "bits_to_target"), sci)]))
    targets = [p["sgd"]["target_acc"] for p in per]
    return lines + ["", f"Target per seed = that seed's SGD final − 0.5: {', '.join(f'{t:.1f} %' for t in targets)}."]


def codec_table(seeds, out: Path, algos: list[str]) -> list[str]:
    sgd = [load(out / "default" / f"seed{s}")["sgd"] for s in seeds]
    lines = ["| algorithm | codec | uploads→target | bits→target | vs SGD (fp32) | bits per kept entry | final top-1 % |",
             "|---|---|---|---|---|---|---|"]
    for codec in CODECS:
        per = [load(out / "default" / f"seed{s}") if codec == "paper32"
               else load(out / codec_folder(algos) / f"seed{s}-{codec}") for s in seeds]
        for algo in algos:
            rs = [p[algo] for p in per]
            entry = [r["bits_up"] / r["uploads"] / KEPT_PER_MESSAGE for r in rs]
            lines.append(row([algo, f"`{codec}`"], [
                (values(rs, "uploads_to_target"), count), (values(rs, "bits_to_target"), sci),
                (ratio(rs, sgd, "bits_to_target"), saving), (entry, pct), (values(rs, "final_test_acc"), pct)]))
    return lines


def zoo_table(seeds, out: Path, rows: str = "all") -> list[str]:
    per = [load(out / zoo_folder(rows) / f"seed{s}") for s in seeds]
    lines = ["| algorithm | codec | uploads | skipped | uploads → target | bits → target | vs sgd | final top-1 % |",
             "|---|---|---|---|---|---|---|---|"]
    for algo in per[0]:
        rs = [p[algo] for p in per]
        lines.append(row([f"`{algo}`", rs[0]["codec"]], [
            (values(rs, "uploads"), count), (values(rs, "skipped"), count), (values(rs, "uploads_to_target"), count),
            (values(rs, "bits_to_target"), sci), (ratio(rs, [p["sgd"] for p in per], "bits_to_target"), saving),
            (values(rs, "final_test_acc"), pct)]))
    return lines


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="default,codec,zoo", help="comma-separated: default, codec, zoo")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, default=Path("runs/readme-tables"))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each one torch thread)")
    p.add_argument("--codec-algos", default="sparse,sasg",
                   help="the codec table's rows: sparse,sasg, or sasg alone (the lazy one, whose decisions move)")
    p.add_argument("--zoo-rows", choices=("all", "wk1", "ps"), default="all",
                   help="the family table's rows: all 36, or sgd and the 9 wk1 (or ps) rows (about a quarter of the time)")
    p.add_argument("--render-only", action="store_true", help="print the tables from the runs already made")
    args = p.parse_args()
    tables = [t.strip() for t in args.tables.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    codec_algos = [a.strip() for a in args.codec_algos.split(",")]
    if not args.render_only:
        needs_default = [t for t in tables if t in ("default", "codec")]
        first = runs(["default"] if needs_default else [], seeds, args.out)
        run_all(first + runs([t for t in tables if t == "zoo"], seeds, args.out, args.zoo_rows), args.jobs)
        if "codec" in tables:
            target = lambda s: load(args.out / "default" / f"seed{s}")["sgd"]["final_test_acc"] - 0.5  # noqa: E731
            run_all(codec_runs(seeds, args.out, target, codec_algos), args.jobs)
    import torch

    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; one thread per run; "
          f"seeds {', '.join(map(str, seeds))}; cells: mean (min–max) over seeds where they differ.\n")
    render = {"default": default_table, "codec": lambda seeds, out: codec_table(seeds, out, codec_algos),
              "zoo": lambda seeds, out: zoo_table(seeds, out, args.zoo_rows)}
    for table in tables:
        print(f"### {table}\n")
        print("\n".join(render[table](seeds, args.out)) + "\n")


if __name__ == "__main__":
    main()
