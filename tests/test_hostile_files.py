"""Issue 28, case by case: nothing written or deleted outside what sasg owns, nothing hangs on a
strange file, every plug-in failure one line.

Each command-line case runs in a fresh folder holding someone else's files (``notes.txt``, a
``thesis`` folder) and asserts: the exit code, exactly one ``sasg: error`` line naming the
problem, no traceback, and a tree that is what it was (symlinks, FIFOs and the files they lead to
included), unless the case is about what a finished run leaves."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from sasg.cli.main import main
from sasg.lifecycle import destination, signals

TINY = ["--dataset", "synthetic", "--workers", "2", "--batch-size", "5", "--eval-every", "5", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu", "--iterations", "10", "--quiet"]
RUN = ["run", "--algo", "sasg", *TINY]


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` by what it is, never through a symlink: a file's hash, a link's
    target, a FIFO, a folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(root))] = "fifo" if stat.S_ISFIFO(st.st_mode) else "dir"
    return out


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("\\chapter{Mine}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(signals, "_stop_code", None)  # a test that signals itself leaves no stop behind
    return tmp_path


def one_error(capsys, code, expected_code, *words) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "Traceback" not in out.out, out.err
    errors = [line for line in out.err.splitlines() if line.startswith("sasg: error")]
    assert code == expected_code, out.err
    assert len(errors) == 1, out.err
    for w in words:
        assert w.lower() in errors[0].lower(), errors[0]
    return errors[0]


def refused(ws, capsys, argv, *words, expected_code=2) -> str:
    """The command is refused in one line and changes nothing."""
    before = tree(ws)
    line = one_error(capsys, main(list(argv)), expected_code, *words)
    assert tree(ws) == before
    return line


def plugin(ws: Path, name: str, code: str) -> str:
    path = ws / f"{name}.py"
    path.write_text(code)
    return str(path)


# ----- 1, 2. the run lock and the checkpoints' temporary files ---------------------------------------------
def test_1_a_symlinked_lock_is_refused_and_the_file_it_leads_to_is_kept(ws, capsys):
    (ws / "other").mkdir()
    (ws / "other" / "summary.json").write_text('{"records": []}\n')
    os.symlink(ws / "other" / "summary.json", ws / ".run1.lock")
    refused(ws, capsys, [*RUN, "--out", "run1"], "symlink", ".run1.lock")
    os.symlink(ws / "created-by-the-lock", ws / ".run2.lock")  # leads nowhere: nothing may be created there
    refused(ws, capsys, [*RUN, "--out", "run2"], "symlink")
    assert not (ws / "created-by-the-lock").exists()


def test_1_a_hard_linked_lock_is_refused(ws, capsys):
    os.link(ws / "notes.txt", ws / ".run1.lock")
    refused(ws, capsys, [*RUN, "--out", "run1"], "hard link")
    assert (ws / "notes.txt").read_text() == "my notes\n"


def test_2_symlinks_planted_at_every_name_sasg_uses_lead_nowhere(ws, capsys):
    """Symlinks at the lock, at every checkpoint name and at the temporary names of the next few
    hundred pids (the old scheme): every file they lead to is byte for byte the same afterwards,
    and no file appears where a dangling one leads."""
    victims = ws / "victims"
    victims.mkdir()
    ck = ws / "ck"
    ck.mkdir()
    targets = []

    def plant(link: Path, n: int) -> None:
        target = victims / f"v{n}"
        if n % 2:
            target.write_bytes(os.urandom(64))  # an existing file to overwrite
        targets.append(target)  # or, for even n, a name nothing may create
        os.symlink(target, link)

    n = 0
    plant(ws / ".run1.lock", n)
    for algo in ("sgd", "sasg"):
        for name in (f"seed0-{algo}-iter5.pt", f"seed0-{algo}-done.pt"):
            n += 1
            plant(ck / name, n)
            for pid in range(os.getpid(), os.getpid() + 300):
                n += 1
                plant(ck / f".{name}.tmp-{pid}", n)
    before = {t: t.read_bytes() if t.exists() else None for t in targets}
    argv = ["compare", "--algos", "sgd,sasg", *TINY, "--out", "run1", "--checkpoint-dir", "ck",
            "--checkpoint-every", "5"]
    refused(ws, capsys, argv, "symlink")  # the lock first: nothing runs
    os.unlink(ws / ".run1.lock")
    assert main(argv) == 0
    assert (ws / "run1" / "summary.json").is_file() and (ck / "seed0-sasg-done.pt").is_file()
    assert not (ck / "seed0-sasg-done.pt").is_symlink()  # a new file replaced the link, not its target
    after = {t: t.read_bytes() if t.exists() else None for t in targets}
    assert after == before


# ----- 3. --overwrite replaces only what sasg marked ------------------------------------------------------
def test_3_overwrite_never_deletes_a_folder_that_merely_holds_a_summary_json(ws, capsys):
    (ws / "thesis" / "summary.json").write_text('{"title": "My thesis"}\n')
    refused(ws, capsys, [*RUN, "--out", "thesis", "--overwrite"], "not a run folder")
    (ws / "linked").mkdir()
    os.symlink(ws / "thesis" / "summary.json", ws / "linked" / "summary.json")
    os.symlink(ws / "notes.txt", ws / "linked" / destination.RUN_MARKER)  # a marker that is a symlink counts not
    refused(ws, capsys, [*RUN, "--out", "linked", "--overwrite"], "not a run folder")
    assert (ws / "thesis" / "thesis.tex").is_file()


def test_3_a_marked_run_folder_and_an_older_one_are_replaced(ws, capsys):
    assert main([*RUN, "--out", "run1"]) == 0
    assert (ws / "run1" / destination.RUN_MARKER).read_bytes() == destination.RUN_MARKER_TEXT
    assert main([*RUN, "--out", "run1", "--overwrite"]) == 0
    # A run folder from before the marker: recognised by its files and summary, and replaced.
    (ws / "run1" / destination.RUN_MARKER).unlink()
    assert destination.is_run_folder(ws / "run1")
    assert main([*RUN, "--out", "run1", "--overwrite"]) == 0
    assert (ws / "run1" / destination.RUN_MARKER).is_file()
    # ... but not once it holds a file of someone else's.
    (ws / "run1" / destination.RUN_MARKER).unlink()
    (ws / "run1" / "my-analysis.ipynb").write_text("{}")
    capsys.readouterr()
    refused(ws, capsys, [*RUN, "--out", "run1", "--overwrite"], "not a run folder")


# ----- 4. names that would leave the folder -----------------------------------------------------------
def test_4_a_member_name_with_a_path_is_refused_at_registration(ws, capsys):
    path = plugin(ws, "pathname", 'from sasg.core import register\n'
                  'from sasg.core.compressors import TopK\n'
                  'register("compressor", "../../../../x", "escapes", lambda layout, s: TopK(layout, s.density))\n')
    refused(ws, capsys, [*RUN[:2], "always+topk", *TINY, "--plugin", path, "--checkpoint-dir", "ck"],
            "pathname", "letters, digits")


def test_4_a_name_becoming_a_file_name_stays_in_its_folder(tmp_path):
    from sasg.lifecycle.checkpoint import checkpoint_path
    from sasg.safe_files import file_tag

    assert file_tag("wk2+topk") == "wk2+topk" and file_tag("sasg") == "sasg"
    for name in ("../../../../x", "..", ".", "/etc/passwd", "a/b", ".hidden", "é"):
        tag = file_tag(name)
        assert "/" not in tag and not tag.startswith(".") and tag not in ("", ".", "..")
        assert checkpoint_path(tmp_path, 0, name, 5).parent == tmp_path


# ----- 5, 6. resume from files that do not load ------------------------------------------------------
@pytest.fixture
def interrupted(ws, monkeypatch) -> Path:
    """``ck`` holding the checkpoint at iteration 5 of an interrupted ``sasg run`` (Ctrl-C at 7)."""
    import sasg.cli.main as cli

    class Interrupt:
        def __call__(self, sim, label):
            if sim.iteration == 7:
                raise KeyboardInterrupt

        def close(self):
            pass

    with monkeypatch.context() as m:
        m.setattr(cli, "make_watchers", lambda args: [Interrupt()])
        assert main([*RUN, "--out", "run1", "--checkpoint-dir", "ck", "--checkpoint-every", "5"]) == 130
    assert sorted(p.name for p in (ws / "ck").iterdir()) == ["seed0-sasg-iter5.pt"]
    return ws / "ck"


@pytest.mark.parametrize("command", ["run", "compare"])
def test_5_no_readable_checkpoint_under_resume_is_an_error_naming_them(ws, capsys, command):
    (ws / "ck").mkdir()
    for it in (5, 10):
        (ws / "ck" / f"seed0-sasg-iter{it}.pt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    head = ["run", "--algo", "sasg"] if command == "run" else ["compare", "--algos", "sasg"]
    refused(ws, capsys, [*head, *TINY, "--out", "run1", "--checkpoint-dir", "ck", "--resume"],
            "no readable checkpoint", "seed0-sasg-iter5.pt", "seed0-sasg-iter10.pt")


def _hang_guard():
    """Fail, instead of hanging the suite, if a read waits on a FIFO."""
    def alarm(signum, frame):
        raise AssertionError("a FIFO was waited on")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)


def test_6_a_fifo_as_the_newest_checkpoint_is_skipped_not_waited_on(interrupted, ws, capsys):
    os.mkfifo(interrupted / "seed0-sasg-iter10.pt")
    capsys.readouterr()
    _hang_guard()
    try:
        code = main([*RUN, "--out", "run2", "--checkpoint-dir", "ck", "--resume"])
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    assert code == 0 and "FIFO" in err and "Traceback" not in err, err
    assert (ws / "run2" / "summary.json").is_file()
    assert stat.S_ISFIFO(os.lstat(interrupted / "seed0-sasg-iter10.pt").st_mode)  # never replaced or removed


def test_6_only_a_fifo_and_a_damaged_checkpoint_is_an_error(ws, capsys):
    (ws / "ck").mkdir()
    os.mkfifo(ws / "ck" / "seed0-sasg-iter10.pt")
    (ws / "ck" / "seed0-sasg-iter5.pt").write_bytes(b"garbage")
    os.mkfifo(ws / "ck" / "seed0-sgd-done.pt")
    _hang_guard()
    try:
        refused(ws, capsys, [*RUN, "--out", "run1", "--checkpoint-dir", "ck", "--resume"], "no readable checkpoint")
        refused(ws, capsys, ["compare", "--algos", "sgd", *TINY, "--checkpoint-dir", "ck", "--resume"], "FIFO")
    finally:
        signal.alarm(0)


# ----- 7, 8, 9. output folders ------------------------------------------------------------------------
@pytest.mark.parametrize("flags,words", [
    (["--checkpoint-dir", "X", "--out", "X"], ["--checkpoint-dir X is the run folder"]),
    (["--tensorboard", "X", "--out", "X"], ["--tensorboard X is the run folder"]),
    (["--checkpoint-dir", "X/ck", "--out", "X"], ["lies inside the run folder"]),
], ids=["checkpoint-dir", "tensorboard", "inside"])
def test_7_output_folders_that_collide_are_refused(ws, capsys, flags, words):
    refused(ws, capsys, ["compare", "--algos", "sgd,sasg", *TINY, *flags], *words)


def test_8_a_tensorboard_folder_that_is_a_file_is_refused_before_training(ws, capsys):
    refused(ws, capsys, [*RUN, "--out", "run1", "--tensorboard", "notes.txt"], "--tensorboard notes.txt is a file")


@pytest.fixture
def full_disk(ws):
    """A 64 KiB tmpfs, filled (needs the right to mount: skipped elsewhere)."""
    where = ws / "small"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True).returncode:
        where.rmdir()
        pytest.skip("cannot mount a small tmpfs here")
    try:
        (where / "tb").mkdir()
        with open(where / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


def test_8_a_full_disk_under_tensorboard_is_one_line_and_the_results_are_written(ws, full_disk, capsys):
    pytest.importorskip("tensorboard")
    code = main([*RUN, "--out", "run1", "--tensorboard", str(full_disk / "tb")])
    line = one_error(capsys, code, 1, "TensorBoard log", str(full_disk / "tb"), "no space left")
    assert "run1" not in line
    assert (ws / "run1" / "summary.json").is_file()


@pytest.fixture
def immutable(ws):
    """A folder nobody, root included, can create files in (``chattr +i``; skipped where it fails)."""
    folder = ws / "locked"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_9_an_immutable_out_parent_says_permission_denied(ws, immutable, capsys):
    refused(ws, capsys, [*RUN, "--out", "locked/run1"], "permission denied", "locked/run1")
    refused(ws, capsys, [*RUN, "--out", "run1", "--tensorboard", "locked/tb"], "permission denied", "locked/tb")


# ----- 10, 11, 12. plug-ins and members ---------------------------------------------------------------
@pytest.mark.parametrize("status", [0, 3])
def test_10_a_plugin_calling_sys_exit_is_one_line(ws, capsys, status):
    path = plugin(ws, f"exits{status}", f"import sys\nsys.exit({status})\n")
    refused(ws, capsys, [*RUN, "--plugin", path], f"exits{status}", f"sys.exit({status})")


def test_11_a_compressor_returning_a_bare_tensor_is_one_line_naming_it(ws, capsys):
    path = plugin(ws, "bare", 'from sasg.core import register\n\n'
                  'class Bare:\n'
                  '    name = "bare"\n'
                  '    default_memory = "none"\n'
                  '    def __init__(self, layout): self.layout = layout\n'
                  '    def compress(self, v, rows=None, **kw): return v[list(rows)].clone()\n'
                  '    def empty(self, n, device=None, dtype=None):\n'
                  '        from sasg.core.payloads import DensePayload\n'
                  '        import torch\n'
                  '        return DensePayload(torch.zeros(n, self.layout.numel, dtype=dtype))\n'
                  '    def describe(self): return {}\n\n'
                  'register("compressor", "bare", "returns a tensor", lambda layout, s: Bare(layout))\n')
    refused(ws, capsys, ["compare", "--algos", "sgd,always+bare", *TINY, "--plugin", path],
            "compressor 'bare'", "compress() returned a float32 tensor")


def test_11_a_compressor_whose_values_are_not_floats_is_one_line_naming_it(ws, capsys):
    path = plugin(ws, "ints", 'import torch\nfrom sasg.core import register\n'
                  'from sasg.core.compressors import Identity\nfrom sasg.core.payloads import DensePayload\n\n'
                  'class Ints(Identity):\n'
                  '    name = "ints"\n'
                  '    def compress(self, v, rows=None, **kw):\n'
                  '        return DensePayload(v[list(rows)].to(torch.int64))\n\n'
                  'register("compressor", "ints", "integer values", lambda layout, s: Ints(layout))\n')
    refused(ws, capsys, ["compare", "--algos", "always+ints", *TINY, "--plugin", path],
            "compressor 'ints'", "values are a int64 tensor")


@pytest.mark.parametrize("answer,words", [
    ("torch.ones(rnd.workers.staleness.shape[0])", "float32 tensor of shape (2,)"),
    ("torch.ones(3, dtype=torch.bool)", "bool tensor of shape (3,)"),
    ("[True, True]", "returned a list"),
], ids=["floats", "shape", "list"])
def test_12_a_trigger_answering_in_the_wrong_form_is_one_line_naming_it(ws, capsys, answer, words):
    name = f"odd{abs(hash(answer)) % 10**6}"
    path = plugin(ws, name, 'import torch\nfrom sasg.core import register\nfrom sasg.core.triggers import Always\n\n'
                  'class Odd(Always):\n'
                  f'    name = "{name}"\n'
                  f'    def decide(self, rnd): return {answer}\n\n'
                  f'register("trigger", "{name}", "answers oddly", lambda layout, s: Odd())\n')
    refused(ws, capsys, ["run", "--algo", f"{name}+identity", *TINY, "--plugin", path],
            f"trigger '{name}'", "decide() returned", words)


# ----- 13, 14, 15. the Python API --------------------------------------------------------------------------
def test_13_duplicate_parameters_are_refused():
    from sasg.optim import SASG

    params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="same parameter .* twice"):
        SASG(params + params[:1], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        SASG([{"params": params}, {"params": params[1:]}], lr=0.1)


def test_14_a_simulator_without_data_is_refused():
    from sasg import RunConfig, Simulator

    with pytest.raises(TypeError, match="needs the data set.*got NoneType"):
        Simulator(RunConfig(dataset="synthetic", workers=2, device="cpu"), "sasg", None)


def test_15_every_paper32_decode_checks_the_bytes_length_and_dtype():
    from sasg.core.codecs import CodecError, Paper32

    codec = Paper32(6)
    good, sizes = codec.encode_dense(torch.arange(12.0).view(2, 6))
    assert codec.decode_dense(good, sizes, torch.float32).shape == (2, 6)
    floats = torch.zeros(12 * 4)  # float "bytes" of the right count: used to decode to a (2, 24) tensor
    with pytest.raises(CodecError, match="uint8"):
        codec.decode_dense(floats, sizes, torch.float32)
    with pytest.raises(CodecError):
        codec.decode_dense(good[:-4], sizes, torch.float32)
    idx = torch.tensor([[0, 3], [1, 5]])
    data, sizes = codec.encode_sparse(idx, torch.ones(2, 2))
    with pytest.raises(CodecError, match="uint8"):
        codec.decode_sparse(data.float(), sizes, 2, torch.float32)
    with pytest.raises(CodecError, match="uint8"):
        codec.sparse_nnz(data.view(torch.int32), [4, 4], torch.float32)
    with pytest.raises(CodecError):
        codec.decode_sparse(data[:-1], sizes, 2, torch.float32)


# ----- 16. a stop during a round ----------------------------------------------------------------------------
def test_16_a_sigterm_during_a_round_is_a_stop_whatever_the_round_raised(ws, capsys):
    """The member sends SIGTERM to its own process in round 3 and, as torch's C++ may do, swallows
    the handler's exit and raises an internal assert instead: the run stops with SIGTERM's code
    and no algorithm is reported as failed."""
    path = plugin(ws, "stopper", 'import os, signal, time\nfrom sasg.core import register\n'
                  'from sasg.core.triggers import Always\n\n'
                  'class Stopper(Always):\n'
                  '    name = "stopper"\n'
                  '    def decide(self, rnd):\n'
                  '        if rnd.iteration == 3:\n'
                  '            try:\n'
                  '                os.kill(os.getpid(), signal.SIGTERM)\n'
                  '                time.sleep(5)\n'
                  '            except SystemExit:\n'
                  '                pass\n'
                  '            raise RuntimeError("dynamicLayerStack.empty() INTERNAL ASSERT FAILED")\n'
                  '        return super().decide(rnd)\n\n'
                  'register("trigger", "stopper", "stops its own run", lambda layout, s: Stopper())\n')
    before = tree(ws)
    with pytest.raises(SystemExit) as stop:
        main(["compare", "--algos", "sgd,stopper+identity", *TINY, "--plugin", path, "--out", "run1"])
    err = capsys.readouterr().err
    assert stop.value.code == 128 + signal.SIGTERM
    assert "failed" not in err and "INTERNAL ASSERT" not in err, err
    assert tree(ws) == before  # no run folder, no staging folder, no lock
