"""The ``sasg`` command line: ``sasg run`` (one algorithm) and ``sasg compare`` (several)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..core import ALGORITHMS
from .config_args import check_seeds, config_from_args, resolved
from .launch import add_launch_subparser
from .parsing import (CommandParser, OneLineParser, aggregate, algo_list, codec_arg, float_list, int_list, knob, numeric,
                      tensor_policy, window_sum)


# The argument groups of the training flags, in help order: (key, title, description). The key
# names the group in the dict add_training_flags returns, so a flag can later join a group by name.
TRAINING_GROUPS = (
    ("data", "data", "the data set and its split over the workers"),
    ("model", "model", "the network and where its gradients are computed"),
    ("optimization", "optimization",
     "defaults: the paper's MNIST setting; --preset sets every value at once, explicit flags win over it"),
    ("trigger", "trigger", "when a worker skips its upload (SASG, LASG)"),
    ("compression", "compression", "what an upload keeps (SASG, sparse)"),
    ("evaluation", "evaluation", "test accuracy and the target the cost-to-target columns use"),
    ("output", "output", None),
)


# Flags default to None so that a --preset can fill them; explicit flags win over the preset,
# the preset over RunConfig's defaults (shown in the help).
def add_training_flags(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """Add the training flags to ``p`` in argument groups; return them as ``{key: group}`` with the
    keys of :data:`TRAINING_GROUPS` (``groups["data"].add_argument(...)`` adds a flag to one)."""
    from ..presets import PRESETS

    d = RunConfig()
    groups = {key: p.add_argument_group(title, description) for key, title, description in TRAINING_GROUPS}

    g = groups["data"]
    g.add_argument("--dataset", help=f"mnist5k (embedded, default), synthetic, mnist, fashion-mnist, cifar10, cifar100")
    g.add_argument("--data-dir", help="folder with the published data files (mnist, fashion-mnist, cifar10, cifar100)")
    g.add_argument("--download", action="store_true", default=None, help="fetch missing data files (needs internet), checksums verified")
    g.add_argument("--partition", choices=("iid", "dirichlet", "shards"), help="split over workers (iid)")
    g.add_argument("--beta", type=numeric(float), help=f"Dirichlet concentration for --partition dirichlet ({d.beta})")
    g.add_argument("--shards-per-worker", type=numeric(int), help=f"label shards per worker for --partition shards ({d.shards_per_worker})")
    g.add_argument("--augment", choices=("none", "crop-flip", "crop-flip-rotate"), help="batch augmentation (none)")
    g.add_argument("--workers", type=numeric(int), help=f"M, number of workers ({d.workers})")
    g.add_argument("--batch-size", type=numeric(int), help=f"minibatch per worker ({d.batch_size})")

    g = groups["model"]
    g.add_argument("--model", help="fc (784-512-10, default), logreg, lenet5, resnet18, vgg16")
    g.add_argument("--backend", choices=("auto", "vmap", "loop"), help="gradient backend (auto)")
    g.add_argument("--device", help="auto (default: cuda when available, else cpu), cpu, cuda or cuda:N")
    g.add_argument("--threads", type=numeric(int), metavar="N",
                   help="torch threads per process (default: $SASG_THREADS, else $OMP_NUM_THREADS, else 1: "
                        "faster than one per core for these small kernels, above all on a busy machine)")

    g = groups["optimization"]
    g.add_argument(
        "--lr", type=numeric(float),
        help=f"step size on the MEAN of the workers' gradients ({d.lr}; the paper's alpha = lr / M)",
    )
    g.add_argument(
        "--lr-decay-epochs", type=float_list,
        help="comma-separated epochs at which the lr is multiplied by --lr-decay-factor, e.g. 20 or 20,30",
    )
    g.add_argument("--lr-decay-factor", type=numeric(float), help=f"step decay factor ({d.lr_decay_factor})")
    g.add_argument(
        "--epochs", type=numeric(float),
        help=f"length in epochs ({d.epochs:g}); an epoch is (training samples) // (M x batch) rounds",
    )
    g.add_argument("--iterations", type=numeric(int), help="run exactly this many iterations (overrides --epochs)")
    seeds = g.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=numeric(int), help=f"seed for init, split, batches and augmentation ({d.seed})")
    seeds.add_argument("--seeds", type=int_list, help="several seeds, e.g. 1,19,31,42,80: mean ± std table and shaded plots")
    g.add_argument("--preset", choices=tuple(PRESETS), help="the paper's experiments: every hyperparameter set at once")

    def per(example: str) -> str:  # the example is one the flag's own parser accepts (a test checks)
        return f"; per algorithm: ALGO=VALUE,... (e.g. {example}; a bare value for the others)"

    examples = {"window": "sasg=5,lasg=20", "threshold_scale": "sasg=0.8,lasg=0.2", "window_sum": "sasg=D",
                "threshold_lr_lag": "sasg=1,lasg=0.4", "aggregate": "sasg=senders", "density": "sasg=0.05,sparse=0.02", "warmup": "sasg=100,sparse=50"}
    g = groups["trigger"]
    g.add_argument("--window", type=knob(int, examples["window"]),
                   help=f"D, trigger window and max skips in a row ({d.window}){per(examples['window'])}")
    g.add_argument(
        "--threshold-scale", type=knob(float, examples["threshold_scale"]),
        help=f"c, trigger threshold scale ({d.threshold_scale:g}; larger c: lower threshold, more uploads)"
             f"{per(examples['threshold_scale'])}",
    )
    g.add_argument(
        "--window-sum", type=knob(window_sum, examples["window_sum"]), metavar="{D-1,D}",
        help="how many recent server steps the lazy threshold sums: D-1 (default, the paper's formula) or D "
             f"(all D, a variant for matching the authors' code){per(examples['window_sum'])}",
    )
    g.add_argument(
        "--threshold-lr-lag", type=knob(float, examples["threshold_lr_lag"]), metavar="EPOCHS",
        help=f"the lazy threshold divides by the lr of EPOCHS epochs earlier ({d.threshold_lr_lag:g}: this "
             "round's lr; the authors' notebook lags 1, their distributed code 0.4); matters only with "
             f"--lr-decay-epochs{per(examples['threshold_lr_lag'])}",
    )

    g.add_argument(
        "--aggregate", type=knob(aggregate, examples["aggregate"]), metavar="{last,senders,rotating}",
        help=f"what the server steps by when lazy workers skip: last (default, the paper's: every worker's last "
             f"message stands), senders (the round's messages only, scaled to all M workers) or rotating (senders, "
             f"and worker k mod M uploads in round k, so that no round is empty)"
             f"{per(examples['aggregate'])}",
    )

    g = groups["compression"]
    g.add_argument("--density", type=knob(float, examples["density"]),
                   help=f"h, fraction of every parameter tensor (weights and biases apart) kept by top-k "
                        f"({d.density}){per(examples['density'])}")
    g.add_argument("--tensor-policy", type=tensor_policy, metavar="POLICY",
                   help=f"tensors top-k sends whole ({d.tensor_policy}: compress every tensor, the paper's; auto: "
                        "1-D tensors and tensors of at most 256 entries; or vectors, small=N, e.g. vectors,small=1024)")
    g.add_argument("--warmup", type=knob(int, examples["warmup"]), metavar="ROUNDS",
                   help=f"dense rounds before the algorithm starts ({d.warmup}: none, the paper's)"
                        f"{per(examples['warmup'])}")

    g = groups["evaluation"]
    g.add_argument("--eval-every", type=numeric(int), help=f"evaluate every N iterations ({d.eval_every})")
    g.add_argument(
        "--target-acc", type=numeric(float),
        help="target test accuracy in percent (default: SGD's final accuracy - 0.5; none when sgd is not run)",
    )
    g.add_argument("--target-metric", choices=("top1", "top5"), help="which accuracy the target is on (top1)")

    g = groups["output"]
    g.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<command>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder (only once the new one is complete)")
    g.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")
    g.add_argument("--quiet", action="store_true", help="no progress bar or table")
    g.add_argument("--log-every", type=numeric(float), metavar="SECONDS",
                   help="when stderr is not a terminal (a batch log, nohup): a progress line every SECONDS "
                        "with iteration, uploads, bits and accuracy (60; 0: none)")
    g.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                   help="also log accuracy, loss, uploads and bits to TensorBoard in DIR "
                        "(needs the tensorboard package: pip install 'sasg[tensorboard]')")
    g = groups["compression"]
    g.add_argument("--codec", type=codec_arg, help=codec_help())
    add_plugin_flag(p)
    return groups


def codec_help() -> str:
    """``--codec``'s help, its lists read from the registry (what ``sasg list`` shows)."""
    from ..core import REGISTRIES

    names = lambda kind: ", ".join(REGISTRIES[kind].names())  # noqa: E731
    return (
        "how messages become bytes; bits are 8 x those bytes. Default: natural, each algorithm's own "
        "(paper32 for sgd, sparse, lasg, sasg and the presets: int32 index + 32-bit value, the paper's "
        f"count; {own_codecs()}). Codecs: "
        f"{names('codec')}, or INDEX+VALUE such as rice+sign with index codes {names('index')} and "
        f"value formats {names('value')}; a dense algorithm uses the value format alone. Per "
        "algorithm: sparse=rice+sign,sasg=rice+sign (a bare name for the others)"
    )


def own_codecs() -> str:
    """``elias for qsgd, sign for sign, ...``: the registered compressors whose natural codec is
    not paper32 (see sasg.core.natural)."""
    from ..core import REGISTRIES
    from ..core.natural import PAPER_CODEC, natural_codec

    own = ((name, natural_codec(f"always+{name}")) for name in REGISTRIES["compressor"].names())
    return ", ".join(f"{codec} for {name}" for name, codec in own if codec != PAPER_CODEC) or "none"


def add_checkpoint_flags(p) -> None:
    """``sasg run`` / ``sasg compare``: save every run as it goes, and continue after a crash."""
    g = p.add_argument_group("checkpoints", "continue a long run after a crash or a preemption")
    g.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="save each run here (seed<S>-<algorithm>-iter<K>.pt, the last two kept, and "
                        "seed<S>-<algorithm>-done.pt when it finishes)")
    g.add_argument("--checkpoint-every", type=numeric(int), default=0,
                   help="checkpoint every N iterations (0: only finished runs; needs --checkpoint-dir)")
    g.add_argument("--resume", action="store_true",
                   help="keep the finished runs in --checkpoint-dir and continue the interrupted one "
                        "bit-exactly; the run folder equals an uninterrupted run's but for timings")


def check_checkpoints(args, config, seeds) -> "Checkpoints | None":
    """The checkpoint flags of run/compare, checked before anything runs."""
    from ..config import MAX_ROUNDS
    from ..distributed.launcher import check_checkpoint_dir
    from ..run_loop import Checkpoints, has_checkpoints
    from ..validation import integer

    every = integer(args.checkpoint_every, "--checkpoint-every", ge=0, le=MAX_ROUNDS,
                    fix="e.g. --checkpoint-every 500", error=ConfigError)
    if args.checkpoint_dir is None:
        if every or args.resume:
            flag = "--resume" if args.resume else "--checkpoint-every"
            raise ConfigError(f"{flag} needs --checkpoint-dir FOLDER (where the checkpoints are kept)")
        return None
    check_checkpoint_dir(args.checkpoint_dir, every=1)
    if args.resume and not has_checkpoints(args.checkpoint_dir, seeds, config.algorithms):
        raise ConfigError(
            f"no checkpoint found in {args.checkpoint_dir} for these runs; drop --resume to start afresh, "
            "or pass the --checkpoint-dir (and --seed/--algos) of the run to continue"
        )
    return Checkpoints(Path(args.checkpoint_dir), every, bool(args.resume))


LOG_EVERY_S = 60.0  # progress lines in a batch log: often enough to see a run move, rarely enough to read


def make_watchers(args) -> list:
    """Progress lines (only where stderr is no terminal: there the bar shows) and TensorBoard."""
    from ..report.live import ProgressLines, TensorBoardLog
    from ..validation import number

    every = LOG_EVERY_S if getattr(args, "log_every", None) is None else args.log_every
    number(every, "--log-every", ge=0, le=86400, unit="seconds", fix="e.g. --log-every 60", error=ConfigError)
    watchers = []
    if every and not args.quiet and not sys.stderr.isatty():
        watchers.append(ProgressLines(every))
    if getattr(args, "tensorboard", None) is not None:
        watchers.append(TensorBoardLog(args.tensorboard))
    return watchers


def add_plugin_flag(p) -> None:
    p.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE (a .py file, or an import path on PYTHONPATH: the current folder is not searched "
             "unless PYTHONPATH=.) first: its registered members can then be named in --algo/--algos; "
             "repeatable or comma-separated; also $SASG_PLUGINS",
    )


ALGO_HELP = (
    "an alias (sgd, sparse, lasg, sasg) or a composition TRIGGER+COMPRESSOR[+MEMORY] of registered "
    "members, e.g. wk2+topk (= sasg); `sasg list` shows them"
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sasg",
        description="Communication-efficient distributed SGD: SASG and its baselines, simulated with exact bit counts.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"sasg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    run = sub.add_parser("run", help="train with one algorithm", description="Train with one algorithm and write a run folder.")
    run.add_argument("--algo", required=True, type=str.lower, help=ALGO_HELP)
    add_training_flags(run)
    add_checkpoint_flags(run)
    cmp_ = sub.add_parser(
        "compare", help="run several algorithms on one setting",
        description="Run several algorithms on the same data and seed; write summary.json, metrics.csv, plots and report.md.",
    )
    cmp_.add_argument("--algos", type=algo_list, default=ALGORITHMS,
                      help=f"comma-separated, each {ALGO_HELP} (default: sgd,sparse,lasg,sasg)")
    add_training_flags(cmp_)
    add_checkpoint_flags(cmp_)
    add_launch_subparser(sub, add_training_flags, ALGO_HELP)
    listing = sub.add_parser("list", help="list the registered triggers, compressors, memories, codecs and aliases",
                             description="Every registered member, one line each: kind, name, description.")
    listing.add_argument("--verbose", "-v", action="store_true",
                         help="also each member's optional capabilities (sasg.core.capabilities), one line under it")
    add_plugin_flag(listing)
    return parser


def list_members(args) -> int:
    from ..core import listing
    from ..plugins import load_plugins

    load_plugins(args.plugin)
    rows = listing()
    width = max(len(name) for _, name, _ in rows)
    for kind, name, description in rows:
        print(f"{kind:<10}  {name:<{width}}  {description}")
        if args.verbose and kind in ("trigger", "compressor", "memory"):
            print(f"{'':<10}  {'':<{width}}  capabilities: {member_capabilities(kind, name)}")
    return 0


def member_capabilities(kind: str, name: str) -> str:
    """A registered member's optional capabilities in one line (a plug-in that declares none and
    cannot be built on a small layout: why not)."""
    from ..core import REGISTRIES
    from ..core.capabilities import describe
    from ..core.declared import capabilities_of

    try:
        return describe(capabilities_of(REGISTRIES[kind].get(name)))
    except Exception as e:  # an older plug-in's member, built to read them, refused
        return f"unknown ({type(e).__name__}: {e})"


def execute(args: argparse.Namespace) -> int:
    import json

    from ..lifecycle.destination import check_destination, check_separate_folders, default_run_dir
    from ..lifecycle.signals import StopCheck
    from ..plugins import load_plugins
    from ..run_command import run_to_folder
    from ..threads import use_threads

    plugins = load_plugins(args.plugin)
    if args.seeds:
        check_seeds(args.seeds)
    config = config_from_args(args).validate()
    seeds = list(args.seeds) if args.seeds else [config.seed]
    settings = {**resolved(config, seeds), **use_threads(args.threads)}
    if plugins:
        settings["plugins"] = plugins
    if args.dry_run:
        print(json.dumps(settings, indent=2))
        return 0
    out = args.out or default_run_dir(args.command)
    check_separate_folders(out, checkpoint_dir=args.checkpoint_dir, tensorboard=args.tensorboard)
    check_destination(out, args.overwrite)
    checkpoints = check_checkpoints(args, config, seeds)
    # StopCheck: a SIGTERM whose exit Python dropped (see stop_if_signalled) still stops the run.
    watchers = [*make_watchers(args), StopCheck()]
    written, summary = run_to_folder(config, seeds, out, args.overwrite, settings, progress=not args.quiet,
                                     checkpoints=checkpoints, watchers=watchers)
    announce(out, written, summary, args.quiet)
    failed = [r["algorithm"] for r in summary["records"] if r.get("failed")]
    if failed:  # the folder keeps them all, but a script must not take this run for a clean one
        print(f"sasg: error: {', '.join(failed)} failed (see the notes); the other results are in the run folder",
              file=sys.stderr)
        return 1
    if any(getattr(w, "failed", None) for w in watchers):  # said in its line; the run folder is written
        return 1
    return 0


def announce(asked: Path, written: Path, summary: dict, quiet: bool) -> None:
    """After a run folder is written: where it went (and why not where asked), and the table."""
    from ..report import ratio_lines, text_table
    from ..report.table import target_note

    if written != asked:
        print(f"sasg: note: {asked} was filled by another run meanwhile; this run is in {written}", file=sys.stderr)
    if not quiet:
        print(text_table(summary["records"]))
        for line in ratio_lines(summary["vs_sgd"]):
            print(line)
        if target_note(summary):
            print(f"note: {target_note(summary)}")
    print(f"run folder: {written}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return list_members(args)
        if args.command == "launch":
            from .launch import launch_main

            return launch_main(args, sys.argv[1:] if argv is None else list(argv))
        from ..lifecycle.signals import exit_on_sigterm

        # A scheduler's kill cleans up like Ctrl-C: no half-written folder left. (Not for launch:
        # torchrun's agent in this process handles SIGTERM for its workers itself.)
        exit_on_sigterm()
        from ..sim import retain_freed_memory

        retain_freed_memory()  # process-wide, so the command line opts in (see sasg.sim.allocator)
        return execute(args)
    except ConfigError as e:
        print(f"sasg: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        # Loader and partition errors name the file or setting and the fix; no traceback.
        print(f"sasg: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from ..lifecycle.checkpoint import CheckpointWriteError  # torch: imported only when needed

        if not isinstance(e, CheckpointWriteError):
            raise
        # Disk full or unwritable: the finished runs' results are in --checkpoint-dir already.
        print(f"sasg: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # e.g. a download without internet: the message lists what was tried and the fix.
        print(f"sasg: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sasg: interrupted; no run folder written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
