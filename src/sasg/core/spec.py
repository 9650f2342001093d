"""One validated algorithm spec, shared by the config, the CLI, ``sasg launch`` and the optimizer.

An algorithm is named by a registered alias (``sgd``, ``sparse``, ``lasg``, ``sasg``) or written
as a composition ``TRIGGER+COMPRESSOR[+MEMORY]`` of registered members (``wk2+topk`` is
``sasg``; without a memory the compressor's ``default_memory`` is used). Its numeric knobs are
:class:`AlgorithmSettings`; every algorithm checks all of them, also those it ignores, so a typo
fails the same way whichever algorithm it was written for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral

from .aggregate import check_aggregate
from .algorithm import Algorithm
from .capabilities import check_member
from .layout import Layout
from .registry import ALIASES, REGISTRIES
from .tensor_policy import check_tensor_policy, whole_segments
from .triggers.lazy import check_threshold_scale, check_window, check_window_sum

# The knobs an algorithm takes; `sasg compare` accepts each per algorithm (`--density sasg=0.05`).
KNOBS = ("density", "window", "threshold_scale", "window_sum", "threshold_lr_lag", "tensor_policy", "warmup",
         "aggregate")
# Windows above this would make the server keep more squared steps than any run has rounds.
MAX_WINDOW = 10**7
# A lag of the threshold's lr, in epochs: a run is at most 1e8 rounds (config.MAX_ROUNDS), so at
# most 1e8 epochs; a lag beyond the run's length just keeps the initial lr in the threshold.
MAX_THRESHOLD_LR_LAG = 1e8
# Dense warm-up rounds: at most a run's length (config.MAX_ROUNDS).
MAX_WARMUP = 10**8


@dataclass(frozen=True)
class AlgorithmSettings:
    """The algorithms' knobs: density ``h`` (top-k keeps ``max(1, floor(h*d_s))`` of every
    tensor), window ``D`` and threshold scale ``c`` (the lazy rule), and two variants of the lazy
    threshold: ``window_sum`` (``"D-1"``: thr_k sums the last D - 1 server steps, ``"D"``: the
    last D) and ``threshold_lr_lag`` (epochs by which the threshold's lr lags the schedule; 0:
    the lr of the round itself). Two settings for a practitioner's job, both off by default (the
    paper's choices): ``tensor_policy`` (which tensors top-k sends whole,
    :mod:`sasg.core.tensor_policy`) and ``warmup`` (the first rounds are dense: every worker sends
    its whole gradient, :class:`sasg.engine.RoundEngine`). ``aggregate``: what the server steps
    by when workers skip (``"last"``: every worker's last message, the paper's; ``"senders"``: the
    round's messages scaled to M workers; ``"rotating"``: the same, worker k mod M uploading in
    round k; :mod:`sasg.core.aggregate`)."""

    density: float = 0.01
    window: int = 10
    threshold_scale: float = 2.0
    window_sum: str = "D-1"
    threshold_lr_lag: float = 0.0
    tensor_policy: str = "all"
    warmup: int = 0
    aggregate: str = "last"

    def validate(self) -> "AlgorithmSettings":
        d = self.density
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise ValueError(f"density must be a number, got {d!r}; e.g. --density 0.01 for 1 %")
        if not (math.isfinite(d) and 0 < d <= 1):
            raise ValueError(f"density must be in (0, 1], got {d}; e.g. --density 0.01 for 1 %")
        try:
            window = check_window(self.window)
        except ValueError as e:
            raise ValueError(f"{e}; e.g. --window 10") from None
        if window > MAX_WINDOW:
            raise ValueError(f"window D must be at most {MAX_WINDOW}, got {window}; e.g. --window 10")
        try:
            c = check_threshold_scale(self.threshold_scale)
        except ValueError as e:
            raise ValueError(f"{e}; e.g. --threshold-scale 2") from None
        try:
            window_sum = check_window_sum(self.window_sum)
        except ValueError as e:
            raise ValueError(f"{e}; e.g. --window-sum D-1") from None
        lag = self.threshold_lr_lag
        if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not (math.isfinite(lag) and lag >= 0):
            raise ValueError(
                f"threshold lr lag must be a finite number of epochs >= 0, got {lag!r}; e.g. --threshold-lr-lag 1"
            )
        if lag > MAX_THRESHOLD_LR_LAG:
            raise ValueError(
                f"threshold lr lag must be at most {MAX_THRESHOLD_LR_LAG:g} epochs, got {lag:g}; "
                "e.g. --threshold-lr-lag 1"
            )
        try:
            policy = check_tensor_policy(self.tensor_policy)
        except ValueError as e:
            raise ValueError(f"{e}; e.g. --tensor-policy auto") from None
        w = self.warmup
        if isinstance(w, bool) or not isinstance(w, Integral) or not 0 <= w <= MAX_WARMUP:
            raise ValueError(f"warmup must be a whole number of dense rounds from 0 to {MAX_WARMUP}, got {w!r}; "
                             "e.g. --warmup 100")
        try:
            aggregate = check_aggregate(self.aggregate)
        except ValueError as e:
            raise ValueError(f"{e}; e.g. --aggregate senders") from None
        return AlgorithmSettings(float(d), window, c, window_sum, float(lag), policy, int(w), aggregate)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AlgorithmSpec:
    """A parsed and validated algorithm: its name as given, its members and its settings."""

    name: str
    trigger: str
    compressor: str
    memory: str
    settings: AlgorithmSettings

    @classmethod
    def parse(cls, name: str, settings: AlgorithmSettings | None = None) -> "AlgorithmSpec":
        key = str(name).strip().lower()
        settings = (settings or AlgorithmSettings()).validate()
        composition = ALIASES[key][0] if key in ALIASES else key
        parts = [p.strip() for p in composition.split("+")]
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(_unknown(name))
        trigger, compressor = parts[0], parts[1]
        for kind, member in (("trigger", trigger), ("compressor", compressor)) + (
            (("memory", parts[2]),) if len(parts) == 3 else ()
        ):
            if member not in REGISTRIES[kind]:
                raise ValueError(_unknown(name, f"{member!r} is no registered {kind}"))
        memory = parts[2] if len(parts) == 3 else None
        return cls(key, trigger, compressor, memory or "", settings)

    @property
    def composition(self) -> str:
        return "+".join(p for p in (self.trigger, self.compressor, self.memory) if p)

    def build(self, layout: Layout, codec: str = "paper32") -> Algorithm:
        """The members for a model ``layout``; messages priced and encoded by ``codec``. Each
        member is checked against the capabilities its registration declares."""
        s = self.settings
        caps = {}  # each member's capabilities: as declared, else as the member says
        compressor = _built(REGISTRIES["compressor"].get(self.compressor), layout, s, caps)
        if any(whole_segments(layout, s.tensor_policy)) and not caps["compressor"]["honours_tensor_policy"]:
            raise ValueError(
                f"algorithm {self.name!r}: the compressor {self.compressor!r} does not send tensors whole, so the "
                f"tensor policy {s.tensor_policy!r} cannot apply to it; use --tensor-policy all, or a compressor "
                "that honours it (topk, identity)"
            )
        trigger = _built(REGISTRIES["trigger"].get(self.trigger), layout, s, caps)
        # No memory written: the trigger's default if it reads a memory's state (clag: ef21),
        # else the compressor's (as sasg.core.declared.default_memory says).
        memory_name = (self.memory or caps["trigger"]["default_memory"] or caps["compressor"]["default_memory"]
                       or "none")
        if s.warmup and memory_name not in ("ef", "none"):
            raise ValueError(f"algorithm {self.name!r}: a dense warm-up runs through the error memory ef or none, "
                             f"not {memory_name!r} (its server keeps state of its own); use --warmup 0")
        return Algorithm(
            name=self.name,
            trigger=trigger,
            compressor=compressor,
            memory=_built(REGISTRIES["memory"].get(memory_name), layout, s, caps),
            codec=build_codec(codec, layout, s),
            warmup=s.warmup,
            aggregate=s.aggregate,
            capabilities=caps,
        )


def _built(entry, layout: Layout, settings: AlgorithmSettings, caps: dict):
    """The member of ``entry`` for ``layout``, refused where it breaks its declared capabilities;
    its capabilities go into ``caps`` under its kind."""
    member = entry.factory(layout, settings)
    caps[entry.kind] = check_member(entry, member)
    return member


def _unknown(name: str, why: str = "") -> str:
    triggers, compressors = REGISTRIES["trigger"].names(), REGISTRIES["compressor"].names()
    return (
        f"unknown algorithm {name!r}{': ' + why if why else ''}; use one of {', '.join(ALIASES)} or "
        f"TRIGGER+COMPRESSOR[+MEMORY] with triggers {', '.join(triggers)}, compressors "
        f"{', '.join(compressors)}, memories {', '.join(REGISTRIES['memory'].names())} "
        "(see `sasg list`; --plugin MODULE adds members)"
    )


def build_codec(name: str, layout: Layout, settings: AlgorithmSettings | None = None):
    """A registered codec (``paper32``) or a composite ``INDEX+VALUE`` / ``VALUE`` of registered
    index codes and value formats (see ``sasg list``)."""
    key = str(name).strip().lower()
    if key in REGISTRIES["codec"]:
        return REGISTRIES["codec"].get(key).factory(layout, settings or AlgorithmSettings())
    from .codecs.composite import make_codec

    try:
        return make_codec(key, layout, settings)
    except ValueError as e:
        codecs = ", ".join(REGISTRIES["codec"].names())
        indices, values = ", ".join(REGISTRIES["index"].names()), ", ".join(REGISTRIES["value"].names())
        raise ValueError(
            f"unknown codec {name!r} ({e}); use {codecs}, INDEX+VALUE or VALUE with index codes {indices} "
            f"and value formats {values} (see `sasg list`)"
        ) from None


def check_codec(name: str) -> str:
    """``name`` lower-cased, if it names a codec (else a ValueError that lists the choices)."""
    key = str(name).strip().lower()
    build_codec(key, Layout([("probe", (8,))]))
    return key


def make_algorithm(
    name: str, layout: Layout, density: float = 0.01, window: int = 10, c: float = 2.0, codec: str = "paper32",
    window_sum: str = "D-1",
) -> Algorithm:
    """Build algorithm ``name`` (alias or composition) for a parameter layout. (A threshold lr lag
    is the runner's: it passes the lagged lr to :meth:`sasg.engine.RoundEngine.step`.)"""
    settings = AlgorithmSettings(density, window, c, window_sum)
    return AlgorithmSpec.parse(name, settings).build(layout, check_codec(codec))



