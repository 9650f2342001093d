"""Per-iteration record of communication: uploads, skips and bits, uplink and downlink apart."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.round_state import at_least, check_like, counts


@dataclass
class Ledger:
    """Counts for each round; cumulative totals are derived, never stored twice."""

    uploads: list[int] = field(default_factory=list)
    bits_up: list[int] = field(default_factory=list)
    bits_down: list[int] = field(default_factory=list)
    bits_flags: list[int] = field(default_factory=list)
    num_workers: int = 0

    def record(self, uploads: int, bits_up: int, bits_down: int, bits_flags: int = 0) -> None:
        self.uploads.append(int(uploads))
        self.bits_up.append(int(bits_up))
        self.bits_down.append(int(bits_down))
        self.bits_flags.append(int(bits_flags))

    def add_up(self, bits: int) -> None:
        """Bits a runner sent in the latest round beside its messages (the DDP hook's averaged
        Adam second moments), on that round's uplink line."""
        if not self.bits_up:
            raise RuntimeError("no round recorded yet to add bits to")
        self.bits_up[-1] += int(bits)

    @property
    def iterations(self) -> int:
        return len(self.uploads)

    def totals(self, upto: int | None = None) -> dict:
        """Totals over the first ``upto`` rounds (all by default)."""
        n = self.iterations if upto is None else upto
        uploads = sum(self.uploads[:n])
        return {
            "iterations": n,
            "uploads": uploads,
            "skipped": n * self.num_workers - uploads,
            "bits_up": sum(self.bits_up[:n]),
            "bits_down": sum(self.bits_down[:n]),
            "bits_flags": sum(self.bits_flags[:n]),
        }

    def state_dict(self) -> dict:
        return {
            "uploads": list(self.uploads),
            "bits_up": list(self.bits_up),
            "bits_down": list(self.bits_down),
            "bits_flags": list(self.bits_flags),
            "num_workers": self.num_workers,
        }

    @staticmethod
    def check_state_dict(state, where: str = "ledger") -> None:
        """Raise a ``ValueError`` naming what is missing or wrong in ``state`` (a ledger's
        ``state_dict()``: four lists of counts >= 0, one entry per round); changes nothing."""
        check_like(state, {"uploads": counts, "bits_up": counts, "bits_down": counts, "bits_flags": counts,
                           "num_workers": at_least(0)}, where)
        lengths = {k: len(state[k]) for k in ("uploads", "bits_up", "bits_down", "bits_flags")}
        common = max(lengths.values(), key=list(lengths.values()).count)
        odd = next((k for k, n in lengths.items() if n != common), None)
        if odd is not None:
            raise ValueError(
                f"state part {where + '.' + odd!r} covers {lengths[odd]} rounds, the other lists of the "
                f"ledger {common}: its lists cover different numbers of rounds"
            )

    def load_state_dict(self, state: dict) -> None:
        self.check_state_dict(state)
        self.uploads = list(state["uploads"])
        self.bits_up = list(state["bits_up"])
        self.bits_down = list(state["bits_down"])
        self.bits_flags = list(state["bits_flags"])
        self.num_workers = int(state["num_workers"])
