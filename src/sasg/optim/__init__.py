"""Optimizer-style API for your own training loop: ``sasg.optim.SASG``."""

from .sasg import SASG

__all__ = ["SASG"]
