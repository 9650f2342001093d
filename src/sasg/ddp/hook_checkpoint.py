"""Checkpoints of the hook's state: what a rank saves beside its model and optimizer, checked
all or nothing on load. A mixin of :class:`sasg.ddp.HookState`."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..core.round_state import at_least, check_like, equal_to, part_name


class HookCheckpoint:
    def state_dict(self) -> dict:
        """This rank's state: plain tensors, ints, strings and lists (``torch.load(...,
        weights_only=True)`` reads it back). Save one per rank, beside the model and the optimizer."""
        engine = self.start().engine
        return {
            "algorithm": self.algorithm.name,
            "codec": self.codec,
            "settings": self._settings(),
            "parameters": self.index.describe(),
            "rounds": self.rounds,
            "bits_by_rank": list(self.transport.bits_by_rank),
            "engine": engine.state_dict(),
            "optimizer_link": self._link_state(),
        }

    def _link_state(self) -> dict:
        """What the hook keeps beside the user's optimizer (DGC's velocity, Adam's frozen moment)."""
        out: dict = {}
        if self.momentum is not None:
            out["velocity"] = self.momentum.velocity.clone()
        if self.variance is not None:
            out.update(self.variance.state_dict())
        out["compressed_round"] = self._compressed_round
        if self._scaling is not None:  # checks made before the first round, not yet on the ledger
            out["loss_scale_bits"] = self._scaling.pending_bits
        if self._clipper is not None:  # hook.clipped_rounds, which goes on across a resume as rounds does
            out["clipped_rounds"] = int(self._clipper.clipped)
        if self.algorithm.lazy:  # theta^k: the first round after a resume measures the real step from it
            out["theta"] = self._theta.clone()
            out["theta_round"] = self._theta_round
        return out

    def check_state_dict(self, state, where: str = "") -> None:
        """One ``ValueError`` naming the first part of ``state`` that does not fit this hook (other
        algorithm, codec, settings, model, number of ranks, or another rank's state). Changes nothing."""
        engine = self.start().engine
        check_like(state, {
            "algorithm": self.algorithm.name,
            "codec": self.codec,
            "settings": self._check_settings,
            "parameters": equal_to(self.index.describe(), " (saved for another model?)"),
            "rounds": at_least(0),
            "bits_by_rank": [at_least(0)] * engine.num_workers,
            "engine": engine.check_state_dict,
            "optimizer_link": self._check_link,
        }, where)
        if state["rounds"] < state["engine"]["server"]["iteration"]:
            raise ValueError(
                f"state part {part_name(where, 'rounds')!r} is {state['rounds']}, fewer than the engine's rounds"
            )

    def _check_link(self, saved, where: str) -> None:
        mine = self._link_state()
        # A state saved before the hook measured real steps has no theta: the first round then
        # keeps the engine's own step in the window.
        optional = {"theta", "theta_round", "loss_scale_bits", "clipped_rounds"}
        allowed = set(mine) | {"loss_scale_bits", "clipped_rounds"}  # (a job may resume without its scaler, clipping)
        if not isinstance(saved, Mapping) or not set(mine) - optional <= set(saved) <= allowed:
            raise ValueError(f"state part {where!r} was saved with another optimizer link ({', '.join(sorted(mine))} "
                             "expected): register the hook with the same optimizer and settings")
        velocity = saved.get("velocity")
        if velocity is not None and (not isinstance(velocity, Tensor) or velocity.shape != mine["velocity"].shape):
            raise ValueError(f"state part {part_name(where, 'velocity')!r} does not fit this model")
        theta = saved.get("theta")
        if theta is not None and (not isinstance(theta, Tensor) or theta.shape != mine["theta"].shape):
            raise ValueError(f"state part {part_name(where, 'theta')!r} does not fit this model")
        for key, what in (("loss_scale_bits", "a count of bits"), ("clipped_rounds", "a count of rounds")):
            count = saved.get(key, 0)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"state part {part_name(where, key)!r} must be {what}")
        if "theta" in saved and not isinstance(saved.get("theta_round"), int):
            raise ValueError(f"state part {part_name(where, 'theta_round')!r} must be an integer")

    def _check_settings(self, saved, where: str) -> None:
        mine = self._settings()
        if not isinstance(saved, Mapping) or set(saved) != set(mine):
            raise ValueError(f"state part {where!r} is not this hook's settings ({', '.join(mine)})")
        differ = [f"{k} {saved[k]!r} (saved) vs {mine[k]!r}" for k in mine if saved[k] != mine[k]]
        if differ:
            names = ", ".join(f"{k}={saved[k]!r}" for k in mine if saved[k] != mine[k])
            raise ValueError(f"the hook state was saved with other settings: {', '.join(differ)}; register the "
                             f"hook as it was saved ({names})")

    def load_state_dict(self, state: dict) -> None:
        """All or nothing: :meth:`check_state_dict` first, then every part."""
        self.check_state_dict(state)
        self.engine.load_state_dict(state["engine"])
        link = state["optimizer_link"]
        if self.momentum is not None:
            self.momentum.velocity.copy_(link["velocity"])
        if self.variance is not None:
            self.variance.load_state_dict(link)
        self._compressed_round = bool(link["compressed_round"])
        if self._scaling is not None:
            self._scaling.pending_bits = int(link.get("loss_scale_bits", 0))
        if self._clipper is not None:
            self._clipper.clipped.fill_(int(link.get("clipped_rounds", 0)))
        if "theta" in link:
            self._theta.copy_(link["theta"])
            self._theta_round = int(link["theta_round"])
        else:
            self._theta_round = -1
        self.rounds = int(state["rounds"])
        self.transport.bits_by_rank = [int(b) for b in state["bits_by_rank"]]
        self._pending = []
