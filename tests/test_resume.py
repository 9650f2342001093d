"""`sasg run` / `sasg compare` survive a crash: --checkpoint-dir, --checkpoint-every, --resume.

The interrupted run is a real process killed with SIGKILL while its second algorithm trains; the
resumed compare must write the run folder an uninterrupted one writes, but for timings."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sasg.cli.main import main

FLAGS = ["--dataset", "synthetic", "--batch-size", "5", "--eval-every", "50", "--density", "0.1", "--window", "3",
         "--lr", "0.2", "--device", "cpu", "--workers", "4", "--quiet"]
TIMING = {"wall_seconds", "train_seconds", "iters_per_second"}


def same_run_folder(a: Path, b: Path) -> None:
    ra, rb = (json.loads((p / "summary.json").read_text())["records"] for p in (a, b))
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in ra] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in rb]
    for name in ("metrics.csv", "rounds.csv"):
        assert list(csv.reader((a / name).open())) == list(csv.reader((b / name).open())), name


def kill_when(proc: subprocess.Popen, ck: Path, pattern: str) -> None:
    """SIGKILL ``proc`` as soon as a checkpoint file matching ``pattern`` exists."""
    deadline = time.monotonic() + 120
    while not list(ck.glob(pattern)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"no {pattern} appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def start(command: str, flags: list[str], out: Path, ck: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sasg", command, *flags, "--out", str(out),
                             "--checkpoint-dir", str(ck), "--checkpoint-every", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # small tensors: one thread is fastest


def test_a_killed_compare_resumes_to_the_uninterrupted_run_folder(tmp_path, one_thread):
    flags = [*FLAGS, "--algos", "sgd,sasg", "--iterations", "300"]
    ck = tmp_path / "ck"
    kill_when(start("compare", flags, tmp_path / "part", ck), ck, "seed0-sasg-iter*.pt")  # sgd done, sasg under way
    assert (ck / "seed0-sgd-done.pt").exists() and not (tmp_path / "part").exists()
    assert main(["compare", *flags, "--out", str(tmp_path / "part"), "--checkpoint-dir", str(ck),
                 "--checkpoint-every", "20", "--resume"]) == 0
    assert main(["compare", *flags, "--out", str(tmp_path / "full")]) == 0
    same_run_folder(tmp_path / "full", tmp_path / "part")
    assert sorted(p.name for p in ck.iterdir()) == ["seed0-sasg-done.pt", "seed0-sgd-done.pt"]


def test_a_killed_run_resumes_only_with_its_own_setting(tmp_path, capsys, one_thread):
    flags = [*FLAGS, "--algo", "lasg", "--iterations", "300"]
    ck = tmp_path / "ck"
    kill_when(start("run", flags, tmp_path / "part", ck), ck, "seed0-lasg-iter*.pt")
    resume = ["--checkpoint-dir", str(ck), "--checkpoint-every", "20", "--resume"]
    assert main(["run", *flags, "--lr", "0.3", *resume, "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint was made with lr=0.2, this run has lr=0.3; resume with the same --lr as that run" in err and not (tmp_path / "other").exists()
    assert main(["run", *flags, *resume, "--out", str(tmp_path / "part")]) == 0
    assert main(["run", *flags, "--out", str(tmp_path / "full")]) == 0
    same_run_folder(tmp_path / "full", tmp_path / "part")


@pytest.mark.parametrize("extra, message", [
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--checkpoint-every", "10"], "--checkpoint-every needs --checkpoint-dir"),
    (["--checkpoint-dir", "{tmp}/nothing", "--resume"], "no checkpoint found in"),
    (["--checkpoint-dir", "{tmp}/file"], "is a file, not a folder"),
    (["--checkpoint-dir", "{tmp}/ck", "--checkpoint-every", "-1"], "--checkpoint-every must be an integer from 0 to 100000000, got -1; e.g. --checkpoint-every 500"),
])
def test_bad_checkpoint_flags_stop_before_anything_runs(tmp_path, capsys, extra, message):
    (tmp_path / "file").write_text("")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["compare", *FLAGS, "--iterations", "5", "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
