"""What a newcomer reads: help whose examples parse and whose lists match `sasg list`, a report
that shows the settings each algorithm ran with, natural codecs, a compare without sgd that says
why it has no target, and the thread count each run used."""

from __future__ import annotations

import json
import re

import pytest
import torch

from sasg import RunConfig
from sasg.cli.main import build_parser, main
from sasg.core import REGISTRIES
from sasg.core.natural import natural_codec
from sasg.threads import choose_threads

TINY = ["--dataset", "synthetic", "--workers", "4", "--batch-size", "5", "--iterations", "6",
        "--eval-every", "3", "--density", "0.1", "--window", "3", "--lr", "0.2", "--quiet"]


def _subparsers():
    return build_parser()._subparsers._group_actions[0].choices


def _examples(help_text: str) -> list[str]:
    """Every ``e.g. X`` of a help text: X up to a space, ';' or ')' (a trailing ':' or ',' dropped)."""
    return [m.rstrip(":,.") for m in re.findall(r"e\.g\. ([^\s;)]+)", help_text)]


@pytest.mark.parametrize("command", ["run", "compare", "launch"])
def test_every_help_example_parses_with_its_own_flag(command):
    checked = 0
    for action in _subparsers()[command]._actions:
        if not action.help or action.type is None:
            continue
        for example in _examples(action.help):
            action.type(example)  # raises (argparse.ArgumentTypeError) on an example that lies
            checked += 1
    assert checked >= 8  # the per-algorithm knobs, --codec, --seeds, --lr-decay-epochs, ...


def test_the_window_example_is_an_integer_one():
    window = next(a for a in _subparsers()["compare"]._actions if "--window" in a.option_strings)
    assert "sasg=0.8" not in window.help
    assert dict(window.type("sasg=5,lasg=20")) == {"sasg": 5, "lasg": 20}


def test_codec_help_lists_every_codec_index_code_and_value_format_sasg_list_shows(capsys):
    codec = next(a for a in _subparsers()["compare"]._actions if "--codec" in a.option_strings)
    assert main(["list"]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    names = {name for kind, name in listed if kind in ("codec", "index", "value")}
    assert {"ternary", "elias", "paper32", "rice", "sign"} <= names
    help_words = set(re.findall(r"[\w+]+", codec.help))
    assert names <= help_words, names - help_words
    assert names == {n for kind in ("codec", "index", "value") for n in REGISTRIES[kind].names()}


def test_natural_codecs_keep_paper32_for_the_paper_algorithms_and_presets():
    assert [natural_codec(a) for a in ("sgd", "sparse", "lasg", "sasg", "wk2+topk")] == ["paper32"] * 5
    assert natural_codec("always+qsgd") == "elias"
    assert natural_codec("wk1+sign") == "sign"
    assert natural_codec("always+terngrad") == "ternary"
    cfg = RunConfig(algorithms=("sasg", "always+qsgd", "always+sign"), dataset="synthetic", device="cpu").validate()
    assert [cfg.codec_for(a) for a in cfg.algorithms] == ["paper32", "elias", "sign"]
    # validate() makes it concrete: config.json shows what priced each algorithm, codec is paper32
    assert cfg.codec == "paper32"
    assert cfg.per_algorithm == {"always+qsgd": {"codec": "elias"}, "always+sign": {"codec": "sign"}}
    given = RunConfig(algorithms=("sasg", "always+qsgd"), codec="rice+fp32", dataset="synthetic", device="cpu")
    assert [given.validate().codec_for(a) for a in given.algorithms] == ["rice+fp32", "rice+fp32"]  # named: wins
    preset = RunConfig.from_preset("paper-mnist", algorithms=("always+qsgd",), dataset="synthetic", device="cpu")
    assert preset.validate().codec_for("always+qsgd") == "paper32"


def test_report_shows_each_algorithms_own_settings_and_the_threads(tmp_path):
    out = tmp_path / "run"
    assert main(["compare", *TINY, "--algos", "sgd,lasg,sasg", "--threshold-scale", "sasg=0.8,lasg=0.2",
                 "--window", "3,sasg=5", "--threads", "1", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "c = 2 (lasg: 0.2, sasg: 0.8)" in report or "c = 2 (sasg: 0.8, lasg: 0.2)" in report
    assert "window D = 3 (sasg: 5)" in report
    assert "Torch threads per process: 1 (--threads)" in report
    config = json.loads((out / "config.json").read_text())
    assert config["threads"] == 1 and config["threads_from"] == "--threads"
    assert torch.get_num_threads() == 1


def test_a_compare_without_sgd_says_what_its_target_columns_need(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", *TINY[:-1], "--algos", "sparse,sasg", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sgd is not among this run's algorithms" in printed and "--target-acc" in printed
    assert "sgd is not among this run's algorithms" in (out / "report.md").read_text()
    assert main(["compare", *TINY, "--algos", "sparse,sasg", "--target-acc", "40", "--out", str(tmp_path / "t")]) == 0
    assert "sgd is not among this run's algorithms" not in (tmp_path / "t" / "report.md").read_text()


def test_threads_come_from_the_flag_then_sasg_threads_then_omp_then_one():
    assert choose_threads(3, {"SASG_THREADS": "2", "OMP_NUM_THREADS": "4"}) == (3, "--threads")
    assert choose_threads(None, {"SASG_THREADS": "2", "OMP_NUM_THREADS": "4"}) == (2, "SASG_THREADS")
    assert choose_threads(None, {"OMP_NUM_THREADS": "4"}) == (4, "OMP_NUM_THREADS")
    assert choose_threads(None, {}) == (1, "default (one per process)")
    # a launched rank inherits its launcher's count and says where the launcher got it ...
    inherited = {"OMP_NUM_THREADS": "1", "SASG_THREADS_FROM": "1:default (one per process)"}
    assert choose_threads(None, inherited) == (1, "default (one per process)")
    # ... unless OMP_NUM_THREADS was changed since, or SASG_THREADS or the flag decide
    assert choose_threads(None, {**inherited, "OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")
    assert choose_threads(None, {**inherited, "SASG_THREADS": "1"}) == (1, "SASG_THREADS")


@pytest.mark.parametrize("flag,env,match", [
    (0, {}, "--threads must be an integer from 1 to 1024, got 0; e.g. --threads=1"),
    (None, {"SASG_THREADS": "two"}, "SASG_THREADS must be an integer from 1 to 1024, got 'two'; e.g. SASG_THREADS=1"),
])
def test_a_bad_thread_count_names_where_it_came_from(flag, env, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        choose_threads(flag, env)


def test_a_bad_threads_flag_is_one_line_before_anything_runs(tmp_path, capsys):
    assert main(["compare", *TINY, "--threads", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--threads must be an integer from 1 to 1024, got 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
