"""From the parsed flags of ``sasg run``, ``sasg compare`` and ``sasg launch`` (and of a launched
worker) to a :class:`~sasg.config.RunConfig`, and the settings a run folder records.

Its own module so that every command can import it: ``sasg.cli.main`` imports ``sasg.cli.launch``
to add the ``launch`` command, and ``launch`` (and the worker) need these too.
"""

from __future__ import annotations

import argparse

from ..config import ConfigError, RunConfig


class PerAlgorithm(dict):
    """A knob's value per algorithm, ``{name: value}``; the entry under ``None`` (a bare number)
    is the value of every algorithm not named."""


_FLAG_FIELDS = (
    "dataset", "data_dir", "download", "model", "workers", "batch_size", "lr", "lr_decay_epochs",
    "lr_decay_factor", "density", "window", "threshold_scale", "window_sum", "threshold_lr_lag", "tensor_policy",
    "warmup", "aggregate", "epochs",
    "iterations", "eval_every", "seed", "partition", "beta", "shards_per_worker", "augment", "target_acc",
    "target_metric", "backend", "device", "codec",
)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """RunConfig defaults, then the preset, then every flag given explicitly."""
    from ..presets import preset

    values: dict = {}
    if getattr(args, "preset", None):
        values.update(preset(args.preset))
        values["preset"] = args.preset
    values.update({k: getattr(args, k) for k in _FLAG_FIELDS if getattr(args, k, None) is not None})
    algorithms = (args.algo,) if args.command != "compare" else args.algos
    values["per_algorithm"] = _per_algorithm(values, algorithms, args)
    # A split's own knob given for another split would be silently ignored: say so instead.
    partition = values.get("partition", "iid")
    knobs = (("--beta", "beta", "dirichlet"), ("--shards-per-worker", "shards_per_worker", "shards"))
    for flag, field, owner in knobs:
        if getattr(args, field, None) is not None and partition != owner:
            raise ConfigError(
                f"{flag} applies to --partition {owner} only (this run splits {partition}); "
                f"add --partition {owner} or drop {flag}"
            )
    if getattr(args, "seeds", None):
        values["seed"] = args.seeds[0]
    values["algorithms"] = algorithms
    return RunConfig(**values)


def _per_algorithm(values: dict, algorithms, args) -> dict:
    """Split ``ALGO=VALUE`` knob flags out of ``values`` into ``per_algorithm`` (on top of a
    preset's). A flag's bare value replaces the preset's per-algorithm values of that knob."""
    from ..core import KNOBS, AlgorithmSpec

    per = {name: dict(knobs) for name, knobs in values.get("per_algorithm", {}).items()}
    for knob in (*KNOBS, "codec"):
        given = getattr(args, knob, None)  # the flag itself, not a preset's value
        if given is None:
            continue
        for knobs in per.values():  # an explicit flag wins over the preset for this knob
            knobs.pop(knob, None)
        if not isinstance(given, PerAlgorithm):
            continue
        flag = "--" + knob.replace("_", "-")
        for name, value in given.items():
            if name is None:
                continue
            if name not in algorithms:
                try:
                    AlgorithmSpec.parse(name)
                    why = "is not among the algorithms of this run"
                except ValueError:
                    why = "is no algorithm"
                raise ConfigError(
                    f"{flag} {name}={value}: {name!r} {why} ({', '.join(algorithms)}); name one of them"
                )
            per.setdefault(name, {})[knob] = value
        if None in given:
            values[knob] = given[None]
        else:
            del values[knob]
    return {name: knobs for name, knobs in per.items() if knobs}


def resolved(config: RunConfig, seeds: list[int]) -> dict:
    """Every hyperparameter, the data set, the partition and the model with its size."""
    from ..data import DATASETS
    from ..models import count_parameters

    info = DATASETS[config.dataset]
    return {
        **config.to_dict(),
        "seeds": seeds,
        "data": {"name": config.dataset, "sample_shape": list(info.sample_shape), "num_classes": info.num_classes},
        "num_parameters": count_parameters(config.model, info.sample_shape, info.num_classes),
    }


def check_seeds(seeds) -> None:
    """``--seeds``: each once, each a valid seed."""
    from ..validation import seed

    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice ({','.join(map(str, seeds))}); list each once")
    for s in seeds:
        seed(s, "every seed in --seeds", fix="e.g. --seeds 1,19,31,42,80", error=ConfigError)
