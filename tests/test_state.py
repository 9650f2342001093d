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
    eng = st["engine"]
    assert set(eng["workers"]) == {"staleness", "buffers"}
    assert set(eng["workers"]["buffers"]) == {"error", "anchor"}
    assert set(eng["server"]) == {"last", "step_sq", "iteration"}
    assert eng["workers"]["buffers"]["anchor"].shape == (4, sim.layout.numel)
    assert len(eng["generators"]) == 4  # every worker's member generator
    other = Simulator(small_config(), "sgd", synth)
    try:
        other.load_state_dict(st)
    except ValueError as e:
        assert "sasg" in str(e)
    else:
        raise AssertionError("loading a sasg checkpoint into sgd must fail")
