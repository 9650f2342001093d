"""Watching a run: progress lines when stderr is not a terminal, and the TensorBoard log."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from sasg import RunConfig, Simulator, load_dataset
from sasg.cli.main import main
from sasg.report.live import ProgressLines, TensorBoardLog

TINY = ["--dataset", "synthetic", "--workers", "2", "--batch-size", "5", "--eval-every", "5", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu"]
LINE = re.compile(r"^sasg: \[(?P<label>[^\]]+)\] iteration (?P<k>\d+)/(?P<n>\d+) \(\d+ %\), uploads (?P<up>\d+), "
                  r"bits up (?P<bits>[0-9.e+]+), test acc (?P<acc>[0-9.]+) % \(it\. (?P<at>\d+)\), [0-9.]+ it/s$")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_line_every_interval_and_one_at_the_end():
    cfg = RunConfig(dataset="synthetic", workers=2, batch_size=5, eval_every=5, iterations=12, device="cpu")
    sim = Simulator(cfg, "sasg", load_dataset("synthetic"))
    clock, out = Clock(), io.StringIO()
    lines = ProgressLines(every_s=10, stream=out, clock=clock)

    def after_round(s):
        clock.now += 3.0  # a round takes 3 s: a line after rounds 4, 8 (12 s and 24 s later) and 12 (the end)
        lines(s, "sasg")

    sim.run(after_round=after_round)
    got = [LINE.match(t) for t in out.getvalue().splitlines()]
    assert all(got) and [int(m["k"]) for m in got] == [4, 8, 12], out.getvalue()
    last = got[-1]
    totals = sim.ledger.totals()
    assert int(last["up"]) == totals["uploads"] and float(last["bits"]) == pytest.approx(totals["bits_up"], rel=1e-2)
    assert int(last["at"]) == 12 and float(last["acc"]) == pytest.approx(sim.history[-1]["test_acc"], abs=0.01)


def _compare(tmp_path, capsys, *extra) -> tuple[int, str]:
    # stderr is captured here, not a terminal, as under a batch scheduler
    code = main(["compare", "--algos", "sgd,sasg", *TINY, "--iterations", "15", "--out", str(tmp_path / "o"), *extra])
    return code, capsys.readouterr().err


def test_compare_logs_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    code, err = _compare(tmp_path, capsys)
    assert code == 0, err
    lines = [LINE.match(t) for t in err.splitlines() if t.startswith("sasg: [")]
    # the default interval (60 s) is longer than these runs: the line at each run's end
    assert [(m["label"], m["k"]) for m in lines if m] == [("sgd", "15"), ("sasg", "15")], err
    code, err = _compare(tmp_path, capsys, "--quiet", "--overwrite")
    assert code == 0 and "sasg: [" not in err


def test_log_every_out_of_range_is_one_line(tmp_path, capsys):
    assert main(["compare", *TINY, "--iterations", "5", "--log-every", "-1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sasg: error: --log-every must be a number of seconds in [0, 86400], got -1.0; e.g. --log-every 60"


def test_tensorboard_logs_every_evaluation(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    assert main(["compare", "--algos", "sgd,sasg", *TINY, "--iterations", "15", "--quiet", "--tensorboard", str(tb),
                 "--out", str(tmp_path / "o")]) == 0
    history = json.loads((tmp_path / "o" / "summary.json").read_text())["records"]
    for rec in history:
        acc = EventAccumulator(str(tb / rec["algorithm"] / "seed0"))
        acc.Reload()
        assert {"test/top1_acc", "train/loss", "comm/uploads", "comm/bits_up"} <= set(acc.Tags()["scalars"])
        steps = [e.step for e in acc.Scalars("test/top1_acc")]
        assert steps == [0, 5, 10, 15]
        assert acc.Scalars("comm/uploads")[-1].value == rec["uploads"]
        assert acc.Scalars("test/top1_acc")[-1].value == pytest.approx(rec["final_test_acc"])


def test_tensorboard_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(Exception) as e:
        TensorBoardLog(tmp_path)
    assert "pip install 'sasg[tensorboard]'" in str(e.value)
    assert main(["run", "--algo", "sgd", *TINY, "--iterations", "5", "--tensorboard", str(tmp_path / "tb"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorboard needs the tensorboard package" in err[0]
    assert not (tmp_path / "o").exists()
