"""The ``sasg`` command line: ``sasg run`` (one algorithm) and ``sasg compare`` (several)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..core.algorithms import ALGORITHMS


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line that names the problem and the fix, and flags are
    never abbreviated (``--nproc`` must not silently become ``--nproc-per-node``, nor a prefix
    slip through to the workers of ``sasg launch``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(kind):
    name = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None

    parse.__name__ = kind.__name__
    return parse


def _items(text: str, example: str) -> list[str]:
    """The entries of a comma-separated list; an empty entry (``1,,2``, ``,``) is a typo."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry; give a comma-separated list such as {example}")
    return items


def _algo_list(text: str) -> tuple[str, ...]:
    return tuple(a.lower() for a in _items(text, "sgd,sasg"))


def _float_list(text: str) -> tuple[float, ...]:
    parse = _number(float)
    return tuple(parse(t) for t in _items(text, "20,30"))


def _int_list(text: str) -> tuple[int, ...]:
    parse = _number(int)
    return tuple(parse(t) for t in _items(text, "1,19,31"))


# Flags default to None so that a --preset can fill them; explicit flags win over the preset,
# the preset over RunConfig's defaults (shown in the help).
def add_training_flags(p: argparse.ArgumentParser) -> None:
    from ..presets import PRESETS

    d = RunConfig()
    g = p.add_argument_group("setting (defaults: the paper's MNIST setting on the embedded data)")
    g.add_argument("--preset", choices=tuple(PRESETS), help="the paper's experiments: every hyperparameter set at once")
    g.add_argument("--dataset", help=f"mnist5k (embedded, default), synthetic, mnist, fashion-mnist, cifar10, cifar100")
    g.add_argument("--data-dir", help="folder with the published data files (mnist, fashion-mnist, cifar10, cifar100)")
    g.add_argument("--download", action="store_true", default=None, help="fetch missing data files (needs internet), checksums verified")
    g.add_argument("--model", help="fc (784-512-10, default), logreg, lenet5, resnet18, vgg16")
    g.add_argument("--workers", type=_number(int), help=f"M, number of workers ({d.workers})")
    g.add_argument("--batch-size", type=_number(int), help=f"minibatch per worker ({d.batch_size})")
    g.add_argument(
        "--lr", type=_number(float),
        help=f"step size on the MEAN of the workers' gradients ({d.lr}; the paper's alpha = lr / M)",
    )
    g.add_argument(
        "--lr-decay-epochs", type=_float_list,
        help="comma-separated epochs at which the lr is multiplied by --lr-decay-factor, e.g. 20 or 20,30",
    )
    g.add_argument("--lr-decay-factor", type=_number(float), help=f"step decay factor ({d.lr_decay_factor})")
    g.add_argument("--density", type=_number(float), help=f"h, fraction of every parameter tensor (weights and biases apart) kept by top-k ({d.density})")
    g.add_argument("--window", type=_number(int), help=f"D, trigger window and max skips in a row ({d.window})")
    g.add_argument(
        "--threshold-scale", type=_number(float),
        help=f"c, trigger threshold scale ({d.threshold_scale:g}; larger c: lower threshold, more uploads)",
    )
    g.add_argument(
        "--epochs", type=_number(float),
        help=f"length in epochs ({d.epochs:g}); an epoch is (training samples) // (M x batch) rounds",
    )
    g.add_argument("--iterations", type=_number(int), help="run exactly this many iterations (overrides --epochs)")
    g.add_argument("--eval-every", type=_number(int), help=f"evaluate every N iterations ({d.eval_every})")
    seeds = g.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_number(int), help=f"seed for init, split, batches and augmentation ({d.seed})")
    seeds.add_argument("--seeds", type=_int_list, help="several seeds, e.g. 1,19,31,42,80: mean ± std table and shaded plots")
    g.add_argument("--partition", choices=("iid", "dirichlet", "shards"), help="split over workers (iid)")
    g.add_argument("--beta", type=_number(float), help=f"Dirichlet concentration for --partition dirichlet ({d.beta})")
    g.add_argument("--shards-per-worker", type=_number(int), help=f"label shards per worker for --partition shards ({d.shards_per_worker})")
    g.add_argument("--augment", choices=("none", "crop-flip", "crop-flip-rotate"), help="batch augmentation (none)")
    g.add_argument(
        "--target-acc", type=_number(float),
        help="target test accuracy in percent (default: SGD's final accuracy - 0.5; none when sgd is not run)",
    )
    g.add_argument("--target-metric", choices=("top1", "top5"), help="which accuracy the target is on (top1)")
    g.add_argument("--backend", choices=("auto", "vmap", "loop"), help="gradient backend (auto)")
    g.add_argument("--device", help="cpu (default), cuda or cuda:N")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<command>-<time>)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run folder (only once the new one is complete)")
    o.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    o.add_argument("--quiet", action="store_true", help="no progress bar or table")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sasg",
        description="Communication-efficient distributed SGD: SASG and its baselines, simulated with exact bit counts.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"sasg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = sub.add_parser("run", help="train with one algorithm", description="Train with one algorithm and write a run folder.")
    run.add_argument("--algo", required=True, type=str.lower, help=f"one of {', '.join(ALGORITHMS)}")
    add_training_flags(run)
    cmp_ = sub.add_parser(
        "compare", help="run several algorithms on one setting",
        description="Run several algorithms on the same data and seed; write summary.json, metrics.csv, plots and report.md.",
    )
    cmp_.add_argument("--algos", type=_algo_list, default=ALGORITHMS, help="comma-separated (default: sgd,sparse,lasg,sasg)")
    add_training_flags(cmp_)
    from ..distributed.launch import add_launch_subparser

    add_launch_subparser(sub, add_training_flags, ALGORITHMS)
    return parser


_FLAG_FIELDS = (
    "dataset", "data_dir", "download", "model", "workers", "batch_size", "lr", "lr_decay_epochs",
    "lr_decay_factor", "density", "window", "threshold_scale", "epochs", "iterations", "eval_every",
    "seed", "partition", "beta", "shards_per_worker", "augment", "target_acc", "target_metric",
    "backend", "device",
)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """RunConfig defaults, then the preset, then every flag given explicitly."""
    from ..presets import preset

    values: dict = {}
    if getattr(args, "preset", None):
        values.update(preset(args.preset))
        values["preset"] = args.preset
    values.update({k: getattr(args, k) for k in _FLAG_FIELDS if getattr(args, k, None) is not None})
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
    values["algorithms"] = (args.algo,) if args.command != "compare" else args.algos
    return RunConfig(**values)


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
    from ..config import MAX_SEED

    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice ({','.join(map(str, seeds))}); list each once")
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise ConfigError(f"seeds must be in 0..{MAX_SEED}; e.g. --seeds 1,19,31,42,80")


def execute(args: argparse.Namespace) -> int:
    import json

    from ..experiment import check_fits, load_data, partition_report, run_seeds
    from ..report import ratio_lines, text_table, write_run_folder
    from ..report.rundir import check_destination, default_run_dir, staged_run_dir

    if args.seeds:
        check_seeds(args.seeds)
    config = config_from_args(args).validate()
    seeds = list(args.seeds) if args.seeds else [config.seed]
    settings = resolved(config, seeds)
    if args.dry_run:
        print(json.dumps(settings, indent=2))
        return 0
    out = args.out or default_run_dir(args.command)
    check_destination(out, args.overwrite)
    data = load_data(config)
    check_fits(config, data)
    settings["partition_detail"] = partition_report(config, data)
    folder = staged_run_dir(out, args.overwrite)
    with folder as stage:
        runs = run_seeds(config, seeds, data=data, progress=not args.quiet)
        summary = write_run_folder(stage, runs, config, extra=settings)
    if folder.path != out:
        print(f"sasg: note: {out} was filled by another run meanwhile; this run is in {folder.path}", file=sys.stderr)
    out = folder.path
    if not args.quiet:
        print(text_table(summary["records"]))
        for line in ratio_lines(summary["vs_sgd"]):
            print(line)
    print(f"run folder: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "launch":
            from ..distributed.launch import launch_main

            return launch_main(args, sys.argv[1:] if argv is None else list(argv))
        from ..report.rundir import exit_on_sigterm

        # A scheduler's kill cleans up like Ctrl-C: no half-written folder left. (Not for launch:
        # torchrun's agent in this process handles SIGTERM for its workers itself.)
        exit_on_sigterm()
        return execute(args)
    except ConfigError as e:
        print(f"sasg: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        # Loader and partition errors name the file or setting and the fix; no traceback.
        print(f"sasg: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # e.g. a download without internet: the message lists what was tried and the fix.
        print(f"sasg: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sasg: interrupted; no run folder written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
