import io

import torch

from sasg import Simulator

from conftest import small_config


def test_state_dict_resume_gives_identical_trajectory(synth):
    cfg = small_config(window=3, threshold_scale=0.5)
    for algo in ("sparse", "sasg", "lasg"):
        full = Simulator(cfg, algo, synth)
        for _ in range(30):
            full.step()
        first = Simulator(cfg, algo, synth)
        for _ in range(13):
            first.step()
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)
        buf.seek(0)
        resumed = Simulator(cfg, algo, synth)
        resumed.load_state_dict(torch.load(buf, weights_only=False))
        for _ in range(17):
            resumed.step()
        assert torch.equal(resumed.theta, full.theta), algo
        assert resumed.ledger.uploads == full.ledger.uploads


def test_state_dict_exposes_every_piece_of_algorithm_state(synth):
    sim = Simulator(small_config(), "sasg", synth)
    sim.step()
    st = sim.state_dict()
    assert set(st["workers"]) == {"staleness", "error", "anchor"}
    assert set(st["server"]) == {"last", "step_sq", "iteration"}
    assert st["workers"]["anchor"].shape == (4, sim.layout.numel)
    other = Simulator(small_config(), "sgd", synth)
    try:
        other.load_state_dict(st)
    except ValueError as e:
        assert "sasg" in str(e)
    else:
        raise AssertionError("loading a sasg checkpoint into sgd must fail")
