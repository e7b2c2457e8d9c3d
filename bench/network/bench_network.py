#!/usr/bin/env python3
"""Whole-network benchmark: timm's EfficientNet-CondConv-B0-8e, the same network converted to condconv, and the
static EfficientNet-B0, on one GPU (issue 17's measurement: does condconv close the network-level gap?).

    CONDCONV_LIBRARY=build/libcondconv.so PYTHONPATH=python python3 bench/network/bench_network.py --out out/net
    ... bench_network.py --dry-run --out /tmp/net     # no GPU: batch 1, tiny, on the CPU (CI smoke test)

Networks (random weights, eval, ``timm.create_model(..., pretrained=False)``, seed 0):
  stock      timm efficientnet_cc_b0_8e (CondConv2d: matmul aggregation + grouped F.conv2d)
  converted  the same model and weights after condconv.torch.convert (24 CondConv layers on condconv)
  static     timm efficientnet_b0 (the yardstick: +5.5% MACs is what the paper promises for CC-B0-8e)
Precisions: f32 (strict: TF32 off for cuDNN and matmul, NCHW), tf32 (TF32 on, NCHW), f16 and bf16 (channels-last,
model and input). Batches 1, 32, 128 (224x224 unless --size). Modes: eager (plain launches between two CUDA
events around --iters forwards: what a Python server sees, host overhead included) and graph (one forward
captured in a torch.cuda.CUDAGraph, replayed --iters times between two events: GPU time, launch gaps removed).
Each time is the median of --reps repeats after --warmup forwards, per forward, in ms. Mode train (issue 20,
--modes ...,train): one training step per iteration instead of a forward, eager: the model in train() mode
(BatchNorm on batch statistics), forward, loss = mean of the squared outputs (in f32), backward; for converted,
max_rel_diff is then over the parameters' gradients of one such step in eval() mode (converted vs stock, each
parameter's max |a - b| / max |b|, the largest).
The condconv layers' backward runs condconv_backward (GPU) or condconv_backward_cpu (dry run).

condconv_ms / condconv_share: for stock and converted in eager mode, the CondConv layers' own time: CUDA events
recorded by forward hooks around every CondConv layer (in a separate pass, so the hooks do not slow the timed one),
summed per forward; the share is that over the eager forward time. Graph mode has no per-layer split (empty).
max_rel_diff / max_abs_diff: converted vs stock at that precision and batch, same input: max |a - b| / max |b|.
layer_call_us (in the markdown): host time of one eager call of a converted 1x1 CondConv layer (batch 1, shape
prepared), the Python overhead the issue caps at 10 us.

Writes, into --out: network.csv (one row per network x batch x precision x mode, written as each row is measured,
so a run cut short keeps what ran) and network.md (the table, time over static and speed-up over stock at each
point). Without a GPU (and without --dry-run) it says so and exits 77, the CTest convention for "skipped".
Points run in order of value (batch 32 and 128 in f16 and TF32 first) and the run stops starting new points once
--budget-seconds have passed.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SKIP = 77
PRECISIONS = ("f32", "tf32", "f16", "bf16")
NETWORKS = ("stock", "converted", "static")
FIELDS = [
    "network",
    "batch",
    "prec",
    "mode",
    "median_ms",
    "min_ms",
    "condconv_ms",
    "condconv_share",
    "max_rel_diff",
    "max_abs_diff",
    "size",
    "iters",
    "reps",
    "device",
    "torch",
    "timm",
    "cuda",
    "cudnn",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/network"), help="output folder (created)")
    p.add_argument("--batch", default="1,32,128", help="comma-separated batch sizes")
    p.add_argument("--prec", default=",".join(PRECISIONS), help="comma-separated: f32,tf32,f16,bf16")
    p.add_argument("--modes", default="eager,graph", help="comma-separated: eager,graph,train")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--experts-model", default="efficientnet_cc_b0_8e", help="timm CondConv model")
    p.add_argument("--static-model", default="efficientnet_b0", help="timm static yardstick")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="forwards per timed repeat")
    p.add_argument("--reps", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--budget-seconds", type=float, default=0.0, help="stop starting new points after this (0: none)")
    p.add_argument("--library", type=Path, help="libcondconv.so to load (sets CONDCONV_LIBRARY; default: as set)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: batch 1 (2 with train), 32x32, f32, eager (and train if asked), on the CPU",
    )
    return p.parse_args(argv)


def rel_abs(a: Any, b: Any) -> tuple[float, float]:
    d = (a.double() - b.double()).abs().max().item()
    m = b.double().abs().max().item()
    return (d / m if m > 0 else float("inf") if d > 0 else 0.0), d


def order_of_value(batches: list[int], precs: list[str]) -> list[tuple[int, str]]:
    """The issue's target points first (batch 32/128 in f16 and TF32), then the rest."""

    def rank(point: tuple[int, str]) -> tuple[int, int, int]:
        b, p = point
        target = b in (32, 128) and p in ("f16", "tf32")
        return (0 if target else 1, -b if target else b, PRECISIONS.index(p) if p in PRECISIONS else 9)

    return sorted(((b, p) for b in batches for p in precs), key=rank)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import timm
        import torch

        import condconv.torch as cct

        self.torch, self.timm, self.cct, self.args = torch, timm, cct, args
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        torch.backends.cudnn.benchmark = not args.dry_run
        torch.manual_seed(0)
        self.base_stock = timm.create_model(args.experts_model, pretrained=False).eval()
        self.base_static = timm.create_model(args.static_model, pretrained=False).eval()
        self.env = {
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "timm": timm.__version__,
            "cuda": torch.version.cuda or "",
            "cudnn": str(torch.backends.cudnn.version() or ""),
        }

    # --- precision setup ---------------------------------------------------------------------------------------
    def set_precision(self, prec: str) -> tuple[Any, Any]:
        torch = self.torch
        tf32 = prec == "tf32"
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        dtype = {"f32": torch.float32, "tf32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[prec]
        fmt = torch.channels_last if prec in ("f16", "bf16") else torch.contiguous_format
        return dtype, fmt

    def models(self, dtype: Any, fmt: Any) -> dict[str, Any]:
        stock = copy.deepcopy(self.base_stock).to(self.device, dtype).to(memory_format=fmt)
        converted = copy.deepcopy(self.base_stock).to(self.device, dtype).to(memory_format=fmt)
        replaced = self.cct.convert(converted)
        if replaced != 24:
            raise RuntimeError(f"convert replaced {replaced} layers of {self.args.experts_model}, expected 24")
        static = copy.deepcopy(self.base_static).to(self.device, dtype).to(memory_format=fmt)
        return {"stock": stock, "converted": converted, "static": static}

    # --- timing ------------------------------------------------------------------------------------------------
    def _median(self, run_iters: Callable[[], None]) -> tuple[float, float]:
        torch, a = self.torch, self.args
        times = []
        for _ in range(a.reps):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run_iters()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / a.iters)
            else:
                t0 = time.perf_counter()
                run_iters()
                times.append((time.perf_counter() - t0) * 1e3 / a.iters)
        return statistics.median(times), min(times)

    def time_eager(self, model: Any, x: Any) -> tuple[float, float]:
        a = self.args
        for _ in range(a.warmup):
            model(x)

        def run() -> None:
            for _ in range(a.iters):
                model(x)

        return self._median(run)

    def time_graph(self, model: Any, x: Any) -> tuple[float, float]:
        torch, a = self.torch, self.args
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(a.warmup, 2)):
                model(x)  # prepares every shape outside the capture, fills cuDNN's benchmark cache
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
        for _ in range(2):
            graph.replay()

        def run() -> None:
            for _ in range(a.iters):
                graph.replay()

        return self._median(run)

    def train_step(self, model: Any, x: Any) -> None:
        model.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()

    def time_train(self, model: Any, x: Any) -> tuple[float, float]:
        """Eager training steps (train() mode), ms per step."""
        a = self.args
        model.train()
        try:
            for _ in range(a.warmup):
                self.train_step(model, x)

            def run() -> None:
                for _ in range(a.iters):
                    self.train_step(model, x)

            return self._median(run)
        finally:
            model.eval()

    def grad_diff(self, converted: Any, stock: Any, x: Any) -> tuple[float, float]:
        """The gradients of one step of each on x, in eval() mode: the largest per-parameter max |a - b| / max |b|,
        and the largest max |a - b|. Eval mode because train mode is ill-conditioned for this comparison: BatchNorm
        on batch statistics over few values per channel (batch 2 with a 1x1 head, as in the dry run) turns rounding
        differences into different signs, and dropout draws its own masks."""
        rel = absd = 0.0
        for m in (converted, stock):
            self.train_step(m, x)
        for (name, pa), (_, pb) in zip(converted.named_parameters(), stock.named_parameters()):
            if pb.grad is None or pa.grad is None:
                raise RuntimeError(f"no gradient for {name}")
            r, d = rel_abs(pa.grad, pb.grad)
            rel, absd = max(rel, r), max(absd, d)
        return rel, absd

    def condconv_time(self, model: Any, x: Any) -> float:
        """Summed time of the CondConv layers per eager forward, from CUDA events recorded by forward hooks."""
        torch, cct = self.torch, self.cct
        from timm.layers import CondConv2d as TimmCondConv2d

        layers = [m for m in model.modules() if isinstance(m, (TimmCondConv2d, cct.CondConv2d))]
        if self.device.type != "cuda" or not layers:
            return float("nan")
        pairs: list[tuple[Any, Any]] = []
        handles = []
        for layer in layers:

            def pre(_m: Any, _inp: Any) -> None:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                pairs.append((ev, None))

            def post(_m: Any, _inp: Any, _out: Any) -> None:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                pairs[-1] = (pairs[-1][0], ev)

            handles.append(layer.register_forward_pre_hook(pre))
            handles.append(layer.register_forward_hook(post))
        try:
            model(x)
            torch.cuda.synchronize()
            pairs.clear()
            reps = max(self.args.reps, 3)
            for _ in range(reps):
                model(x)
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in pairs) / reps
        finally:
            for h in handles:
                h.remove()

    def layer_call_us(self) -> float:
        """Host time of one eager call of a converted 1x1 layer at batch 1, its shape prepared (a dry run: a tiny
        layer, since the CPU path computes while the GPU path only launches)."""
        torch, cct = self.torch, self.cct
        cin, cout, hw, calls = (8, 8, 4, 20) if self.args.dry_run else (112, 672, 14, 200)
        layer = cct.CondConv2d(cin, cout, 1, num_experts=8).to(self.device).requires_grad_(False)
        x = torch.randn(1, cin, hw, hw, device=self.device)
        alpha = torch.rand(1, 8, device=self.device)
        for _ in range(10):
            layer(x, alpha)
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls):
                layer(x, alpha)
            samples.append((time.perf_counter() - t0) * 1e6 / calls)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return statistics.median(samples)


def write_markdown(rows: list[dict[str, Any]], path: Path, header: list[str]) -> None:
    def key(r: dict[str, Any]) -> tuple[str, int, str]:
        return (r["prec"], int(r["batch"]), r["mode"])

    by = {(r["network"], *key(r)): r for r in rows}
    points = sorted(
        {key(r) for r in rows}, key=lambda k: (PRECISIONS.index(k[0]) if k[0] in PRECISIONS else 9, k[1], k[2])
    )
    lines = [*header, ""]
    lines.append(
        "| prec | batch | mode | static ms | stock ms | converted ms | stock / static | converted / static "
        "| speed-up vs stock | CondConv share stock | CondConv share converted | max rel diff |"
    )
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ms(net: str, k: tuple[str, int, str]) -> float:
        r = by.get((net, *k))
        return float(r["median_ms"]) if r and r["median_ms"] != "" else float("nan")

    def share(net: str, k: tuple[str, int, str]) -> str:
        r = by.get((net, *k))
        return f"{float(r['condconv_share']):.0%}" if r and r["condconv_share"] not in ("", "nan") else ""

    for k in points:
        st, sk, cv = ms("static", k), ms("stock", k), ms("converted", k)
        r = by.get(("converted", *k))
        diff = r["max_rel_diff"] if r else ""

        def f(v: float, fmt: str = "{:.3f}") -> str:
            return "" if math.isnan(v) else fmt.format(v)

        lines.append(
            f"| {k[0]} | {k[1]} | {k[2]} | {f(st)} | {f(sk)} | {f(cv)} | {f(sk / st, '{:.2f}x')} "
            f"| {f(cv / st, '{:.2f}x')} | {f(sk / cv, '{:.2f}x')} | {share('stock', k)} | {share('converted', k)} "
            f"| {diff} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.library is not None:
        if not args.library.is_file():
            print(f"bench_network: --library {args.library} is not a file", file=sys.stderr)
            return 2
        os.environ["CONDCONV_LIBRARY"] = str(args.library.resolve())
    try:
        import timm  # noqa: F401
        import torch
    except ImportError as err:
        print(f"bench_network: needs torch and timm ({err}); skipped", file=sys.stderr)
        return SKIP
    if args.dry_run:
        # Batch 2 for a training step: at 32x32 the head's BatchNorm sees one value per channel at batch 1.
        train = "train" in args.modes.split(",")
        args.batch, args.prec, args.size = "2" if train else "1", "f32", 32
        args.warmup, args.iters, args.reps = 1, 1, 1
        torch.set_num_threads(1)  # a smoke test on a shared CI machine: no thread oversubscription
    elif not torch.cuda.is_available():
        print(
            "bench_network: no CUDA device, nothing measured (exit 77 = skipped). "
            "Run with --dry-run for the CPU smoke test.",
            file=sys.stderr,
        )
        return SKIP
    batches = [int(b) for b in args.batch.split(",") if b]
    precs = [p for p in args.prec.split(",") if p]
    modes = [m for m in args.modes.split(",") if m]
    bad = [p for p in precs if p not in PRECISIONS] + [m for m in modes if m not in ("eager", "graph", "train")]
    if bad:
        print(f"bench_network: unknown precision or mode {bad}", file=sys.stderr)
        return 2
    if args.dry_run:  # no CUDA graphs on the CPU
        modes = [m for m in modes if m != "graph"] or ["eager"]

    t_start = time.monotonic()
    bench = Bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = args.out / "network.csv", args.out / "network.md"
    rows: list[dict[str, Any]] = []
    failures = 0
    # Forwards run under inference_mode; the models are made outside it, so that train mode can take gradients.
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        fh.flush()
        current_prec = None
        nets: dict[str, Any] = {}
        for batch, prec in order_of_value(batches, precs):
            if args.budget_seconds and time.monotonic() - t_start > args.budget_seconds:
                print(f"bench_network: budget of {args.budget_seconds:.0f}s spent; stopping before {prec} b{batch}")
                break
            dtype, fmt = bench.set_precision(prec)
            if prec != current_prec:
                nets = bench.models(dtype, fmt)
                current_prec = prec
            torch.manual_seed(batch)
            x = torch.randn(batch, 3, args.size, args.size, device=bench.device, dtype=dtype).contiguous(
                memory_format=fmt
            )
            try:
                with torch.inference_mode():
                    ref = nets["stock"](x)
                    got = nets["converted"](x)
                rel, absd = rel_abs(got, ref)
                if "train" in modes:
                    grad_rel, grad_abs = bench.grad_diff(nets["converted"], nets["stock"], x)
            except Exception as err:
                print(f"bench_network: {prec} b{batch}: forward failed: {err!r}", file=sys.stderr)
                failures += 1
                continue
            for mode in modes:
                for name in NETWORKS:
                    model = nets[name]
                    try:
                        if mode == "train":
                            med, best = bench.time_train(model, x)
                            cc = float("nan")
                        else:
                            with torch.inference_mode():
                                med, best = (bench.time_eager if mode == "eager" else bench.time_graph)(model, x)
                                eager = mode == "eager" and name != "static"
                                cc = bench.condconv_time(model, x) if eager else float("nan")
                    except Exception as err:
                        print(f"bench_network: {name} {prec} b{batch} {mode}: {err!r}", file=sys.stderr)
                        failures += 1
                        continue
                    row = {
                        "network": name,
                        "batch": batch,
                        "prec": prec,
                        "mode": mode,
                        "median_ms": f"{med:.4f}",
                        "min_ms": f"{best:.4f}",
                        "condconv_ms": "" if math.isnan(cc) else f"{cc:.4f}",
                        "condconv_share": "" if math.isnan(cc) else f"{cc / med:.4f}",
                        "max_rel_diff": f"{grad_rel if mode == 'train' else rel:.3g}" if name == "converted" else "",
                        "max_abs_diff": f"{grad_abs if mode == 'train' else absd:.3g}" if name == "converted" else "",
                        "size": args.size,
                        "iters": args.iters,
                        "reps": args.reps,
                        **bench.env,
                    }
                    rows.append(row)
                    writer.writerow(row)
                    fh.flush()
                    print(
                        f"{name:9s} {prec:4s} b{batch:<4d} {mode:5s} {med:9.3f} ms"
                        + (f"  condconv {cc:.3f} ms" if not math.isnan(cc) else "")
                        + (f"  diff {grad_rel if mode == 'train' else rel:.2g}" if name == "converted" else ""),
                        flush=True,
                    )
        with torch.inference_mode():
            call_us = bench.layer_call_us()
    header = [
        "# Whole network: stock timm CondConv vs condconv-converted vs static",
        "",
        f"{args.experts_model} (stock, converted) and {args.static_model} (static), random weights, eval, "
        f"{args.size}x{args.size}; {bench.env['device']}, torch {bench.env['torch']}, timm {bench.env['timm']}, "
        f"CUDA {bench.env['cuda'] or '-'}, cuDNN {bench.env['cudnn'] or '-'}; median of {args.reps} x "
        f"{args.iters} forwards, ms per forward." + (" DRY RUN on the CPU: not a measurement." if args.dry_run else ""),
        "",
        f"Host time of one eager call of a converted 1x1 layer (batch 1): {call_us:.1f} us.",
    ]
    write_markdown(rows, md_path, header)
    print(f"bench_network: {len(rows)} rows -> {csv_path}, {md_path}")
    if args.dry_run:
        # Outputs within 1e-5 of stock; gradients within 1e-3 (f32 through the whole network's backward, the
        # library's CPU backward in double against torch's f32 autograd).
        bad_rows = [
            r
            for r in rows
            if r["network"] == "converted" and float(r["max_rel_diff"]) > (1e-3 if r["mode"] == "train" else 1e-5)
        ]
        if len(rows) != len(NETWORKS) * len(modes) or bad_rows:
            print(
                f"bench_network: dry run expected {len(NETWORKS) * len(modes)} rows, converted within tolerance of "
                f"stock; got {rows}",
                file=sys.stderr,
            )
            return 1
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    sys.exit(main())
