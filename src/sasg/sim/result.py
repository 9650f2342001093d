"""What one algorithm's run produced (:class:`RunResult`): what ``sasg compare`` reports, plots
and keeps in a run folder."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..accounting import Ledger


@dataclass
class RunResult:
    """What one algorithm's run produced: eval history, per-round ledger and timings."""

    algorithm: str
    history: list[dict]
    ledger: Ledger
    train_seconds: float
    eval_seconds: float
    backend: str
    num_parameters: int
    theta: Tensor = field(repr=False)
    codec: str = "paper32"  # what made its bits (for a dense algorithm: the value format alone)
    biased: bool = False  # a lossy codec without a memory that sends the rounding error later
    # Set when the run stopped on an error (e.g. a member refusing non-finite values): what went
    # wrong, in one line. Its history and ledger stop at that round; `sasg compare` keeps the others.
    failed: str | None = None

    @property
    def wall_seconds(self) -> float:
        return self.train_seconds + self.eval_seconds

    @property
    def iters_per_second(self) -> float:
        return self.ledger.iterations / self.train_seconds if self.train_seconds > 0 else float("inf")

    def state_dict(self) -> dict:
        """Everything the run folder needs (a finished run that ``sasg compare --resume`` keeps)."""
        return {
            "algorithm": self.algorithm, "history": [dict(p) for p in self.history],
            "ledger": self.ledger.state_dict(), "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds, "backend": self.backend, "num_parameters": self.num_parameters,
            "theta": self.theta.clone(), "codec": self.codec, "biased": self.biased, "failed": self.failed,
        }

    @classmethod
    def from_state(cls, state: dict) -> "RunResult":
        ledger = Ledger()
        ledger.load_state_dict(state["ledger"])
        return cls(
            algorithm=state["algorithm"], history=[dict(p) for p in state["history"]], ledger=ledger,
            train_seconds=float(state["train_seconds"]), eval_seconds=float(state["eval_seconds"]),
            backend=state["backend"], num_parameters=int(state["num_parameters"]), theta=state["theta"],
            codec=state["codec"], biased=bool(state["biased"]), failed=state.get("failed"),
        )
