"""Figures with their goals, and the two ways of showing them: a terminal table and Markdown.

`results.json` holds `figures`: a list of {section, name, value, unit, goal, passed}, where
`goal` is {"op": "<=" | "<" | ">=" | ">", "value": number} or null, and `passed` is null when
there is no goal (or nothing was measured).

    >>> f = figure("prep", "prep_over_tokenizer_floor", 1.2, goal=("<=", 1.3))
    >>> f["passed"], format_goal(f["goal"])
    (True, '≤ 1.3')
    >>> figure("x", "y", None, goal=(">=", 2.5))["passed"] is None
    True
"""
from __future__ import annotations

import operator

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
SYMBOLS = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}


def figure(section: str, name: str, value, unit: str = "", goal: tuple[str, float] | None = None,
           note: str = "") -> dict:
    """One reported number; `passed` says whether it meets its goal."""
    goal_dict = {"op": goal[0], "value": goal[1]} if goal else None
    passed = None if goal is None or value is None else bool(OPS[goal[0]](value, goal[1]))
    entry = {"section": section, "name": name, "value": value, "unit": unit, "goal": goal_dict, "passed": passed}
    if note:
        entry["note"] = note
    return entry


def format_goal(goal: dict | None) -> str:
    return "" if goal is None else f"{SYMBOLS[goal['op']]} {goal['value']:g}"


def format_value(value, unit: str = "") -> str:
    """Readable numbers: thousands separators for large ones, 4 significant digits for small.

    >>> format_value(51948), format_value(1234567.8, "tokens/s"), format_value(0.0027209), format_value(1.5, "s")
    ('51,948', '1,234,568 tokens/s', '0.002721', '1.5 s')
    """
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1000):
        text = f"{value:,.0f}"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit and value is not None else text


def verdict(passed) -> str:
    return {True: "pass", False: "MISS", None: ""}[passed]


def table(figures: list[dict]) -> str:
    """The figures as an aligned plain-text table."""
    rows = [("section", "figure", "value", "goal", "")]
    rows += [(f["section"], f["name"], format_value(f["value"], f["unit"]), format_goal(f["goal"]), verdict(f["passed"]))
             for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def packing_rows_table(packing: dict, markdown: bool = False) -> str:
    """Rows per layout at each max_length (from bench_packing.run)."""
    columns = [("layout", None), ("concat bfd", "concat_bfd_rows"), ("concat seed", "concat_seed_rows"),
               ("packed", "packed_rows"), ("padding", "padding_rows"), ("lower bound", "lower_bound_rows"),
               ("bfd over bound", "concat_rows_over_bound"), ("seed over bound", "concat_seed_rows_over_bound")]
    header = ["max_length"] + [name for name, key in columns if key]
    body = [[str(max_length)] + [format_value(r[key]) for _, key in columns if key] for max_length, r in packing.items()]
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + body)


def machine_line(results: dict) -> str:
    m, v = results["machine"], results["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "tokenizers", "pyarrow", "numpy", "trl")
                     if v.get(k))
    device = m.get("cuda") or f"{m.get('processor') or m['machine']}, {m['cpus_usable']} CPUs"
    return f"{m['platform']}; {device}; {m.get('memory_gib')} GiB; Python {m['python']}; {libs}"


def markdown(results: dict) -> str:
    """The results as the Markdown the README shows (`python -m benchmarks --markdown results.json`)."""
    lines = [
        f"Measured {results.get('finished', '')[:16].replace('T', ' ')} UTC in {results.get('seconds', 0):.0f} s"
        f"{' (--quick: small inputs, not comparable)' if results.get('settings', {}).get('quick') else ''}; "
        f"load average {results.get('load_average', {}).get('start')} → {results.get('load_average', {}).get('end')}.",
        f"Machine: {machine_line(results)}.",
        "",
        "| section | figure | value | goal | |",
        "|---|---|---|---|---|",
    ]
    for f in results["figures"]:
        lines.append(f"| {f['section']} | `{f['name']}` | {format_value(f['value'], f['unit'])} | "
                     f"{format_goal(f['goal'])} | {verdict(f['passed'])} |")
    notes = [f"`{f['name']}`: {f['note']}" for f in results["figures"] if f.get("note")]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    packing = results.get("sections", {}).get("packing")
    if packing:
        lines += ["", f"Rows for the {next(iter(packing.values()))['samples']:,} samples:", "",
                  packing_rows_table(packing, markdown=True)]
    skipped = [f"{name}: {reason}" for name, reason in results.get("skipped", {}).items()]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"
