"""The run folder for the runs a sweep really produces: diverged ones, seeds that miss the
target, top-5 targets, algorithms worse than SGD. Most tests build RunResults by hand, so each
edge case is exact and instant; the divergence one goes through the real CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import small_config
from sasg.accounting.ledger import Ledger
from sasg.cli.main import main
from sasg.report import build_summary, ratio_lines, strict_json, text_table, write_run_folder
from sasg.report.plots import plot_curves
from sasg.report.summary import aggregate_records
from sasg.report.table import ratio_text
from sasg.sim import RunResult

TINY = ["--dataset", "synthetic", "--workers", "4", "--batch-size", "5", "--epochs", "1",
        "--eval-every", "4", "--density", "0.1", "--window", "3"]
CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def strict_load(path: Path) -> dict:
    """json.load that rejects NaN / Infinity, as any strict JSON reader does."""
    def reject(token):
        raise AssertionError(f"non-standard JSON number {token} in {path.name}")
    return json.loads(path.read_text(), parse_constant=reject)


def fake_run(algorithm: str, accs, losses=None, uploads=2, top5=None, train_seconds=1.0) -> RunResult:
    """A run evaluated every iteration: ``accs[k]`` is the test accuracy after k iterations."""
    ledger = Ledger(num_workers=2)
    history = []
    for k, acc in enumerate(accs):
        if k:
            ledger.record(uploads, uploads * 100, 200)
        t = ledger.totals()
        history.append({"iteration": k, "uploads": t["uploads"], "bits_up": t["bits_up"],
                        "bits_down": t["bits_down"], "train_loss": 1.0 if losses is None else losses[k],
                        "test_acc": acc, "test_top5": acc + 10 if top5 is None else top5[k], "lr": 0.1})
    return RunResult(algorithm, history, ledger, train_seconds, 0.0, "vmap", 10, torch.zeros(1))


# ----- 1. a diverged run is a result, not an error ----------------------------------------------

def test_diverged_run_writes_the_folder_and_says_so(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["run", "--algo", "sgd", *TINY, "--lr", "1e4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "diverged" in printed and "non-finite" in printed
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "metrics.csv", "rounds.csv", "report.md", "test_acc.png", "train_loss.png"} <= names
    rec = strict_load(out / "summary.json")["records"][0]
    assert rec["diverged"] is True and rec["final_train_loss"] is None
    assert rec["diverged_at_iteration"] == 8  # the first evaluation (every 4) after the loss overflowed
    report = (out / "report.md").read_text()
    assert "diverged" in report and "non-finite" in report
    assert "nan" in (out / "metrics.csv").read_text()


def test_plot_of_nothing_finite_is_still_written(tmp_path):
    nan = math.nan
    runs = {"sgd": [fake_run("sgd", [10.0, 10.0, 10.0], losses=[nan, nan, nan]).history],
            "sasg": [fake_run("sasg", [nan, nan, nan], losses=[math.inf, nan, nan]).history]}
    written = plot_curves(runs, tmp_path, target=50.0)
    assert written == ["test_acc.png", "train_loss.png"]
    assert all((tmp_path / f).stat().st_size > 5_000 for f in written)


def test_sgd_diverged_means_no_default_target(tmp_path):
    runs = {"sgd": fake_run("sgd", [10.0, 40.0, 10.0], losses=[1.0, 5.0, math.nan]),
            "sasg": fake_run("sasg", [10.0, 60.0, 80.0])}
    summary = write_run_folder(tmp_path, runs, small_config(algorithms=["sgd", "sasg"]))
    assert summary["target_acc"] is None  # not "chance level − 0.5"
    assert [r["diverged"] for r in summary["records"]] == [True, False]
    assert "SGD diverged" in (tmp_path / "report.md").read_text()


# ----- 2. summary.json is strict JSON -----------------------------------------------------------

def test_summary_json_has_null_for_every_non_finite_number(tmp_path):
    nan = math.nan
    cfg = small_config(algorithms=["sgd", "sasg"])
    runs = {1: {"sgd": fake_run("sgd", [10.0, 50.0, 60.0], losses=[1.0, math.inf, nan], train_seconds=0.0),
                "sasg": fake_run("sasg", [10.0, 50.0, 60.0])},
            2: {"sgd": fake_run("sgd", [10.0, 50.0, 60.0]),
                "sasg": fake_run("sasg", [10.0, 50.0, 60.0], losses=[1.0, 1.0, nan])}}
    write_run_folder(tmp_path, runs, cfg)
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = strict_load(tmp_path / "summary.json")
    sgd1 = summary["per_seed"]["1"][0]
    assert sgd1["final_train_loss"] is None and sgd1["iters_per_second"] is None  # inf it/s: 0 s
    assert summary["records"][1]["final_train_loss"] is None  # a mean with a NaN seed
    assert summary["records"][1]["diverged_seeds"] == 1
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert {r.split(",")[5] for r in rows[1:]} == {"1.0", "inf", "nan"}


def test_a_nan_that_slips_through_fails_loudly():
    with pytest.raises(ValueError):
        strict_json({"x": math.nan})


# ----- 3. multi-seed 'to target' figures ---------------------------------------------------------

def two_seeds(sasg_seed2_reaches: bool) -> dict:
    return {1: {"sgd": fake_run("sgd", [10, 50, 80, 90]), "sasg": fake_run("sasg", [10, 40, 60, 85], uploads=1)},
            2: {"sgd": fake_run("sgd", [10, 60, 80, 90]),
                "sasg": fake_run("sasg", [10, 40, 60, 85 if sasg_seed2_reaches else 75], uploads=1)}}


def test_mean_over_some_seeds_says_how_many_and_gives_no_ratio():
    summary = build_summary(two_seeds(False), small_config(algorithms=["sgd", "sasg"], target_acc=79.5))
    sgd, sasg = summary["records"]
    assert (sgd["reached_target"], sasg["reached_target"]) == (2, 1)
    assert sasg["iters_to_target"] == 3 and sasg["iters_to_target_std"] is None  # one value: no spread
    assert sgd["iters_to_target_std"] == 0.0
    row = next(line for line in text_table(summary["records"]).splitlines() if line.startswith("sasg"))
    assert "3 (1/2)" in row
    vs = summary["vs_sgd"]["sasg"]
    assert vs["iters_to_target"] is None and vs["uploads_to_target"] is None and vs["bits_to_target"] is None
    (line,) = ratio_lines(summary["vs_sgd"])
    assert "no ratio" in line and "1/2" in line and "to target 1/" not in line


def test_ratio_when_every_seed_reached():
    summary = build_summary(two_seeds(True), small_config(algorithms=["sgd", "sasg"], target_acc=79.5))
    vs = summary["vs_sgd"]["sasg"]
    assert vs["iters_to_target"] == 1.5 and vs["uploads_to_target"] == 0.75
    (line,) = ratio_lines(summary["vs_sgd"])
    assert "iterations to target 1.50× more" in line and "uploads to target 0.75×" in line
    assert "(2/2)" not in text_table(summary["records"])


# ----- 4. a top-5 target is compared on top-5 ----------------------------------------------------

def test_top5_target_labels_columns_and_compares_top5(tmp_path):
    runs = {"sgd": fake_run("sgd", [10.0, 80.0, 84.7], top5=[50.0, 95.0, 98.6]),
            "sasg": fake_run("sasg", [10.0, 70.0, 81.4], top5=[50.0, 90.0, 98.4], uploads=1)}
    cfg = small_config(algorithms=["sgd", "sasg"], target_metric="top5")
    summary = write_run_folder(tmp_path, runs, cfg)
    assert summary["target_acc"] == pytest.approx(98.1)
    header = text_table(summary["records"]).splitlines()[0]
    assert "final top-1 %" in header and "final top-5 %" in header and "final acc %" not in header
    assert summary["vs_sgd"]["sasg"]["final_test_top5_delta"] == -0.2
    (line,) = ratio_lines(summary["vs_sgd"])
    assert "final top-5 accuracy -0.20 points" in line and "final top-1 accuracy -3.30 points" in line
    assert line.index("top-5") < line.index("top-1")  # the target's metric first
    report = (tmp_path / "report.md").read_text()
    assert "Target test top-5 accuracy: 98.10 %" in report and "final top-5 %" in report
    assert (tmp_path / "test_top5.png").exists()


# ----- 5. ratio wording ---------------------------------------------------------------------------

@pytest.mark.parametrize("r,text", [(0.0285, "1/35.1"), (0.5, "1/2"), (0.95, "0.95×"), (1.0, "same"),
                                    (1.5, "1.50× more"), (3.0, "3.00× more"), (25.0, "25× more")])
def test_ratio_text(r, text):
    assert ratio_text(r) == text


def test_worse_than_sgd_is_never_written_as_a_fraction():
    vs = {"sasg": {"uploads": 1.5, "bits_up": 3.0, "iters_to_target": 2.0, "uploads_to_target": 1.5,
                   "bits_to_target": 3.0, "final_test_acc_delta": -1.0}}
    (line,) = ratio_lines(vs)
    assert "1/" not in line
    assert "bits to target 3.00× more" in line and "uploads to target 1.50× more" in line
    assert "uploads overall 1.50× more" in line


# ----- 6. tidy numbers ----------------------------------------------------------------------------

def test_derived_figures_carry_no_float_noise():
    runs = {"sgd": fake_run("sgd", [10.0, 83.0]), "sasg": fake_run("sasg", [10.0, 79.45])}
    summary = build_summary({3: runs}, small_config(algorithms=["sgd", "sasg"]))
    assert repr(summary["vs_sgd"]["sasg"]["final_test_acc_delta"]) == "-3.55"  # not -3.5500000000000114


def test_counts_are_ints_when_every_seed_agrees():
    seeds = [(285, 79.9), (287, 79.0)]
    (agg,) = aggregate_records([[{**BASE, "uploads": u, "final_test_acc": acc}] for u, acc in seeds])
    assert agg["iterations"] == 30 and isinstance(agg["iterations"], int)
    assert agg["uploads"] == 286.0 and isinstance(agg["uploads"], float)
    assert agg["final_test_acc"] == 79.45  # the mean of 79.9 and 79.0, without float noise
    assert agg["iters_to_target"] is None and agg["iters_to_target_std"] is None


BASE = {"algorithm": "sasg", "target_metric": "top1", "num_parameters": 10, "backend": "vmap", "iterations": 30,
        "uploads": 0, "skipped": 0, "bits_up": 1, "bits_down": 1, "bits_flags": 0, "final_test_acc": 0.0,
        "best_test_acc": 80.0, "final_test_top5": 99.0, "best_test_top5": 99.0, "final_train_loss": 0.5,
        "target_acc": None, "iters_to_target": None, "uploads_to_target": None, "bits_to_target": None,
        "wall_seconds": 1.0, "train_seconds": 1.0, "iters_per_second": 30.0, "diverged": False}


# ----- 7. docs/cli.md lists every file the run folder holds ----------------------------------------

def test_docs_run_folder_section_lists_every_file(tmp_path):
    runs = {"sgd": fake_run("sgd", [10.0, 80.0]), "sasg": fake_run("sasg", [10.0, 70.0])}
    write_run_folder(tmp_path, runs, small_config(algorithms=["sgd", "sasg"], target_metric="top5"))
    text = CLI_DOC.read_text()
    section = text[text.index("### The run folder"):text.index("## Paper-scale experiments")]
    for p in tmp_path.iterdir():
        assert f"`{p.name}`" in section, p.name
