"""report.md lays a compare of compositions out as a grid: triggers x compressors."""

from __future__ import annotations

from sasg.report.family_grid import composition, grid_lines


def rec(name, bits, acc):
    return {"algorithm": name, "bits_to_target": bits, "final_test_acc": acc}


def test_aliases_resolve_to_their_members():
    assert composition("sasg") == ("wk2", "topk", "")
    assert composition("sgd") == ("always", "identity", "")
    assert composition("wk1+randomk+none") == ("wk1", "randomk", "none")


def test_the_grid_has_a_cell_per_pair_and_a_dash_where_none_ran():
    lines = grid_lines([rec("sgd", 8e6, 91.0), rec("sasg", 1.2e5, 90.5), rec("wk1+topk", None, 89.0),
                        rec("always+topk+none", 3e5, 88.0)])
    assert lines[0] == "| trigger \\ compressor | `identity` | `topk` | `topk+none` |"
    assert lines[2] == "| `always` | 8e+06 bits, 91.00 % | — | 3e+05 bits, 88.00 % |"
    assert lines[3] == "| `wk1` | — | not reached, 89.00 % | — |"
    assert lines[4] == "| `wk2` | — | 1.2e+05 bits, 90.50 % | — |"


def test_one_trigger_and_one_compressor_make_no_grid():
    assert grid_lines([rec("sasg", 1.0, 90.0)]) == []
