"""``sasg launch``: the same run folder as ``sasg run``; a dead worker stops the run cleanly; resume.

These start real torchrun process groups (gloo, CPU) as a user would, so each takes seconds.
"""

from __future__ import annotations

import csv
import importlib.util
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

# --device cpu: these are gloo runs on the CPU, also on a machine with GPUs (the default, auto, would
# put every rank on a GPU there).
TINY = ["--dataset", "synthetic", "--batch-size", "5", "--eval-every", "10", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu", "--quiet"]
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
    from sasg.cli.launch import worker_argv

    argv = ["launch", "--nproc-per-node", "4", "--algo", "sasg", "--nnodes=1", "--lr", "0.1", "--out", "r"]
    assert worker_argv(argv) == ["--algo", "sasg", "--lr", "0.1", "--out", "r"]


# ----- bad input stops before any process starts: one line, exit 2, nothing written -------------
def _launch_fails(tmp_path, capsys, *flags: str, nproc: str = "3") -> str:
    """``sasg launch`` (in this process) with ``flags``; asserts exit 2, one stderr line, nothing
    left in ``tmp_path`` but what was there; returns that line."""
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["launch", "--nproc-per-node", nproc, *TINY, "--algo", "sasg", "--iterations", "3", *flags])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    return err


def test_launch_out_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    err = _launch_fails(tmp_path, capsys, "--out", str(tmp_path / "f" / "run"))
    assert "cannot write the run folder" in err and "is a file, not a folder" in err and "--out" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_launch_out_under_proc(tmp_path, capsys):
    err = _launch_fails(tmp_path, capsys, "--out", "/proc/sasg-run")
    assert err.startswith("sasg: error: cannot write the run folder /proc/sasg-run") and "choose another --out" in err


def test_launch_creates_nothing_while_checking_the_out_folder(tmp_path, capsys):
    # a missing parent is created to test it, then removed again when a later check fails
    err = _launch_fails(tmp_path, capsys, "--out", str(tmp_path / "a" / "b" / "run"), "--seeds", "1,1")
    assert "lists a seed twice" in err
    err = _launch_fails(tmp_path, capsys, "--out", str(tmp_path / "a" / "b" / "run"), "--density", "2")
    assert "density" in err


def test_launch_checkpoint_dir_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    err = _launch_fails(tmp_path, capsys, "--checkpoint-dir", str(tmp_path / "f"), "--out", str(tmp_path / "o"))
    assert "--checkpoint-dir" in err and "is a file, not a folder" in err and "choose another --checkpoint-dir" in err


def test_launch_checkpoint_dir_cannot_be_written(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    err = _launch_fails(tmp_path, capsys, "--checkpoint-dir", str(tmp_path / "f" / "ck"), "--checkpoint-every", "1",
                        "--out", str(tmp_path / "o"))
    assert "cannot write checkpoints to" in err and "choose another --checkpoint-dir" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_launch_checkpoint_dir_under_proc(tmp_path, capsys):
    err = _launch_fails(tmp_path, capsys, "--checkpoint-dir", "/proc/sasg-ck", "--checkpoint-every", "1",
                        "--out", str(tmp_path / "o"))
    assert "cannot write checkpoints to /proc/sasg-ck" in err and "choose another --checkpoint-dir" in err


def test_launch_resume_without_checkpoints(tmp_path, capsys):
    err = _launch_fails(tmp_path, capsys, "--checkpoint-dir", str(tmp_path / "nothing"), "--resume",
                        "--out", str(tmp_path / "o"))
    assert "no checkpoint found in" in err and "drop --resume to start afresh" in err
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "seed7-rank0-iter10.pt").write_bytes(b"")  # another seed's: not this run's
    err = _launch_fails(tmp_path, capsys, "--checkpoint-dir", str(tmp_path / "ck"), "--resume",
                        "--out", str(tmp_path / "o"))
    assert "no checkpoint found in" in err and "seed 0" in err


def test_launch_resume_with_a_rank_missing(tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    for rank, it in [(0, 10), (1, 10), (0, 20)]:
        (tmp_path / "ck" / f"seed0-rank{rank}-iter{it}.pt").write_bytes(b"")
    err = _launch_fails(tmp_path, capsys, "--checkpoint-dir", str(tmp_path / "ck"), "--resume",
                        "--out", str(tmp_path / "o"))
    assert "cannot resume: rank(s) 2 have no checkpoint at all" in err


def test_launch_nccl_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _launch_fails(tmp_path, capsys, "--dist-backend", "nccl", "--out", str(tmp_path / "o"))
    assert "--dist-backend nccl needs a CUDA GPU" in err and "--dist-backend gloo" in err


def test_launch_nccl_needs_the_device_on_the_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    err = _launch_fails(tmp_path, capsys, "--dist-backend", "nccl", "--out", str(tmp_path / "o"))
    assert "add --device cuda" in err


def test_launch_one_gpu_per_process(monkeypatch):
    from sasg.config import ConfigError
    from sasg.distributed.launcher import check_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    check_backend("auto", "cuda", 2)
    with pytest.raises(ConfigError, match="use --nproc-per-node 2 or fewer"):
        check_backend("auto", "cuda", 3)


def test_launch_device_auto_on_a_gpu_machine_wants_a_gpu_per_process(tmp_path, capsys, monkeypatch):
    # No --device: auto resolves to cuda where torch sees a GPU, and so to NCCL, one GPU per process.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    flags = [t for t in TINY if t not in ("--device", "cpu")]
    code = main(["launch", "--nproc-per-node", "3", *flags, "--algo", "sasg", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "3 processes on this node but 1 CUDA device(s)" in err and "or --device cpu" in err, err
    assert len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_launch_starts_the_cli_worker_module():
    from sasg.cli.launch import WORKER_MODULE

    assert WORKER_MODULE == "sasg.cli.worker"
    assert importlib.util.find_spec(WORKER_MODULE) is not None


def test_launch_duplicate_seeds(tmp_path, capsys):
    err = _launch_fails(tmp_path, capsys, "--seeds", "1,1", "--out", str(tmp_path / "o"))
    assert "--seeds lists a seed twice" in err


def test_launch_too_many_processes_names_the_launch_flag(tmp_path, capsys):
    err = _launch_fails(tmp_path, capsys, "--out", str(tmp_path / "o"), nproc="5000")
    assert "--nproc-per-node" in err and "--workers" not in err
    err = _launch_fails(tmp_path, capsys, "--batch-size", "400", "--out", str(tmp_path / "o"))
    assert "fewer processes (--nproc-per-node)" in err and "--workers" not in err


@pytest.mark.parametrize("flags,message", [
    (["--master-port", "99999"], "--master-port: must be an integer from 1 to 65535, got 99999; a TCP port, e.g. --master-port 29500"),
    (["--master-port", "0"], "--master-port: must be an integer from 1 to 65535, got 0"),
    (["--nproc", "2"], "unrecognized arguments: --nproc 2"),
    (["--nproc-per", "2"], "unrecognized arguments: --nproc-per 2"),
    (["--iter", "2"], "unrecognized arguments: --iter 2"),
], ids=["port-high", "port-zero", "nproc", "nproc-per", "iter"])
def test_launch_parser_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        main(["launch", "--nproc-per-node", "2", *TINY, "--algo", "sasg", *flags, "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_launch_help_hides_workers(capsys):
    with pytest.raises(SystemExit):
        main(["launch", "--help"])
    out = capsys.readouterr().out
    assert "--nproc-per-node" in out and "--workers WORKERS" not in out and "--workers [" not in out


def test_worker_argv_drops_exact_launcher_flags_only():
    from sasg.cli.launch import worker_argv

    argv = ["launch", "--nproc-per-node=4", "--algo", "sasg", "--master-port", "29501", "--node-rank", "0",
            "--master-addr=h", "--out", "launch", "--nnodes", "1", "--nproc-per", "2"]
    assert worker_argv(argv) == ["--algo", "sasg", "--out", "launch", "--nproc-per", "2"]


def test_worker_parser_takes_what_launch_forwards_and_no_abbreviations(capsys):
    from sasg.cli.launch import worker_argv
    from sasg.cli.worker import build_parser

    argv = ["launch", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--master-addr", "h",
            "--master-port", "29501", *TINY, "--algo", "sasg", "--checkpoint-dir", "ck", "--timeout", "5"]
    args = build_parser().parse_args(worker_argv(argv) + ["--out", "o", "--workers", "4"])
    assert args.workers == 4 and args.timeout == 5 and args.dataset == "synthetic"
    for abbreviated in (["--iter", "3"], ["--checkpoint", "ck"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--algo", "sasg", *abbreviated])
        assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "--workers WORKERS" not in capsys.readouterr().out


# ----- the worker module under torchrun directly ------------------------------------------------
class _FakeTransport:
    def __init__(self, rank: int, values: list[int]):
        self.rank, self.world_size, self.values = rank, len(values), values

    def all_gather_int(self, value: int) -> list[int]:
        return list(self.values)


def test_worker_default_run_folder_is_named_like_the_cli(monkeypatch):
    import re as re_

    from sasg.cli import worker

    seen = {}

    def stop(args, out, rank):
        seen["out"] = out
        raise KeyboardInterrupt

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(worker, "local_problem", stop)
    with pytest.raises(KeyboardInterrupt):
        worker.train(worker.build_parser().parse_args([*TINY, "--algo", "sasg"]))
    assert seen["out"].parent == Path("runs") and re_.fullmatch(r"launch-\d{8}-\d{6}(-\d+)?", seen["out"].name)


def test_worker_checks_before_training(tmp_path):
    from sasg.cli.worker import build_parser, local_problem

    (tmp_path / "f").write_text("")
    args = build_parser().parse_args([*TINY, "--algo", "sasg", "--checkpoint-dir", str(tmp_path / "f")])
    assert "cannot write the run folder" in str(local_problem(args, tmp_path / "f" / "run", rank=0))
    assert local_problem(args, tmp_path / "f" / "run", rank=1) is not None  # its checkpoint folder
    args.checkpoint_dir = tmp_path / "ck"
    assert local_problem(args, tmp_path / "f" / "run", rank=1) is None  # rank 1 writes no run folder


def test_worker_ranks_agree_who_reports(tmp_path):
    from sasg.config import ConfigError
    from sasg.distributed.rank import PeerStopped, Reported, agree

    problem = ConfigError("cannot write the run folder x")
    agree(_FakeTransport(0, [0, 0]), None)
    with pytest.raises(Reported, match="cannot write the run folder x"):
        agree(_FakeTransport(1, [0, 1, 1]), problem)
    with pytest.raises(PeerStopped):
        agree(_FakeTransport(2, [0, 1, 1]), problem)
    with pytest.raises(PeerStopped):
        agree(_FakeTransport(0, [0, 1, 1]), None)


def test_worker_resume_without_checkpoints_is_an_error(tmp_path):
    from sasg.config import ConfigError
    from sasg.lifecycle.checkpoint import load_resume_state, save_checkpoint

    with pytest.raises(ConfigError, match="no checkpoint found in .*drop --resume to start afresh"):
        load_resume_state(tmp_path / "ck", 0, 0, _FakeTransport(0, [0, 0]))
    save_checkpoint(tmp_path / "ck", 0, 0, 10, {"config": {}, "run": {"x": torch.ones(2)}})
    with pytest.raises(ConfigError, match=r"rank\(s\) 1 have no checkpoint at all"):
        load_resume_state(tmp_path / "ck", 0, 0, _FakeTransport(0, [10, 0]))


def test_checkpoint_write_failure_is_one_line(tmp_path):
    from sasg.lifecycle.checkpoint import CheckpointWriteError, save_checkpoint

    (tmp_path / "f").write_text("")
    with pytest.raises(CheckpointWriteError, match="cannot write the checkpoint .*--checkpoint-dir"):
        save_checkpoint(tmp_path / "f" / "ck", 0, 0, 5, {"x": 1})
    # a failure inside torch.save (RuntimeError, not OSError) is the same one line, no temp file left
    with pytest.raises(CheckpointWriteError, match="cannot write the checkpoint"):
        save_checkpoint(tmp_path / "ck", 0, 0, 5, {"config": {}, "run": {"f": lambda: 0}})
    assert list((tmp_path / "ck").iterdir()) == []


class _Planted:
    def __reduce__(self):
        return (os.system, ("touch planted-was-executed",))


def test_a_damaged_newest_checkpoint_falls_back_and_a_planted_one_never_runs(tmp_path, capsys, monkeypatch):
    from sasg.lifecycle.checkpoint import checkpoint_path, load_resume_state, save_checkpoint

    monkeypatch.chdir(tmp_path)
    for it in (10, 20):
        save_checkpoint(tmp_path / "ck", 0, 0, it, {"config": {}, "run": {"it": torch.tensor(it)}})
    newest = checkpoint_path(tmp_path / "ck", 0, 0, 20)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk or a crash
    point, state = load_resume_state(tmp_path / "ck", 0, 0, _FakeTransport(0, [10]))
    assert point == 10 and int(state["run"]["it"]) == 10
    assert "iter20.pt cannot be read" in capsys.readouterr().err
    torch.save({"config": {}, "run": _Planted()}, newest)  # a planted file
    point, _ = load_resume_state(tmp_path / "ck", 0, 0, _FakeTransport(0, [10]))
    assert point == 10 and not (tmp_path / "planted-was-executed").exists()
    assert "damaged or not a sasg checkpoint" in capsys.readouterr().err


def test_launch_equals_run_with_a_variable_size_codec(tmp_path, one_thread):
    flags = [*TINY, "--algo", "sasg", "--codec", "rice+sign", "--iterations", "30"]
    p = sasg("launch", "--nproc-per-node", "2", *flags, "--out", str(tmp_path / "launch"))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert main(["run", "--workers", "2", *flags, "--out", str(tmp_path / "run")]) == 0
    assert_same_run_folder(tmp_path / "run", tmp_path / "launch")
    rec = json.loads((tmp_path / "run" / "summary.json").read_text())["records"][0]
    assert rec["codec"] == "rice+sign" and rec["biased"] is False  # error feedback keeps what sign drops
    info = json.loads((tmp_path / "launch" / "distributed.json").read_text())["runs"][0]
    assert info["bytes_counted"]["payload_bytes_sent"] == info["bytes_predicted"]["payload"]
    assert info["bytes_counted"]["flag_bytes_sent"] == info["bytes_predicted"]["flags"] == 30 * 2 * 1 * 4
