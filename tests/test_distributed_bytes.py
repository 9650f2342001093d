"""Bytes really on the wire: a ``sasg launch`` alone in a private network namespace, where every
byte of the run crosses ``lo`` and ``/sys/class/net/lo/statistics/tx_bytes`` counts it.

The measured bytes must track what the accounting predicts (payload: uploads x message x (M-1),
flags: M(M-1) bytes a round) within 10 % plus the documented fixed overhead (docs/distributed.md):
at most ``PAIR_OVERHEAD`` bytes per ordered pair of ranks per collective per round (TCP/IP
headers of the data and ACK segments, gloo's message header) and ``SETUP`` bytes per run (the
closing barrier, the agent's heartbeats). Skips need root (``ip netns add``) and iproute2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

PAIR_OVERHEAD = 512
SETUP = 16_384


def _netns_or_skip() -> str:
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        pytest.skip("needs Linux and iproute2 ('ip')")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a private network namespace (ip netns add)")
    name = f"sasg-test-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return name


@pytest.fixture
def netns():
    name = _netns_or_skip()
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize("codec", ["paper32", "rice+sign"])
def test_loopback_bytes_track_the_accounting_and_skippers_send_nothing(netns, tmp_path, codec):
    """paper32: fixed-size messages, a flag byte per rank; rice+sign: each message its own size,
    which travels instead of the flag (4 bytes per rank)."""
    M, rounds = 3, 40
    out = tmp_path / "run"
    env = {**os.environ, "SASG_MEASURE_LOOPBACK": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "sasg", "launch", "--nproc-per-node", str(M),
           "--algo", "sasg", "--iterations", str(rounds), "--eval-every", "1000", "--device", "cpu", "--quiet",
           "--codec", codec, "--out", str(out)]  # gloo over loopback, also where a GPU is
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "distributed.json").read_text())["runs"][0]
    summary = json.loads((out / "summary.json").read_text())["records"][0]
    predicted = rec["bytes_predicted"]["payload"] + rec["bytes_predicted"]["flags"]
    measured = rec["loopback_tx_bytes"]
    # the transport's own count is the accounting's, byte for byte
    assert rec["bytes_counted"]["payload_bytes_sent"] == summary["bits_up"] // 8 * (M - 1)
    # the wire: within 10 % plus the fixed overhead (2 collectives a round for a lazy trigger)
    overhead = rounds * 2 * M * (M - 1) * PAIR_OVERHEAD + SETUP
    assert predicted <= measured <= 1.10 * predicted + overhead, (measured, predicted, overhead)
    # skippers sent no payload: had every worker sent every round, the wire would carry far more
    message = summary["bits_up"] // 8 // summary["uploads"]
    everyone = rounds * M * (M - 1) * message
    assert summary["skipped"] > 0
    assert measured < everyone - 0.5 * summary["skipped"] * (M - 1) * message
