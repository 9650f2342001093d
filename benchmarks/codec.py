"""Encode + decode time of the INDEX+VALUE codecs against the exact top-k that made the message.

    .venv/bin/python benchmarks/codec.py            # full run (well under two minutes on 2 cores)
    .venv/bin/python benchmarks/codec.py --quick    # fewer repetitions
    .venv/bin/python benchmarks/codec.py --rows 1   # one message per call, as a DDP hook rank encodes

Two messages, M = 10 worker rows (``--rows``) of i.i.d. normal values (fixed generator), density h = 1 %
(k_s = max(1, floor(h d_s)) per tensor), compressed by ``sasg.core.TopK``:

- ``fc``: FC 784-512-10, d = 407,050 in 4 tensors, K = 4,071 entries per row;
- ``resnet18``: ResNet-18 for CIFAR-10 (layout from ``sasg.models``, shapes only), d = 11,173,962
  in 62 tensors, K = 111,723 per row.

For each codec (``idx32+fp32`` = paper32's bytes, ``rice+fp32``, ``rice+bf16``, ``rice+fp16``, ``rice+int8``,
``rice+sign``, ``bitmap+fp32``, ``auto+sign``) one timed call is ``encode_sparse`` of the 10
rows then ``decode_sparse`` of the bytes. Candidates (``topk`` = ``TopK.compress``, and every
codec) take turns, after one untimed warm-up call each; the medians are compared. Before timing,
every codec's decode is checked to give back the indices (and, for fp32, the values) exactly.

Table: median ms of topk and of each codec (encode + decode), their ratio, bits per kept entry
(whole message, and the index part alone). The last line is one JSON object:
``fc_codec_over_topk`` / ``resnet_codec_over_topk`` (the worse of rice+sign and rice+bf16; the
target is <= 1), ``rice_sign_ns_per_entry`` (rice+sign encode + decode on the fc layout, ns per
kept entry of the call's rows; with ``--rows 1`` one message, as a DDP hook rank codes it: the
target is <= 50), every codec's ratio and bits per entry, per layout.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import statistics
import time

import torch

from sasg.core import Layout, TopK
from sasg.core.codecs.composite import make_codec

CODECS = ("idx32+fp32", "rice+fp32", "rice+bf16", "rice+fp16", "rice+int8", "rice+sign", "bitmap+fp32", "auto+sign")
TARGET = ("rice+sign", "rice+bf16")


def fc_layout() -> Layout:
    return Layout([("1.weight", (512, 784)), ("1.bias", (512,)), ("3.weight", (10, 512)), ("3.bias", (10,))])


def resnet18_layout() -> Layout:
    from sasg.models import MODELS

    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        model = MODELS["resnet18"]((3, 32, 32), 10)
    return Layout.from_module(model)


def run(label: str, layout: Layout, reps: int, rows: int = 10, density: float = 0.01) -> dict:
    v = torch.randn(rows, layout.numel, generator=torch.Generator().manual_seed(0))
    topk = TopK(layout, density)
    q = topk.compress(v)
    K = q.indices.shape[1]
    codecs = {name: make_codec(name, layout) for name in CODECS}
    bits, index_bits = {}, {}
    for name, c in codecs.items():  # correctness first, and the sizes
        data, sizes = c.encode_sparse(q.indices, q.values)
        idx, vals = c.decode_sparse(data, sizes, K, torch.float32)
        assert torch.equal(idx, q.indices), name
        assert not c.lossless or torch.equal(vals, q.values), name
        bits[name] = 8 * statistics.mean(sizes) / K
        index_bits[name] = bits[name] - 8 * c.value.nbytes(K) / K

    def codec_call(c):
        def call():
            data, sizes = c.encode_sparse(q.indices, q.values)
            c.decode_sparse(data, sizes, K, torch.float32)
        return call

    calls = {"topk": lambda: topk.compress(v), **{name: codec_call(c) for name, c in codecs.items()}}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for f in calls.values():
        f()  # warm-up
    for _ in range(reps):
        for name, f in calls.items():  # take turns: load drifts hit every candidate alike
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{label}: d = {layout.numel:,} in {len(layout)} tensors, M = {rows}, K = {K:,} per row, "
          f"{reps} reps, topk median {1e3 * med['topk']:.2f} ms")
    print(f"{'codec':<12} {'enc+dec ms':>10} {'/ topk':>8} {'bits/entry':>11} {'index bits':>11}")
    for name in CODECS:
        print(f"{name:<12} {1e3 * med[name]:>10.2f} {med[name] / med['topk']:>8.3f} {bits[name]:>11.2f} "
              f"{index_bits[name]:>11.2f}")
    return {
        "topk_ms": 1e3 * med["topk"],
        "rice_sign_ns_per_entry": 1e9 * med["rice+sign"] / (rows * K),
        "codec_over_topk": {name: med[name] / med["topk"] for name in CODECS},
        "bits_per_entry": bits,
        "index_bits_per_entry": index_bits,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--rows", type=int, default=10, help="messages per call (10: M = 10 workers)")
    args = ap.parse_args()
    if args.rows < 1:
        ap.error(f"--rows must be >= 1, got {args.rows}")
    t0 = time.perf_counter()
    fc = run("fc", fc_layout(), reps=15 if args.quick else 100, rows=args.rows)
    resnet = run("resnet18", resnet18_layout(), reps=3 if args.quick else 15, rows=args.rows)
    print(f"\n(total {time.perf_counter() - t0:.1f} s, {torch.get_num_threads()} threads)")
    summary = {
        "fc_codec_over_topk": max(fc["codec_over_topk"][n] for n in TARGET),
        "resnet_codec_over_topk": max(resnet["codec_over_topk"][n] for n in TARGET),
        "rice_sign_ns_per_entry": round(fc["rice_sign_ns_per_entry"], 1),
        "fc": {k: _round(v) for k, v in fc.items()},
        "resnet": {k: _round(v) for k, v in resnet.items()},
    }
    summary["fc_codec_over_topk"] = round(summary["fc_codec_over_topk"], 3)
    summary["resnet_codec_over_topk"] = round(summary["resnet_codec_over_topk"], 3)
    print(json.dumps(summary))


def _round(v):
    return {k: round(x, 3) for k, x in v.items()} if isinstance(v, dict) else round(v, 3)


if __name__ == "__main__":
    main()
