"""The table printed in the terminal (and embedded in ``report.md``)."""

from __future__ import annotations

COLUMNS = (
    ("algorithm", "algorithm", "{}"),
    ("iterations", "iters", "{:d}"),
    ("uploads", "uploads", "{:d}"),
    ("skipped", "skipped", "{:d}"),
    ("bits_up", "bits up", "{:.3g}"),
    ("final_test_acc", "final acc %", "{:.2f}"),
    ("best_test_acc", "best acc %", "{:.2f}"),
    ("iters_to_target", "iters→tgt", "{:d}"),
    ("uploads_to_target", "uploads→tgt", "{:d}"),
    ("bits_to_target", "bits→tgt", "{:.3g}"),
    ("iters_per_second", "it/s", "{:.1f}"),
)


def _cell(r: dict, key: str, fmt: str) -> str:
    value = r[key]
    if value is None:
        return "—"
    if "seeds" in r:  # mean ± std over seeds
        fmt = fmt.replace(":d", ":.0f")
        std = r.get(key + "_std")
        return fmt.format(value) + ("" if not std else " ± " + fmt.format(std))
    return fmt.format(value)


def _cells(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = [title for _, title, _ in COLUMNS]
    rows = [[_cell(r, key, fmt) if key != "algorithm" else r[key] for key, _, fmt in COLUMNS] for r in records]
    return header, rows


def text_table(records: list[dict]) -> str:
    header, rows = _cells(records)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(records: list[dict]) -> str:
    header, rows = _cells(records)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ratio_lines(vs_sgd: dict[str, dict]) -> list[str]:
    lines = []
    for name, r in vs_sgd.items():
        if name == "sgd":
            continue
        parts = [f"{name} vs sgd:"]
        if r["uploads_to_target"] is not None:
            parts.append(f"uploads to target ×{r['uploads_to_target']:.2f}")
        if r["bits_to_target"] is not None and r["bits_to_target"] > 0:
            parts.append(f"bits to target 1/{1 / r['bits_to_target']:.0f}")
        if r["uploads"] is not None:
            parts.append(f"uploads overall ×{r['uploads']:.2f}")
        parts.append(f"final accuracy {r['final_test_acc_delta']:+.2f} points")
        lines.append("  ".join(parts))
    return lines
