"""The family at a glance: the records of a compare laid out by trigger (rows) and compressor
(columns), for ``report.md``.

A compare of compositions (``always+topk,wk2+topk,wk1+topk,always+sign,...``) is a grid: each cell
answers "what does this lazy rule do with this compressor". The cell gives the bits to the target
(8 x the codec's bytes) and the final accuracy; a dash where that pair was not run.
"""

from __future__ import annotations


def composition(name: str) -> tuple[str, str, str]:
    """(trigger, compressor, memory) of an algorithm name (an alias is resolved); the memory is ""
    when the compressor's default is used."""
    from ..core import AlgorithmSpec

    spec = AlgorithmSpec.parse(name)
    return spec.trigger, spec.compressor, spec.memory


def grid_lines(records: list[dict]) -> list[str]:
    """A markdown table, triggers x compressors (memories named in the compressor's column when
    not the default); empty when the records span only one trigger and one compressor."""
    cells: dict[tuple[str, str], dict] = {}
    for r in records:
        try:
            trigger, compressor, memory = composition(r["algorithm"])
        except ValueError:  # a member no longer registered (a plug-in not loaded): left out
            continue
        cells[(trigger, compressor + (f"+{memory}" if memory else ""))] = r
    triggers = sorted({t for t, _ in cells})
    compressors = sorted({c for _, c in cells})
    if len(triggers) < 2 and len(compressors) < 2:
        return []
    lines = ["| trigger \\ compressor | " + " | ".join(f"`{c}`" for c in compressors) + " |",
             "|---|" + "---|" * len(compressors)]
    for t in triggers:
        lines.append(f"| `{t}` | " + " | ".join(_cell(cells.get((t, c))) for c in compressors) + " |")
    return lines


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    bits = r.get("bits_to_target")
    acc = r.get("final_test_acc")
    bits_text = "not reached" if bits is None else f"{bits:.3g} bits"
    acc_text = "—" if acc is None else f"{acc:.2f} %"
    return f"{bits_text}, {acc_text}"
