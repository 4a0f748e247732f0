"""python3 -m bench.plot RESULTS.json DIR: the figures of docs/benchmarks.md.

One window figure per N (and per N with unsynced data), each tool with two bars: its
own view and the kernel tracepoints' (bench/ktrace.py).

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

from bench.report import DIRTY_LABELS, LABELS, field, kernel  # noqa: E402
from bench.stats import median, p90  # noqa: E402

DPI = 100
XMIN_MS = 10  # log-scale bars need a common origin to be comparable


def window_figure(data, labels, title, path):
    """One N: each tool's median window by its own view and by the kernel's ruler."""
    names = [m for m in labels if m in data]
    rulers = (("own view", "#888888", lambda m: field(data[m], "window")),
              ("kernel tracepoints", "#1f77b4", lambda m: kernel(data[m])))
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(names) + 1.6))
    height = 0.38
    xmax = XMIN_MS * 2
    for offset, (label, color, values) in enumerate(rulers):
        positions, meds, highs = [], [], []
        for index, method in enumerate(names):
            samples = values(method)
            if samples:
                positions.append(index + (offset - 0.5) * height)
                meds.append(median(samples) * 1000)
                highs.append(p90(samples) * 1000)
        if positions:
            ax.barh(positions, meds, height=height, color=color, label=label,
                    xerr=[[0] * len(meds), [h - m for h, m in zip(highs, meds)]], capsize=2)
            xmax = max([xmax] + highs)
    ax.set_xscale("log")
    ax.set_xlim(XMIN_MS, xmax * 1.3)
    plain_ticks(ax)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([labels[m] for m in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("frozen window, ms, log scale (bar: median, whisker: p90)", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
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
    for n in params["sizes"]:
        window_figure(results["clean"].get(str(n), {}), LABELS,
                      "Frozen window, N = {}, idle filesystems (ext4/xfs alternating)".format(n),
                      os.path.join(folder, "benchmarks-window-n{}.png".format(n)))
    for n in params["dirty_sizes"] if results.get("dirty") else []:
        window_figure(results["dirty"].get(str(n), {}), DIRTY_LABELS,
                      "Frozen window, N = {}, {} MiB unsynced per filesystem".format(
                          n, params["dirty_mib"]),
                      os.path.join(folder, "benchmarks-dirty-n{}.png".format(n)))
    if results.get("scale"):
        scale_figure(results["scale"], os.path.join(folder, "benchmarks-scale.png"))


if __name__ == "__main__":
    main()
