"""``sasg launch``: the same run folder as ``sasg run``; a dead worker stops the run cleanly; resume.

These start real torchrun process groups (gloo, CPU) as a user would, so each takes seconds.
"""

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
import torch

from sasg.cli.main import main

TINY = ["--dataset", "synthetic", "--batch-size", "5", "--eval-every", "10", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--quiet"]
EXACT = ("algorithm", "iterations", "uploads", "skipped", "bits_up", "bits_down", "iters_to_target",
         "uploads_to_target", "bits_to_target", "num_parameters", "backend")
CLOSE = ("final_test_acc", "best_test_acc", "final_train_loss")




def sasg(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sasg", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def assert_same_run_folder(ref: Path, got: Path) -> None:
    a, b = (json.loads((p / "summary.json").read_text()) for p in (ref, got))
    assert a["config"] == b["config"] and a["target_acc"] == b["target_acc"]
    for ra, rb in zip(a["records"], b["records"], strict=True):
        for k in EXACT:
            assert ra[k] == rb[k], k
        for k in CLOSE:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-9), k
    assert json.loads((ref / "config.json").read_text()) == json.loads((got / "config.json").read_text())
    ra, rb = (list(csv.DictReader((p / "rounds.csv").open())) for p in (ref, got))
    for row in ra + rb:
        row.pop("bits_flags")  # the runner's own line (the simulator sends no flags)
    assert ra == rb
    names = {p.name for p in ref.iterdir()}
    assert names | {"distributed.json"} == {p.name for p in got.iterdir()}


def test_launch_writes_the_same_run_folder_as_run(tmp_path, one_thread):
    flags = [*TINY, "--algo", "lasg", "--iterations", "40"]
    p = sasg("launch", "--nproc-per-node", "3", *flags, "--out", str(tmp_path / "launch"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "run folder:" in out
    assert main(["run", "--workers", "3", *flags, "--out", str(tmp_path / "run")]) == 0
    assert_same_run_folder(tmp_path / "run", tmp_path / "launch")
    info = json.loads((tmp_path / "launch" / "distributed.json").read_text())
    rec = info["runs"][0]
    assert info["world_size"] == 3 and info["backend"] == "gloo"
    assert rec["bytes_counted"]["payload_bytes_sent"] == rec["bytes_predicted"]["payload"]
    assert rec["bytes_counted"]["flag_bytes_sent"] == rec["bytes_predicted"]["flags"] == 40 * 3 * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["launch", "run"]  # nothing staged left over


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for e in env:
        if e.startswith(b"RANK="):
            return int(e[5:])
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_dead_worker_stops_the_others_and_the_run_resumes(tmp_path, one_thread):
    ck, out = tmp_path / "ckpt", tmp_path / "out"
    setting = [*TINY, "--algo", "sasg", "--iterations", "150"]
    flags = [*setting, "--checkpoint-dir", str(ck), "--checkpoint-every", "10", "--timeout", "30", "--out", str(out)]
    p = sasg("launch", "--nproc-per-node", "3", *flags)
    try:
        deadline = time.monotonic() + 90
        while not list(ck.glob("seed0-rank1-iter*.pt")):  # rank 1 is mid-run
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 90 s"
            time.sleep(0.02)
        victim = next(c for c in _children(p.pid) if _rank_of(c) == 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert time.monotonic() - killed < 60
    assert p.returncode != 0
    lines = err.strip().splitlines()
    assert lines[-1].startswith("sasg: error: the distributed run failed") and "rank 1: signal SIGKILL" in lines[-1]
    # the other ranks say why they stopped, one line each, no traceback
    assert any("lost contact with the other workers" in l or "stopped by SIGTERM" in l for l in lines[:-1]), err
    assert "Traceback" not in err
    assert not out.exists()
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []  # no half-written folder

    # resume from the per-rank checkpoints: the run ends exactly where an uninterrupted one would
    p = sasg("launch", "--nproc-per-node", "3", *flags, "--resume")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert main(["run", "--workers", "3", *setting, "--out", str(tmp_path / "ref")]) == 0
    assert_same_run_folder(tmp_path / "ref", out)


BAD = [
    (["--workers", "5"], "--workers 5 but 3 processes"),
    (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint-dir"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--density", "2"], "density must be in (0, 1]"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_launch_bad_flags_one_line_nothing_started(tmp_path, capsys, flags, message):
    code = main(["launch", "--nproc-per-node", "3", *TINY, "--algo", "sasg", *flags, "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_worker_argv_drops_only_launcher_flags():
    from sasg.distributed.launch import worker_argv

    argv = ["launch", "--nproc-per-node", "4", "--algo", "sasg", "--nnodes=1", "--lr", "0.1", "--out", "r"]
    assert worker_argv(argv) == ["--algo", "sasg", "--lr", "0.1", "--out", "r"]
