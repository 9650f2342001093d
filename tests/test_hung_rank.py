"""A hung rank (alive but not running, e.g. SIGSTOP) stops the run within --heartbeat-timeout, not
the collective --timeout; finished ranks are never reported (sasg.distributed.heartbeat)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch.distributed import HashStore

from sasg.distributed.heartbeat import PREFIX, Heartbeat, start_heartbeat

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")

TINY = ["--dataset", "synthetic", "--batch-size", "5", "--eval-every", "10", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu", "--quiet"]


# ----- the thread on its own (one process, an in-memory store) ------------------------------------
def _watch(store, rank: int, timeout: float = 0.5) -> tuple[Heartbeat, list]:
    reports: list = []
    hb = Heartbeat(store, rank, 2, timeout, on_hung=lambda r, t: reports.append((r, t)), interval=0.05)
    return hb.start(), reports


def test_a_silent_rank_is_reported_after_the_timeout():
    store = HashStore()
    store.add(PREFIX + "1", 1)  # rank 1 beat once, then stopped
    started = time.monotonic()
    hb, reports = _watch(store, 0)
    while not reports and time.monotonic() - started < 5:
        time.sleep(0.01)
    hb.stop()
    assert reports == [(1, 0.5)]
    assert 0.5 <= time.monotonic() - started < 5


def test_beating_and_finished_ranks_are_never_reported():
    store = HashStore()
    hb0, reports0 = _watch(store, 0)
    hb1, reports1 = _watch(store, 1)
    time.sleep(1.0)  # both beat: twice the timeout, no report
    hb1.stop()  # rank 1 leaves first and marks itself finished
    time.sleep(1.0)  # rank 0 lingers for twice the timeout after it
    hb0.stop()
    assert reports0 == [] and reports1 == []


def test_heartbeat_off_or_alone_starts_nothing():
    assert start_heartbeat(0, 0, 4) is None
    assert start_heartbeat(60, 0, 1) is None


# ----- the flag ---------------------------------------------------------------------------------
def test_heartbeat_timeout_defaults_to_60_s_and_0_turns_it_off():
    from sasg.cli.worker import build_parser

    assert build_parser().parse_args(["--algo", "sasg"]).heartbeat_timeout == 60
    assert build_parser().parse_args(["--algo", "sasg", "--heartbeat-timeout", "0"]).heartbeat_timeout == 0
    assert build_parser().parse_args(["--algo", "sasg", "--heartbeat-timeout", "86400"]).heartbeat_timeout == 86400


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "86401", "soon"])
def test_bad_heartbeat_timeout_is_one_line(value, capsys):
    from sasg.cli.worker import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--algo", "sasg", "--heartbeat-timeout", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--heartbeat-timeout" in err[0] and value in err[0], err


# ----- real runs --------------------------------------------------------------------------------
def _sasg(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SASG_LAUNCHER_PID", None)
    return subprocess.Popen([sys.executable, "-m", "sasg", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _workers(parent: int) -> dict[int, int]:
    """rank -> pid of the worker processes whose parent is ``parent``."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and (rank := _rank_of(int(d))) is not None:
            found[rank] = int(d)
    return found


@linux_only
def test_a_stopped_rank_stops_the_run_within_the_heartbeat_timeout(tmp_path, one_thread):
    ck, out = tmp_path / "ckpt", tmp_path / "out"
    # Runs for minutes unless stopped; --timeout stays at 120 s: only the heartbeat can end it sooner.
    p = _sasg("launch", "--nproc-per-node", "2", *TINY, "--algo", "sasg", "--iterations", "1000000",
              "--eval-every", "100000", "--checkpoint-dir", str(ck), "--checkpoint-every", "20",
              "--heartbeat-timeout", "5", "--out", str(out))
    victim = None
    try:
        deadline = time.monotonic() + 120
        while not (list(ck.glob("seed0-rank0-iter*.pt")) and list(ck.glob("seed0-rank1-iter*.pt"))):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the workers wrote no checkpoint in 120 s"
            time.sleep(0.05)
        victim = _workers(p.pid)[1]
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = p.communicate(timeout=5 + 30)
        took = time.monotonic() - stopped
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if victim is not None and _rank_of(victim) == 1:  # still our stopped worker, not reaped
            os.kill(victim, signal.SIGKILL)  # works on a stopped process too
    print(f"\nthe launcher exited {took:.1f} s after the SIGSTOP", file=sys.stderr)
    assert p.returncode != 0
    assert 4.5 <= took < 35, took
    lines = err.strip().splitlines()
    assert any(l.startswith("sasg: error: rank 1 has not answered for 5 s (hung or stopped)") for l in lines), err
    assert lines[-1].startswith("sasg: error: the distributed run failed"), err
    assert "Traceback" not in err
    assert not out.exists()


def test_a_normal_launch_finishes_without_a_heartbeat_message(tmp_path, one_thread):
    out = tmp_path / "out"
    p = _sasg("launch", "--nproc-per-node", "2", *TINY, "--algo", "sasg", "--iterations", "40",
              "--heartbeat-timeout", "5", "--out", str(out))
    try:
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "has not answered" not in err and "Traceback" not in err
    assert (out / "summary.json").exists()
