"""An algorithm that fails in the middle of a compare is marked failed; the others are kept.

The failing member is a plug-in compressor that refuses non-finite values, as a stochastic
member (Bernoulli draws) does once a too large step has made them NaN: here it refuses from a set
round on, so the failure is certain and its round known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sasg.cli.main import main

TINY = ["--dataset", "synthetic", "--workers", "2", "--batch-size", "5", "--eval-every", "5", "--density", "0.1",
        "--window", "3", "--lr", "0.2", "--device", "cpu", "--quiet"]

PLUGIN = '''
from sasg.core import register
from sasg.core.compressors import TopK


class Refuses(TopK):
    """top-k that raises from its 7th call on, as a member meeting NaNs would."""

    name = "refuses"

    def __init__(self, layout, density):
        super().__init__(layout, density)
        self.calls = 0

    def compress(self, v, rows=None, **kw):
        self.calls += 1
        if self.calls >= 7:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return super().compress(v, rows, **kw)


register("compressor", "refuses", "top-k that fails on its 7th call (tests)", lambda layout, s: Refuses(layout, s.density))
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "failing_member.py"
    path.write_text(PLUGIN)
    return path


def test_a_failing_algorithm_is_marked_failed_and_the_others_are_kept(plugin, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--plugin", str(plugin), "--algos", "sgd,always+refuses,sasg", *TINY,
                 "--iterations", "20", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1  # the folder is written, but the run is not a clean one
    assert "always+refuses (seed 0) failed at iteration 6: RuntimeError: probability tensor" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    recs = {r["algorithm"]: r for r in summary["records"]}
    assert recs["always+refuses"]["failed"].startswith("RuntimeError: probability tensor")
    assert recs["always+refuses"]["failed_at_iteration"] == 6 and recs["always+refuses"]["iterations"] == 6
    for name in ("sgd", "sasg"):  # before and after the failure: both ran to the end
        assert recs[name]["failed"] is None and recs[name]["iterations"] == 20
    report = (out / "report.md").read_text()
    assert "always+refuses failed at iteration 6" in report
    rounds = (out / "rounds.csv").read_text().splitlines()
    assert sum(line.startswith("always+refuses,") for line in rounds) == 6


def test_a_failed_run_is_tried_again_on_resume(plugin, tmp_path, capsys):
    ck = tmp_path / "ck"
    flags = ["--plugin", str(plugin), "--algos", "sgd,always+refuses", *TINY, "--iterations", "10",
             "--checkpoint-dir", str(ck), "--checkpoint-every", "5"]
    assert main(["compare", *flags, "--out", str(tmp_path / "a")]) == 1
    # sgd finished and is kept; the failed run left its round-5 checkpoint, not a finished result
    assert (ck / "seed0-sgd-done.pt").is_file() and not (ck / "seed0-always+refuses-done.pt").exists()
    assert (ck / "seed0-always+refuses-iter5.pt").is_file()
    capsys.readouterr()
    # Continued from round 5 with a fresh member (its calls counted from there), which now gets
    # through the last 5 rounds: the failed run is run again, the finished sgd taken as it was.
    assert main(["compare", *flags, "--resume", "--out", str(tmp_path / "b")]) == 0
    before = {r["algorithm"]: r for r in json.loads((tmp_path / "a" / "summary.json").read_text())["records"]}
    after = {r["algorithm"]: r for r in json.loads((tmp_path / "b" / "summary.json").read_text())["records"]}
    assert after["always+refuses"]["failed"] is None and after["always+refuses"]["iterations"] == 10
    timing = ("wall_seconds", "train_seconds", "iters_per_second")
    assert {k: v for k, v in after["sgd"].items() if k not in timing} == {
        k: v for k, v in before["sgd"].items() if k not in timing}
