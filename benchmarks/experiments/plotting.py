"""One line-plot helper for the benchmark figures (needs matplotlib: pip install 'kacfast[plots]')."""
from __future__ import annotations


def line_plot(curves: dict, path: str, *, xlabel: str, ylabel: str, title: str, xscale: str = "linear",
              yscale: str = "log", hline: tuple[float, str] | None = None, marker: str | None = None) -> None:
    """Write `curves` ({label: [(x, y), ...]}) as one PNG figure at `path`, with an optional
    dashed horizontal reference line (value, label)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    many = len(curves) > 6  # then the legend goes beside the axes, where it hides no curve
    fig, ax = plt.subplots(figsize=(11, 4.6) if many else (6.4, 4.2))
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10").colors
    for i, (label, pts) in enumerate(curves.items()):
        if pts:
            ax.plot(*zip(*sorted(pts)), marker=marker, label=label, color=colors[i % len(colors)])
    if hline is not None:
        ax.axhline(hline[0], color="grey", ls="--", label=hline[1])
    ax.set(xscale=xscale, yscale=yscale, xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
