"""python3 -m bench.plot RESULTS.json DIR: the figures of docs/benchmarks.md.

Run with Debian's python3 and python3-matplotlib (installed by `make bench` only), so
the product's venvs never carry matplotlib. Small PNGs (100 dpi) that are fine to commit.
"""
import json
import os
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from bench.report import DIRTY_LABELS, LABELS, field  # noqa: E402
from bench.stats import median, p90  # noqa: E402

DPI = 100
XMIN_MS = 10  # log-scale bars need a common origin to be comparable


def windows_figure(runs, sizes, labels, title, path):
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.6 * len(sizes) + 2.6, 4.2),
                             sharey=True, sharex=True, squeeze=False)
    methods = [m for m in labels if any(m in runs.get(str(n), {}) for n in sizes)]
    xmax = max(p90(field(samples, "window")) for n in sizes
               for samples in runs.get(str(n), {}).values()) * 1000 * 1.3
    for ax, n in zip(axes[0], sizes):
        data = runs.get(str(n), {})
        names = [m for m in methods if m in data]
        meds = [median(field(data[m], "window")) * 1000 for m in names]
        highs = [p90(field(data[m], "window")) * 1000 for m in names]
        positions = [methods.index(m) for m in names]
        colors = ["#888888" if not m.startswith("ours") else "#1f77b4" for m in names]
        ax.barh(positions, meds, color=colors,
                xerr=[[0] * len(meds), [h - m for h, m in zip(highs, meds)]], capsize=2)
        ax.set_xscale("log")
        ax.set_xlim(XMIN_MS, xmax)
        plain_ticks(ax)
        ax.set_title("N = {}".format(n))
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.supxlabel("frozen window, ms, log scale (bar: median, whisker: p90)", fontsize=9)
    axes[0][0].set_yticks(range(len(methods)))
    axes[0][0].set_yticklabels([labels[m] for m in methods], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plain_ticks(ax):
    """Log axes labelled 20, 50, 100 ... rather than 2×10¹."""
    formatter = matplotlib.ticker.FuncFormatter(lambda value, _pos: "{:g}".format(value))
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def cdf(ax, values, label):
    data = sorted(v * 1000 for v in values)
    ax.step(data, [(i + 1) / len(data) for i in range(len(data))], where="post", label=label)


def scale_figure(scale, path):
    vms = [vm for rnd in scale["rounds"] for vm in rnd["vms"] if vm["ok"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("latency", "request → frozen (agent)"),
                       ("window", "frozen window (agent)"),
                       ("external_window", "whole snapshot_with_quiesce call")):
        values = field(vms, key)
        if values:
            cdf(ax, values, label)
    ax.set_xscale("log")
    plain_ticks(ax)
    ax.set_xlabel("ms, log scale")
    ax.set_ylabel("fraction of VMs")
    ax.set_title("{} agents on one xenstored, all asked at once".format(scale["agents"]))
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as handle:
        results = json.load(handle)
    folder = argv[1]
    params = results["params"]
    windows_figure(results["clean"], params["sizes"], LABELS,
                   "Frozen window, idle filesystems (ext4/xfs alternating)",
                   os.path.join(folder, "benchmarks-window.png"))
    if results.get("dirty"):
        windows_figure(results["dirty"], params["dirty_sizes"], DIRTY_LABELS,
                       "Frozen window, {} MiB unsynced per filesystem".format(
                           params["dirty_mib"]), os.path.join(folder, "benchmarks-dirty.png"))
    if results.get("scale"):
        scale_figure(results["scale"], os.path.join(folder, "benchmarks-scale.png"))


if __name__ == "__main__":
    main()
