"""``sasg.optim.SASG``'s checkpoints: ``state_dict`` / ``load_state_dict`` (all or nothing) beside
``torch.optim``'s own state. A mixin of :class:`sasg.optim.SASG`."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import torch
from ..core.round_state import check_like, part_name
from .param_groups import _ADAPTIVE, _REFUSED, UPDATE_DEFAULTS, _check_group_keys, _check_update


class SASGCheckpoint:
    def state_dict(self) -> dict:
        """The usual optimizer state plus this rank's SASG state under ``"sasg"`` (error memory,
        anchor, staleness, the server replica: every worker's last message and the trigger window,
        the ledger). Parameters are the model's: save ``model.state_dict()`` beside it."""
        state = super().state_dict()
        state["sasg"] = {**self.engine.state_dict(), "settings": self._settings()}
        if self._velocity is not None:
            state["sasg"]["velocity"] = self._velocity.clone()
        if self._lag:  # the lrs the threshold will still look back to
            state["sasg"]["threshold_lrs"] = [[k, lr] for k, lr in self._lrs]
        return state

    def _settings(self) -> dict:
        s = self.spec.settings
        return {"density": s.density, "window": s.window, "c": s.threshold_scale, "window_sum": s.window_sum,
                "threshold_lr_lag": self._lag, "tensor_policy": s.tensor_policy, "warmup": s.warmup,
                "momentum_correction": self._velocity is not None, "aggregate": s.aggregate}

    def load_state_dict(self, state_dict: dict) -> None:
        """All or nothing: the whole state is checked first (the ``torch.optim`` part, the settings
        and every part of the SASG state: the worker's anchor, error memory and staleness, the
        server replica with the trigger's step window, the ledger, the generator); a state with a
        part missing or wrong is one ``ValueError`` naming it, and this optimizer is left as it was."""
        check_like(state_dict, {
            "state": self._check_state,  # torch.optim's per-parameter state: the momentum buffers
            "param_groups": [lambda saved, where, i=i: self._check_group(saved, where, i)
                             for i in range(len(self.param_groups))],
            "sasg": self._check_sasg,
        })
        state_dict = dict(state_dict)
        saved = state_dict.pop("sasg")
        engine = {k: v for k, v in saved.items() if k not in _NOT_ENGINE}
        mine = [{k: group[k] for k in UPDATE_DEFAULTS} for group in self.param_groups]
        super().load_state_dict(state_dict)  # checked: takes it whole
        for group, values in zip(self.param_groups, mine):
            for k, v in values.items():  # a state saved before a key existed keeps this optimizer's value
                group.setdefault(k, v)
        for g in range(len(self.param_groups)):
            bufs = [self.state.get(p, {}).get("momentum_buffer") for p in self._plist_of(g)]
            self._set_momentum(g, None if not bufs or bufs[0] is None else torch.cat([b.reshape(-1) for b in bufs]))
        self.engine._apply_state(engine)
        if self._velocity is not None:
            self._velocity.copy_(saved["velocity"])
        self._lrs = deque((int(k), float(lr)) for k, lr in saved.get("threshold_lrs", ()))

    def _check_sasg(self, saved, where: str) -> None:
        """The SASG part: the settings it was saved with (these, or a clear error), then the engine's."""
        _a_dict(saved, where)
        if "settings" not in saved:
            raise ValueError(f"state part {part_name(where, 'settings')!r} is missing (saved by another version?)")
        settings, mine = saved["settings"], self._settings()
        if isinstance(settings, Mapping):  # a state saved before the threshold variants: their defaults
            settings = {**_SETTINGS_BEFORE_VARIANTS, **settings}
        check_like(settings, {k: _a_str if isinstance(v, str) else False if isinstance(v, bool) else 0.0
                              for k, v in mine.items()},
                   part_name(where, "settings"))
        if settings != mine:
            differ = ", ".join(f"{k} {settings[k]} (saved) vs {mine[k]}" for k in mine if settings[k] != mine[k])
            raise ValueError(f"optimizer state was saved with other settings: {differ}; build SASG with the saved ones")
        if self._lag:  # (k, lr) pairs, oldest first
            lrs = saved.get("threshold_lrs")
            name = part_name(where, "threshold_lrs")
            if lrs is None:
                raise ValueError(f"state part {name!r} is missing (saved by another version?)")
            if not isinstance(lrs, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool)
                and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) for p in lrs
            ):
                raise ValueError(f"state part {name!r} must be a list of [step, lr] pairs")
        if self._velocity is not None:
            check_like(saved.get("velocity"), self._velocity, part_name(where, "velocity"))
        self.engine.check_state_dict({k: v for k, v in saved.items() if k not in _NOT_ENGINE}, where)

    def _check_group(self, group, where: str, index: int = 0) -> None:
        """The saved parameter group: this one's parameters (as many) and usable hyperparameters
        (one missing, from a state saved before it existed, is this optimizer's own). Keys that
        schedulers write (``initial_lr``, ``max_momentum``, ...) are kept; keys of other
        optimizers that SASG refuses (``maximize``, ``betas``, ...) are refused here too."""
        if not isinstance(group, Mapping) or "params" not in group or "lr" not in group:
            raise ValueError(f"state part {where!r} must be a parameter group with 'params' and 'lr'")
        mine = self.param_groups[index]
        check_like(group["params"], [0] * len(mine["params"]), part_name(where, "params"))
        for key in group:
            if key in _REFUSED or key in _ADAPTIVE:
                try:
                    _check_group_keys({key: None})
                except ValueError as e:
                    raise ValueError(f"state part {part_name(where, key)!r}: {e}") from None
        try:
            _check_update({**{k: mine[k] for k in UPDATE_DEFAULTS}, **group})
        except ValueError as e:
            raise ValueError(f"state part {part_name(where, getattr(e, 'key', ''))!r}: {e}") from None

    def _check_state(self, saved, where: str) -> None:
        """The per-parameter state: empty (no momentum buffer yet) or one ``momentum_buffer`` of
        the parameter's shape for each trained parameter, keyed by its index in the group."""
        _a_dict(saved, where)
        if not saved:
            return
        given = [p for group in self.param_groups for p in group["params"]]
        for key in saved:
            if key not in self._trained:
                raise ValueError(
                    f"state part {part_name(where, key)!r} is not the state of a parameter SASG trains "
                    "(frozen, empty or out of range: saved for another model?)"
                )
        # A group's buffer is one flat tensor: saved for all of its parameters or for none.
        start = 0
        for group in self.param_groups:
            indices = [i for i in range(start, start + len(group["params"])) if i in self._trained]
            start += len(group["params"])
            if not any(i in saved for i in indices):
                continue
            for i in indices:
                if i not in saved:
                    raise ValueError(
                        f"state part {part_name(where, i)!r} is missing: the momentum buffer is saved for "
                        "some parameters of its group, so it must be there for all of them"
                    )
                check_like(saved[i], {"momentum_buffer": given[i].detach()}, part_name(where, i))


# The settings a state saved before --window-sum, --threshold-lr-lag, the tensor policy, the warm-up
# and momentum correction existed was made with.
_SETTINGS_BEFORE_VARIANTS = {"window_sum": "D-1", "threshold_lr_lag": 0, "tensor_policy": "all", "warmup": 0,
                             "momentum_correction": False, "aggregate": "last"}
# The parts of the "sasg" state that are the optimizer's own, not the round engine's.
_NOT_ENGINE = ("settings", "threshold_lrs", "velocity")


def _a_str(saved, where: str) -> None:
    if not isinstance(saved, str):
        raise ValueError(f"state part {where!r} is {type(saved).__name__}, expected a string")


def _a_dict(saved, where: str) -> None:
    if not isinstance(saved, Mapping):
        raise ValueError(f"state part {where!r} is {type(saved).__name__}, expected a dict")
