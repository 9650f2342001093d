"""Per-segment exact top-k (the SASG/sparse compressor) against ``torch.topk`` and a memory pass.

    .venv/bin/python benchmarks/compress.py            # full run (a minute or two on 2 cores)
    .venv/bin/python benchmarks/compress.py --quick    # fewer repetitions, no exactness re-check

For two parameter layouts, M = 10 worker rows of i.i.d. normal values (seeded), density
h = 1 % (k_s = max(1, floor(h d_s)) per segment):

- ``fc``: the paper's MNIST net, FC 784-512-10, d = 407,050 in 4 segments;
- ``resnet18``: ResNet-18 for CIFAR-10, d = 11,173,962 in 62 segments, built from its parameter
  shapes (listed below, no model needed; checked against ``sasg.models`` when available);
- ``fc_row``: the FC layout again, for ONE row (N = 1: one worker's upload, where the fixed costs
  per call and per tensor show), timed over ``--row-reps`` turns (a call takes about 0.1 ms).

Timed in the same run, median of ``--reps`` after one untimed call, the candidates taking turns
in two groups, each with ``ours``: ``ours``, ``clone``, ``copy_`` (the memory-pass ratios), then
``ours``, ``reference``, ``torch.topk`` (the speed-ups; ``ours_vs_torch_ms``):

- ``ours``: ``TopK(layout, h).compress(v)``, the full compressor (indices of every segment,
  exact tie rule, values gathered), as the simulator calls it;
- ``reference``: the exact rule as it was before (``torch.topk`` threshold, then a mask over the
  whole segment, tie fix-up, ``nonzero``), per segment;
- ``torch.topk``: ``torch.topk(|v_s|, k_s)`` per segment (indices and values, unordered ties;
  what a non-exact implementation would call);
- ``clone``: ``v.clone()``, one memory pass over the same tensor (read + write, fresh memory),
  and ``copy_``: the same into a preallocated buffer (no page faults: pure bandwidth).

Before timing, ``ours`` is checked to be exact on this input: k_s entries per row and segment,
ascending, and every kept magnitude >= every dropped one (full mode: also equal to a stable sort).

``ours`` runs the compiled kernel (``sasg.kernels.topk``) where it applies, else the torch path;
``SASG_KERNELS=0`` times the torch path.

The last line is one JSON object: ``ours_over_memory_pass_11M`` (time ratio to ``clone``),
``torch_topk_over_ours_11M`` (speed-up over ``torch.topk``), the same for the FC layout, and
``fc_row_topk_over_memory_pass`` (one FC row: ``ours`` over ``clone``).
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import os
import statistics
import time

import torch

from sasg.core import Layout, TopK
from sasg.core.selection import _mask_of_magnitudes, _mask_to_indices


def resnet18_cifar_shapes(num_classes: int = 10) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of ResNet-18 (CIFAR variant) in ``model.parameters()`` order."""
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("stem.0.weight", (64, 3, 3, 3)), ("stem.1.weight", (64,)), ("stem.1.bias", (64,)),
    ]
    cin = 64
    for i, width in enumerate((64, 128, 256, 512)):
        for j in range(2):
            stride = 2 if (i > 0 and j == 0) else 1
            p = f"stages.{i}.{j}."
            shapes += [
                (p + "conv1.weight", (width, cin, 3, 3)), (p + "bn1.weight", (width,)), (p + "bn1.bias", (width,)),
                (p + "conv2.weight", (width, width, 3, 3)), (p + "bn2.weight", (width,)), (p + "bn2.bias", (width,)),
            ]
            if stride != 1 or cin != width:
                shapes += [
                    (p + "shortcut.0.weight", (width, cin, 1, 1)),
                    (p + "shortcut.1.weight", (width,)), (p + "shortcut.1.bias", (width,)),
                ]
            cin = width
    shapes += [("head.weight", (num_classes, 512)), ("head.bias", (num_classes,))]
    return shapes


def fc_shapes() -> list[tuple[str, tuple[int, ...]]]:
    return [("1.weight", (512, 784)), ("1.bias", (512,)), ("3.weight", (10, 512)), ("3.bias", (10,))]


def check_against_registry(shapes) -> str:
    try:
        from sasg.models import MODELS

        with torch.device("meta"):  # shapes only, nothing allocated
            model = MODELS["resnet18"]((3, 32, 32), 10)
    except Exception as e:  # the model may not be in this checkout
        return f"not checked against sasg.models ({type(e).__name__})"
    theirs = [tuple(p.shape) for p in model.parameters()]
    return "matches sasg.models resnet18" if theirs == [s for _, s in shapes] else "DIFFERS from sasg.models resnet18"


def kernels_on() -> bool:
    try:
        from sasg import kernels
    except ImportError:  # a checkout from before sasg.kernels
        return False
    return kernels.available()


def median_ms(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def check_exact(comp: TopK, v: torch.Tensor, full: bool) -> None:
    q = comp.compress(v)
    col = 0
    for seg, k in zip(comp.layout.segments, comp.k_per_segment):
        idx = q.indices[:, col : col + k] - seg.offset
        col += k
        mag = v[:, seg.offset : seg.end].abs()
        assert idx.shape[1] == k and bool((idx[:, 1:] > idx[:, :-1]).all()), seg.name
        kept = torch.zeros_like(mag, dtype=torch.bool).scatter_(1, idx, True)
        if k < seg.numel:
            lo = mag.masked_fill(~kept, float("inf")).amin(dim=1)
            hi = mag.masked_fill(kept, -1.0).amax(dim=1)
            assert bool((lo >= hi).all()), seg.name
        if full:
            ref = torch.sort(torch.sort(mag, dim=1, descending=True, stable=True).indices[:, :k], dim=1).values
            assert torch.equal(idx, ref), seg.name
    assert torch.equal(q.values, torch.gather(v, 1, q.indices))


def bench_layout(name: str, layout: Layout, rows: int, density: float, reps: int, full_check: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(rows, layout.numel, generator=gen)
    comp = TopK(layout, density)
    check_exact(comp, v, full_check)
    segs = list(zip(layout.segments, comp.k_per_segment))

    def ours():
        comp.compress(v)

    def reference():
        for seg, k in segs:
            _mask_to_indices(_mask_of_magnitudes(v[:, seg.offset : seg.end].abs(), k), k)

    def torch_topk():
        for seg, k in segs:
            torch.topk(v[:, seg.offset : seg.end].abs(), k, dim=1)

    buf = torch.empty_like(v)
    res = {"d": layout.numel, "segments": len(layout), "nnz_per_row": comp.nnz}
    # Interleave the candidates, so that load from elsewhere hits them alike; in two groups, each
    # with ``ours``: the memory passes, then the slow torch candidates. Timed in one loop, the slow
    # ones (tens of allocations and ms each) left the caches and the allocator in a state that
    # slowed the next calls unevenly: on one FC row, clone 38 -> 159 us and ours 74 -> 225 us.
    for group, tag in ((("ours", "clone", "copy_"), ""), (("ours", "reference", "torch_topk"), "_vs_torch")):
        fns = {key: {"ours": ours, "reference": reference, "torch_topk": torch_topk,
                     "clone": lambda: v.clone(), "copy_": lambda: buf.copy_(v)}[key] for key in group}
        samples = {key: [] for key in fns}
        for key, fn in fns.items():
            fn()  # untimed first call (scratch buffers, caches)
        for _ in range(reps):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - t0)
        for key in fns:
            res[key + (tag if key == "ours" else "") + "_ms"] = 1e3 * statistics.median(samples[key])
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 repetitions, exactness checked by the ordering rule only")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7, quick 3)")
    p.add_argument("--rows", type=int, default=10, help="M, worker rows (10)")
    p.add_argument("--row-reps", type=int, default=None, help="timed repetitions of the one-row case (default 300, quick 60)")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 7)
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "n/a"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load}")
    t_start = time.perf_counter()
    rn = resnet18_cifar_shapes()
    layouts = {"fc": Layout(fc_shapes()), "resnet18": Layout(rn)}
    print(f"resnet18 layout: {layouts['resnet18'].numel:,} parameters in {len(rn)} segments, {check_against_registry(rn)}")
    print(f"M = {args.rows} rows, h = {args.density}, median of {reps} (ms)\n")
    results = {name: bench_layout(name, lay, args.rows, args.density, reps, not args.quick) for name, lay in layouts.items()}
    row_reps = args.row_reps or (60 if args.quick else 300)
    results["fc_row"] = bench_layout("fc_row", layouts["fc"], 1, args.density, row_reps, not args.quick)

    hdr = f"{'layout':<9} {'d':>11} {'ours':>9} {'reference':>10} {'torch.topk':>11} {'clone':>8} {'copy_':>8} {'ours/clone':>11} {'ours/copy_':>11} {'topk/ours':>10}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in results.items():
        print(
            f"{name:<9} {r['d']:>11,} {r['ours_ms']:>9.3f} {r['reference_ms']:>10.3f} {r['torch_topk_ms']:>11.3f} "
            f"{r['clone_ms']:>8.3f} {r['copy__ms']:>8.3f} {r['ours_ms'] / r['clone_ms']:>10.2f}x "
            f"{r['ours_ms'] / r['copy__ms']:>10.2f}x {r['torch_topk_ms'] / r['ours_vs_torch_ms']:>9.2f}x"
        )
    big, fc, row = results["resnet18"], results["fc"], results["fc_row"]
    headline = {
        "ours_over_memory_pass_11M": round(big["ours_ms"] / big["clone_ms"], 3),
        "torch_topk_over_ours_11M": round(big["torch_topk_ms"] / big["ours_vs_torch_ms"], 3),
        "ours_over_copy_11M": round(big["ours_ms"] / big["copy__ms"], 3),
        "reference_over_ours_11M": round(big["reference_ms"] / big["ours_vs_torch_ms"], 3),
        "ours_over_memory_pass_fc": round(fc["ours_ms"] / fc["clone_ms"], 3),
        "torch_topk_over_ours_fc": round(fc["torch_topk_ms"] / fc["ours_vs_torch_ms"], 3),
        "fc_row_topk_over_memory_pass": round(row["ours_ms"] / row["clone_ms"], 3),
        "torch_topk_over_ours_fc_row": round(row["torch_topk_ms"] / row["ours_vs_torch_ms"], 3),
        "kernels": kernels_on(),
        "ms": {n: {k: round(v, 4) for k, v in r.items() if k.endswith("_ms")} for n, r in results.items()},
        "exact": True,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(f"\ntotal {headline['seconds']} s")
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
