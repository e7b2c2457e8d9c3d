#!/usr/bin/env python3
"""Plots from a condconv-bench CSV (PNG, matplotlib).

For every (precision, batch) in the CSV:
  experts_<prec>_b<batch>_<mode>.png  time vs number of experts, one panel per
        layer, one line per algorithm (AUTO, each forced one, the mixture),
        the static cuDNN convolution as a dashed horizontal line
  ratio_<prec>_b<batch>_<mode>.png    time over the static convolution per
        algorithm: per layer at one expert count (--experts, default 8 or the
        largest measured), and the geometric mean over layers against E
mode: graph (CUDA-graph replay, the default) or plain (plain launches).

  python3 bench/plot.py bench.csv --out plots/

The GPU machine may lack matplotlib: the CSV holds every number, so copy it
and make the plots elsewhere. Only matplotlib beyond the standard library.
"""
import argparse
import csv
import math
import os
import sys

METHODS = ("auto", "cudnn_grouped", "gemm_batched", "depthwise_fused", "mixture")
STYLE = {"auto": ("k", "o"), "cudnn_grouped": ("tab:red", "s"), "gemm_batched": ("tab:blue", "^"),
         "depthwise_fused": ("tab:green", "D"), "mixture": ("tab:purple", "v")}


def load(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "method" not in (reader.fieldnames or []) or "layer" not in (reader.fieldnames or []):
            sys.exit(f"plot.py: {path} is not a condconv-bench CSV (no layer/method columns)")
        rows = [r for r in reader if r.get("status") == "ok" and r.get("method") != "cpu_reference"]
    return rows


def value(row, mode):
    try:
        v = float(row.get(f"{mode}_us", ""))
    except ValueError:
        return None
    return v if math.isfinite(v) and v > 0 else None


def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def plot_experts(plt, rows, layers, prec, batch, mode, out):
    n = len(layers)
    cols = min(4, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for i, layer in enumerate(layers):
        ax = axes[i // cols][i % cols]
        sel = [r for r in rows if r["layer"] == layer]
        for m in METHODS:
            pts = sorted((int(r["experts"]), value(r, mode)) for r in sel if r["method"] == m and value(r, mode))
            if pts:
                color, marker = STYLE[m]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=m,
                        linestyle="-" if m != "auto" else "--", markersize=4)
        st = [value(r, mode) for r in sel if r["method"] == "static" and value(r, mode)]
        if st:
            ax.axhline(st[0], color="gray", linestyle=":", label="static cuDNN")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("experts")
        ax.set_ylabel("us per forward")
        ax.grid(True, which="both", alpha=0.3)
    for j in range(n, nrows * cols):
        axes[j // cols][j % cols].axis("off")
    handles = {}
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
    axes[0][0].legend(list(handles.values()), list(handles), fontsize=7)
    fig.suptitle(f"condconv-bench: time vs experts, {prec}, batch {batch}, {mode} "
                 f"({'CUDA-graph replay' if mode == 'graph' else 'plain launches'})")
    fig.tight_layout()
    path = os.path.join(out, f"experts_{prec}_b{batch}_{mode}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ratio(plt, rows, layers, prec, batch, mode, out, experts_wanted):
    static = {r["layer"]: value(r, mode) for r in rows if r["method"] == "static" and value(r, mode)}
    es = sorted({int(r["experts"]) for r in rows if r["method"] != "static"})
    if not static or not es:
        return None
    e_bar = experts_wanted if experts_wanted in es else (8 if 8 in es else es[-1])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(layers) + 4), 4.2),
                                   gridspec_kw={"width_ratios": [max(2, len(layers) / 3), 1]})
    width = 0.8 / len(METHODS)
    for k, m in enumerate(METHODS):
        xs, ys = [], []
        for i, layer in enumerate(layers):
            r = [x for x in rows if x["layer"] == layer and x["method"] == m and int(x["experts"]) == e_bar]
            if r and value(r[0], mode) and layer in static:
                xs.append(i + (k - len(METHODS) / 2 + 0.5) * width)
                ys.append(value(r[0], mode) / static[layer])
        if xs:
            ax1.bar(xs, ys, width=width, color=STYLE[m][0], label=m)
        pts = []
        for e in es:
            g = geomean([value(x, mode) / static[x["layer"]] for x in rows
                         if x["method"] == m and int(x["experts"]) == e and x["layer"] in static and value(x, mode)])
            if g:
                pts.append((e, g))
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker=STYLE[m][1], color=STYLE[m][0], label=m)
    ax1.axhline(1.0, color="gray", linestyle=":")
    ax1.set_xticks(range(len(layers)))
    ax1.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("time / static cuDNN conv")
    ax1.set_title(f"per layer, E = {e_bar}")
    ax1.legend(fontsize=7)
    ax1.grid(True, axis="y", which="both", alpha=0.3)
    ax2.axhline(1.0, color="gray", linestyle=":")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("experts")
    ax2.set_title("geometric mean over layers")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"condconv-bench: ratio to static, {prec}, batch {batch}, {mode}")
    fig.tight_layout()
    path = os.path.join(out, f"ratio_{prec}_b{batch}_{mode}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="condconv-bench --csv output")
    p.add_argument("--out", default=".", help="directory for the PNGs (default .)")
    p.add_argument("--mode", choices=("graph", "plain", "both"), default="graph")
    p.add_argument("--experts", type=int, default=8, help="expert count of the per-layer ratio bars (default 8)")
    args = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is not installed here (python3 -m pip install matplotlib). The CSV has every "
              f"number: copy {args.csv} to a machine with matplotlib and run\n"
              f"  python3 bench/plot.py {os.path.basename(args.csv)} --out DIR", file=sys.stderr)
        return 3
    rows = load(args.csv)
    if not rows:
        print(f"plot.py: no GPU rows with status ok in {args.csv} (a CPU-only run has nothing to plot)",
              file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    modes = ("graph", "plain") if args.mode == "both" else (args.mode,)
    written = []
    for prec in sorted({r["prec"] for r in rows}):
        for batch in sorted({int(r["batch"]) for r in rows if r["prec"] == prec}):
            sel = [r for r in rows if r["prec"] == prec and int(r["batch"]) == batch]
            layers = list(dict.fromkeys(r["layer"] for r in sel))
            for mode in modes:
                if not any(value(r, mode) for r in sel):
                    continue
                written.append(plot_experts(plt, sel, layers, prec, batch, mode, args.out))
                written.append(plot_ratio(plt, sel, layers, prec, batch, mode, args.out, args.experts))
    for path in written:
        if path:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
