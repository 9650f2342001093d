"""The distributed runner against the simulator: same seed, same trajectory, same bits.

Real processes on gloo/CPU (forkserver-started, so torch is imported once), a few dozen rounds
on synthetic data. Shared helper ``spawn`` is used by the other distributed tests too.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as tmp

from sasg import Simulator
from sasg.accounting import replica_payload_bytes
from sasg.core import make_algorithm
from sasg.core.layout import Layout
from sasg.data import make_synthetic

from conftest import small_config

ALGOS = ("sgd", "sparse", "lasg", "sasg")
ROUNDS = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)  # as under torchrun; see docs/distributed.md (bit-identical gradients)
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout: float = 90.0) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` processes joined in a gloo process group."""
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed", "sasg.distributed.runner", "sasg.optim"])
    ctx = tmp.start_processes(
        _entry, args=(fn, world, _free_port(), args), nprocs=world, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed test did not finish in {timeout:.0f} s")


def synth():
    return make_synthetic(n_train=240, n_test=120, num_features=12, num_classes=3, seed=1)




# ----- pure pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_wire_format_is_the_accounted_size_and_bit_exact(algo):
    layout = Layout([("w", (7, 5)), ("b", (5,))])
    alg = make_algorithm(algo, layout, density=0.2)
    template, codec = alg.compressor.empty(1), alg.codec
    sparse = algo in ("sparse", "sasg")
    per_message = 8 * (7 + 1) if sparse else 4 * 40  # paper32, float32: 64 bits per kept entry, 32 dense
    v = torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(0))
    q = alg.compressor.compress(v)
    data, sizes = q.encode(codec)
    assert sizes == [per_message] * 3 and data.numel() == 3 * per_message and data.dtype == torch.uint8
    back = template.decode(codec, data, sizes)
    assert torch.equal(back.to_dense(), q.to_dense())
    assert back.values.dtype == q.values.dtype and back.values.shape == q.values.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algo", ["sgd", "sasg"])
def test_wire_decodes_any_dtype_row_count_and_buffer_offset(dtype, algo):
    # An odd number of kept entries puts the values at an offset that is no multiple of a wide
    # dtype's size, and a message inside a receive buffer may start at any byte: decoding must
    # not depend on either (0 and 1 rows used to fail for float64/16: a view, not a copy).
    alg = make_algorithm(algo, Layout([("w", (7, 5)), ("b", (11,))]), density=0.2)  # K = 7 + 2
    template, codec = alg.compressor.empty(1, dtype=dtype), alg.codec
    nbytes = template.encode(codec)[1][0]
    if algo == "sasg":
        assert template.nnz_per_message % 2 == 1
    gen = torch.Generator().manual_seed(1)
    for rows in (0, 1, 2, 3):
        v = torch.randn(rows, alg.layout.numel, generator=gen).to(dtype)
        q = alg.compressor.compress(v)
        for start in (0, 1, 3):  # the message's first byte inside a larger buffer
            buf = torch.zeros(start + rows * nbytes, dtype=torch.uint8)
            buf[start:] = q.encode(codec)[0]
            back = template.decode(codec, buf[start:], [nbytes] * rows)
            assert back.values.dtype == dtype and back.values.shape == q.values.shape
            assert torch.equal(back.to_dense().view(torch.uint8), q.to_dense().view(torch.uint8))


def test_replica_payload_bytes():
    assert replica_payload_bytes(8 * 100, 4) == 300  # each upload reaches the 3 other replicas
    assert replica_payload_bytes(0, 4) == 0
    assert replica_payload_bytes(800, 1) == 0


# ----- runner == simulator --------------------------------------------------------------------------


def _run_all(rank, world, folder, algos, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    data = synth()
    for algo in algos:
        t = TorchTransport()
        run = DistributedRun(small_config(workers=world), algo, data, t)
        result = run.run(iterations=rounds)
        counted = run.transport_totals()
        torch.save(
            {"theta": result.theta, "ledger": result.ledger.state_dict(), "history": result.history,
             "counted": counted, "workers": run.workers.state_dict()},
            os.path.join(folder, f"{algo}-rank{rank}.pt"),
        )


def test_runner_follows_the_simulator_for_all_four_algorithms(tmp_path, one_thread):
    world = 3
    spawn(_run_all, world, str(tmp_path), ALGOS, ROUNDS)
    data = synth()
    for algo in ALGOS:
        sim = Simulator(small_config(workers=world), algo, data)
        ref = sim.run(iterations=ROUNDS)
        outs = [torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False) for r in range(world)]
        for r, out in enumerate(outs):
            # theta is the same on every rank (no broadcast ever) and the simulator's
            torch.testing.assert_close(out["theta"], ref.theta)
            assert out["ledger"]["uploads"] == ref.ledger.uploads, algo
            assert out["ledger"]["bits_up"] == ref.ledger.bits_up, algo
            assert out["ledger"]["bits_down"] == ref.ledger.bits_down, algo
            # each rank's own worker state is row r of the simulator's
            torch.testing.assert_close(out["workers"]["staleness"], sim.workers.staleness[r : r + 1])
            if sim.workers.error is not None:
                torch.testing.assert_close(out["workers"]["buffers"]["error"], sim.workers.error[r : r + 1])
        lazy = algo in ("lasg", "sasg")
        assert outs[0]["ledger"]["bits_flags"] == [world if lazy else 0] * ROUNDS
        # rank 0 evaluates: the same curve as the simulator's
        for a, b in zip(outs[0]["history"], ref.history):
            assert a["iteration"] == b["iteration"] and a["uploads"] == b["uploads"]
            assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-9)
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        # the bytes the transport handed over are exactly the accounted ones, fanned out to M-1
        counted = outs[0]["counted"]
        assert counted["payload_bytes_sent"] == replica_payload_bytes(sum(ref.ledger.bits_up), world)
        assert counted["flag_bytes_sent"] == (ROUNDS * world * (world - 1) if lazy else 0)
        if lazy:  # skippers really skipped: fewer payload bytes than if everyone had sent
            assert sum(ref.ledger.uploads) < ROUNDS * world


# ----- per-rank state through state_dict() -------------------------------------------------------------


def _stop_and_resume(rank, world, folder, algo, stop, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    data = synth()
    cfg = small_config(workers=world)
    first = DistributedRun(cfg, algo, data, TorchTransport())
    first.run(iterations=stop)
    state = first.state_dict()
    path = os.path.join(folder, f"ckpt-rank{rank}.pt")
    torch.save(state, path)
    del first
    again = DistributedRun(cfg, algo, data, TorchTransport())  # a fresh rank: nothing carried over
    again.load_state_dict(torch.load(path, weights_only=False))
    result = again.run(iterations=rounds)
    torch.save({"theta": result.theta, "uploads": result.ledger.uploads, "history": result.history},
               os.path.join(folder, f"resumed-rank{rank}.pt"))


def test_stopped_and_resumed_run_gives_the_same_parameters(tmp_path, one_thread):
    world, algo = 2, "sasg"
    spawn(_stop_and_resume, world, str(tmp_path), algo, 11, 30)
    ref = Simulator(small_config(workers=world), algo, synth()).run(iterations=30)
    for r in range(world):
        out = torch.load(tmp_path / f"resumed-rank{r}.pt", weights_only=False)
        torch.testing.assert_close(out["theta"], ref.theta)
        assert out["uploads"] == ref.ledger.uploads
        saved = torch.load(tmp_path / f"ckpt-rank{r}.pt", weights_only=False)
        assert saved["engine"]["local_workers"] == [r] and saved["engine"]["server"]["iteration"] == 11
        assert saved["engine"]["workers"]["buffers"]["anchor"].shape[0] == 1  # this rank's own worker only
    # the stopped run evaluated where it stopped (iteration 11); otherwise the same curve
    assert [p["iteration"] for p in out["history"] if p["iteration"] != 11] == [p["iteration"] for p in ref.history]


# ----- a lazy round's decision leaves before the compression (TorchTransport.announce) ----------------


def _run_announce(rank, world, folder, rounds):
    import torch.distributed as dist

    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    class Watching(TorchTransport):  # counts the rounds whose flags came from announce's call
        early = 0

        def _announced_flags(self, mine):
            flags = super()._announced_flags(mine)
            self.early += flags is not None
            return flags

    out = {}
    for name, announces in (("early", True), ("late", False)):
        transport = Watching(nodes=None)
        transport._announces = announces  # False: what SASG_ANNOUNCE=0 gives
        run = DistributedRun(small_config(workers=world), "sasg", synth(), transport)
        result = run.run(iterations=rounds)
        out[name] = {"theta": result.theta, "ledger": result.ledger.state_dict(), "early": transport.early,
                     "counted": run.transport_totals()}
    # A round abandoned on every rank after its decision left (an error between the decision and
    # the exchange): the next round's announce waits for that call and drops it.
    transport = TorchTransport(nodes=None)
    template = make_algorithm("sasg", Layout([("w", (4,))])).compressor.empty(1)
    codec = make_algorithm("sasg", Layout([("w", (4,))])).codec
    transport.announce(torch.tensor([rank == 0]), template, codec)
    transport.announce(torch.tensor([rank == 1]), template, codec)
    out["after_abandon"] = transport._announced_flags(rank == 1)
    try:
        transport._announced_flags(True)  # nothing announced any more: None, no call
        transport.announce(torch.tensor([True]), template, codec)
        transport._announced_flags(False)  # the exchange must carry the decision announced
    except ValueError as e:
        out["mismatch"] = str(e)
    dist.barrier()
    torch.save(out, os.path.join(folder, f"announce-rank{rank}.pt"))


def test_lazy_fixed_size_round_sends_its_flags_at_the_decision(tmp_path, one_thread):
    """sasg with paper32 (fixed-size messages): the flags' call starts as soon as the rule has
    decided, before the message is compressed, in every round after the dense ones; the trajectory,
    the ledger and the bytes counted are those of the flags sent with the exchange."""
    world, rounds = 2, 12
    spawn(_run_announce, world, str(tmp_path), rounds)
    ref = Simulator(small_config(workers=world), "sasg", synth()).run(iterations=rounds)
    for r in range(world):
        out = torch.load(tmp_path / f"announce-rank{r}.pt", weights_only=False)
        early, late = out["early"], out["late"]
        assert early["early"] == rounds and late["early"] == 0
        torch.testing.assert_close(early["theta"], ref.theta, rtol=0, atol=0)
        assert torch.equal(early["theta"], late["theta"])
        assert early["ledger"] == late["ledger"] and early["counted"] == late["counted"]
        assert early["counted"]["flag_bytes_sent"] == rounds * world * (world - 1)
        assert out["after_abandon"] == [False, True]  # the second round's flags, not the first's
        assert "announced upload=True but exchanged upload=False" in out["mismatch"]


# ----- variable-size messages: sizes travel with the flags ---------------------------------------------


def _run_codec(rank, world, folder, algos, rounds, codec):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    data = synth()
    for algo in algos:
        run = DistributedRun(small_config(workers=world, codec=codec), algo, data, TorchTransport())
        result = run.run(iterations=rounds)
        torch.save({"theta": result.theta, "ledger": result.ledger.state_dict(), "counted": run.transport_totals()},
                   os.path.join(folder, f"{algo}-rank{rank}.pt"))


def test_runner_follows_the_simulator_with_a_lossy_variable_size_codec(tmp_path, one_thread):
    """rice+sign: every message has its own size (sent with the flags), the server applies the
    decoded (sign x magnitude) message; rank and simulator agree on theta and on every bit."""
    world, codec, algos = 3, "rice+sign", ("sparse", "sasg")
    spawn(_run_codec, world, str(tmp_path), algos, ROUNDS, codec)
    for algo in algos:
        ref = Simulator(small_config(workers=world, codec=codec), algo, synth()).run(iterations=ROUNDS)
        paper = Simulator(small_config(workers=world), algo, synth()).run(iterations=ROUNDS)
        for r in range(world):
            out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
            torch.testing.assert_close(out["theta"], ref.theta)
            assert out["ledger"]["uploads"] == ref.ledger.uploads
            assert out["ledger"]["bits_up"] == ref.ledger.bits_up
            assert out["ledger"]["bits_flags"] == [32 * world] * ROUNDS  # a size per worker, every round
        counted = out["counted"]
        assert counted["payload_bytes_sent"] == replica_payload_bytes(sum(ref.ledger.bits_up), world)
        assert counted["flag_bytes_sent"] == ROUNDS * world * (world - 1) * 4
        # far fewer bits than paper32's 64 per kept entry, for the same uploads' worth of messages
        per_upload = sum(ref.ledger.bits_up) / sum(ref.ledger.uploads)
        assert per_upload < 0.5 * sum(paper.ledger.bits_up) / sum(paper.ledger.uploads)
        assert len(set(b // max(1, u) for b, u in zip(ref.ledger.bits_up, ref.ledger.uploads) if u)) > 1  # sizes vary


class _Truncating:
    """rice+fp32, except that rank 1 drops the last byte of what it sends: a damaged link."""

    def __init__(self, codec, rank):
        self.codec, self.rank = codec, rank

    def __getattr__(self, name):
        return getattr(self.codec, name)

    def encode_sparse(self, indices, values):
        data, sizes = self.codec.encode_sparse(indices, values)
        if self.rank == 1 and sizes:
            return data[:-1], [*sizes[:-1], sizes[-1] - 1]
        return data, sizes


def _damaged(rank, world, folder):
    from sasg.core.codecs import CodecError
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    run = DistributedRun(small_config(workers=world, codec="rice+fp32"), "sparse", synth(), TorchTransport())
    run.algorithm.codec = _Truncating(run.algorithm.codec, rank)
    try:
        run.run(iterations=3)
    except CodecError as e:
        message = str(e)
    else:
        message = "no error"
    with open(os.path.join(folder, f"error-rank{rank}.txt"), "w") as f:
        f.write(message)


def test_bytes_that_do_not_decode_stop_every_rank_with_one_clear_error(tmp_path, one_thread):
    spawn(_damaged, 2, str(tmp_path))
    for r in range(2):
        message = (tmp_path / f"error-rank{r}.txt").read_text()
        assert f"rank {r}, round 1: the messages of rank(s) [0, 1] do not decode" in message, message
        assert "rice+fp32" in message and "truncated" in message
