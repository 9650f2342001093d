"""docs/extending.md: its example (a random-k compressor under the lazy rule) runs in the
simulator as written, keeps the compressor contract, and is counted by its own message size."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sasg import RunConfig, Simulator
from sasg.core import Layout, make_algorithm
from sasg.data import make_synthetic

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def run_doc_example() -> dict:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


def test_the_documented_example_runs_and_is_counted_by_its_compressor(capsys):
    ns = run_doc_example()
    sim, result = ns["sim"], ns["result"]
    k = sim.algorithm.compressor.k_per_segment
    assert sim.bits_per_upload == 64 * sum(k)
    totals = result.ledger.totals()
    assert totals["bits_up"] == totals["uploads"] * 64 * sum(k)
    assert 0 < totals["uploads"] < 30 * 4  # the lazy rule skipped some uploads
    assert result.algorithm == "sasg-randomk" and "sasg-randomk" in capsys.readouterr().out
    assert torch.isfinite(sim.theta).all()


def test_the_documented_compressor_keeps_the_contract():
    ns = run_doc_example()
    layout = ns["sim"].layout
    comp = ns["RandomK"](layout, 0.05, seed=1)
    v = torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(0))
    q = comp.compress(v)
    assert torch.equal(q.to_dense() + comp.error(v, q), v)  # sent + kept == v, exactly
    for seg, k in zip(layout.segments, comp.k_per_segment):
        inside = (q.indices >= seg.offset) & (q.indices < seg.end)
        assert (inside.sum(dim=1) == k).all()


def test_a_factory_must_build_on_the_layout_it_is_given():
    cfg = RunConfig(dataset="synthetic", model="fc", workers=2, batch_size=5, iterations=2).validate()
    data = make_synthetic(n_train=40, n_test=10, seed=0)
    with pytest.raises(ValueError, match="built on the layout it is given"):
        Simulator(cfg, lambda layout: make_algorithm("sasg", Layout([("w", (3,))])), data)
