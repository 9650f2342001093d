"""The run folder appears whole or not at all, never replaces what it must not, and survives a
race with another run or a scheduler's SIGTERM without litter."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sasg.config import ConfigError
from sasg.lifecycle import destination, lock, rundir, signals
from sasg.lifecycle.destination import check_destination, default_run_dir
from sasg.lifecycle.rundir import staged_run_dir


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
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == []


# A SIGTERM whose handler runs inside a finalizer: Python reports the handler's SystemExit as
# "Exception ignored" and drops it, as can happen at random in a long run (gc). _Dropper sends the
# signal from its __del__ and then runs bytecode, so that the handler runs in there.
class _Dropper:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100000):
            pass


@pytest.fixture
def sigterm_exits(monkeypatch):
    """exit_on_sigterm() in this process, undone afterwards; yields the exceptions Python dropped."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    monkeypatch.setattr(signals, "_stop_code", None)
    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    before = {n: signal.getsignal(getattr(signal, n)) for n in names}
    signals.exit_on_sigterm()
    try:
        yield dropped
    finally:
        for n, handler in before.items():
            signal.signal(getattr(signal, n), handler)


def test_a_sigterm_dropped_in_a_finalizer_still_leaves_no_folder(tmp_path, sigterm_exits):
    ended = False
    with pytest.raises(SystemExit) as stop:
        with staged_run_dir(tmp_path / "run") as stage:
            _Dropper()
            (stage / "metrics.csv").write_text("1,2")
        ended = True
    assert sigterm_exits == [SystemExit]  # the case under test happened: the exit was dropped
    assert stop.value.code == 128 + signal.SIGTERM and not ended
    assert list(tmp_path.iterdir()) == []


def test_a_sigterm_dropped_in_a_finalizer_stops_the_run_after_that_round(tmp_path, sigterm_exits, monkeypatch):
    # Through the command line: its own watchers must include the one that raises the exit again.
    import sasg.cli.main as cli

    seen = []

    class DropAt:
        def __call__(self, sim, label):
            seen.append(sim.iteration)
            if sim.iteration == 5:
                _Dropper()

        def close(self):
            pass

    monkeypatch.setattr(cli, "make_watchers", lambda args: [DropAt()])
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--algo", "sasg", "--dataset", "synthetic", "--workers", "2", "--device", "cpu",
                  "--iterations", "200", "--quiet", "--out", str(tmp_path / "run")])
    assert sigterm_exits == [SystemExit]
    assert stop.value.code == 128 + signal.SIGTERM
    assert seen == [1, 2, 3, 4, 5]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_removes_the_staging_folder_of_a_compare(tmp_path):
    # A closed terminal (or a dropped ssh session) sends SIGHUP: cleaned up as on SIGTERM.
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "sasg", "compare", "--dataset", "synthetic", "--workers", "2", "--device", "cpu",
           "--iterations", "400", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGHUP at its default in the child, whatever this suite inherited (under nohup it is ignored,
    # and sasg then keeps ignoring it, as a program started with nohup should)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        # the staging folder (a dot folder; the lock beside it is a dot file that lives to the end)
        while not any(p.name.startswith(".") and p.is_dir() for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    assert not out.exists()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_an_ignored_sighup_stays_ignored(monkeypatch):
    # Under nohup SIGHUP is ignored on purpose: the run must go on when the terminal closes.
    from sasg.lifecycle.signals import exit_on_sigterm

    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        exit_on_sigterm()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        exit_on_sigterm()
        assert signal.getsignal(signal.SIGHUP) is signal.getsignal(signal.SIGTERM)
        assert callable(signal.getsignal(signal.SIGHUP))
    finally:
        for s, h in before.items():
            signal.signal(s, h)


# -- staging folders left by a killed run, two runs on one --out, a failing final write ---------


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def _fake_stage(parent, name, pid=None, host=None, started=None):
    stage = parent / name
    stage.mkdir()
    (stage / "metrics.csv").write_text("1,2\n")
    if pid is not None:
        owner = {"pid": pid, "host": host or socket.gethostname(), "started": started or time.time() - 60}
        (stage / lock.OWNER_FILE).write_text(json.dumps(owner))
    return stage


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_stale_staging_folder_is_reported_and_removed_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    dead = _fake_stage(tmp_path, ".run.partial-dead0001", pid=_dead_pid())
    kept = [
        _fake_stage(tmp_path, ".run.partial-live0001", pid=os.getppid()),  # its run goes on
        _fake_stage(tmp_path, ".run.partial-nomark01"),  # no owner file: not known to be ours
        _fake_stage(tmp_path, ".run.partial-far00001", pid=_dead_pid(), host="another-host"),
        _fake_stage(tmp_path, ".run.partial-late0001", pid=_dead_pid(), started=time.time() + 3600),
        _fake_stage(tmp_path, ".runs.partial-dead0001", pid=_dead_pid()),  # another target's
        _fake_stage(tmp_path, ".run.partial-toolong01", pid=_dead_pid()),  # not a mkdtemp name
    ]
    with staged_run_dir(out) as stage:
        (stage / "summary.json").write_text("{}")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sasg: note: 1 staging folder beside") and ".run.partial-dead0001" in err[0]
    assert err[0].endswith("left by an interrupted run; --overwrite removes them")
    assert dead.is_dir() and all(p.is_dir() for p in kept)

    with staged_run_dir(out, overwrite=True) as stage:
        (stage / "summary.json").write_text('{"new": 1}')
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sasg: note: removed 1 staging folder") and "dead0001" in err[0], err
    assert not dead.exists() and all(p.is_dir() and (p / "metrics.csv").is_file() for p in kept)
    assert (out / "summary.json").read_text() == '{"new": 1}'
    assert not (out / lock.OWNER_FILE).exists()  # the owner file does not reach the run folder
    assert _hidden(tmp_path) == sorted(p.name for p in kept)  # no lock file, no staging of its own


def test_a_run_killed_with_sigkill_holds_out_while_alive_and_its_litter_goes_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sasg", "run", "--algo", "sasg", "--dataset", "synthetic", "--workers", "2",
           "--iterations", "100000", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not any(p.name.startswith(".run.partial-") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.05)
        # While it runs, the same --out is refused, naming it; its staging folder is not touched.
        with pytest.raises(ConfigError, match=rf"being written by another run \(pid {proc.pid}\); wait for it"):
            with staged_run_dir(out, overwrite=True):
                pass
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            check_destination(out, overwrite=True)
        assert rundir.stale_stages(out) == []
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.partial-")]
    assert len(left) == 1 and (tmp_path / ".run.lock").exists()  # SIGKILL: nothing could clean up
    with staged_run_dir(out, overwrite=True) as stage:  # its lock died with it
        (stage / "summary.json").write_text("{}")
    err = capsys.readouterr().err
    assert f"removed 1 staging folder beside {out} ({left[0]}), left by an interrupted run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_second_run_on_the_same_out_is_refused_before_it_trains(tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "sasg", "compare", "--dataset", "synthetic", "--workers", "2", "--device", "cpu",
           "--iterations", "400", "--quiet", "--overwrite", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with staged_run_dir(out) as stage:  # this test process is the first run
        (stage / "summary.json").write_text('{"first": 1}')
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith(f"sasg: error: --out {out} is being written by another run (pid {os.getpid()})")
        assert "wait for it to finish, or choose another --out" in lines[0]
        assert _hidden(tmp_path) == [".cmp.lock", stage.name]  # it staged nothing
    assert (out / "summary.json").read_text() == '{"first": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]


def test_in_one_process_a_busy_name_is_refused_or_taken_beside(tmp_path):
    out = tmp_path / "run"
    with staged_run_dir(out) as first:
        (first / "summary.json").write_text("1")
        with pytest.raises(ConfigError, match="being written by another run"):
            with staged_run_dir(out):
                pass
        later = staged_run_dir(out, if_busy="beside")  # results in hand: never refused
        with later as second:
            (second / "summary.json").write_text("2")
        assert later.path == tmp_path / "run-2"
    assert (out / "summary.json").read_text() == "1" and (tmp_path / "run-2" / "summary.json").read_text() == "2"
    assert _hidden(tmp_path) == []


def test_default_names_of_runs_staging_at_once_differ(tmp_path):
    first = default_run_dir("compare", root=tmp_path)
    with staged_run_dir(first) as stage:
        (stage / "summary.json").write_text("1")
        second = default_run_dir("compare", root=tmp_path)
        assert second != first
    # Named in the same instant (neither staging yet): the later one moves beside, not refused.
    a, b = default_run_dir("run", root=tmp_path), default_run_dir("run", root=tmp_path)
    assert a == b
    with staged_run_dir(a) as sa:
        (sa / "summary.json").write_text("a")
        other = staged_run_dir(b)
        with other as sb:
            (sb / "summary.json").write_text("b")
    assert other.path != a and (other.path / "summary.json").read_text() == "b"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("failure", [RuntimeError("training failed"), SystemExit(143), KeyboardInterrupt()])
def test_the_lock_is_released_on_every_exit(tmp_path, failure):
    out = tmp_path / "run"
    with pytest.raises(type(failure)):
        with staged_run_dir(out) as stage:
            assert (tmp_path / ".run.lock").exists() and lock.lock_path(out).name == ".run.lock"
            (stage / "half.csv").write_text("1,2")
            raise failure
    assert list(tmp_path.iterdir()) == [] and lock._held == {}
    # Another process can take it at once.
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.unlink(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / ".run.lock")], check=True)


def test_a_refused_destination_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a run folder"):
        with staged_run_dir(out, overwrite=True):
            pass
    assert _hidden(tmp_path) == [] and lock._held == {}


def _earlier_run(out):
    out.mkdir()
    destination.mark_run_folder(out)  # what every run folder holds since sasg marks them
    (out / "summary.json").write_text('{"earlier": 1}')
    (out / "metrics.csv").write_text("a,b\n")


def _assert_earlier_kept(tmp_path, out):
    assert (out / "summary.json").read_text() == '{"earlier": 1}' and (out / "metrics.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no staging, no lock, no .old


def test_disk_full_while_writing_keeps_the_earlier_run_folder(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    with pytest.raises(ConfigError) as e:
        with staged_run_dir(out, overwrite=True) as stage:
            (stage / "summary.json").write_text("{}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stage / "metrics.csv"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write the run folder {out}: {os.strerror(errno.ENOSPC)} (writing metrics.csv)")
    assert f"free some space in {tmp_path.resolve()}" in message and "the earlier run folder there is kept" in message
    _assert_earlier_kept(tmp_path, out)


def test_disk_full_at_the_final_rename_keeps_the_earlier_run_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _earlier_run(out)
    real_replace = os.replace

    def replace(src, dst):
        if ".run.partial-" in str(src):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ConfigError, match=r"cannot write the run folder .*No space left on device.*earlier run folder there is kept"):
        with staged_run_dir(out, overwrite=True) as stage:
            (stage / "summary.json").write_text("{}")
    _assert_earlier_kept(tmp_path, out)


def test_disk_full_gives_one_line_from_the_command_line(tmp_path, monkeypatch, capsys):
    import sasg.report
    from sasg.cli.main import main

    out = tmp_path / "run"
    _earlier_run(out)

    def write_run_folder(folder, runs, config, extra=None):
        (folder / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as file.write() raises it: no name

    monkeypatch.setattr(sasg.report, "write_run_folder", write_run_folder)
    tiny = ["--dataset", "synthetic", "--workers", "2", "--batch-size", "5", "--iterations", "4", "--quiet"]
    assert main(["run", "--algo", "sgd", *tiny, "--overwrite", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sasg: error: cannot write the run folder {out}: "), err
    assert "free some space" in err[0] and "kept" in err[0]
    _assert_earlier_kept(tmp_path, out)
