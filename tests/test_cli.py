"""The command line: a tiny real run, determinism, and one-line errors that leave nothing behind."""

import json
import subprocess
import sys

import pytest

from sasg.cli.main import main

TINY = ["--dataset", "synthetic", "--workers", "4", "--batch-size", "5", "--epochs", "1",
        "--eval-every", "4", "--density", "0.1", "--window", "3", "--lr", "0.2", "--quiet"]
TIMING = {"wall_seconds", "train_seconds", "iters_per_second"}


def numbers(summary):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in summary["records"]]


def test_compare_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "metrics.csv", "rounds.csv", "report.md", "test_acc.png", "train_loss.png"} <= names
    summary = json.loads((out / "summary.json").read_text())
    fields = {"algorithm", "iterations", "uploads", "skipped", "bits_up", "bits_down", "final_test_acc",
              "best_test_acc", "final_train_loss", "target_acc", "iters_to_target", "uploads_to_target",
              "bits_to_target", "wall_seconds", "iters_per_second"}
    assert [r["algorithm"] for r in summary["records"]] == ["sgd", "sparse", "lasg", "sasg"]
    for r in summary["records"]:
        assert fields <= set(r)
    sgd = summary["records"][0]
    assert summary["target_acc"] == pytest.approx(sgd["final_test_acc"] - 0.5)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("algorithm,iteration,uploads,bits_up,bits_down,train_loss,test_acc")
    assert "![test_acc.png](test_acc.png)" in (out / "report.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_same_seed_same_numbers(tmp_path):
    for name in ("a", "b"):
        assert main(["compare", *TINY, "--algos", "sgd,sasg", "--out", str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("a", "b"))
    assert numbers(a) == numbers(b)
    assert main(["compare", *TINY, "--algos", "sgd,sasg", "--seed", "9", "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert numbers(c) != numbers(a)


def test_run_single_algorithm(tmp_path):
    assert main(["run", "--algo", "SASG", *TINY, "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [r["algorithm"] for r in summary["records"]] == ["sasg"]
    assert summary["target_acc"] is None and summary["records"][0]["iters_to_target"] is None


BAD = [
    (["--algos", "sgd,adam"], "unknown algorithm 'adam'"),
    (["--density", "0"], "density must be in (0, 1]"),
    (["--density", "1.5"], "density must be in (0, 1]"),
    (["--window", "0"], "window D must be >= 1"),
    (["--threshold-scale", "0"], "threshold scale c must be"),
    (["--threshold-scale", "-1"], "threshold scale c must be"),
    (["--workers", "0"], "workers must be >= 1"),
    (["--workers", "600"], "600 workers but only 512 training samples"),
    (["--batch-size", "200"], "batch size 200 is larger than a worker's shard (128 samples"),
    (["--lr", "abc"], "argument --lr: 'abc' is not a number"),
    (["--workers", "2.5"], "argument --workers: '2.5' is not an integer"),
    (["--epochs", "nan"], "epochs must be > 0"),
    (["--seeds", "1,,2"], "argument --seeds: '1,,2' has an empty entry"),
    (["--seed", "1", "--seeds", "1,2"], "argument --seeds: not allowed with argument --seed"),
    (["--seeds", "1,-1"], "seeds must be in 0..4294967295"),
    (["--seed", "4294967296"], "seed must be at most 4294967295"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--iter", "3"], "unrecognized arguments: --iter 3"),  # no abbreviations
    (["--beta", "0.1"], "--beta applies to --partition dirichlet only"),
    (["--partition", "dirichlet", "--shards-per-worker", "3"], "--shards-per-worker applies to --partition shards only"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_input_one_line_error_and_no_folder(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) if "argument" in message else _noop():
        code = main(["compare", *TINY, *flags, "--out", str(out)])
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sasg")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["compare", *TINY, "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run folder" in err and "--out" in err
    assert main(["compare", *TINY, "--out", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_existing_run_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", *TINY, "--algos", "sgd", "--out", str(out)]) == 0
    (out / "precious.txt").write_text("keep me")
    assert main(["compare", *TINY, "--algos", "sgd", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"
    assert main(["compare", *TINY, "--algos", "sgd", "--out", str(out), "--overwrite"]) == 0
    assert (out / "summary.json").exists() and not (out / "precious.txt").exists()


def test_overwrite_replaces_only_run_folders(tmp_path, capsys, monkeypatch):
    # A typo such as --out src --overwrite must not delete source code.
    code = tmp_path / "src"
    code.mkdir()
    (code / "model.py").write_text("print('mine')")
    assert main(["compare", *TINY, "--algos", "sgd", "--out", str(code), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in code.iterdir()] == ["model.py"]
    # The current folder (and a mount point) cannot be renamed into place: refused up front.
    monkeypatch.chdir(code)
    assert main(["compare", *TINY, "--algos", "sgd", "--out", ".", "--overwrite"]) == 2
    assert "current folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_console_entry_point_and_module(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sasg", "compare", "--algos", "nope", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown algorithm 'nope'" in r.stderr and "Traceback" not in r.stderr


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
