"""Per-iteration record of communication: uploads, skips and bits, uplink and downlink apart."""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def load_state_dict(self, state: dict) -> None:
        self.uploads = list(state["uploads"])
        self.bits_up = list(state["bits_up"])
        self.bits_down = list(state["bits_down"])
        self.bits_flags = list(state["bits_flags"])
        self.num_workers = int(state["num_workers"])
