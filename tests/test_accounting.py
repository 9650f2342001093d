import torch

from sasg import Simulator
from sasg.accounting import Ledger
from sasg.core.codecs import Paper32

from conftest import small_config


def test_bit_counts_match_the_paper_formula(synth):
    cfg = small_config(density=0.1)
    for algo in ("sgd", "sparse", "lasg", "sasg"):
        sim = Simulator(cfg, algo, synth)
        for _ in range(12):
            sim.step()
        d = sim.layout.numel
        t = sim.ledger.totals()
        nnz = sum(max(1, int(0.1 * s.numel + 1e-9)) for s in sim.layout.segments)
        per_upload = 64 * nnz if algo in ("sparse", "sasg") else 32 * d
        assert t["bits_up"] == per_upload * t["uploads"], algo
        assert t["bits_down"] == 32 * d * cfg.workers * t["iterations"]
        assert t["skipped"] == cfg.workers * t["iterations"] - t["uploads"]
        assert t["bits_flags"] == 0  # the simulator has no flag exchange


def test_fc_dense_upload_is_32_times_407050_bits():
    codec = Paper32(407_050)
    _, sizes = codec.encode_dense(torch.zeros(2, 407_050))
    assert [8 * s for s in sizes] == [13_025_600] * 2  # 32 bits per value, no header
    _, sizes = codec.encode_sparse(torch.zeros(3, 4_066, dtype=torch.long), torch.zeros(3, 4_066))
    assert [8 * s for s in sizes] == [260_224] * 3  # 32 bits per value + 32 per index


def test_ledger_totals_upto():
    led = Ledger(num_workers=3)
    led.record(3, 300, 90)
    led.record(1, 100, 90)
    assert led.totals(1) == {"iterations": 1, "uploads": 3, "skipped": 0, "bits_up": 300, "bits_down": 90, "bits_flags": 0}
    assert led.totals()["skipped"] == 2
