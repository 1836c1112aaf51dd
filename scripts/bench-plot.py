#!/usr/bin/env python3
"""Plots the summary of a `scripts/bench-compare.py` run: each measure's Tidings/Nchan ratio
against its target, on a log scale, with every single run's ratio as a dot beside the median.

    pip install matplotlib
    python3 scripts/bench-plot.py docs/benchmarks/results.json docs/benchmarks/ratios.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bench-plot.py RESULTS.json OUT.png")
    with open(sys.argv[1]) as f:
        results = json.load(f)
    rows = results["summary"]["ratios"]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.5))
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        higher = row["target"].startswith("≥")
        target = float(row["target"].split()[1].rstrip("×"))
        # A bar from 1× to the median ratio: green where the target is met.
        ax.barh(y, row["ratio"] - 1, left=1, height=0.6,
                color="#4caf50" if row["met"] else "#e57373")
        ax.plot([target, target], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(target, y + 0.42, ("target ≥ " if higher else "target ≤ ") + f"{target}×",
                fontsize=7, ha="center")
        ax.text(max(row["ratio"], 1) * 1.05, y, f"{row['ratio']:.2f}×", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["measure"] for r in reversed(rows)], fontsize=8)
    ax.set_xlabel("Tidings / Nchan (median of runs; log scale)")
    v = results["versions"]
    ax.set_title(f"Tidings {v['tidings'].split()[-1]} ({v['tidings_commit']}) vs Nchan "
                 f"{v['nchan']} — {results['settings']['streams']:,} streams, "
                 f"{results['settings']['repeat']} runs each", fontsize=10)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
