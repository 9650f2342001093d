"""The table printed in the terminal (and embedded in ``report.md``), its notes and the
'against SGD' lines.

Every accuracy column says which accuracy it is (top-1 or top-5); with a top-5 target both are
shown. A multi-seed 'to target' cell that is a mean over only some seeds says how many, e.g.
``30 (1/2)``, and a diverged run (non-finite train loss) says so instead of printing a loss.
"""

from __future__ import annotations

from .summary import TO_TARGET

COLUMNS = (
    ("algorithm", "algorithm", "{}"),
    ("codec", "codec", "{}"),
    ("iterations", "iters", "{:d}"),
    ("uploads", "uploads", "{:d}"),
    ("skipped", "skipped", "{:d}"),
    ("bits_up", "bits up", "{:.3g}"),
    ("final_train_loss", "final loss", "{:.3g}"),
    ("final_test_acc", "final top-1 %", "{:.2f}"),
    ("best_test_acc", "best top-1 %", "{:.2f}"),
    ("iters_to_target", "iters→tgt", "{:d}"),
    ("uploads_to_target", "uploads→tgt", "{:d}"),
    ("bits_to_target", "bits→tgt", "{:.3g}"),
    ("iters_per_second", "it/s", "{:.1f}"),
)
TOP5_COLUMNS = (
    ("final_test_top5", "final top-5 %", "{:.2f}"),
    ("best_test_top5", "best top-5 %", "{:.2f}"),
)
METRIC_NAMES = {"top1": "top-1", "top5": "top-5"}
# Without sgd there is nothing the default target and the ratios are relative to: say so.
NO_SGD_NOTE = ("sgd is not among this run's algorithms, so there is no default target (SGD's final "
               "accuracy − 0.5) and the 'to target' columns are empty (—), as are the ratios against SGD; "
               "pass --target-acc PERCENT for a target of your own, or add sgd to --algos")


def target_note(summary: dict) -> str | None:
    """:data:`NO_SGD_NOTE` where it applies to ``summary`` (no sgd, no --target-acc), else None."""
    cfg = summary["config"]
    if cfg.get("target_acc") is None and "sgd" not in cfg.get("algorithms", ["sgd"]):
        return NO_SGD_NOTE
    return None


def columns(records: list[dict]) -> tuple:
    """The table's columns: the top-5 ones too when the target is on top-5 accuracy."""
    if not any(r.get("target_metric") == "top5" for r in records):
        return COLUMNS
    at = next(i for i, (key, _, _) in enumerate(COLUMNS) if key == "best_test_acc") + 1
    return COLUMNS[:at] + TOP5_COLUMNS + COLUMNS[at:]


def _fraction(r: dict, count_key: str) -> str:
    return f"({r.get(count_key, 0)}/{r['seeds']})"


def _cell(r: dict, key: str, fmt: str) -> str:
    value = r.get(key)
    multi = "seeds" in r
    if key == "final_train_loss" and r.get("failed"):
        return "failed" + (f" {_fraction(r, 'failed_seeds')}" if multi else "")
    if key == "final_train_loss" and r.get("diverged"):
        return "diverged" + (f" {_fraction(r, 'diverged_seeds')}" if multi else "")
    if multi and key in TO_TARGET and r.get("target_acc") is not None and r["reached_target"] < r["seeds"]:
        # A mean over only the seeds that got there: say how many did.
        return ("—" if value is None else _number(value, fmt)) + f" {_fraction(r, 'reached_target')}"
    if value is None:
        return "—"
    if multi:  # mean ± std over seeds
        std = r.get(key + "_std")
        return _number(value, fmt) + ("" if not std else " ± " + _number(std, fmt))
    return _number(value, fmt)


def _number(value, fmt: str) -> str:
    if fmt.endswith(":d}") and not float(value).is_integer():
        fmt = fmt.replace(":d", ":.0f")  # a mean of counts
    return fmt.format(int(value) if fmt.endswith(":d}") else value)


def _cells(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    cols = columns(records)
    header = [title for _, title, _ in cols]
    rows = [[_cell(r, key, fmt) if key not in ("algorithm", "codec") else str(r.get(key, "—")) for key, _, fmt in cols]
            for r in records]
    return header, rows


def table_notes(records: list[dict]) -> list[str]:
    """Sentences under the table: which runs diverged or failed (so a missing loss is not a mystery) and
    which are biased (a lossy codec without error feedback)."""
    notes = []
    for r in records:
        if r.get("biased"):
            notes.append(f"{r['algorithm']} is biased: its codec {r['codec']} rounds values and it keeps no "
                         "error memory, so what the rounding drops is never sent.")
        if r.get("failed"):
            if "seeds" in r:
                notes.append(f"{r['algorithm']} failed in {r['failed_seeds']}/{r['seeds']} seeds ({r['failed']}); "
                             "its figures stop where each failed.")
            else:
                notes.append(f"{r['algorithm']} failed at iteration {r['failed_at_iteration']} ({r['failed']}); its "
                             "figures stop there, the other algorithms ran on.")
        if not r.get("diverged"):
            continue
        if "seeds" in r:
            notes.append(f"{r['algorithm']} diverged in {r['diverged_seeds']}/{r['seeds']} seeds "
                         "(non-finite train loss): its mean loss is undefined, and its curves leave out the "
                         "points where any seed is non-finite.")
        else:
            notes.append(f"{r['algorithm']} diverged: the train loss was non-finite from iteration "
                         f"{r['diverged_at_iteration']} on (try a smaller --lr).")
    return notes


def text_table(records: list[dict]) -> str:
    header, rows = _cells(records)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    table = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(table + [f"note: {n}" for n in table_notes(records)])


def markdown_table(records: list[dict]) -> str:
    header, rows = _cells(records)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ratio_text(r: float) -> str:
    """A ratio against SGD in words: ``1/x`` only for a saving of at least half (r <= 0.5),
    ``0.95×`` for a smaller saving, ``1.5× more`` when the algorithm needs more than SGD."""
    if r == 0:
        return "none"
    if r <= 0.5:
        return f"1/{1 / r:.3g}"
    if r < 1:
        return f"{r:.2f}×"
    if r == 1:
        return "same"
    return f"{r:.2f}× more" if r < 10 else f"{r:.3g}× more"


def ratio_lines(vs_sgd: dict[str, dict]) -> list[str]:
    lines = []
    for name, r in vs_sgd.items():
        if name == "sgd":
            continue
        parts = [f"{name} vs sgd:"]
        if r.get("has_target", True):
            parts += _to_target_parts(name, r)
        for key, label in (("uploads", "uploads overall"), ("bits_up", "bits overall")):
            if r.get(key) is not None:
                parts.append(f"{label} {ratio_text(r[key])}")
        parts += _accuracy_parts(r)
        if r.get("diverged") or r.get("baseline_diverged"):
            who = " and ".join(n for n, d in ((name, r.get("diverged")), ("sgd", r.get("baseline_diverged"))) if d)
            parts.append(f"(diverged: {who})")
        lines.append("  ".join(parts))
    return lines


def _to_target_parts(name: str, r: dict) -> list[str]:
    hits, base_hits, seeds = r.get("reached_target"), r.get("baseline_reached_target"), r.get("seeds", 1)
    if hits is not None and (hits < seeds or base_hits < seeds):
        # No ratio: a 'to target' mean over only some seeds is not comparable.
        if seeds == 1:
            missed = " and ".join(n for n, h in ((name, hits), ("sgd", base_hits)) if not h)
            return [f"to target: no ratio ({missed} never reached it)"]
        return [f"to target: no ratio (reached in {hits}/{seeds} seeds by {name}, {base_hits}/{seeds} by sgd)"]
    parts = []
    for key, label in (("iters_to_target", "iterations"), ("uploads_to_target", "uploads"),
                       ("bits_to_target", "bits")):
        if r.get(key) is not None:
            parts.append(f"{label} to target {ratio_text(r[key])}")
    return parts


def _accuracy_parts(r: dict) -> list[str]:
    """The final-accuracy difference on the target's metric first (top-1 as well with top-5)."""
    keys = [("final_test_acc_delta", "top1")]
    if r.get("target_metric") == "top5":
        keys.insert(0, ("final_test_top5_delta", "top5"))
    return [f"final {METRIC_NAMES[m]} accuracy {r[k]:+.2f} points" for k, m in keys if r.get(k) is not None]
