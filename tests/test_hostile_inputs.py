"""Bad input and faults, as a careful user would try them: every one stops with a non-zero exit (or
an exception from the Python API) and one clear line, no traceback, no run folder or temporary
file left, and nothing written earlier lost.

Each CLI case runs beside an earlier run folder and an earlier checkpoint; the folder tree must
be byte for byte what it was before the command."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from sasg.cli.main import main

TINY = ["--dataset", "synthetic", "--workers", "2", "--batch-size", "5", "--eval-every", "5", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu", "--iterations", "10", "--quiet"]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with its content's hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A real earlier run folder and checkpoint folder, made once."""
    root = tmp_path_factory.mktemp("earlier")
    assert main(["compare", "--algos", "sgd,sasg", *TINY, "--out", str(root / "run"),
                 "--checkpoint-dir", str(root / "ck"), "--checkpoint-every", "5"]) == 0
    return root


@pytest.fixture
def workspace(earlier, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the earlier folders, the current folder for the command."""
    import shutil

    for name in ("run", "ck"):
        shutil.copytree(earlier / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("print('mine')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def planted_checkpoint(path: Path) -> None:
    """A checkpoint file whose pickle would create ``pwned`` beside it when unpickled unsafely."""
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'pwned'}",))

    torch.save({"config": {}, "run": Evil()}, path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def bad_plugin(root: Path) -> None:
    (root / "broken_plugin.py").write_text("raise RuntimeError('this plug-in is broken')\n")


# (id, argv, setup(root) or None, words the one line must hold)
R, C = ["run", "--algo", "sasg"], ["compare", "--algos", "sgd,sasg"]
CASES = [
    ("lr-negative", [*C, *TINY, "--lr", "-1"], None, "lr must be"),
    ("lr-zero", [*C, *TINY, "--lr", "0"], None, "lr must be"),
    ("lr-nan", [*C, *TINY, "--lr", "nan"], None, "--lr"),
    ("lr-inf", [*C, *TINY, "--lr", "inf"], None, "--lr"),
    ("lr-huge", [*C, *TINY, "--lr", "1e300"], None, "lr must be at most"),
    ("lr-text", [*R, *TINY, "--lr", "fast"], None, "--lr"),
    ("workers-zero", [*C, *TINY, "--workers", "0"], None, "workers"),
    ("workers-negative", [*R, *TINY, "--workers", "-3"], None, "workers"),
    ("workers-fraction", [*R, *TINY, "--workers", "1.5"], None, "--workers"),
    ("workers-huge", [*C, *TINY, "--workers", "1000000"], None, "workers must be at most"),
    ("workers-more-than-samples", [*R, *TINY, "--workers", "50000"], None, "training samples"),
    ("batch-zero", [*R, *TINY, "--batch-size", "0"], None, "batch size"),
    ("batch-huge", [*R, *TINY, "--batch-size", "10000000"], None, "batch size must be at most"),
    ("batch-larger-than-shard", [*R, *TINY, "--batch-size", "5000"], None, "shard"),
    ("density-zero", [*R, *TINY, "--density", "0"], None, "density"),
    ("density-above-one", [*R, *TINY, "--density", "1.5"], None, "density"),
    ("density-nan", [*R, *TINY, "--density", "nan"], None, "density"),
    ("window-zero", [*R, *TINY, "--window", "0"], None, "window"),
    ("window-fraction", [*R, *TINY, "--window", "2.5"], None, "window"),
    ("window-huge", [*R, *TINY, "--window", "1000000000000"], None, "window"),
    ("c-zero", [*R, *TINY, "--threshold-scale", "0"], None, "threshold scale"),
    ("c-negative", [*R, *TINY, "--threshold-scale", "-2"], None, "threshold scale"),
    ("c-inf", [*R, *TINY, "--threshold-scale", "inf"], None, "threshold"),
    ("c-per-algorithm", [*C, *TINY, "--threshold-scale", "sasg=0"], None, "threshold scale"),
    ("knob-for-unknown-algorithm", [*C, *TINY, "--density", "nosuch=0.1"], None, "nosuch"),
    ("epochs-zero", [*R, *TINY[:-3], "--epochs", "0"], None, "epochs"),
    ("epochs-huge", [*R, *TINY[:-3], "--epochs", "1e12"], None, "epochs"),
    ("iterations-zero", [*R, *TINY, "--iterations", "0"], None, "iterations"),
    ("iterations-huge", [*R, *TINY, "--iterations", "1000000000"], None, "iterations must be at most"),
    ("eval-every-zero", [*R, *TINY, "--eval-every", "0"], None, "eval"),
    ("seed-negative", [*R, *TINY, "--seed", "-1"], None, "seed"),
    ("seed-huge", [*R, *TINY, "--seed", str(2**32)], None, "seed"),
    ("target-above-100", [*C, *TINY, "--target-acc", "101"], None, "target"),
    ("target-negative", [*C, *TINY, "--target-acc", "-1"], None, "target"),
    ("dataset-unknown", [*R, *TINY, "--dataset", "imagenet"], None, "imagenet"),
    ("model-unknown", [*R, *TINY, "--model", "gpt"], None, "gpt"),
    ("device-unknown", [*R, *TINY, "--device", "tpu"], None, "tpu"),
    ("backend-unknown", [*R, *TINY, "--backend", "jax"], None, "jax"),
    ("codec-unknown", [*R, *TINY, "--codec", "zip"], None, "codec"),
    ("codec-part-unknown", [*R, *TINY, "--codec", "rice+fp8"], None, "fp8"),
    ("codec-per-algorithm-unknown", [*C, *TINY, "--codec", "sasg=rice+fp8"], None, "fp8"),
    ("algorithm-twice", ["compare", "--algos", "sgd,sgd", *TINY], None, "twice"),
    ("algorithm-unknown", ["compare", "--algos", "sgd,nosuch", *TINY], None, "nosuch"),
    ("algorithm-empty", ["compare", "--algos", ",", *TINY], None, "--algos"),
    ("composition-unknown-member", ["run", "--algo", "wk2+zipk", *TINY], None, "zipk"),
    ("partition-unknown", [*R, *TINY, "--partition", "random"], None, "partition"),
    ("beta-zero", [*R, *TINY, "--partition", "dirichlet", "--beta", "0"], None, "beta"),
    ("beta-huge", [*R, *TINY, "--partition", "dirichlet", "--beta", "1e9"], None, "beta must be at most"),
    ("shards-zero", [*R, *TINY, "--partition", "shards", "--shards-per-worker", "0"], None, "shards"),
    ("lr-decay-epoch-negative", [*R, *TINY, "--lr-decay-epochs", "-1"], None, "decay"),
    ("lr-decay-factor-above-one", [*R, *TINY, "--lr-decay-factor", "2"], None, "decay factor"),
    ("augment-unknown", [*R, *TINY, "--augment", "mixup"], None, "mixup"),
    ("preset-unknown", ["compare", "--preset", "paper-imagenet", *TINY], None, "paper-imagenet"),
    ("data-dir-missing", [*R, *TINY, "--dataset", "mnist"], None, "--data-dir"),
    ("unknown-flag", [*R, *TINY, "--lerning-rate", "0.1"], None, "--lerning-rate"),
    ("checkpoint-every-without-dir", [*R, *TINY, "--checkpoint-every", "5"], None, "--checkpoint-dir"),
    ("resume-without-dir", [*R, *TINY, "--resume"], None, "--checkpoint-dir"),
    ("resume-from-empty-dir", [*R, *TINY, "--resume", "--checkpoint-dir", "empty"],
     lambda root: (root / "empty").mkdir(), "no checkpoint found"),
    ("checkpoint-every-negative", [*R, *TINY, "--checkpoint-dir", "ck2", "--checkpoint-every", "-1"], None,
     "--checkpoint-every"),
    ("resume-other-settings", [*C, *TINY, "--lr", "0.1", "--resume", "--checkpoint-dir", "ck"], None,
     "the checkpoint was made with"),
    ("resume-planted-pickle", [*C, *TINY, "--resume", "--checkpoint-dir", "ck"],
     lambda root: [planted_checkpoint(p) for p in (root / "ck").glob("*.pt")], "checkpoint"),
    ("out-is-a-file", [*R, *TINY, "--out", "notes.txt"], None, "is a file"),
    ("out-holds-other-files", [*R, *TINY, "--out", "src", "--overwrite"], None, "not a run folder"),
    ("out-is-an-earlier-run", [*R, *TINY, "--out", "run"], None, "--overwrite"),
    ("out-is-the-current-folder", [*R, *TINY, "--out", ".", "--overwrite"], None, "current folder"),
    ("plugin-missing", [*R, *TINY, "--plugin", "no_such_module_here"], None, "no_such_module_here"),
    ("plugin-broken", [*R, *TINY, "--plugin", "broken_plugin.py"], bad_plugin, "broken_plugin"),
    ("log-every-negative", [*R, *TINY, "--log-every", "-5"], None, "--log-every"),
    ("seeds-out-of-range", ["compare", *TINY, "--seeds", "1,-2"], None, "seed"),
    ("launch-timeout-inf", ["launch", "--nproc-per-node", "2", "--algo", "sasg", *TINY, "--timeout", "inf"], None,
     "--timeout"),
    ("launch-no-processes", ["launch", "--nproc-per-node", "0", "--algo", "sasg", *TINY], None, "--nproc-per-node"),
    ("launch-node-rank", ["launch", "--nproc-per-node", "2", "--nnodes", "1", "--node-rank", "1", "--algo", "sasg",
                          *TINY], None, "--node-rank"),
    ("launch-heartbeat-negative", ["launch", "--nproc-per-node", "2", "--algo", "sasg", *TINY,
                                   "--heartbeat-timeout", "-1"], None, "--heartbeat-timeout"),
]


@pytest.mark.parametrize("argv,setup,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line(workspace, capsys, argv, setup, words):
    if setup is not None:
        setup(workspace)
    before = tree(workspace)
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code not in (0, None), out.err
    assert "Traceback" not in out.err and "Traceback" not in out.out
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("sasg"), out.err
    assert words.lower() in errors[0].lower(), errors[0]
    assert tree(workspace) == before  # nothing written, nothing earlier lost, no temporary file
    assert not (workspace / "pwned").exists() and not (workspace / "ck" / "pwned").exists()


def test_the_cases_are_many():
    assert len(CASES) >= 60


# ----- the Python API ------------------------------------------------------------------------------
def _data():
    from sasg import load_dataset

    return load_dataset("synthetic")


def _cfg(**kw):
    from sasg import RunConfig

    return RunConfig(**{"dataset": "synthetic", "workers": 2, "batch_size": 5, "iterations": 5, "device": "cpu", **kw})


def _sim(**kw):
    from sasg import Simulator

    return Simulator(_cfg(**kw), "sasg", _data())


def _layout():
    from sasg.core import Layout

    return Layout([("w", (4, 3)), ("b", (3,))])


def _params():
    return [torch.nn.Parameter(torch.zeros(4, 3))]


def _optimizer(**kw):
    from sasg.optim import SASG

    return SASG(_params(), **{"lr": 0.1, **kw})


def _decode_truncated():
    from sasg.core.spec import build_codec

    codec = build_codec("rice+fp32", _layout())
    from sasg.core.compressors import TopK

    q = TopK(_layout(), 0.5).compress(torch.randn(1, 15, generator=torch.Generator().manual_seed(0)))
    data, sizes = q.encode(codec)
    q.decode(codec, data[: sizes[0] // 2], [sizes[0] // 2])


API = [
    ("config-lr", lambda: _cfg(lr=-1.0).validate(), "lr"),
    ("config-unknown-knob", lambda: _cfg(per_algorithm={"sasg": {"speed": 1}}).validate(), "speed"),
    ("simulator-validates", lambda: _sim(lr=float("nan")), "lr"),
    ("simulator-workers", lambda: _sim(workers=0), "workers"),
    ("simulator-density", lambda: _sim(density=2.0), "density"),
    ("simulator-not-a-config", lambda: __import__("sasg").Simulator({"lr": 0.1}, "sasg", _data()), "RunConfig"),
    ("simulator-unknown-algorithm", lambda: __import__("sasg").Simulator(_cfg(), "nosuch", _data()), "nosuch"),
    ("simulator-empty-state", lambda: _sim().load_state_dict({}), "state"),
    ("make-algorithm-unknown", lambda: __import__("sasg.core", fromlist=["x"]).make_algorithm("zz", _layout()), "zz"),
    ("make-algorithm-density", lambda: __import__("sasg.core", fromlist=["x"]).make_algorithm(
        "sasg", _layout(), density=0.0), "density"),
    ("codec-unknown", lambda: __import__("sasg.core.spec", fromlist=["x"]).build_codec("rice+fp8", _layout()), "fp8"),
    ("codec-truncated-bytes", _decode_truncated, "rice"),
    ("optimizer-lr", lambda: _optimizer(lr=-1.0), "lr"),
    ("optimizer-algorithm", lambda: _optimizer(algorithm="nosuch"), "nosuch"),
    ("optimizer-codec", lambda: _optimizer(codec="zip"), "codec"),
    ("optimizer-empty-state", lambda: _optimizer().load_state_dict({}), "state"),
    ("dataset-unknown", lambda: __import__("sasg").load_dataset("imagenet"), "imagenet"),
]


@pytest.mark.parametrize("call,words", [a[1:] for a in API], ids=[a[0] for a in API])
def test_bad_python_api_call(call, words):
    with pytest.raises((ValueError, TypeError, KeyError)) as e:
        call()
    text = str(e.value).strip("'\"")
    assert len(text.splitlines()) == 1 and words.lower() in text.lower(), text
    assert not isinstance(e.value, RuntimeError)
