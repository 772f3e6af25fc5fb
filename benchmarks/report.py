"""Markdown table of a pytest-benchmark JSON file (written with --benchmark-json=FILE).

Columns: group, row name, mean ms, elements/s (extra_info["elements_per_s"]) and the speed-up over
the group's baseline, the row whose extra_info["baseline"] is true.

    python benchmarks/report.py FILE.json
"""
from __future__ import annotations

import argparse
import json


def markdown_table(report: dict) -> str:
    """The rows of a pytest-benchmark report, grouped and in file order, as a Markdown table."""
    rows = report["benchmarks"]
    baseline = {r["group"]: r["stats"]["mean"] for r in rows if r["extra_info"].get("baseline")}
    lines = ["| group | row | mean ms | elements/s | speed-up vs baseline |",
             "|---|---|---:|---:|---:|"]
    for group in dict.fromkeys(r["group"] for r in rows):
        for row in rows:
            if row["group"] != group:
                continue
            mean = row["stats"]["mean"]
            rate = row["extra_info"].get("elements_per_s")
            rate = f"{rate:.3g}" if rate is not None else "-"
            speedup = f"{baseline[group] / mean:.2f}x" if group in baseline else "-"
            label = group or "-"
            lines.append(f"| {label} | {row['name']} | {mean * 1e3:.2f} | {rate} | {speedup} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="pytest-benchmark JSON file")
    args = parser.parse_args(argv)
    with open(args.file) as f:
        print(markdown_table(json.load(f)))


if __name__ == "__main__":
    main()
