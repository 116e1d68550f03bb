"""Figures with their goals, and the Markdown the terminal and the README show them in. A figure is
{section, name, value, unit, goal: {op, value} or null, passed: null without a goal or a value, note?}.

    >>> f = figure("prep", "prep_over_floor", 1.05, goal=("<=", 1.1))
    >>> f["passed"], format_goal(f["goal"]), figure("x", "y", None, goal=(">=", 2.5))["passed"]
    (True, '≤ 1.1', None)
"""
from __future__ import annotations

import operator

from sftcli import markdown_table

OPS = {"<=": (operator.le, "≤"), "<": (operator.lt, "<"), ">=": (operator.ge, "≥"), ">": (operator.gt, ">")}
PACKING_COLUMNS = {"concat bfd": "concat_bfd_rows", "concat greedy": "concat_greedy_rows", "packed": "packed_rows",
                   "padding": "padding_rows", "lower bound": "lower_bound_rows",
                   "bfd over bound": "concat_rows_over_bound", "greedy over bound": "concat_greedy_rows_over_bound"}


def figure(section: str, name: str, value, unit: str = "", *, goal: tuple[str, float] | None = None, note: str = "",
           passed: bool | None = None) -> dict:
    """`passed`: the verdict of a figure without a goal (a check); a goal decides it otherwise."""
    if goal is not None and value is not None:
        passed = bool(OPS[goal[0]][0](value, goal[1]))
    entry = {"section": section, "name": name, "value": value, "unit": unit,
             "goal": {"op": goal[0], "value": goal[1]} if goal else None, "passed": passed}
    return {**entry, "note": note} if note else entry


def checks(section: str, results: dict) -> dict:
    """One figure for a section's correctness checks: it passes when every check holds.

    >>> checks("prep", {"same_rows": True, "same_tokens": False})["note"]
    'failed: same_tokens'
    """
    failed = [name for name, ok in results.items() if not ok]
    return figure(section, "same_rows_and_tokens", not failed, note="failed: " + ", ".join(failed) if failed else "",
                  passed=not failed)


def format_goal(goal: dict | None) -> str:
    return "" if goal is None else f"{OPS[goal['op']][1]} {goal['value']:g}"


def format_value(value, unit: str = "") -> str:
    """Thousands separators for large numbers, 4 significant digits for small ones.

    >>> format_value(51948), format_value(1234567.8, "tokens/s"), format_value(0.0027209), format_value(True)
    ('51,948', '1,234,568 tokens/s', '0.002721', 'yes')
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1000):
        text = f"{value:,.0f}"
    else:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".strip()


def figures_table(figures: list[dict]) -> str:
    verdict = {True: "pass", False: "MISS", None: ""}
    return markdown_table(["section", "figure", "value", "goal", ""],
                          [[f["section"], f"`{f['name']}`", format_value(f["value"], f["unit"]), format_goal(f["goal"]),
                            verdict[f["passed"]]] for f in figures])


def _measured(results: dict) -> list[str]:
    """When, how long, under what load, on which machine and library versions."""
    m, v = results["machine"], results["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "tokenizers", "pyarrow", "trl", "tiktoken")
                     if v.get(k))
    quick = " (--quick: small inputs, not comparable)" if results["settings"].get("quick") else ""
    return [f"Measured {results['finished'][:16].replace('T', ' ')} UTC in {results['seconds']:.0f} s{quick}; "
            f"load average {results['load_average']['start']} → {results['load_average']['end']}.",
            f"Machine: {m['platform']}; {m.get('cuda') or m['processor']}, {m['cpus_usable']} CPUs; "
            f"{m['memory_gib']} GiB; Python {m['python']}; {libs}."]


def headline(results: dict) -> str:
    """The figures with a goal, and when and where they were measured: the README's table."""
    goals = [f for f in results["figures"] if f["goal"] is not None]
    return "\n".join([*_measured(results), "", figures_table(goals)]) + "\n"


def markdown(results: dict) -> str:
    """The results as the Markdown docs/benchmarks.md shows (`python -m benchmarks --markdown results.json`)."""
    lines = [*_measured(results), "", figures_table(results["figures"]), ""]
    lines += [f"- `{f['name']}`: {f['note']}" for f in results["figures"] if f.get("note")]
    packing = results["sections"].get("packing")
    if packing:
        body = [[length, *(format_value(r[key]) for key in PACKING_COLUMNS.values())] for length, r in packing.items()]
        lines += ["", f"Rows for the {next(iter(packing.values()))['samples']:,} samples:", "",
                  markdown_table(["max_length", *PACKING_COLUMNS], body)]
    if results["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {r}" for k, r in results["skipped"].items()) + "."]
    return "\n".join(lines) + "\n"
