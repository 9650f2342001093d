import pytest
import torch

from sasg.core import WK2, Layout, forced_uploads, lazy_threshold, make_algorithm
from sasg.engine import InProcessTransport, RoundEngine


def test_threshold_on_hand_computed_example():
    # D = 4 keeps the last D-1 = 3 squared steps; c = 2, M = 5, lr = 0.1:
    # thr = (1 + 4 + 0.5) / (2 * 5 * 0.1) = 5.5
    assert lazy_threshold(torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64), 2.0, 5, 0.1) == pytest.approx(5.5)
    assert WK2(window=4, c=2.0).history == 3


def test_warmup_and_staleness_bound():
    tau = torch.tensor([1, 4, 5, 6])
    assert forced_uploads(0, tau, 5).all()
    assert forced_uploads(4, tau, 5).all()  # k < D: warm-up
    assert forced_uploads(5, tau, 5).tolist() == [False, False, False, True]  # tau > D


def test_window_holds_the_last_d_minus_1_steps():
    layout = Layout([("w", (3,))])
    engine = RoundEngine(make_algorithm("lasg", layout, window=3, c=1.0), InProcessTransport(2))
    server = engine.server
    assert server.step_sq.shape == (2,)
    for s in (1.0, 2.0, 3.0):
        server.push_step(s)
    assert server.step_sq.tolist() == [2.0, 3.0]


def test_at_most_d_skips_in_a_row():
    """With a gradient that never changes, a lazy worker skips exactly D rounds, then must upload."""
    D = 3
    layout = Layout([("w", (4,))])
    engine = RoundEngine(make_algorithm("lasg", layout, window=D, c=1.0), InProcessTransport(1))
    theta = torch.zeros(4)
    pattern = []
    for _ in range(12):
        g = torch.zeros(1, 4)  # same gradient as at the anchor: never above the threshold
        result = engine.step(theta, g, lambda rows: torch.zeros(len(rows), 4), 0.1)
        theta -= result.step
        up = result.flags
        pattern.append(int(up[0]))
    # warm-up uploads at k = 0..D-1, then D skips, a forced upload, D skips, ...
    assert pattern == [1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]


def test_stale_gradient_only_requested_for_checked_workers():
    layout = Layout([("w", (2,))])
    engine = RoundEngine(make_algorithm("sasg", layout, density=0.5, window=2, c=1.0), InProcessTransport(3))
    asked = []

    def stale(rows):
        asked.append(rows.tolist())
        return torch.zeros(len(rows), 2)

    g = torch.ones(3, 2)
    theta = torch.zeros(2)
    theta -= engine.step(theta, g, stale, 0.1).step  # warm-up: nobody is checked
    theta -= engine.step(theta, g, stale, 0.1).step
    assert asked == []
    engine.workers.staleness[:] = torch.tensor([1, 3, 1])  # worker 1 is past the bound: forced
    theta -= engine.step(theta, g, stale, 0.1).step
    assert asked == [[0, 2]]


def test_bad_trigger_arguments():
    with pytest.raises(ValueError, match="window"):
        WK2(0, 1.0)
    with pytest.raises(ValueError, match="threshold scale"):
        WK2(3, 0.0)
    with pytest.raises(ValueError, match="unknown algorithm 'adam'"):
        make_algorithm("adam", Layout([("w", (2,))]))
