"""Markdown tables of a pytest-benchmark JSON file (written with --benchmark-json=FILE).

One table per group, rows in file order: median and mean ms, then whichever of these extra_info
fields the group's rows carry: elements/s, GB/s (bytes_per_s), NFE, images/s, the share of time
outside the network; last, the speed-up of the median over the group's baseline row (the row whose
extra_info["baseline"] is true). A benchmark that timed several rows interleaved
(extra_info["side_by_side"]) gets a second table of those rows.

    python benchmarks/suites/report.py FILE.json
"""
from __future__ import annotations

import argparse
import json

# extra_info key -> (column title, formatter)
COLUMNS = {
    "elements_per_s": ("elements/s", lambda v: f"{v:.3g}"),
    "bytes_per_s": ("GB/s", lambda v: f"{v / 1e9:.1f}"),
    "nfe": ("NFE", lambda v: f"{v}"),
    "images_per_s": ("images/s", lambda v: f"{v:.3g}"),
    "outside_network_share": ("outside network", lambda v: f"{100 * v:.1f}%"),
    "max_abs_diff_vs_fp32_eager": ("max diff vs fp32 eager", lambda v: f"{v:.1e}"),
    "first_call_s": ("first call s", lambda v: f"{v:.1f}"),
}


def markdown_tables(report: dict) -> str:
    """Every group of a pytest-benchmark report as a Markdown table."""
    rows = report["benchmarks"]
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        if all("side_by_side" in r["extra_info"] for r in members):  # interleaved rows only
            out += [f"**{group or 'benchmarks'}**"] + [side_by_side_table(r["extra_info"]["side_by_side"])
                                                     for r in members]
            continue
        keys = [k for k in COLUMNS if any(k in r["extra_info"] for r in members)]
        if "images_per_s" in keys and "elements_per_s" in keys:
            keys.remove("elements_per_s")
        base = next((r["stats"]["median"] for r in members if r["extra_info"].get("baseline")), None)
        head = ["row", "median ms", "mean ms"] + [COLUMNS[k][0] for k in keys] + ["speed-up"]
        lines = [f"**{group or 'benchmarks'}**", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" + "---:|" * (len(head) - 1)]
        for r in members:
            median, mean = r["stats"]["median"], r["stats"]["mean"]
            cells = [r["name"], f"{median * 1e3:.2f}", f"{mean * 1e3:.2f}"]
            cells += [COLUMNS[k][1](r["extra_info"][k]) if k in r["extra_info"] else "-" for k in keys]
            cells.append(f"{base / median:.2f}x" if base else "-")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def side_by_side_table(rows: dict) -> str:
    """The rows one benchmark measured interleaved (extra_info["side_by_side"]: row -> fields)."""
    keys = [k for k in ("images_per_s", "outside_network_share", "max_abs_diff_vs_fp32_eager",
                        "first_call_s") if any(k in v for v in rows.values())]
    head = ["row", "median ms"] + [COLUMNS[k][0] for k in keys] + ["speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for name, v in rows.items():
        cells = [name, f"{v['median_ms']:.2f}"]
        cells += [COLUMNS[k][1](v[k]) if k in v else "-" for k in keys]
        lines.append("| " + " | ".join(cells + [f"{v['speed_up']:.2f}x"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="pytest-benchmark JSON file")
    args = parser.parse_args(argv)
    with open(args.file) as f:
        report = json.load(f)
    machine = report.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
          f"{machine.get('cpu', {}).get('count', '?')} CPUs, SIMD {machine.get('simd', '?')}, "
          f"torch {machine.get('torch', '?')}, {machine.get('torch_threads', '?')} torch threads, "
          f"shipped pair {machine.get('pair', '?')}, tuned allocator {machine.get('tuned_allocator', '?')}\n")
    print(markdown_tables(report))


if __name__ == "__main__":
    main()
