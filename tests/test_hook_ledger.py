"""``hook.ledger.totals()`` reports what a DDP job sends: no parameter-server downlink, and the
first exchange labelled as the sizes or the flags it is."""

from sasg.accounting import Ledger
from sasg.ddp.hook_ledger import HookLedger


def _ledger() -> Ledger:
    ledger = Ledger(num_workers=2)
    ledger.record(2, 800, 10**6, 64)  # both send; 32-bit sizes of 2 ranks; a PS downlink figure
    ledger.record(1, 400, 10**6, 64)
    return ledger


def test_sizes_are_labelled_sizes_and_there_is_no_downlink():
    totals = HookLedger(_ledger(), sizes=True).totals()
    assert totals == {"iterations": 2, "uploads": 3, "skipped": 1, "bits_up": 1200, "bits_sizes": 128,
                      "bits_flags": 0}


def test_flags_are_labelled_flags():
    view = HookLedger(_ledger(), sizes=False)
    assert view.totals()["bits_flags"] == 128 and view.totals()["bits_sizes"] == 0
    assert view.first_exchange == "flags"
    assert view.totals(upto=1)["bits_up"] == 800


def test_the_per_round_lists_and_the_state_are_the_engine_ledgers():
    ledger = _ledger()
    view = HookLedger(ledger, sizes=True)
    assert view.uploads == [2, 1] and view.iterations == 2 and view.bits_flags == [64, 64]
    assert view.state_dict() == ledger.state_dict()
