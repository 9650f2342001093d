"""Two nodes for real: two network namespaces joined by a veth pair shaped with ``tc``
(benchmarks/netns.py), 2 worker processes on each, gloo over the link.

- ``sasg launch --nnodes 2`` (static rendezvous) writes the run folder a one-node
  ``sasg launch --nproc-per-node 4`` of the same setting writes, bit for bit but timings;
- plain torchrun with the c10d rendezvous (endpoint ``sasg-node0:PORT``) runs ``sasg.cli.worker``
  across the link, to the same folder;
- SIGKILL to every process of node 1 ends node 0's run within 60 s, one ``sasg: error:`` line per
  process and no traceback, and
  ``--resume`` from the per-node checkpoint folders ends exactly where an uninterrupted run ends;
- a node that vanishes (link cut, then killed: no FIN or RST ever arrives) is named by the
  heartbeat within ``--heartbeat-timeout``.

The link: 100 Mbit/s (1 Gbit/s for the c10d run) each way, plus a 2 ms one-way delay where the
kernel has ``sch_netem``. Skipped, with the reason, without root, ``ip``/``tc`` or the right to
create namespaces. The namespaces are removed at the end of the module, also on failure.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sasg.cli.launch import WORKER_MODULE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import netns  # noqa: E402  (benchmarks/netns.py)
from test_distributed_launch import assert_same_run_folder  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces need Linux")

TINY = ["--dataset", "synthetic", "--batch-size", "5", "--eval-every", "10", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu", "--quiet"]
SETTING = [*TINY, "--algo", "sasg", "--iterations", "100"]
DELAY = "2ms"  # one way, where netem exists
TIMING = {"wall_seconds", "train_seconds", "iters_per_second"}
PORTS = itertools.count(29500)  # ports inside the namespaces: nothing else can hold them
RUN_TIMEOUT = 150


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SASG_LAUNCHER_PID", None)
    return env


def test_the_reasons_to_skip(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in netns.unavailable_reason()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "tc" else f"/usr/sbin/{tool}")
    assert netns.unavailable_reason() == "needs iproute2: tc not found (apt-get install iproute2)"
    with pytest.raises(netns.Unavailable, match="needs iproute2"):
        netns.TwoNodes().open()


def test_the_benchmark_refuses_an_unknown_relay_setting_before_it_builds_anything():
    # Parsed before any namespace exists: no root needed, nothing to clean up.
    r = subprocess.run([sys.executable, str(Path(netns.__file__).with_name("two_nodes.py")), "--relay", "on,sideways"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--relay: on, off or on,off, got on,sideways" in r.stderr


def test_leftovers_of_a_dead_run_are_removed_and_live_ones_kept():
    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names a run that is gone
    prefix = f"sasg2ntest{os.getpid()}"
    try:
        stale = netns.Namespace(f"{prefix}-{dead.pid}-aaaaaa-node0").create(hosts="127.0.0.1 localhost\n")
    except netns.Unavailable as e:
        pytest.skip(str(e))
    live = netns.Namespace(f"{prefix}-{os.getpid()}-bbbbbb-node0").create()
    orphan = subprocess.Popen(stale.cmd(["sleep", "60"]))  # a worker the crashed run left behind
    try:
        assert netns.cleanup_leftovers(prefix) == [stale.name]
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert stale.name not in names and live.name in names
        assert not (netns.ETC_NETNS / stale.name).exists()
    finally:
        for ns in (stale, live):
            ns.delete()
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_node_0_keeps_the_store_until_every_agent_has_left_the_exit_barrier():
    """sasg launch --nnodes > 1 (launcher._store_outlives_exit_barrier, pytorch/pytorch#69520): the
    agent that hosts the store (node 0) leaves torchrun's exit barrier only after the others have."""
    import threading
    from types import SimpleNamespace

    from torch.distributed import HashStore
    from torch.distributed.elastic.agent.server.api import SimpleElasticAgent, WorkerState

    from sasg.distributed import launcher as launch_module

    store, seen = HashStore(), {}

    def agent(rank: int, delay: float) -> None:
        time.sleep(delay)
        group = SimpleNamespace(group_rank=rank, group_world_size=2, state=WorkerState.SUCCEEDED)
        SimpleElasticAgent._exit_barrier(SimpleNamespace(_store=store, _exit_barrier_timeout=30,
                                                         _in_exit_barrier=False, _worker_group=group))
        seen[rank] = (time.monotonic(), store.add(launch_module._CHECKED_OUT_KEY, 0))

    original = SimpleElasticAgent._exit_barrier
    start = time.monotonic()
    with launch_module._store_outlives_exit_barrier(seconds=10):
        threads = [threading.Thread(target=agent, args=(rank, delay)) for rank, delay in ((0, 0.0), (1, 0.3))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert SimpleElasticAgent._exit_barrier is original
    # node 1 came last (it set the barrier's key: the racy case); node 0 left only once it had checked out
    assert seen[0][1] == 2 and seen[0][0] - start >= 0.3


@pytest.fixture(scope="module")
def net():
    try:
        ctx = netns.two_nodes(rate="100mbit")
        n = ctx.__enter__()
    except netns.Unavailable as e:
        pytest.skip(f"two nodes cannot be made here: {e}")
    try:
        yield n
    finally:
        ctx.__exit__(None, None, None)


def shape(net, rate: str) -> None:
    net.shape(rate, DELAY if net.can_delay else None)
    shown = {"100mbit": "rate 100Mbit", "1gbit": "rate 1Gbit"}[rate]  # as tc prints it
    for node in (0, 1):
        assert shown in net.qdiscs(node), net.qdiscs(node)


def launch(net, node: int, port: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "sasg", "launch", "--nnodes", "2", "--node-rank", str(node),
            "--nproc-per-node", "2", "--master-addr", net.address(0), "--master-port", str(port), *flags]


def run_two_nodes(net, argv_of) -> tuple[list[subprocess.CompletedProcess], float, int]:
    """Both nodes at once; their results, the wall seconds and the bytes both sent on the link."""
    before = net.tx_bytes(0) + net.tx_bytes(1)
    t = time.monotonic()
    done = net.run_both(argv_of, env=_env(), timeout=RUN_TIMEOUT)
    return done, time.monotonic() - t, net.tx_bytes(0) + net.tx_bytes(1) - before


def assert_ok(done: list[subprocess.CompletedProcess]) -> None:
    for node, r in enumerate(done):
        assert r.returncode == 0, f"node {node}: exit {r.returncode}\n{r.stderr}"
        assert "Traceback" not in r.stderr, r.stderr


def assert_bit_exact(ref: Path, got: Path) -> None:
    """The same run folder but timings: records, every CSV row, the config, the bytes counted."""
    assert_same_run_folder(ref, got)
    ra, rb = (json.loads((p / "summary.json").read_text())["records"] for p in (ref, got))
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in ra] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in rb]
    for name in ("metrics.csv", "rounds.csv"):
        assert list(csv.reader((ref / name).open())) == list(csv.reader((got / name).open())), name
    da, db = (json.loads((p / "distributed.json").read_text()) for p in (ref, got))
    for d in (da, db):
        for r in d["runs"]:
            r.pop("train_seconds"), r.pop("peak_rss_bytes")
    assert da == db


@pytest.fixture(scope="module")
def two_node_run(net, tmp_path_factory):
    """The uninterrupted ``sasg launch --nnodes 2`` run at 100 Mbit/s: (run folder, seconds, link bytes)."""
    shape(net, "100mbit")
    out, port = tmp_path_factory.mktemp("two-nodes") / "run", next(PORTS)
    done, seconds, link = run_two_nodes(net, lambda n: launch(net, n, port, *SETTING, "--out", str(out)))
    assert_ok(done)
    assert "run folder:" in done[0].stdout and "run folder:" not in done[1].stdout  # rank 0 is on node 0
    print(f"\ntwo-node sasg launch: {seconds:.1f} s, {link / 1e6:.2f} MB on the link", file=sys.stderr)
    return out, seconds, link


def test_launch_on_two_nodes_equals_one_node(two_node_run, tmp_path, one_thread):
    two, _, link = two_node_run
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "sasg", "launch", "--nproc-per-node", "4", *SETTING, "--out", str(one)],
                       capture_output=True, text=True, env=_env(), timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert_bit_exact(one, two)
    info = json.loads((two / "distributed.json").read_text())
    assert info["world_size"] == 4 and info["backend"] == "gloo"
    # The payload really crossed the link: each upload is delivered to 3 ranks, of which 2 are on
    # the other node; relayed, it crosses the link once (1/3 of the payload handed over).
    payload = info["runs"][0]["bytes_counted"]["payload_bytes_sent"]
    assert link >= payload / 3, (link, payload)


def test_the_relay_sends_each_message_across_the_link_once(net, two_node_run, one_thread):
    """The same run with the direct exchange (SASG_RELAY=0) puts every message on the link twice:
    the relay saves one crossing of each, a third of the payload the ranks handed over."""
    two, _, relayed = two_node_run
    shape(net, "100mbit")
    out, port = two.parent / "direct", next(PORTS)
    before = net.tx_bytes(0) + net.tx_bytes(1)
    done = net.run_both(lambda n: launch(net, n, port, *SETTING, "--out", str(out)),
                        env={**_env(), "SASG_RELAY": "0"}, timeout=RUN_TIMEOUT)
    direct = net.tx_bytes(0) + net.tx_bytes(1) - before
    assert_ok(done)
    assert_bit_exact(two, out)  # the same bytes arrive: the same run
    payload = json.loads((two / "distributed.json").read_text())["runs"][0]["bytes_counted"]["payload_bytes_sent"]
    saved = direct - relayed
    print(f"\nlink bytes: relayed {relayed / 1e6:.2f} MB, direct {direct / 1e6:.2f} MB, payload/3 "
          f"{payload / 3e6:.2f} MB", file=sys.stderr)
    # (the direct exchange also pays gloo headers to every peer each round: a little more is saved)
    assert payload / 3 * 0.8 <= saved <= payload / 3 * 1.5, (relayed, direct, payload)


def test_torchrun_c10d_on_two_nodes(net, two_node_run, tmp_path, one_thread):
    shape(net, "1gbit")
    out, port = tmp_path / "run", next(PORTS)

    def torchrun(node: int) -> list[str]:  # what one types on each node of a cluster
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{net.hostname(0)}:{port}", "--rdzv-id", f"sasg-{port}",
                "-m", WORKER_MODULE, *SETTING, "--out", str(out)]

    done, seconds, link = run_two_nodes(net, torchrun)
    assert_ok(done)
    assert sum("run folder:" in r.stdout for r in done) == 1  # rank 0 is on either node with c10d
    print(f"\ntorchrun c10d: {seconds:.1f} s, {link / 1e6:.2f} MB on the link", file=sys.stderr)
    assert_bit_exact(two_node_run[0], out)  # ranks 0..3 train rows 0..3 wherever they run


def _wait_for_checkpoints(ck: list[Path], procs: list[subprocess.Popen], iteration: int) -> None:
    deadline = time.monotonic() + 120
    wanted = [(ck[rank // 2], f"seed0-rank{rank}-iter{iteration}.pt") for rank in range(4)]
    while not all((folder / name).exists() for folder, name in wanted):
        for p in procs:
            assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, f"no checkpoint of iteration {iteration} after 120 s"
        time.sleep(0.02)


def _reap(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()


@pytest.mark.slow
def test_a_killed_node_stops_the_other_and_the_run_resumes_bit_exactly(net, two_node_run, tmp_path, one_thread):
    shape(net, "100mbit")
    ck = [tmp_path / "ck-node0", tmp_path / "ck-node1"]  # each node its own disk
    out, port = tmp_path / "run", next(PORTS)

    def flags(node: int) -> list[str]:
        return [*SETTING, "--checkpoint-dir", str(ck[node]), "--checkpoint-every", "10", "--out", str(out)]

    procs = [net.popen(n, launch(net, n, port, *flags(n)), env=_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    try:
        _wait_for_checkpoints(ck, procs, 20)
        assert net.kill(1)  # the launcher, its agent and its workers: node 1 is gone
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        _reap(procs)
    print(f"\nnode 0 stopped {took:.2f} s after node 1 was killed:\n{err}", file=sys.stderr)
    assert procs[0].returncode == 1 and took < 60
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("sasg: error: the distributed run failed ("), err
    assert any("lost contact with the other workers" in line for line in lines), err
    assert all(line.startswith("sasg: error: ") for line in lines), err  # one line per process, nothing else
    assert "Traceback" not in err
    assert not out.exists()

    port = next(PORTS)
    done, seconds, _ = run_two_nodes(net, lambda n: launch(net, n, port, *flags(n), "--resume"))
    assert_ok(done)
    print(f"resumed in {seconds:.1f} s", file=sys.stderr)
    assert_bit_exact(two_node_run[0], out)


@pytest.mark.slow
def test_a_vanished_node_is_named_by_the_heartbeat(net, tmp_path, one_thread):
    shape(net, "100mbit")
    ck = [tmp_path / "ck-node0", tmp_path / "ck-node1"]
    out, port = tmp_path / "run", next(PORTS)

    def flags(node: int) -> list[str]:
        return [*TINY, "--algo", "sasg", "--iterations", "100000", "--eval-every", "100000",
                "--checkpoint-dir", str(ck[node]), "--checkpoint-every", "10", "--heartbeat-timeout", "5",
                "--out", str(out)]

    procs = [net.popen(n, launch(net, n, port, *flags(n)), env=_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    try:
        _wait_for_checkpoints(ck, procs, 10)
        net.link(False)  # no FIN or RST can reach node 0 any more: only the heartbeat can tell
        net.kill(1)
        gone = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        took = time.monotonic() - gone
    finally:
        _reap(procs)
        net.link(True)
    print(f"\nnode 0 stopped {took:.2f} s after node 1 vanished:\n{err}", file=sys.stderr)
    assert procs[0].returncode == 1 and 4.5 <= took < 35, took
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("sasg: error: rank 2 has not answered for 5 s") or
               line.startswith("sasg: error: rank 3 has not answered for 5 s") for line in lines), err
    assert lines[-1].startswith("sasg: error: the distributed run failed ("), err
    assert "Traceback" not in err
    assert not out.exists()
