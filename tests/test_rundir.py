"""The run folder appears whole or not at all, never replaces what it must not, and survives a
race with another run or a scheduler's SIGTERM without litter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sasg.config import ConfigError
from sasg.report.rundir import check_destination, default_run_dir, staged_run_dir


def test_a_folder_filled_meanwhile_is_kept_and_the_run_lands_beside_it(tmp_path):
    out = tmp_path / "run"
    folder = staged_run_dir(out)
    with folder as stage:
        (stage / "summary.json").write_text("{}")
        out.mkdir()  # another run (same --out, or the same default name) finished first
        (out / "summary.json").write_text('{"other": 1}')
    assert (out / "summary.json").read_text() == '{"other": 1}'
    assert folder.path == tmp_path / "run-2" and (folder.path / "summary.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-2"]


def test_an_empty_folder_is_taken_and_an_error_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with staged_run_dir(out) as stage:
        (stage / "summary.json").write_text("{}")
    assert (out / "summary.json").exists()
    with pytest.raises(RuntimeError):
        with staged_run_dir(tmp_path / "other") as stage:
            (stage / "half.csv").write_text("1,2")
            raise RuntimeError("training failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_default_names_do_not_collide(tmp_path):
    first = default_run_dir("compare", root=tmp_path)
    first.mkdir()
    second = default_run_dir("compare", root=tmp_path)
    assert second != first and second.name.startswith(first.name)


def test_a_mount_point_is_refused_up_front(tmp_path, monkeypatch):
    out = tmp_path / "mnt"
    out.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(out.resolve()))
    with pytest.raises(ConfigError, match="mount point"):
        check_destination(out, overwrite=False)


def test_sigterm_removes_the_staging_folder(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sasg", "run", "--algo", "sasg", "--dataset", "synthetic", "--workers", "2",
           "--iterations", "100000", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not any(p.name.startswith(".run.partial-") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
