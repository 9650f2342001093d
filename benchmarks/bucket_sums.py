"""The hook's aggregate into DDP's buckets: summed where it lands against a flat step copied in.

    .venv/bin/python benchmarks/bucket_sums.py             # fc and resnet18, 2 and 4 ranks' messages
    .venv/bin/python benchmarks/bucket_sums.py --quick     # fewer turns

After the exchange a rank of the DDP hook holds the round's ``M`` messages (one per rank) and must
hand DDP their sum in the gradient buckets. Two candidates, on one core (one torch thread):

* ``reference``: the messages summed into a flat fp32 step of the whole model (``payload.sum``:
  zero it, ``index_add_``), then the step copied into the buckets (``ParameterIndex.scatter``):
  what the hook did before, and still does where the fast path does not apply;
* ``in_buckets``: :class:`sasg.ddp.bucket_sums.BucketSums`: the buckets mapped (the last round's
  map, checked), zeroed, and the messages added where they land by a compiled loop (what the hook
  does now with fp32 buckets).

The layouts: ``fc`` (FC 784-512-10, 407,050 floats in 4 tensors) and ``resnet18`` (ResNet-18's
62 tensor shapes, 11,173,962 floats), each in DDP's buckets (25 MB, last tensors first, the first
bucket at most 1 MB), with ``M`` messages of the hook's top-k (h = 1 %, per tensor, 1-D and small
tensors whole) of random rows. Before timing, both candidates' buckets are checked equal bit for
bit. The candidates take turns (``--turns``, order alternated; each turn ``--reps`` calls,
median); the table gives the medians over turns and ``in_buckets / reference`` (the median of
the per-turn ratios). The last line is JSON: per ``layout M``, ``reference_ms``, ``in_buckets_ms``,
``in_buckets_over_reference`` and its range over turns.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import platform
import statistics
import time

import torch

from round_floor import _Bucket, _median_ms  # a GradBucket as the hook reads it; timing


def _setup(layout_name: str, M: int, seed: int):
    from sasg.ddp.buckets import ParameterIndex
    from sasg.ddp.hook_overlap import DDP_BUCKET_CAP, DDP_FIRST_BUCKET
    from sasg.ddp.rules import hook_algorithm
    from sasg.models import MODELS

    shape = (1, 28, 28) if layout_name == "fc" else (3, 32, 32)
    with torch.device("meta"):
        shapes = [(n, p.shape) for n, p in MODELS[layout_name](shape, 10).named_parameters()]
    named = [(n, torch.nn.Parameter(torch.empty(s))) for n, s in shapes]
    index = ParameterIndex(named)
    buckets = [_Bucket(reversed(index.params[a:b])) for a, b in index.parts(DDP_BUCKET_CAP, DDP_FIRST_BUCKET)]
    alg = hook_algorithm("always+topk", density=0.01, window=10, threshold_scale=2.0, tensor_policy=None,
                         warmup=0).build(index.layout, "rice+fp32")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(M, index.numel, generator=gen)
    payload = alg.compressor.compress(rows, list(range(M)), generators=[gen] * M)
    return index, buckets, payload


def _candidates(index, buckets, payload):
    from sasg.ddp.bucket_sums import BucketSums

    step = torch.zeros(index.numel)
    S = len(index.layout.segments)

    def reference():
        payload.sum(step)
        index.scatter(step, buckets)

    kept = [None]

    def in_buckets():  # as the hook does: the last round's mapping checked, taken again
        sums = kept[0] = BucketSums.of(index, buckets, kept[0])
        sums.zero()
        sums.add(0, S, 0, payload)

    return {"reference": reference, "in_buckets": in_buckets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default="fc,resnet18")
    p.add_argument("--ranks", default="2,4", help="messages a round (the ranks), comma-separated (2,4)")
    p.add_argument("--turns", type=int, default=7)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="3 turns of 7 calls")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    layouts = [s for s in a.layouts.split(",") if s]
    if any(x not in ("fc", "resnet18") for x in layouts):
        p.error(f"--layouts: from fc, resnet18, got {a.layouts!r}")
    try:
        ranks = [int(s) for s in a.ranks.split(",") if s]
    except ValueError:
        ranks = []
    if not ranks or min(ranks) < 1 or a.turns < 1 or a.reps < 1:
        p.error("--ranks: positive integers such as 2,4; --turns and --reps >= 1")
    turns, reps = (3, 7) if a.quick else (a.turns, a.reps)
    torch.set_num_threads(1)
    from sasg import kernels

    kernels.warm()
    started = time.perf_counter()
    out = {}
    print(f"one torch thread, {turns} turns of {reps} calls (medians); {platform.processor() or platform.machine()}")
    print(f"{'layout':<9} {'M':>2} {'reference ms':>13} {'in_buckets ms':>14} {'ratio':>6}  {'(turns)':>11}")
    for layout in layouts:
        for M in ranks:
            index, buckets, payload = _setup(layout, M, a.seed)
            cands = _candidates(index, buckets, payload)
            got = {}
            for name, fn in cands.items():  # both give the same buckets, bit for bit
                for b in buckets:
                    b.buffer().fill_(7.0)
                fn()
                got[name] = [b.buffer().clone() for b in buckets]
            if not all(torch.equal(x, y) for x, y in zip(got["reference"], got["in_buckets"])):
                raise SystemExit(f"{layout} M={M}: the candidates' buckets differ")
            ms = {name: [] for name in cands}
            for t in range(turns):
                for name in (list(cands) if t % 2 == 0 else list(cands)[::-1]):
                    ms[name].append(_median_ms(cands[name], reps))
            ratios = [b / r for r, b in zip(ms["reference"], ms["in_buckets"])]
            row = {"reference_ms": round(statistics.median(ms["reference"]), 3),
                   "in_buckets_ms": round(statistics.median(ms["in_buckets"]), 3),
                   "in_buckets_over_reference": round(statistics.median(ratios), 3),
                   "range": [round(min(ratios), 3), round(max(ratios), 3)]}
            out[f"{layout} {M}"] = row
            print(f"{layout:<9} {M:>2} {row['reference_ms']:>13.3f} {row['in_buckets_ms']:>14.3f} "
                  f"{row['in_buckets_over_reference']:>6.3f}  {row['range'][0]:>5.3f}-{row['range'][1]:<5.3f}")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    print(json.dumps({"benchmark": "bucket_sums", "turns": turns, "reps": reps, "rows": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
