"""One rank's hook round, phase by phase, beside each phase's floor on this machine.

    .venv/bin/python benchmarks/round_floor.py                    # FC and ResNet-18 shapes, rice+fp32 and rice+sign
    .venv/bin/python benchmarks/round_floor.py --quick            # fewer repetitions and turns
    .venv/bin/python benchmarks/round_floor.py --layouts fc --codecs rice+sign --world 2

``--world`` local ranks (gloo over loopback, one torch thread each, as under ``torchrun``) run the
DDP hook's round (``always+topk``, h = 1 %, error feedback: the hook's defaults) with the real
members, the real codec and the real collectives, one phase at a time, in the order the hook runs
them; rank 0 times each phase (median of ``--reps`` calls; every rank starts each phase together), in
``--turns`` turns that each measure the floors and then every phase:

==========  ==========================================================  ===========================
phase       what                                                        floor
==========  ==========================================================  ===========================
backward    forward + backward of FC 784-512-10, batch 10 (FC only)     its FLOPs at the GEMM rate
gather      the buckets' gradients as the engine's blocks: views where   one view of each
            DDP keeps them (HookState reads them in place)              tensor (or one call)
trigger     the rule's decision (``always``)                            one call
ef add      ``v = e + g / M`` in the error memory                       read 2, write 1 × 4d bytes
top-k       exact per-tensor top-k of ``v``                             read 4d bytes
encode      the codec's bytes of the message (and what it decodes to)   read K entries, write bytes
                                                                        (and K decoded values)
ef update   ``e -= decoded(q)`` on the K sent entries                   K scattered writes
exchange    the round's collective: every message in a slot with its    one empty collective + bytes
            size (sasg.distributed.slots; the sizes' own call only in   over the link
            a kind's first round), as TorchTransport makes it
decode      every other sender's bytes into messages, the rank's own as  read bytes and K entries,
            its encode gave it (as TorchTransport decodes)              write K·M entries
aggregate   store the messages, zero the buckets and add the messages    write 4d bytes, and the
            where they land (sasg.ddp.bucket_sums; the reference: sum    K·M entries (16 bytes
            them into a flat step)                                       each)
scatter     the reference only (non-fp32 buckets, SASG_KERNELS=0): the  read + write 4d bytes
            step copied into the buckets
==========  ==========================================================  ===========================

Every floor is measured here, in the same run: the memory bandwidth at the layout's size (a copy
of ``d`` floats into a buffer made before: ``B``; a memory floor is bytes / B), the fixed cost of one call into torch (``op``: every phase
needs at least one; added to every floor but the exchange's; a view of a tensor: ``view``), an empty collective (one int32 to
every rank by ``all_to_all_single``: ``latency``), the loopback's throughput for the link term,
and the GEMM rate (a 1024² matmul) for the backward. ``link_1gbit_ms`` adds what the payload
would take at 1 Gbit/s. The layouts: ``fc`` (FC 784-512-10: d = 407,050 in 4 tensors, one DDP
bucket) and ``resnet18`` (ResNet-18's 62 tensors, d = 11,173,962, synthetic gradients).

Table per layout and codec: each phase's ms, its floor and their ratio, medians over the turns
(a ratio is taken within its turn, phase and floor measured a few seconds apart; on a shared VM a
phase of 20 us timed once in a 1 ms window swung from 3 to 10 times its floor between runs), and
the ratio's range over the turns. The last line is JSON: per layout and codec, per phase ``ms``,
``floor_ms``, ``overhead_over_floor``, ``overhead_over_floor_range``; the floors
themselves; ``fc_worst_phase`` and ``fc_worst_over_floor`` (the worst phase but backward on FC,
default codec).
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

from rank_round import free_port, join

LAYOUTS = ("fc", "resnet18")
CODECS = ("rice+fp32", "rice+sign")
DENSITY = 0.01
PHASES = ("backward", "gather", "trigger", "ef add", "top-k", "encode", "ef update", "exchange", "decode",
          "aggregate", "scatter")


class _Bucket:
    """What the hook reads of a ``dist.GradBucket``: its parameters, one flat buffer, and each
    parameter's ``.grad`` a view in it (DDP's bucket views), holding the gradient it had (or 0)."""

    def __init__(self, params):
        self._params = list(params)
        self._buffer = torch.cat([(p.grad if p.grad is not None else torch.zeros(p.shape)).reshape(-1)
                                  for p in self._params])
        at = 0
        for p in self._params:
            p.grad = self._buffer[at:at + p.numel()].view(p.shape)
            at += p.numel()

    def parameters(self):
        return self._params

    def buffer(self):
        return self._buffer

    def gradients(self):
        return [p.grad for p in self._params]

    def index(self):
        return 0

    def is_last(self):
        return True


def _median_ms(fn, reps: int, sync=None) -> float:
    """Median wall ms of ``fn()`` over ``reps`` calls (``sync()`` before each, untimed)."""
    times = []
    for _ in range(reps):
        if sync is not None:
            sync()
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def _params(layout_name: str, seed: int):
    """(named parameters with fixed synthetic gradients, the FC model or None)."""
    from sasg.models import MODELS, build_model

    gen = torch.Generator().manual_seed(seed)
    if layout_name == "fc":
        model = build_model("fc", (1, 28, 28), 10, seed)
        named = list(model.named_parameters())
    else:
        with torch.device("meta"):
            shapes = [(n, p.shape) for n, p in MODELS["resnet18"]((3, 32, 32), 10).named_parameters()]
        model = None
        named = [(n, torch.nn.Parameter(torch.empty(s))) for n, s in shapes]
    for _, p in named:
        p.grad = torch.randn(p.shape, generator=gen)
    return named, model


def _floors(reps: int, sync, world: int) -> dict:
    """The machine's floors (see the module docstring), measured now."""
    import torch.distributed as dist

    tiny = torch.zeros(1)
    op = _median_ms(lambda: tiny.add_(1), reps * 5)
    view = _median_ms(lambda: tiny.view(1, -1), reps * 5)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t = _median_ms(lambda: a @ b, max(5, reps // 4))
    gemm = 2 * 1024**3 / (t / 1000)
    one = torch.zeros(world, dtype=torch.int32)
    out = torch.empty_like(one)
    latency = _median_ms(lambda: dist.all_to_all_single(out, one), reps, sync)
    chunk = 4 * 2**20  # 4 MB to every rank: the loopback's throughput
    send = torch.zeros(chunk * world, dtype=torch.uint8)
    recv = torch.empty_like(send)
    t = _median_ms(lambda: dist.all_to_all_single(recv, send), max(5, reps // 4), sync)
    loopback = (world - 1) * chunk / max(t / 1000 - latency / 1000, 1e-9) if world > 1 else float("inf")
    return {"op_ms": op, "view_ms": view, "gemm_gflop_s": gemm / 1e9, "latency_ms": latency,
            "loopback_gb_s": loopback / 1e9}


def _phases(layout_name: str, codec_name: str, reps: int, seed: int, sync, floors: dict) -> dict:
    import torch.nn.functional as F

    from sasg.ddp.bucket_sums import BucketSums
    from sasg.ddp.buckets import ParameterIndex
    from sasg.ddp.rules import hook_algorithm
    from sasg.engine import RoundEngine
    from sasg.engine.round import Round
    from sasg.core.payloads import transmit
    from sasg.distributed.slots import slot_for
    from sasg.distributed.torch_transport import TorchTransport

    named, model = _params(layout_name, seed)
    index = ParameterIndex(named)
    spec = hook_algorithm("always+topk", density=DENSITY, window=10, threshold_scale=2.0,
                          tensor_policy=None, warmup=0)
    alg = spec.build(index.layout, codec_name)
    transport = TorchTransport(nodes=None)
    engine = RoundEngine(alg, transport, seed=seed)
    M, me, d = transport.world_size, transport.rank, index.numel
    buckets = [_Bucket(index.params)]
    grads = torch.zeros(d)
    theta = index.flat_params(torch.zeros(d))
    error = engine.workers.buffer("error")

    def timed(fn) -> float:
        # Every rank starts each phase together, as the ranks of a hook's round do, so that no
        # rank's set-up or next layout (ResNet-18's 45 MB of buffers written) runs beside a phase
        # that another rank is timing: the 2 cores share one L3.
        sync()
        return _median_ms(fn, reps)

    # The memory bandwidth at this layout's size (FC's 1.6 MB stays in cache, ResNet-18's 45 MB
    # does not): a copy of d floats into a buffer made before (a fresh one would time page faults).
    src, dst = torch.randn(d), torch.empty(d)
    t = timed(lambda: dst.copy_(src))
    B, op = 8 * d / (t / 1000), floors["op_ms"]  # bytes read + written per second
    del src, dst

    def mem(nbytes: float) -> float:  # ms to move nbytes at the measured bandwidth, plus one call
        return op + 1000 * nbytes / B

    ms, floor = {}, {}
    if model is not None:
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(10, 1, 28, 28, generator=gen), torch.randint(0, 10, (10,), generator=gen)

        def backward():
            model.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()

        ms["backward"] = timed(backward)
        flops = 3 * 2 * 10 * d  # forward 2·B·d, backward twice that
        floor["backward"] = op + 1000 * flops / (floors["gemm_gflop_s"] * 1e9)
    def gather():  # as HookState._round reads the buckets (the default algorithm, fp32 gradients)
        return index.blocks(index.round_gradients(buckets), grads)

    ms["gather"] = timed(gather)
    floor["gather"] = max(op, len(index.layout.segments) * floors["view_ms"])
    cols = gather()
    rnd = Round(0, 1.0, M, engine.local_workers, index.layout, engine.workers, engine.server, cols,
                lambda rows: None, engine.workspace, theta)
    ms["trigger"] = timed(lambda: alg.trigger.decide(rnd))
    floor["trigger"] = op

    def ef_add():
        for seg, g in zip(index.layout.segments, cols):
            error[:, seg.offset:seg.end].add_(g, alpha=1.0 / M)

    ms["ef add"] = timed(ef_add)
    floor["ef add"] = mem(12 * d)
    gens = [engine.generators[0]]
    ms["top-k"] = timed(lambda: alg.compressor.compress(error, [0], generators=gens))
    floor["top-k"] = mem(4 * d)
    q = alg.compressor.compress(error, [0], generators=gens)
    K = q.indices.numel()
    ms["encode"] = timed(lambda: transmit(q, alg.codec))
    sent = transmit(q, alg.codec)
    nbytes = sum(sent.sizes)
    # (a lossy codec's encode also writes what its values decode to: 4 bytes an entry)
    floor["encode"] = mem(12 * K + nbytes + (0 if sent.payload is q else 4 * K))
    scratch = error.clone()
    ms["ef update"] = timed(lambda: sent.payload.subtract_from_(scratch, [0]))
    floor["ef update"] = mem(8 * K)

    # The exchange as TorchTransport makes it from a kind's second round on (every rank sends, sizes
    # vary): each message in a slot that also carries its size, one call (sasg.distributed.slots),
    # the slot sized from this message as the latest round's largest.
    slot = slot_for(nbytes)

    def exchange():
        if M > 1:
            transport._slot_exchange(sent, slot)

    ms["exchange"] = _median_ms(exchange, reps, sync)
    link_bytes = slot * (M - 1)  # what this rank sends (it receives as much), padding included
    floor["exchange"] = floors["latency_ms"] + 1000 * link_bytes / (floors["loopback_gb_s"] * 1e9)
    data = sent.data.repeat(M)
    own = (me, sent)  # as TorchTransport decodes: its own message taken as its encode gave it

    ms["decode"] = timed(lambda: engine.template.decode(alg.codec, data, [nbytes] * M, own=own))
    floor["decode"] = mem(nbytes * (M - 1) + 12 * K + 12 * K * M)
    payload = engine.template.decode(alg.codec, data, [nbytes] * M, own=own)
    senders = torch.arange(M)
    kept = [b.buffer().clone() for b in buckets]  # the gradients, put back after the aggregate's calls

    if BucketSums.of(index, buckets) is not None:  # as the hook does with fp32 buckets and the kernels on
        kept_sums = [None]

        def aggregate():
            engine.server.last.assign(senders, payload)
            sums = kept_sums[0] = BucketSums.of(index, buckets, kept_sums[0])  # (the last round's, checked)
            sums.zero()
            sums.add(0, len(index.layout.segments), 0, payload)

        ms["aggregate"] = timed(aggregate)
        floor["aggregate"] = mem(4 * d + 16 * K * M)
    else:  # the reference: a flat step, then copied into the buckets
        step = torch.zeros(d)

        def aggregate():
            engine.server.last.assign(senders, payload)
            engine.server.last.sum(step)

        ms["aggregate"] = timed(aggregate)
        floor["aggregate"] = mem(4 * d + 16 * K * M)
        ms["scatter"] = timed(lambda: index.scatter(step, buckets))
        floor["scatter"] = mem(8 * d)
    for b, g in zip(buckets, kept):
        b.buffer().copy_(g)
    out = {}
    for phase in PHASES:
        if phase in ms:
            out[phase] = {"ms": round(ms[phase], 4), "floor_ms": round(floor[phase], 4),
                          "overhead_over_floor": round(ms[phase] / floor[phase], 2)}
    out["_message"] = {"bandwidth_gb_s": round(B / 1e9, 2), "bytes": nbytes, "entries": K, "link_1gbit_ms": round(1000 * 8 * link_bytes / 1e9, 3)}
    return out


def _over_turns(turns: list[dict]) -> dict:
    """The turns in one result: per phase the median ms, floor and ratio (each ratio taken within
    its turn, so a phase and its floor always come from the same minute) and the ratio's range."""
    med = statistics.median
    floors = {k: round(med(t["floors"][k] for t in turns), 4) for k in turns[0]["floors"]}
    rows = {}
    for row, first in turns[0]["rows"].items():
        phases = {}
        for phase, got in first.items():
            if phase == "_message":
                phases[phase] = got
                continue
            ratios = [t["rows"][row][phase]["overhead_over_floor"] for t in turns]
            phases[phase] = {"ms": round(med(t["rows"][row][phase]["ms"] for t in turns), 4),
                             "floor_ms": round(med(t["rows"][row][phase]["floor_ms"] for t in turns), 4),
                             "overhead_over_floor": round(med(ratios), 2),
                             "overhead_over_floor_range": [min(ratios), max(ratios)]}
        rows[row] = phases
    return {"turns": len(turns), "floors": floors, "rows": rows}


def _rank_main(rank: int, world: int, port: int, args: dict, out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    join(rank, world, port)
    try:
        sync = dist.barrier
        turns = []
        for _ in range(args["turns"]):  # each turn measures its floors and then its phases
            floors = _floors(args["reps"], sync, world)
            rows = {f"{layout} {codec}": _phases(layout, codec, args["reps"], args["seed"], sync, floors)
                    for layout in args["layouts"] for codec in args["codecs"]}
            turns.append({"floors": floors, "rows": rows})
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(_over_turns(turns), f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"({','.join(LAYOUTS)})")
    p.add_argument("--codecs", default=",".join(CODECS), help=f"({','.join(CODECS)})")
    p.add_argument("--world", type=int, default=2, help="local ranks (2)")
    p.add_argument("--reps", type=int, default=40, help="timed calls per phase (40)")
    p.add_argument("--turns", type=int, default=5, help="turns, each measuring the floors and every phase (5)")
    p.add_argument("--quick", action="store_true", help="10 calls per phase, 3 turns")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    layouts = [s.strip() for s in a.layouts.split(",") if s.strip()]
    codecs = [s.strip() for s in a.codecs.split(",") if s.strip()]
    if not layouts or any(x not in LAYOUTS for x in layouts):
        p.error(f"--layouts: from {', '.join(LAYOUTS)}, got {a.layouts!r}")
    if a.world < 1 or a.reps < 3 or a.turns < 1:
        p.error("--world must be >= 1, --reps >= 3 and --turns >= 1")
    reps = 10 if a.quick else a.reps
    turns = 3 if a.quick else a.turns

    import torch.multiprocessing as mp

    args = {"layouts": layouts, "codecs": codecs, "reps": reps, "seed": a.seed, "turns": turns}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rank0.json"
        mp.spawn(_rank_main, args=(a.world, free_port(), args, out), nprocs=a.world)
        with open(out) as f:
            result = json.load(f)
    fl = result["floors"]
    print(f"{a.world} ranks (gloo, loopback), one torch thread each, {turns} turns (medians); floors measured now: "
          f"one torch call {1000 * fl['op_ms']:.1f} us (a view {1000 * fl['view_ms']:.1f}), empty collective "
          f"{1000 * fl['latency_ms']:.0f} us, loopback {fl['loopback_gb_s']:.2f} GB/s, GEMM {fl['gemm_gflop_s']:.0f} GFLOP/s")
    for row, phases in result["rows"].items():
        msg = phases["_message"]
        print(f"\n{row}: K = {msg['entries']:,} entries, {msg['bytes']:,} bytes a message, memory "
              f"{msg['bandwidth_gb_s']:.1f} GB/s at this size "
              f"(at 1 Gbit/s its link time would be {msg['link_1gbit_ms']:.3f} ms)")
        print(f"{'phase':<10} {'ms':>9} {'floor ms':>9} {'x floor':>8}  {'(turns)':>11}")
        total = 0.0
        for phase in PHASES:
            if phase in phases:
                r = phases[phase]
                total += r["ms"] if phase != "backward" else 0.0
                lo, hi = r["overhead_over_floor_range"]
                print(f"{phase:<10} {r['ms']:>9.3f} {r['floor_ms']:>9.3f} {r['overhead_over_floor']:>8.1f}  "
                      f"{lo:>5.1f}-{hi:<5.1f}")
        print(f"{'round':<10} {total:>9.3f}   (every phase but backward)")
    default = f"fc {codecs[0]}"
    if default in result["rows"]:
        worst = max((ph for ph in result["rows"][default] if ph not in ("backward", "_message")),
                    key=lambda ph: result["rows"][default][ph]["overhead_over_floor"])
        result["fc_worst_phase"] = worst
        result["fc_worst_over_floor"] = result["rows"][default][worst]["overhead_over_floor"]
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
