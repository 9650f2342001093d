"""The ``sasg`` command line: ``sasg run`` (one algorithm) and ``sasg compare`` (several)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..core.algorithms import ALGORITHMS


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line that names the problem and the fix."""

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


def _algo_list(text: str) -> tuple[str, ...]:
    return tuple(a.strip().lower() for a in text.split(",") if a.strip())


def add_training_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    g = p.add_argument_group("setting (defaults: the paper's MNIST setting)")
    g.add_argument("--dataset", default=d.dataset, help="mnist5k (embedded, default) or synthetic")
    g.add_argument("--model", default=d.model, help="fc (784-512-10, default) or logreg")
    g.add_argument("--workers", type=_number(int), default=d.workers, help="M, number of workers (10)")
    g.add_argument("--batch-size", type=_number(int), default=d.batch_size, help="minibatch per worker (10)")
    g.add_argument(
        "--lr", type=_number(float), default=d.lr,
        help="step size on the MEAN of the workers' gradients (0.05; the paper's alpha = lr / M = 0.005)",
    )
    g.add_argument("--density", type=_number(float), default=d.density, help="h, fraction kept per layer by top-k (0.01)")
    g.add_argument("--window", type=_number(int), default=d.window, help="D, trigger window and max skips in a row (10)")
    g.add_argument("--threshold-scale", type=_number(float), default=d.threshold_scale, help="c, trigger threshold scale (2)")
    g.add_argument("--epochs", type=_number(float), default=d.epochs, help="passes over each worker's shard (20)")
    g.add_argument("--eval-every", type=_number(int), default=d.eval_every, help="evaluate every N iterations (10)")
    g.add_argument("--seed", type=_number(int), default=d.seed, help="seed for init, split and batches (0)")
    g.add_argument(
        "--target-acc", type=_number(float), default=None,
        help="target test accuracy in percent (default: SGD's final accuracy - 0.5)",
    )
    g.add_argument("--backend", default=d.backend, choices=("auto", "vmap", "loop"), help="gradient backend (auto)")
    g.add_argument("--device", default=d.device, help="cpu (default) or cuda")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<command>-<time>)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run folder (only once the new one is complete)")
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
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    algos = (args.algo,) if args.command == "run" else args.algos
    return RunConfig(
        algorithms=algos, dataset=args.dataset, model=args.model, workers=args.workers,
        batch_size=args.batch_size, lr=args.lr, density=args.density, window=args.window,
        threshold_scale=args.threshold_scale, epochs=args.epochs, eval_every=args.eval_every,
        seed=args.seed, target_acc=args.target_acc, backend=args.backend, device=args.device,
    )


def execute(args: argparse.Namespace) -> int:
    from ..experiment import check_fits, load_data, run_algorithms
    from ..report import check_destination, ratio_lines, staged_run_dir, text_table, write_run_folder

    config = config_from_args(args).validate()
    out = args.out or Path("runs") / f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_destination(out, args.overwrite)
    data = load_data(config)
    check_fits(config, data)
    with staged_run_dir(out, args.overwrite) as stage:
        results = run_algorithms(config, data=data, progress=not args.quiet)
        summary = write_run_folder(stage, results, config)
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
        return execute(args)
    except ConfigError as e:
        print(f"sasg: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"sasg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sasg: interrupted; no run folder written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
