"""The sasg DDP hook trains as well as plain DDP with the user's own optimizer.

The claim (issue 14): momentum SGD and AdamW under the hook train the default setting (FC
784-512-10, embedded MNIST-5k, batch 10 per worker, 20 epochs) to within 0.5 points of the same
optimizer under plain DDP, and a bf16-autocast run likewise. The hook is registered with the
optimizer (so momentum correction and Adam's frozen second moment apply) at its default tensor
policy and warm-up (issue 23); its algorithm and codec are the earlier documented ones:
``always+topk`` (top-k per tensor, h = 1 %, error feedback) with the ``rice+sign`` codec. The
runs are benchmarks/ddp_accuracy.py's own (same code, same learning rates), 2 ranks on gloo.

* ``test_reduced_*``: a 2-rank job trains each optimizer for REDUCED_EPOCHS epochs (a tenth of
  the default, so that the suite stays fast: about 35 s) with plain DDP and with the hook, from
  the same initialisation on the same minibatches, and compares the final test accuracies. After
  2 epochs the runs are still moving (constant lr) and the hook is still catching up on its error
  memory, so 0.5 points cannot be asserted there; REDUCED_TOLERANCE is what the spread of that
  setting over 10 seeds justifies (see its comment). The 0.5-point claim is the full setting's;
  docs/ddp-hook.md gives its figures (benchmarks/ddp_accuracy.py, 3 seeds).
* ``test_full_setting_rerun``: reruns the full setting for seed 0 (minutes; set
  SASG_FULL_ACCURACY=1) and asserts every pair within 0.5 points.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sasg.ddp.rules import DEFAULT_WARMUP
from test_distributed import spawn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ddp_accuracy  # noqa: E402  (benchmarks/ddp_accuracy.py)

WORLD = 2
HOOK = "always+topk/rice+sign"
OPTIMIZERS = ("momentum", "adamw", "bf16")
SEED = 0
FULL_EPOCHS = 20
REDUCED_EPOCHS = 2
# The reduced setting's spread, measured with `benchmarks/ddp_accuracy.py --epochs 2 --hooks
# always+topk/rice+sign --seeds 0,1,2,3,4,5,6,7,8,9` (30 pairs, 350 s): hook - DDP in final test
# accuracy ranged from -3.3 (AdamW, seed 1) to +1.5 points, mean -0.66 (momentum), -0.75 (AdamW),
# -1.26 (bf16); seed 0, the one run here: -1.8, +0.7, -1.0. The tolerance covers every observed
# pair plus 4 test images (0.4 points) of margin, for another platform's rounding (a different
# trajectory, like another seed). It catches a hook that breaks training (a wrong step, a lost
# momentum or Adam state, bf16 damage in the error memory), not a half-point drift: that is the
# full setting's test. (With 5 epochs, 80 s, the same 10 seeds spread from -2.1 to +0.9: 2.5.)
# Measured before issue 23 gave the hook its optimizer link, tensor policy and warm-up; with them
# (`ddp_accuracy.py --models fc --epochs 2 --batch-size 10 --hooks always+topk/rice+sign --seeds 0`,
# AMD EPYC) seed 0 gives +0.0 (momentum), -1.4 (AdamW), -0.1 (bf16), inside the same tolerance.
REDUCED_TOLERANCE = 3.7
REDUCED_FLOOR = 87.5  # every one of the 60 runs above ended at 88.3 % or more (DDP 90.0 % or more)
HALF_POINT = 0.5


def _settings(epochs: int) -> list[dict]:
    return ddp_accuracy.plan(OPTIMIZERS, [HOOK], [SEED], ddp_accuracy.DEFAULT_LR, epochs=epochs, batch_size=10,
                             density=0.01)


def _job(rank, world, folder, epochs):
    from sasg.data import load_mnist5k

    data = load_mnist5k()
    results = [ddp_accuracy.train_once(rank, world, data, **run) for run in _settings(epochs)]
    if rank == 0:
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump(results, f)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_accuracy")
    spawn(_job, WORLD, str(folder), REDUCED_EPOCHS, timeout=240.0)
    results = json.loads((folder / "results.json").read_text())
    return results, {r["optimizer"]: r for r in ddp_accuracy.summarize(results, [HOOK])}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_reduced_hook_trains_like_plain_ddp(reduced, optimizer):
    results, rows = reduced
    row = rows[optimizer]
    (diff,) = row["diffs"]
    assert abs(diff) <= REDUCED_TOLERANCE, (
        f"{optimizer}: hook {row['hook_accuracy']:.1f} % against DDP {row['ddp_accuracy']:.1f} % "
        f"after {REDUCED_EPOCHS} epochs ({diff:+.1f} points; tolerance {REDUCED_TOLERANCE})")
    # both trained: 88.3-94.1 % after two epochs (the 60 runs above)
    assert row["ddp_accuracy"] > REDUCED_FLOOR and row["hook_accuracy"] > REDUCED_FLOOR, row


def test_reduced_runs_are_the_setting_they_claim(reduced):
    results, rows = reduced
    assert len(results) == 2 * len(OPTIMIZERS)
    for r in results:
        assert r["rounds"] == REDUCED_EPOCHS * 4000 // (WORLD * 10)  # 4,000 training images, batch 10 per rank
        assert r["n_test"] == 1000
        assert r["ranks_equal"], r  # DDP and the hook leave the same parameters on every rank
    for row in rows.values():
        assert row["ranks_equal"]
        assert row["error_dtype"] == "torch.float32"  # also under bf16 autocast
        # top 1 % of every matrix (Golomb-Rice gaps and a sign bit: about 0.29 % of dense fp32),
        # the biases whole, the 10 warm-up rounds dense under the codec's value format (a sign
        # bit each); under AdamW also the averaged second moments (16 bits an entry at rounds 10,
        # 20, 40, ...: sasg.ddp.optimizers)
        rounds = REDUCED_EPOCHS * 4000 // (WORLD * 10)
        syncs = sum(1 for j in range(20) if DEFAULT_WARMUP * 2**j <= rounds) if row["optimizer"] == "adamw" else 0
        extra = 0.5 * syncs / rounds
        assert extra + 0.002 < row["bits_fraction"] < extra + 0.005, (row["optimizer"], row["bits_fraction"])


# ----- the full setting ---------------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("SASG_FULL_ACCURACY") != "1",
                    reason="the full setting takes minutes: set SASG_FULL_ACCURACY=1 to rerun it")
def test_full_setting_rerun():
    results = ddp_accuracy.run(_settings(FULL_EPOCHS), world=WORLD, timeout=3600.0)
    for row in ddp_accuracy.summarize(results, [HOOK]):
        (diff,) = row["diffs"]
        assert abs(diff) <= HALF_POINT, (row["optimizer"], row["hook_accuracy"], row["ddp_accuracy"])
