"""sasg.validation: typed checks with one error format, "NAME must be WHAT, got VALUE; FIX"."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from sasg import validation as v
from sasg.config import MAX_SEED, ConfigError, RunConfig

FORMAT = re.compile(r"^(\S.* )?must be .+, got .+(; .+)?$")


@pytest.mark.parametrize("call,says", [
    (lambda: v.lr(-1), "lr must be a finite number >= 0, got -1; e.g. lr=0.05"),
    (lambda: v.lr(float("nan")), "lr must be a finite number >= 0, got nan; e.g. lr=0.05"),
    (lambda: v.lr(True), "lr must be a finite number >= 0, got True; e.g. lr=0.05"),
    (lambda: v.seed(-1), f"seed must be an integer from 0 to {MAX_SEED}, got -1; e.g. seed=0"),
    (lambda: v.seed(2**32, fix="e.g. --seed 1"), "seed must be an integer from 0 to 4294967295, got 4294967296; e.g. --seed 1"),
    (lambda: v.seed(1.0), "seed must be an integer from 0 to 4294967295, got 1.0; e.g. seed=0"),
    (lambda: v.integer(True, "workers", ge=1), "workers must be an integer >= 1, got True"),
    (lambda: v.integer(0, "workers", ge=1, limit=10, why="w", fix="e.g. --workers 10"),
     "workers must be an integer >= 1, got 0; e.g. --workers 10"),
    (lambda: v.integer(11, "workers", ge=1, limit=10, why="too many", fix="e.g. --workers 10"),
     "workers must be at most 10 (too many), got 11; e.g. --workers 10"),
    (lambda: v.integer(5, "x", le=3), "x must be an integer <= 3, got 5"),
    (lambda: v.number(0, "beta", gt=0), "beta must be a finite number > 0, got 0"),
    (lambda: v.number(float("inf"), "beta", gt=0), "beta must be a finite number > 0, got inf"),
    (lambda: v.number(2e6, "beta", gt=0, limit=1e6), "beta must be at most 1e+06, got 2000000.0"),
    (lambda: v.number(1, "momentum", ge=0, lt=1), "momentum must be a number in [0, 1), got 1"),
    (lambda: v.number(0, "factor", gt=0, le=1), "factor must be a number in (0, 1], got 0"),
    (lambda: v.number("0.5", "factor", gt=0, le=1), "factor must be a number in (0, 1], got '0.5'"),
    (lambda: v.number(-1.0, "--log-every", ge=0, le=60, unit="seconds"),
     "--log-every must be a number of seconds in [0, 60], got -1.0"),
    (lambda: v.choice("jax", "backend", ("auto", "loop"), fix="e.g. --backend auto"),
     "backend must be one of auto, loop, got 'jax'; e.g. --backend auto"),
    (lambda: v.choice(3, "backend", ("auto",)), "backend must be one of auto, got 3"),
    (lambda: v.flag(1, "nesterov"), "nesterov must be True or False, got 1"),
    (lambda: v.flag("yes", "nesterov"), "nesterov must be True or False, got 'yes'"),
])
def test_every_check_says_name_requirement_value_and_fix(call, says):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == says and FORMAT.match(str(e.value))


def test_good_values_come_back_normalized():
    assert v.lr(1) == 1.0 and isinstance(v.lr(1), float)
    assert v.seed(np.int64(7)) == 7 and type(v.seed(np.int64(7))) is int
    assert v.seed(MAX_SEED) == MAX_SEED and v.seed(0) == 0
    assert v.integer(3, "x", ge=1, le=3) == 3
    assert v.number(2, "x", gt=0) == 2 and type(v.number(2, "x", gt=0)) is int  # ints stay ints
    assert type(v.number(np.float32(0.5), "x")) is float
    assert v.number(1e4, "lr", gt=0, limit=1e4) == 1e4  # the limit itself passes
    assert v.choice(" CPU ", "device", ("cpu", "cuda")) == "cpu"
    assert v.flag(False, "x") is False
    assert v.optional(v.seed, None) is None and v.optional(v.seed, 3) == 3


def test_the_caller_chooses_the_error_type():
    with pytest.raises(ConfigError, match="seed must be"):
        v.seed(-1, error=ConfigError)
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 1, got 0"):
        v.argument(v.parse_integer, ge=1)("0")


@pytest.mark.parametrize("parse,text,bounds,says", [
    (v.parse_integer, "2.5", {}, "n must be an integer, got '2.5'"),
    (v.parse_integer, "x", dict(ge=1, le=9), "n must be an integer from 1 to 9, got 'x'"),
    (v.parse_integer, " 10 ", dict(ge=1, le=9), "n must be an integer from 1 to 9, got 10"),
    (v.parse_number, "abc", {}, "n must be a number, got 'abc'"),
    (v.parse_number, "abc", dict(gt=0), "n must be a finite number > 0, got 'abc'"),
    (v.parse_number, "inf", dict(gt=0), "n must be a finite number > 0, got inf"),
    (v.parse_number, "1e300", dict(gt=0, limit=10, fix="e.g. n=1"), "n must be at most 10, got 1e300; e.g. n=1"),
])
def test_text_is_converted_then_checked_and_shown_as_typed(parse, text, bounds, says):
    with pytest.raises(ValueError) as e:
        parse(text, "n", **bounds)
    assert str(e.value) == says


def test_text_without_bounds_is_only_converted():
    assert v.parse_number("nan", "n") != v.parse_number("nan", "n")  # nan: the caller checks the range
    assert v.parse_integer(" 7 ", "n") == 7


@pytest.mark.parametrize("kw,says", [
    (dict(workers=0), "workers must be an integer >= 1, got 0; e.g. --workers 10"),
    (dict(workers=2.0), "workers must be an integer >= 1, got 2.0; e.g. --workers 10"),
    (dict(batch_size=True), "batch size must be an integer >= 1, got True; e.g. --batch-size 10"),
    (dict(seed=-1), "seed must be an integer from 0 to 4294967295, got -1; e.g. --seed 1"),
    (dict(lr=0), "lr must be a finite number > 0, got 0; e.g. --lr 0.05"),
    (dict(epochs=float("nan")), "epochs must be a finite number > 0, got nan; e.g. --epochs 20"),
    (dict(target_acc=101), "target accuracy must be a number in [0, 100], got 101; a percentage, e.g. --target-acc 90"),
    (dict(backend="jax"), "backend must be one of auto, vmap, loop, got 'jax'; e.g. --backend auto"),
    (dict(beta=0), "Dirichlet beta must be a finite number > 0, got 0; e.g. --beta 0.5"),
    (dict(lr_decay_factor=2), "lr decay factor must be a number in (0, 1], got 2; e.g. --lr-decay-factor 0.1"),
    (dict(lr_decay_epochs=(-1,)), "lr decay epochs must be a finite number > 0, got -1; e.g. --lr-decay-epochs 20"),
    (dict(lr_decay_epochs="20,30"), "lr decay epochs must be a number or a list of numbers, got '20,30'"),
    (dict(target_metric="top3"), "target metric must be one of top1, top5, got 'top3'; e.g. --target-metric top1"),
    (dict(iterations=0), "iterations must be an integer >= 1, got 0; e.g. --iterations 1000"),
])
def test_run_config_refuses_in_the_one_format(kw, says):
    with pytest.raises(ConfigError) as e:
        RunConfig(device="cpu", **kw).validate()
    assert str(e.value).startswith(says) and FORMAT.match(str(e.value)), str(e.value)


def test_run_config_normalizes_choices_and_keeps_good_values():
    cfg = RunConfig(device="cpu", dataset=" Synthetic", backend="LOOP", iterations=np.int64(3), seed=5).validate()
    assert (cfg.dataset, cfg.backend, cfg.iterations, cfg.seed) == ("synthetic", "loop", 3, 5)
    assert type(cfg.iterations) is int
    default = RunConfig(device="cpu").validate()
    assert (default.lr, default.epochs, default.target_acc, default.preset) == (0.05, 20, None, None)
    assert type(default.epochs) is int  # config.json keeps what was given
