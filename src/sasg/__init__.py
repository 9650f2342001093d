"""sasg: communication-efficient distributed SGD (SASG and its baselines).

Quick start::

    import sasg
    cfg = sasg.RunConfig(algorithms=("sgd", "sasg"), epochs=2).validate()
    results = sasg.compare(cfg)              # {name: RunResult}
    for name, r in results.items():
        print(name, r.history[-1]["test_acc"], r.ledger.totals())
"""

from .config import ConfigError, RunConfig
from .core import ALGORITHMS, make_algorithm
from .data import load_dataset
from .sim import RunResult, Simulator

__version__ = "0.1.0"


def compare(config: RunConfig, data=None, progress: bool = False) -> dict[str, RunResult]:
    """Run every algorithm of ``config.algorithms`` on the same data and seed."""
    from .experiment import run_algorithms

    return run_algorithms(config, data=data, progress=progress)


def __getattr__(name: str):
    # ``sasg.optim``, ``sasg.distributed`` and ``sasg.ddp`` load on first use (they import
    # torch.distributed), so ``import sasg; sasg.optim.SASG(...)`` works without importing them up front.
    if name in ("optim", "distributed", "ddp"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sasg' has no attribute {name!r}")


__all__ = [
    "ALGORITHMS",
    "ConfigError",
    "RunConfig",
    "RunResult",
    "Simulator",
    "compare",
    "load_dataset",
    "make_algorithm",
    "__version__",
]
