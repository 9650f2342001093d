import os

import pytest
import torch

from sasg import RunConfig
from sasg.data import make_synthetic


@pytest.fixture(scope="session")
def synth():
    return make_synthetic(n_train=240, n_test=120, num_features=12, num_classes=3, seed=1)


def small_config(**kw) -> RunConfig:
    base = dict(
        dataset="synthetic", model="fc", workers=4, batch_size=5, lr=0.2, density=0.1,
        window=3, threshold_scale=2.0, epochs=1, eval_every=4, seed=3,
        device="cpu",  # the fixtures' data lives on the CPU (the default, auto, picks a GPU where one is)
    )
    base.update(kw)
    return RunConfig(**base).validate()


def seeded_module(make, scale: float, seed: int = 0) -> torch.nn.Module:
    """``make()`` on the CPU, every parameter drawn from ``N(0, scale^2)`` by a generator seeded
    with ``seed``: built on the meta device first, since the layers' own initialisation would draw
    from the global RNG (which the fixture below checks is never touched)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        module = make()
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def rank_batch(step: int, rank: int):
    """Rank ``rank``'s minibatch of step ``step`` in the small 2-rank hook jobs: 8 examples of 6
    features, 8 classes, from a generator seeded by both."""
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, 6, generator=g), torch.randint(0, 8, (8,), generator=g)


def train_steps(ddp, opt, rank: int, steps: int) -> None:
    """``steps`` plain training steps of ``ddp`` on this rank's minibatches (:func:`rank_batch`)."""
    import torch.nn.functional as F

    for step in range(steps):
        x, y = rank_batch(step, rank)
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()


def results_of_ranks(job, folder, world: int = 2, timeout: float = 120.0) -> list[dict]:
    """Run ``job(rank, world, folder)`` on ``world`` gloo ranks; each rank's results, in rank order,
    as the job saved them with :func:`save_rank_results`."""
    from test_distributed import spawn

    spawn(job, world, str(folder), timeout=timeout)
    return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=True) for r in range(world)]


def save_rank_results(out: dict, folder: str, rank: int) -> None:
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))


def error_of(call, error: type = Exception) -> str:
    """The message of the ``error`` that ``call()`` raises, or ``"no error"`` (inside a spawned
    rank, where pytest.raises cannot report back)."""
    try:
        call()
    except error as e:
        return str(e)
    return "no error"


@pytest.fixture
def one_thread():
    """One intra-op thread, as each distributed rank runs (and fast on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cfg():
    return small_config


@pytest.fixture(autouse=True)
def _no_global_rng_use():
    """The library must never touch the global RNG: its state is the same after every test."""
    before = torch.random.get_rng_state()
    yield
    assert torch.equal(before, torch.random.get_rng_state()), "global torch RNG was used"


@pytest.fixture(autouse=True)
def _threads_restored():
    """The command line sets torch's threads and OMP_NUM_THREADS for its process (sasg.threads);
    a test that calls it in-process must not change them for the tests after it."""
    import os

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp
