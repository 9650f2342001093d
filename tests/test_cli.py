"""The command line: a tiny real run, determinism, and one-line errors that leave nothing behind."""

import json
import re
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
    (["--window", "0"], "window D must be an integer >= 1"),
    (["--threshold-scale", "0"], "threshold scale c must be"),
    (["--threshold-scale", "-1"], "threshold scale c must be"),
    (["--workers", "0"], "workers must be an integer >= 1, got 0; e.g. --workers 10"),
    (["--workers", "600"], "600 workers but only 512 training samples"),
    (["--batch-size", "200"], "batch size 200 is larger than a worker's shard (128 samples"),
    (["--lr", "abc"], "argument --lr: must be a number, got 'abc'"),
    (["--workers", "2.5"], "argument --workers: must be an integer, got '2.5'"),
    (["--epochs", "nan"], "epochs must be a finite number > 0, got nan; e.g. --epochs 20"),
    (["--seeds", "1,,2"], "argument --seeds: '1,,2' has an empty entry"),
    (["--seed", "1", "--seeds", "1,2"], "argument --seeds: not allowed with argument --seed"),
    (["--seeds", "1,-1"], "every seed in --seeds must be an integer from 0 to 4294967295, got -1; e.g. --seeds 1,19,31,42,80"),
    (["--seed", "4294967296"], "seed must be an integer from 0 to 4294967295, got 4294967296; e.g. --seed 1"),
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


# ----- the argument groups of the training flags -----------------------------------------------
GROUPED = {
    "data": ["--dataset", "--data-dir", "--download", "--partition", "--beta", "--shards-per-worker", "--augment",
             "--workers", "--batch-size"],
    "model": ["--model", "--backend", "--device", "--threads"],
    "optimization": ["--lr", "--lr-decay-epochs", "--lr-decay-factor", "--epochs", "--iterations", "--seed",
                     "--seeds", "--preset"],
    "trigger": ["--window", "--threshold-scale", "--window-sum", "--threshold-lr-lag", "--aggregate"],
    "compression": ["--density", "--tensor-policy", "--warmup", "--codec"],
    "evaluation": ["--eval-every", "--target-acc", "--target-metric"],
    "output": ["--out", "--overwrite", "--dry-run", "--quiet", "--log-every", "--tensorboard"],
}


def test_add_training_flags_returns_its_groups_by_name():
    import argparse

    from sasg.cli.main import add_training_flags

    p = argparse.ArgumentParser()
    groups = add_training_flags(p)
    assert list(groups) == list(GROUPED)
    for key, flags in GROUPED.items():
        assert [a.option_strings[0] for a in groups[key]._group_actions] == flags, key
    groups["trigger"].add_argument("--extra-knob")  # a later flag joins a group by its name
    assert "--extra-knob" in [a.option_strings[0] for a in groups["trigger"]._group_actions]


@pytest.mark.parametrize("command", ["run", "compare", "launch"])
def test_help_shows_the_groups_in_order(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    headers = {m.group(1): m.start() for m in re.finditer(r"^(\S[^\n]*):$", out, re.MULTILINE)}
    assert [headers[key] for key in GROUPED] == sorted(headers[key] for key in GROUPED), out
    for key, flags in GROUPED.items():  # each flag listed in its own group's section
        start = headers[key]
        end = min([at for at in headers.values() if at > start] + [len(out)])
        for flag in flags:
            if not (command == "launch" and flag == "--workers"):  # launch hides it
                assert re.search(rf"^  {flag}\b", out[start:end], re.MULTILINE), (key, flag)


def test_training_flags_keep_dest_and_default_none():
    from sasg.cli.main import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    for command in ("run", "compare", "launch"):
        actions = {a.option_strings[0]: a for a in sub[command]._actions if a.option_strings}
        for flag in (f for flags in GROUPED.values() for f in flags):
            action = actions[flag]
            assert action.dest == flag[2:].replace("-", "_")
            expected = False if flag in ("--overwrite", "--dry-run", "--quiet") else None
            assert action.default is expected, flag
    args = build_parser().parse_args(["compare", "--seeds", "1,2", "--device", "cpu", "--lr", "0.1"])
    assert args.seeds == (1, 2) and args.device == "cpu" and args.lr == 0.1 and args.dataset is None


# ----- an unknown flag points to the sub-command's help ------------------------------------------
@pytest.mark.parametrize("command,extra", [
    ("compare", []), ("run", ["--algo", "sasg"]), ("launch", ["--algo", "sasg", "--nproc-per-node", "2"]),
])
def test_unknown_flag_names_the_subcommand_help(tmp_path, capsys, command, extra):
    with pytest.raises(SystemExit) as e:
        main([command, *extra, "--bogus", "1", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"sasg {command}: error: unrecognized arguments: --bogus 1 "
                   f"(see 'sasg {command} --help')\n"), err
    assert list(tmp_path.iterdir()) == []


def test_unknown_flag_before_the_command_is_the_top_level_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--bogus", "compare"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "sasg: error: unrecognized arguments: --bogus (see 'sasg --help')\n"


# ----- --device auto ----------------------------------------------------------------------------
def test_device_auto_is_the_default_and_resolves_to_a_concrete_device():
    import torch

    from sasg.config import RunConfig

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert RunConfig().device == "auto"
    assert RunConfig().validate().device == expected
    assert RunConfig(device=" AUTO ").validate().device == expected
    assert RunConfig(device="cpu").validate().device == "cpu"


@pytest.mark.parametrize("device", [[], ["--device", "auto"]], ids=["default", "auto"])
def test_dry_run_shows_the_resolved_device(capsys, device):
    import torch

    assert main(["compare", *TINY, *device, "--dry-run"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_device_auto_on_a_machine_with_a_gpu(monkeypatch):
    import torch

    from sasg.config import RunConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert RunConfig().validate().device == "cuda"


# ----- no import cycle between the library and the command line ---------------------------------
def _imported_modules(path, package: str) -> set[str]:
    """Every module ``path`` (a module of ``package``) imports, relative imports made absolute."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    here = package.split(".")
    if path.name != "__init__.py":
        here = here + [path.stem]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # from .. import cli
    return names


def _is_cli(module: str) -> bool:
    return module == "sasg.cli" or module.startswith("sasg.cli.")


def test_distributed_never_imports_the_cli():
    from pathlib import Path

    import sasg.distributed

    root = Path(sasg.distributed.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert modules
    for path in modules:
        sub = path.parent.relative_to(root).parts
        package = ".".join(["sasg", "distributed", *sub])
        bad = sorted(m for m in _imported_modules(path, package) if _is_cli(m))
        assert not bad, f"{path} imports {bad}: sasg.distributed must not depend on sasg.cli"


def test_import_check_sees_relative_and_absolute_cli_imports(tmp_path):
    f = tmp_path / "mod.py"
    for line in ("from ..cli.main import main", "from .. import cli", "import sasg.cli.main",
                 "from sasg.cli import launch", "def f():\n    from ..cli import worker"):
        f.write_text(line + "\n")
        assert any(_is_cli(m) for m in _imported_modules(f, "sasg.distributed")), line
    f.write_text("from ..config import ConfigError\nfrom .transport import x\n")
    assert not any(_is_cli(m) for m in _imported_modules(f, "sasg.distributed"))


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
