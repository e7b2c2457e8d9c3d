#!/usr/bin/env python3
"""Merge condconv-bench's CSV with bench/peer_timm.py's CSV into one table.

One row per (layer, batch, precision, experts):

  ours     condconv's AUTO choice (algorithm, CUDA-graph and plain-launch
           time) and the fastest forced algorithm
  static   the static convolution of the same shape: cuDNN's (measured by
           condconv-bench) and PyTorch's (measured by peer_timm.py)
  timm     timm's CondConv2d with its routing function (graph and eager)
  ratios   ours / cuDNN static, timm / PyTorch static (each against the
           yardstick its own tool measured in the same run), and timm / ours

Plain launches (condconv-bench) and eager PyTorch (peer_timm.py) are both
"no CUDA graph, host overhead included"; they are compared with each other.
The peer CSV may also be bench/anchors/timm-vs-static-h200-*.csv (same
first columns); the table then says the timm numbers come from another run,
and they are a reference, not a measurement on this card.

  python3 bench/merge_peer.py bench.csv peer.csv --out merged.csv --md merged.md

Only the Python standard library is needed.
"""
import argparse
import csv
import math
import sys

OUR_METHODS = ("auto", "cudnn_grouped", "gemm_batched", "depthwise_fused", "mixture")
COLUMNS = ["shape", "batch", "prec", "experts", "our_algo", "our_graph_us", "our_plain_us", "our_best_method",
           "our_best_graph_us", "cudnn_static_graph_us", "cudnn_static_plain_us", "our_ratio_graph",
           "our_ratio_plain", "timm_graph_us", "timm_eager_us", "torch_static_graph_us", "torch_static_eager_us",
           "timm_ratio_graph", "timm_ratio_eager", "timm_over_ours_graph", "timm_over_ours_plain", "bench_device",
           "peer_device"]


def num(row, key):
    """A float from a CSV cell, or None (empty, missing, not a number)."""
    if row is None:
        return None
    try:
        v = float(row.get(key, ""))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def ratio(a, b):
    return a / b if a is not None and b is not None and b > 0 else None


def read_bench(path):
    ours, static, devices = {}, {}, set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "method" not in (reader.fieldnames or []) or "layer" not in (reader.fieldnames or []):
            sys.exit(f"merge_peer.py: {path} is not a condconv-bench CSV (no layer/method columns)")
        for row in reader:
            if row.get("status") != "ok":
                continue
            devices.add(row.get("device", ""))
            key = (row["layer"], int(row["batch"]), row["prec"])
            if row["method"] == "static":
                static[key] = row
            elif row["method"] in OUR_METHODS:
                ours.setdefault(key + (int(row["experts"]),), {})[row["method"]] = row
    return ours, static, devices


def read_peer(path):
    timm, static, devices = {}, {}, set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "shape" not in (reader.fieldnames or []) or "method" not in (reader.fieldnames or []):
            sys.exit(f"merge_peer.py: {path} is not a peer_timm.py CSV (no shape/method columns)")
        for row in reader:
            if row.get("status", "ok") != "ok":
                continue
            devices.add(row.get("device", ""))
            key = (row["shape"], int(row["batch"]), row["prec"])
            if row["method"] == "static":
                static[key] = row
            elif row["method"] == "timm_grouped":
                timm[key + (int(row["experts"]),)] = row
    return timm, static, devices


def merge(bench_path, peer_path):
    ours, cudnn_static, bench_devices = read_bench(bench_path)
    timm, torch_static, peer_devices = read_peer(peer_path)
    bench_device = ";".join(sorted(d for d in bench_devices if d)) or "?"
    peer_device = ";".join(sorted(d for d in peer_devices if d)) or "unknown (not measured in this run)"
    rows = []
    for key in sorted(set(ours) | set(timm), key=lambda k: (k[2], k[0], k[1], k[3])):
        shape, batch, prec, experts = key
        mine = ours.get(key, {})
        auto = mine.get("auto")
        timed = [(num(r, "graph_us"), m) for m, r in mine.items() if m != "auto" and num(r, "graph_us")]
        best = min(timed) if timed else (None, "")
        cs, ts, tm = cudnn_static.get(key[:3]), torch_static.get(key[:3]), timm.get(key)
        our_graph, our_plain = num(auto, "graph_us"), num(auto, "plain_us")
        timm_graph, timm_eager = num(tm, "graph_us"), num(tm, "eager_us")
        rows.append({
            "shape": shape, "batch": batch, "prec": prec, "experts": experts,
            "our_algo": auto.get("algo_run", "") if auto else "",
            "our_graph_us": our_graph, "our_plain_us": our_plain,
            "our_best_method": best[1], "our_best_graph_us": best[0],
            "cudnn_static_graph_us": num(cs, "graph_us"), "cudnn_static_plain_us": num(cs, "plain_us"),
            "our_ratio_graph": ratio(our_graph, num(cs, "graph_us")),
            "our_ratio_plain": ratio(our_plain, num(cs, "plain_us")),
            "timm_graph_us": timm_graph, "timm_eager_us": timm_eager,
            "torch_static_graph_us": num(ts, "graph_us"), "torch_static_eager_us": num(ts, "eager_us"),
            "timm_ratio_graph": ratio(timm_graph, num(ts, "graph_us")),
            "timm_ratio_eager": ratio(timm_eager, num(ts, "eager_us")),
            "timm_over_ours_graph": ratio(timm_graph, our_graph),
            "timm_over_ours_plain": ratio(timm_eager, our_plain),
            "bench_device": bench_device, "peer_device": peer_device,
        })
    return rows, bench_device, peer_device


def cell(v, digits=1):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def geomean(values):
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def markdown(rows, bench_device, peer_device):
    out = [f"condconv (condconv-bench) on {bench_device}; timm and PyTorch static (peer_timm.py) on {peer_device}.",
           "Times in microseconds per forward; x = time over the static convolution measured by the same tool.", ""]
    if bench_device != peer_device:
        out += ["**The two CSVs come from different cards or runs: compare ratios, not times.**", ""]
    out.append("| shape | batch | prec | E | ours (auto) | graph us | x cuDNN static | plain us | x static | "
               "timm graph us | x torch static | timm eager us | x static | timm/ours graph | timm/ours plain |")
    out.append("|" + "---|" * 15)
    for r in rows:
        out.append("| " + " | ".join([
            r["shape"], str(r["batch"]), r["prec"], str(r["experts"]), r["our_algo"],
            cell(r["our_graph_us"]), cell(r["our_ratio_graph"], 2),
            cell(r["our_plain_us"]), cell(r["our_ratio_plain"], 2),
            cell(r["timm_graph_us"]), cell(r["timm_ratio_graph"], 2), cell(r["timm_eager_us"]),
            cell(r["timm_ratio_eager"], 2), cell(r["timm_over_ours_graph"], 2), cell(r["timm_over_ours_plain"], 2),
        ]) + " |")
    out.append("")
    for prec in sorted({r["prec"] for r in rows}):
        sel = [r for r in rows if r["prec"] == prec]
        both = [r for r in sel if r["our_ratio_graph"] is not None and r["timm_ratio_graph"] is not None]
        parts = []
        for label, key, group in (("ours/static (graph)", "our_ratio_graph", both),
                                  ("timm/static (graph)", "timm_ratio_graph", both),
                                  ("timm/ours (graph)", "timm_over_ours_graph", both),
                                  ("ours/static (plain)", "our_ratio_plain", sel),
                                  ("timm/static (eager)", "timm_ratio_eager", sel)):
            g = geomean(r[key] for r in group)
            if g is not None:
                parts.append(f"{label} {g:.2f}x")
        if parts:
            out.append(f"geometric means, {prec}, {len(both)} cases with both: " + "; ".join(parts))
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench_csv", help="condconv-bench --csv output")
    p.add_argument("peer_csv", help="peer_timm.py --csv output (or an anchors CSV)")
    p.add_argument("--out", help="merged CSV")
    p.add_argument("--md", help="merged table as Markdown (also printed)")
    args = p.parse_args(argv)
    rows, bench_device, peer_device = merge(args.bench_csv, args.peer_csv)
    if not rows:
        print("merge_peer.py: no (shape, batch, prec, experts) in common and nothing to list", file=sys.stderr)
        return 1
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) if v is not None else ""
                            for k, v in r.items()})
    md = markdown(rows, bench_device, peer_device)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
