"""Paper presets end to end on tiny generated files, dry runs, multi-seed reports, schedules."""

import json

import pytest
import torch

from sasg import RunConfig, Simulator
from sasg.cli.main import main
from sasg.data.fixtures import write_cifar, write_idx_mnist
from sasg.schedule import step_decay

FAST = ["--workers", "2", "--batch-size", "2", "--iterations", "2", "--eval-every", "1",
        "--algos", "sgd,sasg", "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_mnist(root / "mnist", n_train=40, n_test=10, seed=0)
    write_cifar(root / "cifar10", n_train=20, n_test=10, num_classes=10, seed=0)
    write_cifar(root / "cifar100", n_train=20, n_test=10, num_classes=100, seed=1)
    return root


@pytest.mark.parametrize("preset,params", [
    ("paper-mnist", 407_050), ("paper-cifar10", 11_173_962), ("paper-cifar100", 11_220_132),
])
def test_preset_runs_end_to_end_and_saves_its_configuration(tmp_path, data_dir, preset, params):
    out = tmp_path / "run"
    assert main(["compare", "--preset", preset, "--data-dir", str(data_dir), *FAST, "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == preset and cfg["num_parameters"] == params
    assert cfg["workers"] == 2 and cfg["iterations"] == 2  # explicit flags beat the preset
    assert cfg["window"] == 10 and cfg["density"] == 0.01  # the rest comes from the preset
    summary = json.loads((out / "summary.json").read_text())
    assert [r["iterations"] for r in summary["records"]] == [2, 2]
    assert summary["target_acc"] == 98.0 if preset == "paper-mnist" else 92.0
    assert summary["target_metric"] == ("top5" if preset == "paper-cifar100" else "top1")
    assert "partition_detail" in cfg and len(cfg["partition_detail"]["workers"]) == 2


def test_dry_run_prints_resolved_configuration_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["compare", "--preset", "paper-cifar100", "--data-dir", str(tmp_path), "--dry-run",
                 "--out", str(out)]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"] == "resnet18" and cfg["num_parameters"] == 11_220_132
    assert cfg["lr"] == 0.1 and cfg["paper_alpha"] == pytest.approx(0.01)
    assert cfg["lr_decay_epochs"] == [30.0] and cfg["epochs"] == 50 and cfg["threshold_scale"] == 1.0
    assert cfg["augment"] == "crop-flip-rotate" and cfg["target_metric"] == "top5"
    assert cfg["data"] == {"name": "cifar100", "sample_shape": [3, 32, 32], "num_classes": 100}
    # the paper's CIFAR-100 runs: c = 0.8 for SASG, 0.2 for LASG (1 for the others)
    assert cfg["per_algorithm"] == {"sasg": {"threshold_scale": 0.8}, "lasg": {"threshold_scale": 0.2}}
    assert not out.exists()


def test_per_algorithm_knobs_from_presets_and_flags(tmp_path, capsys):
    cfg = RunConfig.from_preset("paper-cifar100", data_dir="/nowhere").validate()
    assert [cfg.settings_for(a).threshold_scale for a in ("sgd", "sparse", "lasg", "sasg")] == [1.0, 1.0, 0.2, 0.8]
    base = ["compare", "--preset", "paper-cifar100", "--data-dir", str(tmp_path), "--dry-run"]
    assert main([*base, "--threshold-scale", "0.5"]) == 0  # an explicit flag wins for every algorithm
    assert json.loads(capsys.readouterr().out)["per_algorithm"] == {}
    assert main([*base, "--threshold-scale", "0.5,sasg=0.9", "--density", "sparse=0.05"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["threshold_scale"] == 0.5 and got["density"] == 0.01
    assert got["per_algorithm"] == {"sasg": {"threshold_scale": 0.9}, "sparse": {"density": 0.05}}
    assert main([*base, "--algos", "sgd,sasg", "--window", "lasg=3"]) == 2
    assert "'lasg' is not among the algorithms of this run" in capsys.readouterr().err
    assert main([*base, "--density", "sasg=2"]) == 2
    assert "density must be in (0, 1], got 2" in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", "--preset", "paper-cifar10", "--data-dir", str(tmp_path / "nope"), *FAST,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--download" in err
    assert not (tmp_path / "run").exists()
    assert main(["compare", "--dataset", "cifar10", *FAST, "--out", str(tmp_path / "run")]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_multi_seed_report_has_mean_std_and_bands(tmp_path):
    out = tmp_path / "seeds"
    assert main(["compare", "--seeds", "1,2,3", "--iterations", "30", "--eval-every", "10",
                 "--algos", "sgd,sasg", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2, 3] and set(summary["per_seed"]) == {"1", "2", "3"}
    sasg = summary["records"][1]
    per = [summary["per_seed"][s][1]["uploads"] for s in ("1", "2", "3")]
    assert sasg["uploads"] == pytest.approx(sum(per) / 3)
    assert sasg["uploads_std"] == pytest.approx(torch.tensor(per, dtype=torch.float64).std().item())
    report = (out / "report.md").read_text()
    assert "±" in report and "seeds 1, 2, 3" in report
    assert (out / "test_acc.png").stat().st_size > 10_000
    rows = (out / "metrics.csv").read_text().splitlines()
    assert {r.split(",")[-1] for r in rows[1:]} == {"1", "2", "3"}


def test_step_decay_uses_the_lr_in_force():
    lr = step_decay(0.1, [2, 3], 0.1, rounds_per_epoch=10)
    assert [lr(k) for k in (0, 19, 20, 29, 30, 100)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_schedule_reaches_the_trigger_threshold(synth):
    cfg = RunConfig(dataset="synthetic", workers=4, batch_size=5, lr=0.2, lr_decay_epochs=(1,),
                    lr_decay_factor=0.5, epochs=2, window=3, seed=0, device="cpu").validate()
    sim = Simulator(cfg, "sasg", synth)
    seen = []
    decide = sim.algorithm.trigger.decide

    def spy(rnd):  # the lr of every round whose threshold the rule computes (someone is checked)
        stale = rnd.stale_grads
        rnd.stale_grads = lambda rows: (seen.append(rnd.lr), stale(rows))[1]
        return decide(rnd)

    sim.algorithm.trigger.decide = spy
    sim.run()
    per_epoch = sim.sampler.rounds_per_epoch
    assert set(seen) == {0.2, 0.1} and seen.index(0.1) >= per_epoch - cfg.window


def test_non_iid_partition_runs_and_is_reported(tmp_path):
    out = tmp_path / "niid"
    assert main(["compare", "--partition", "dirichlet", "--beta", "0.1", "--iterations", "5", "--algos", "sasg",
                 "--quiet", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    workers = cfg["partition_detail"]["workers"]
    assert sum(w["size"] for w in workers) == 4000
    assert min(w["num_labels"] for w in workers) < 10
    assert "Dirichlet(β = 0.1)" in (out / "report.md").read_text()


def test_presets_and_lists_from_python_are_applied_or_refused():
    cfg = RunConfig.from_preset("paper-cifar10", epochs=1, data_dir="/nowhere").validate()
    assert (cfg.model, cfg.lr, cfg.threshold_scale, cfg.epochs, cfg.preset) == ("resnet18", 0.1, 1.0, 1, "paper-cifar10")
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        RunConfig.from_preset("nope")
    with pytest.raises(ValueError, match="preset must be one of paper-mnist, .*, got 'nope'; e.g. --preset paper-mnist"):
        RunConfig(preset="nope").validate()
    # A comma-separated string and a single decay epoch, as a user types them.
    cfg = RunConfig(algorithms="SGD, sasg", lr_decay_epochs=20).validate()
    assert cfg.algorithms == ("sgd", "sasg") and cfg.lr_decay_epochs == (20.0,)
    with pytest.raises(ValueError, match="list an epoch twice"):
        RunConfig(lr_decay_epochs=(20, 20)).validate()
    assert RunConfig(device="CPU").validate().device == "cpu"
