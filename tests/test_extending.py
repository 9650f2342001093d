"""docs/extending.md: its plug-in (a random-block compressor and a trigger of its own) runs as written
through `sasg run --plugin`, `sasg launch --plugin` (the same run folder) and `SASG(...)`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from sasg.cli.main import main
from sasg.core import AlgorithmSpec, Layout, make_algorithm
from sasg.core.registry import REGISTRIES

from test_distributed_launch import TINY, assert_same_run_folder, sasg

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """The documented module as a file (one per test session: a process registers a member name
    once, and a second file defining the same name is refused)."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    path = tmp_path_factory.mktemp("plugin") / "my_members.py"
    path.write_text(code)
    return path


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_the_plugin_runs_from_sasg_run_and_is_priced_by_its_payload(plugin, tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*TINY, "--workers", "2", "--iterations", "20"]
    assert main(["run", "--plugin", str(plugin), "--algo", "alternate+randblock", *flags, "--out", str(out)]) == 0
    rec = summary(out)["records"][0]
    nnz = make_algorithm("sparse", _layout_of(out), density=0.1).compressor.nnz
    # alternate: exactly one of the two workers uploads each round; 64 bits per kept entry
    assert rec["algorithm"] == "alternate+randblock" and rec["uploads"] == 20 and rec["skipped"] == 20
    assert rec["bits_up"] == 20 * 64 * nnz
    assert json.loads((out / "config.json").read_text())["plugins"] == [str(plugin)]
    assert main(["list", "--plugin", str(plugin)]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^compressor\s+randblock\s+keep a block", listed, re.M)
    assert re.search(r"^trigger\s+alternate\s+worker m uploads", listed, re.M)


def _layout_of(run_folder: Path) -> Layout:
    from sasg.models import build_model

    cfg = json.loads((run_folder / "config.json").read_text())
    model = build_model(cfg["model"], tuple(cfg["data"]["sample_shape"]), cfg["data"]["num_classes"], 0)
    return Layout.from_module(model)


@pytest.mark.slow
def test_launch_with_the_plugin_equals_the_simulator(plugin, tmp_path, one_thread):
    """Rank m draws its random blocks from worker m's generator, as the simulator's row m."""
    flags = [*TINY, "--plugin", str(plugin), "--algo", "wk2+randblock", "--iterations", "24"]
    p = sasg("launch", "--nproc-per-node", "2", *flags, "--out", str(tmp_path / "launch"))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert main(["run", "--workers", "2", *flags, "--out", str(tmp_path / "run")]) == 0
    assert_same_run_folder(tmp_path / "run", tmp_path / "launch")
    rec = summary(tmp_path / "run")["records"][0]
    assert 0 < rec["skipped"]  # the lazy rule skipped some uploads


def test_the_plugin_in_the_optimizer_and_from_the_environment(plugin, monkeypatch, capsys):
    monkeypatch.setenv("SASG_PLUGINS", str(plugin))
    assert main(["list"]) == 0
    assert "randblock" in capsys.readouterr().out
    from sasg.optim import SASG

    def train(seed):
        model = torch.nn.utils.skip_init(torch.nn.Linear, 6, 3)  # no draw from the global RNG
        with torch.no_grad():
            model.weight.copy_(torch.arange(18.0).view(3, 6) / 18)
            model.bias.zero_()
        opt = SASG(model.parameters(), lr=0.1, density=0.2, algorithm="alternate+randblock", seed=seed)
        gen = torch.Generator().manual_seed(0)
        for _ in range(10):
            x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)

            def closure():
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
        return opt, torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    opt, a = train(seed=1)
    totals = opt.ledger.totals()
    nnz = opt.algorithm.compressor.nnz
    assert nnz == 3 + 1  # floor(0.2 * 18) + max(1, floor(0.2 * 3))
    assert totals["uploads"] == 5 and totals["bits_up"] == 5 * 64 * nnz  # worker 0: even rounds
    _, b = train(seed=1)
    _, c = train(seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)  # its own generator, derived from the seed


def test_registry_names_and_errors(plugin):
    main(["list", "--plugin", str(plugin)])  # registers the members in this process
    assert "randblock" in REGISTRIES["compressor"] and "alternate" in REGISTRIES["trigger"]
    spec = AlgorithmSpec.parse("alternate+randblock")
    assert (spec.trigger, spec.compressor, spec.memory) == ("alternate", "randblock", "")
    assert make_algorithm("alternate+randblock", Layout([("w", (4, 5))]), density=0.25).memory.name == "ef"
    assert make_algorithm("alternate+randblock+none", Layout([("w", (4, 5))])).memory.name == "none"
    # Its declared capabilities: no second gradient, so a DDP hook runs it (sasg.core.capabilities).
    from sasg.ddp import hook_triggers

    assert "alternate" in hook_triggers()
    assert not make_algorithm("alternate+randblock", Layout([("w", (4, 5))])).needs_stale_grads
    with pytest.raises(ValueError, match="'randk' is no registered compressor"):
        AlgorithmSpec.parse("wk2+randk")
    with pytest.raises(ValueError, match="is already registered"):
        from sasg.core import register

        register("compressor", "randblock", "another one", lambda layout, s: None)
    assert main(["run", "--algo", "wk2+nothing", "--dry-run"]) == 2


def test_a_missing_plugin_is_one_clear_line(tmp_path, capsys):
    assert main(["run", "--plugin", "no_such_sasg_plugin", "--algo", "sgd", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "plug-in 'no_such_sasg_plugin': no module named" in err and "Traceback" not in err
    assert "PYTHONPATH" in err and len(err.strip().splitlines()) == 1  # and how to fix it
    assert main(["run", "--plugin", str(tmp_path / "missing.py"), "--algo", "sgd", "--dry-run"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_sys_path_changes_only_as_the_user_says(tmp_path, monkeypatch, capsys):
    """sasg never puts a folder on sys.path: a module of the current folder is imported once the
    user puts it there (PYTHONPATH=.), and the error before says so; a .py file is loaded by its path."""
    (tmp_path / "cwd_members.py").write_text("LOADED = True\n")
    (tmp_path / "needs_sibling.py").write_text("import sibling_of_needs_sibling\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_members", raising=False)
    path = list(sys.path)
    assert main(["list", "--plugin", "cwd_members"]) == 2
    err = capsys.readouterr().err
    assert "cwd_members.py is in the current folder" in err and "PYTHONPATH=." in err, err
    assert "cwd_members" not in sys.modules and sys.path == path
    assert main(["list", "--plugin", "needs_sibling.py"]) == 2
    err = capsys.readouterr().err
    assert "sibling_of_needs_sibling" in err and "installed or on PYTHONPATH" in err and sys.path == path
    assert main(["list", "--plugin", "cwd_members.py"]) == 0 and sys.path == path
    sys.path.insert(0, str(tmp_path))  # what PYTHONPATH=. does
    assert main(["list", "--plugin", "cwd_members"]) == 0
    assert sys.modules.pop("cwd_members").LOADED and sys.path == [str(tmp_path), *path]


def test_wk2_topk_and_sasg_give_identical_records_but_their_names(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--algos", "wk2+topk,sasg", *TINY, "--workers", "3", "--iterations", "30",
                 "--out", str(out)]) == 0
    a, b = summary(out)["records"]
    timing = {"wall_seconds", "train_seconds", "eval_seconds", "iters_per_second", "algorithm"}
    assert a["algorithm"] == "wk2+topk" and b["algorithm"] == "sasg"
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
