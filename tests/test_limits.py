"""Limits: every numeric setting has an upper bound, checked before anything runs (one line naming
the setting, the bound and a fix); and the workers of ``sasg launch`` never outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sasg.cli.main import main
from sasg.config import ConfigError, RunConfig

from test_distributed_launch import _children

TINY = ["--dataset", "synthetic", "--batch-size", "5", "--eval-every", "10", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu", "--quiet"]


# ----- RunConfig.validate ------------------------------------------------------------------------
TOO_LARGE = [
    (dict(lr=1e300), "lr must be at most 10000", "--lr 0.05"),
    (dict(lr=1e4 * (1 + 1e-12)), "lr must be at most 10000", "--lr 0.05"),
    (dict(iterations=10**8 + 1), "iterations must be at most 100000000", "--iterations"),
    (dict(epochs=1e9), "epochs must be at most 100000000", "--epochs"),
    # 4000 samples of mnist5k, 1 worker x batch 1: 4000 rounds an epoch, 2e9 rounds in all
    (dict(epochs=5e5, dataset="mnist5k", workers=1, batch_size=1), "a run is at most 1e8 rounds", "--epochs 25000"),
    (dict(workers=100_001), "workers must be at most 100000", "--workers"),
    (dict(batch_size=1_000_001), "batch size must be at most 1000000", "--batch-size"),
    (dict(eval_every=10**9 + 1), "eval interval must be at most 1000000000", "--eval-every"),
    (dict(beta=1e7), "Dirichlet beta must be at most 1e+06", "--beta"),
    (dict(shards_per_worker=10**6 + 1), "shards per worker must be at most 1000000", "--shards-per-worker"),
    (dict(lr_decay_epochs=(1e9,)), "lr decay epochs must be at most", "--lr-decay-epochs"),
]


@pytest.mark.parametrize("kw,message,fix", TOO_LARGE, ids=[next(iter(k)) + str(i) for i, (k, _, _) in enumerate(TOO_LARGE)])
def test_a_value_too_large_is_refused_in_one_line(kw, message, fix):
    with pytest.raises(ConfigError) as e:
        RunConfig(device="cpu", **kw).validate()
    text = str(e.value)
    assert message in text and fix in text and len(text.splitlines()) == 1, text


@pytest.mark.parametrize("kw", [
    dict(lr=1e4), dict(iterations=10**8), dict(workers=100_000, iterations=1), dict(eval_every=10**9),
    dict(threshold_scale=1e300), dict(beta=1e6), dict(shards_per_worker=10**6), dict(epochs=1e6),
    dict(lr_decay_epochs=(1e8,)),
], ids=lambda kw: next(iter(kw)))
def test_the_bounds_themselves_pass(kw):
    RunConfig(device="cpu", **kw).validate()


def test_the_paper_presets_are_far_below_the_bounds():
    from sasg.presets import PRESETS

    for name in PRESETS:
        cfg = RunConfig.from_preset(name, device="cpu", data_dir="unused")
        cfg.validate()


@pytest.mark.parametrize("flags,message", [
    (["--lr", "1e300"], "lr must be at most 10000"),
    (["--iterations", "1000000000"], "iterations must be at most 100000000"),
    (["--workers", "1000000"], "workers must be at most 100000"),
])
def test_compare_refuses_huge_values_before_anything_runs(tmp_path, capsys, flags, message):
    # --dry-run: refused by validation, or (were it not) only printed, never run
    code = main(["compare", *TINY, "--workers", "2", "--iterations", "5", *flags, "--out", str(tmp_path / "o"),
                 "--dry-run"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


# ----- sasg launch's own flags -------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--timeout", "inf"], "--timeout: must be a finite number of seconds > 0, got inf; e.g. --timeout 120"),
    (["--timeout", "1e300"], "--timeout: must be at most 86400 seconds (one day), got 1e300; e.g. --timeout 120"),
    (["--timeout", "nan"], "--timeout: must be a finite number of seconds > 0, got nan"),
    (["--timeout", "86401"], "--timeout: must be at most 86400 seconds (one day), got 86401; e.g. --timeout 120"),
    (["--checkpoint-dir", "ck", "--checkpoint-every", "100000001"], "--checkpoint-every: must be at most 100000000"),
    (["--lr", "1e300"], "lr must be at most 10000"),
], ids=["inf", "1e300", "nan", "day+1", "checkpoint-every", "lr"])
def test_launch_refuses_huge_values_in_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        code = main(["launch", "--nproc-per-node", "2", *TINY, "--algo", "sasg", *flags, "--out", str(tmp_path / "o")])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_launch_timeout_of_a_day_is_taken():
    from sasg.cli.worker import build_parser

    args = build_parser().parse_args(["--algo", "sasg", "--timeout", "86400", "--checkpoint-every", "100000000"])
    assert args.timeout == 86400 and args.checkpoint_every == 10**8


# ----- workers die with their launcher -----------------------------------------------------------
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "SASG_LAUNCHER_PID"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**full, **env})


@linux_only
def test_a_worker_asks_for_sigterm_when_its_parent_dies():
    code = ("import ctypes, signal; from sasg.cli.worker import die_with_parent; die_with_parent(); "
            "libc = ctypes.CDLL(None); v = ctypes.c_int(); libc.prctl(2, ctypes.byref(v), 0, 0, 0); "
            "print(v.value == signal.SIGTERM)")  # PR_GET_PDEATHSIG = 2
    done = _python(code, SASG_LAUNCHER_PID=str(os.getpid()))
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


@linux_only
def test_a_worker_whose_launcher_is_already_gone_stops_at_once():
    # The parent here is this test process; a launcher pid that is not the parent means the
    # launcher died and the worker was handed to init or a subreaper.
    code = "from sasg.cli.worker import die_with_parent; die_with_parent(); print('still running')"
    done = _python(code, SASG_LAUNCHER_PID=str(os.getpid() + 10**6))
    assert done.returncode == 1 and "still running" not in done.stdout
    assert done.stderr.strip().splitlines() == ["sasg: error: the launcher is gone (killed?); this worker stops"]
    # started by hand (no launcher pid) under a live parent: it runs
    done = _python(code)
    assert done.returncode == 0 and done.stdout.strip() == "still running", done.stderr


def _is_worker(pid: int) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(b"RANK=") for e in env)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet has finished: it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@linux_only
def test_killing_the_launcher_with_sigkill_kills_its_workers(tmp_path, one_thread):
    ck = tmp_path / "ckpt"
    # Long enough to run for minutes; the launcher is killed a few rounds in.
    flags = [*TINY, "--algo", "sasg", "--iterations", "1000000", "--eval-every", "100000",
             "--checkpoint-dir", str(ck), "--checkpoint-every", "20", "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SASG_LAUNCHER_PID", None)
    p = subprocess.Popen([sys.executable, "-m", "sasg", "launch", "--nproc-per-node", "2", *flags],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        # both ranks are training: each has written a checkpoint
        while not (list(ck.glob("seed0-rank0-iter*.pt")) and list(ck.glob("seed0-rank1-iter*.pt"))):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the workers wrote no checkpoint in 180 s"
            time.sleep(0.05)
        workers = [c for c in _children(p.pid) if _is_worker(c)]
        assert len(workers) == 2, workers
        p.kill()  # SIGKILL: torchrun's agent in it gets no chance to stop its workers
        p.wait(timeout=10)
        killed = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        left = [w for w in workers if _alive(w)]
        assert not left, f"workers {left} still running 10 s after their launcher was killed"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for w in workers:  # only the processes this test started
            if _alive(w):
                os.kill(w, signal.SIGKILL)
