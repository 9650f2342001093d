"""Run configuration with validation that names the problem and the fix.

Defaults are the SASG paper's MNIST setting: M = 10 workers, batch 10 per worker, lr 0.05 on the
mean of the gradients (the paper's alpha = 0.005 on their sum: alpha = lr / M), density 1 %,
window D = 10, threshold scale c = 2, 20 epochs, evaluation every 10 iterations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import partial

from .core import ALGORITHMS, KNOBS, AlgorithmSettings, AlgorithmSpec
from .core.natural import NATURAL, PAPER_CODEC, natural_codec, resolve_codec
# MAX_SEED (seeds as numpy takes them) lives in sasg.validation; sasg.config.MAX_SEED stays.
from .validation import MAX_ROUNDS, MAX_SEED, ConfigError, choice, fail, integer, number, optional, seed  # noqa: F401

# Upper bounds of the numeric settings, checked by RunConfig.validate() before anything runs. Each
# lies far above any real experiment (the paper: M = 10 workers, batches of 10..128, lr <= 0.1,
# runs of at most ~1e5 rounds), so only a typo or a nonsense value (1e300) meets one: refused here
# in one line instead of overflowing to NaN/inf, or exhausting memory, hours into a run.
# lr: real ones are <= ~1; above 1e4 a single step lr * gradient heads for float32's 3.4e38.
MAX_LR = 1e4
# Workers: each simulated worker holds model-sized state (error memory, last gradient); 1e5 is
# 1e4 x the paper's M = 10 and already beyond any machine's memory for a real model.
MAX_WORKERS = 100_000
# Batch size per worker: more than any data set here holds (60 000 training samples).
MAX_BATCH_SIZE = 1_000_000
# Evaluation interval: anything above MAX_ROUNDS already means "evaluate at the end only".
MAX_EVAL_EVERY = 10**9
# The threshold scale c has no bound of its own: a larger c only lowers the lazy threshold towards
# 0 (every round uploads), and c * M * lr overflowing to inf gives exactly 0, so no c can break a run.
# Dirichlet beta: from ~1e3 on the split is the iid one for all purposes; 1e6 leaves room for
# sweeps, and larger concentrations only test the gamma sampler's precision.
MAX_BETA = 1e6
# Label shards per worker: more than the training samples of any data set here (60 000).
MAX_SHARDS_PER_WORKER = 10**6


def _probe_layout():
    from .core import Layout

    return Layout([("weight", (4, 4)), ("bias", (4,))])


def resolve_device(device) -> str:
    """``device`` normalized (``" CUDA "`` -> ``"cuda"``), with ``"auto"`` made concrete: ``"cuda"``
    when a CUDA device is available, else ``"cpu"``. Other names are returned as given; ``validate``
    checks them."""
    name = str(device).strip().lower()
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# The algorithms' knobs default to AlgorithmSettings' values (written once, there).
_KNOB = AlgorithmSettings()


@dataclass
class RunConfig:
    algorithms: tuple[str, ...] = ALGORITHMS
    dataset: str = "mnist5k"
    model: str = "fc"
    workers: int = 10
    batch_size: int = 10
    lr: float = 0.05
    density: float = _KNOB.density
    window: int = _KNOB.window
    threshold_scale: float = _KNOB.threshold_scale
    # Variants of the lazy threshold (the authors' code, to match published numbers): how many
    # recent server steps it sums ("D-1", or "D"), and by how many epochs its lr lags the schedule
    # (0: the round's own lr; matters only with --lr-decay-epochs).
    window_sum: str = _KNOB.window_sum
    threshold_lr_lag: float = _KNOB.threshold_lr_lag
    # For a practitioner's job (off by default: the paper's choices): which tensors top-k sends
    # whole (all: none; auto: 1-D and small ones; sasg.core.tensor_policy) and how many dense
    # rounds come first.
    tensor_policy: str = _KNOB.tensor_policy
    warmup: int = _KNOB.warmup
    # What the server steps by when lazy workers skip: "last" (every worker's last message, the
    # paper's), "senders" (the round's messages scaled to M) or "rotating" (senders, and worker
    # k mod M uploads in round k: no empty round); sasg.core.aggregate.
    aggregate: str = _KNOB.aggregate
    epochs: float = 20
    eval_every: int = 10
    seed: int = 0
    target_acc: float | None = None
    backend: str = "auto"
    device: str = "auto"  # auto: cuda when available, else cpu (validate() resolves it)
    # How messages become bytes (the ledger counts 8 x those bytes): paper32 (int32 index + 32-bit
    # value, the paper's count), INDEX+VALUE (e.g. rice+sign) or VALUE (dense). `sasg list`.
    # "natural": each algorithm's own (paper32 for the paper's four; sasg.core.natural).
    codec: str = NATURAL
    # paper-scale experiments
    data_dir: str | None = None
    download: bool = False
    partition: str = "iid"  # iid | dirichlet | shards
    beta: float = 0.5  # Dirichlet concentration for partition="dirichlet"
    shards_per_worker: int = 2  # label shards per worker for partition="shards"
    lr_decay_epochs: tuple[float, ...] = ()
    lr_decay_factor: float = 0.1
    augment: str = "none"  # none | crop-flip | crop-flip-rotate
    target_metric: str = "top1"  # top1 | top5: which test accuracy the target is on
    iterations: int | None = None  # overrides epochs when set
    # Per-algorithm values of the algorithm knobs (density, window, threshold_scale, window_sum,
    # threshold_lr_lag) and of the codec, e.g. {"sasg": {"threshold_scale": 0.8, "codec":
    # "rice+sign"}}; an algorithm not named here takes the fields above.
    per_algorithm: dict = field(default_factory=dict)
    # The paper preset these values came from, as a record (config.json, report). Setting it
    # alone changes no value: RunConfig.from_preset(name, **overrides) applies one.
    preset: str | None = None

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "RunConfig":
        """The paper experiment ``name`` (see :mod:`sasg.presets`) with ``overrides`` on top, as
        ``sasg compare --preset NAME --flag ...`` builds it. Call :meth:`validate` on the result."""
        from .presets import preset

        try:
            values = preset(name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return cls(**{**values, **overrides, "preset": name})

    def settings_for(self, algorithm: str) -> AlgorithmSettings:
        """The knobs of ``algorithm``: its own values from ``per_algorithm``, else the shared ones."""
        own = self.per_algorithm.get(str(algorithm).strip().lower(), {})
        shared = {k: getattr(self, k) for k in KNOBS}
        return AlgorithmSettings(**{**shared, **{k: v for k, v in own.items() if k in KNOBS}})

    def codec_for(self, algorithm: str) -> str:
        """The codec of ``algorithm``: its own from ``per_algorithm``, else ``codec`` (after
        :meth:`validate`, ``natural`` is resolved into these: see :meth:`_resolve_natural`)."""
        return resolve_codec(self.per_algorithm.get(str(algorithm).strip().lower(), {}).get("codec", self.codec),
                             algorithm)

    @property
    def paper_alpha(self) -> float:
        """The paper's step size on the *sum* of worker gradients: alpha = lr / M."""
        return self.lr / self.workers

    def validate(self) -> "RunConfig":
        from .core.spec import check_codec
        from .data import DATASETS

        names = self.algorithms.split(",") if isinstance(self.algorithms, str) else self.algorithms
        algos = tuple(a.strip().lower() for a in names if a.strip())
        if not algos:
            raise ConfigError("no algorithm given; choose from " + ", ".join(ALGORITHMS) + " or a composition such as wk2+topk")
        if len(set(algos)) != len(algos):
            raise ConfigError(f"algorithm listed twice in {','.join(algos)}; list each once")
        self.algorithms = algos
        self.per_algorithm = _check_per_algorithm(self.per_algorithm)
        try:
            own = {}
            for a in algos:  # one validated spec per algorithm: members known, knobs in range
                spec = AlgorithmSpec.parse(a, self.settings_for(a))
                # Built once on a tiny layout: members that refuse each other (clag without ef21)
                # say so now, not after the algorithms before them in a compare have run.
                spec.build(_probe_layout())
                own[a] = spec.settings
            shared = AlgorithmSettings(**{k: getattr(self, k) for k in KNOBS}).validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # The threshold variants as config.json records them ("d-1" -> "D-1", a lag of 1 -> 1.0).
        self.window_sum, self.threshold_lr_lag = shared.window_sum, shared.threshold_lr_lag
        self.aggregate = shared.aggregate
        for a, settings in own.items():
            knobs = self.per_algorithm.get(a, {})
            knobs.update({k: getattr(settings, k) for k in ("window_sum", "threshold_lr_lag", "aggregate")
                          if k in knobs})
        decay = self.lr_decay_epochs
        decay = (decay,) if isinstance(decay, (int, float)) and not isinstance(decay, bool) else decay
        if isinstance(decay, (str, bytes)) or not hasattr(decay, "__iter__"):
            fail("lr decay epochs", "a number or a list of numbers", decay, "e.g. --lr-decay-epochs 20,30",
                 error=ConfigError)
        self.lr_decay_epochs = tuple(float(_decay_epoch(e)) for e in decay)
        if len(set(self.lr_decay_epochs)) != len(self.lr_decay_epochs):
            raise ConfigError(
                f"lr decay epochs list an epoch twice ({self.lr_decay_epochs}); list each once, e.g. --lr-decay-epochs 20,30"
            )
        for name, check in _field_checks():
            setattr(self, name, check(getattr(self, name)))
        if self.iterations is None:
            self._check_rounds()
        if DATASETS[self.dataset].needs_files and not self.data_dir:
            raise ConfigError(
                f"data set {self.dataset!r} loads from its published files; pass --data-dir FOLDER "
                "(add --download on a machine with internet)"
            )
        try:
            self._resolve_natural(algos)
            self.codec = check_codec(self.codec)
            for knobs in self.per_algorithm.values():
                if "codec" in knobs:
                    knobs["codec"] = check_codec(knobs["codec"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.device = resolve_device(self.device)
        import torch

        try:
            dev = torch.device(self.device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"--device {self.device} asked for, but no CUDA device is available; use --device cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"--device {self.device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                    f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
                )
        return self

    def _resolve_natural(self, algos) -> None:
        """``natural`` (the default codec) made concrete: an algorithm whose natural codec is not
        paper32 gets it in ``per_algorithm`` (so config.json shows what priced it), the shared
        ``codec`` becomes paper32. Afterwards every codec is a name ``check_codec`` knows."""
        natural = str(self.codec).strip().lower() == NATURAL
        for a in algos:
            own = self.per_algorithm.get(a, {})
            if str(own.get("codec", NATURAL if natural else "")).strip().lower() != NATURAL:
                continue
            codec = natural_codec(a)
            if codec != PAPER_CODEC or "codec" in own:
                self.per_algorithm.setdefault(a, {})["codec"] = codec
        if natural:
            self.codec = PAPER_CODEC

    def _check_rounds(self) -> None:
        """``epochs`` x rounds per epoch stays within :data:`MAX_ROUNDS` (an upper estimate of the
        rounds per epoch from the data set's training size; the split may drop a few samples)."""
        from .data import DATASETS

        size = DATASETS[self.dataset].train_size
        if size is None:
            return  # unknown until loaded; epochs <= MAX_ROUNDS is checked already
        per_epoch = max(1, size // (self.workers * self.batch_size))
        rounds = self.epochs * per_epoch
        if rounds > MAX_ROUNDS:
            raise ConfigError(
                f"epochs {self.epochs:g} make about {rounds:.3g} rounds ({per_epoch} per epoch: {self.dataset} with "
                f"{self.workers} workers x batch {self.batch_size}), and a run is at most 1e8 rounds; "
                f"e.g. --epochs {max(1, MAX_ROUNDS // per_epoch)} or fewer"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["algorithms"] = list(self.algorithms)
        d["lr_decay_epochs"] = list(self.lr_decay_epochs)
        d["paper_alpha"] = self.paper_alpha
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _check_per_algorithm(per: dict) -> dict:
    """``{algorithm: {knob: value}}`` with known knobs; names lower-cased."""
    if not isinstance(per, dict):
        raise ConfigError(f"per_algorithm must map algorithm names to {{knob: value}}, got {per!r}")
    out = {}
    for name, knobs in per.items():
        if not isinstance(knobs, dict):
            raise ConfigError(f"per_algorithm[{name!r}] must be a {{knob: value}} dict, got {knobs!r}")
        unknown = sorted(set(knobs) - set(KNOBS) - {"codec"})
        if unknown:
            raise ConfigError(
                f"per_algorithm[{name!r}]: unknown knob(s) {', '.join(unknown)}; knobs are {', '.join(KNOBS)}, codec"
            )
        out[str(name).strip().lower()] = dict(knobs)
    return out


# The settings RunConfig.validate() checks one by one: (field, its check), in the order they are
# checked. Each check takes the field's value and returns it normalized (a choice lower-cased) or
# raises ConfigError naming the setting, the bad value and a fix.
def _field_checks() -> tuple[tuple[str, object], ...]:
    from .data import AUGMENTATIONS, DATASETS, PARTITIONS
    from .models import MODELS
    from .presets import PRESETS

    def check(kind, name: str, fix: str, **bounds):
        return partial(kind, name=name, fix=fix, error=ConfigError, **bounds)

    rounds = "a run is at most 1e8 rounds"
    return (
        ("preset", partial(optional, check(choice, "preset", "e.g. --preset paper-mnist", choices=PRESETS))),
        ("dataset", check(choice, "dataset", "e.g. --dataset mnist5k", choices=DATASETS)),
        ("model", check(choice, "model", "e.g. --model fc", choices=sorted(MODELS))),
        ("workers", check(integer, "workers", "e.g. --workers 10", ge=1, limit=MAX_WORKERS)),
        ("batch_size", check(integer, "batch size", "e.g. --batch-size 10", ge=1, limit=MAX_BATCH_SIZE)),
        ("eval_every", check(integer, "eval interval", "e.g. --eval-every 10", ge=1, limit=MAX_EVAL_EVERY)),
        ("seed", partial(seed, fix="e.g. --seed 1", error=ConfigError)),
        ("lr", check(number, "lr", "e.g. --lr 0.05", gt=0, limit=MAX_LR, why="a larger step overflows float32")),
        # Every epoch is at least one round, so the limit holds whatever the data set.
        ("epochs", check(number, "epochs", "e.g. --epochs 20", gt=0, limit=MAX_ROUNDS, why=rounds)),
        ("target_acc", partial(optional, check(number, "target accuracy", "a percentage, e.g. --target-acc 90",
                                               ge=0, le=100))),
        ("backend", check(choice, "backend", "e.g. --backend auto", choices=("auto", "vmap", "loop"))),
        ("partition", check(choice, "partition", "e.g. --partition iid", choices=PARTITIONS)),
        ("beta", check(number, "Dirichlet beta", "e.g. --beta 0.5", gt=0, limit=MAX_BETA)),
        ("shards_per_worker", check(integer, "shards per worker", "e.g. --shards-per-worker 2", ge=1,
                                    limit=MAX_SHARDS_PER_WORKER)),
        ("lr_decay_factor", check(number, "lr decay factor", "e.g. --lr-decay-factor 0.1", gt=0, le=1)),
        ("augment", check(choice, "augment", "e.g. --augment none", choices=AUGMENTATIONS)),
        ("target_metric", check(choice, "target metric", "e.g. --target-metric top1", choices=("top1", "top5"))),
        ("iterations", partial(optional, check(integer, "iterations", "e.g. --iterations 1000", ge=1,
                                               limit=MAX_ROUNDS))),
    )


_decay_epoch = partial(number, name="lr decay epochs", gt=0, limit=MAX_ROUNDS, why="a run is at most 1e8 rounds",
                       fix="e.g. --lr-decay-epochs 20", error=ConfigError)
