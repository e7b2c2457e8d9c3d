#!/usr/bin/env python3
"""timm's CondConv2d and PyTorch's static conv2d on the layers condconv-bench runs.

Side by side with condconv-bench, on the same card, in the same session:
the same layers, batch sizes, expert counts and precisions, timed two ways:

  graph_us  CUDA-graph replay (torch.cuda.CUDAGraph): `iters` forwards
            captured once and replayed between two CUDA events; launch gaps
            removed, the GPU time remains.
  eager_us  plain PyTorch launches between two CUDA events around `iters`
            forwards: what a Python server without graphs sees, host
            overhead included.

Median of --reps repeats after a warm-up. Every forward reads its own input,
rotated over enough inputs that they exceed twice the L2 (as condconv-bench).

Methods (as in bench/anchors/timm-vs-static-*.csv):
  static        one F.conv2d of the same shape (the yardstick)
  timm_grouped  timm.layers.CondConv2d with a timm-style routing function:
                global average pool -> nn.Linear(Cin, E) -> sigmoid, as in
                timm's CondConvResidual (aggregation by matmul, then one conv
                with groups = batch * groups)
  bmm           the same routing and aggregation, then torch.bmm (1x1, stride
                1, groups 1 only)
  moe_naive     one conv with E * Cout filters, then the alpha-weighted sum
Precisions: fp32 (TF32 off for conv and matmul), tf32 (TF32 on), fp16 and bf16
(channels-last, as the anchors).

--backward (issue 20, beside condconv-bench --backward): each iteration is a
training step's layer instead of a forward: the forward with autograd
recording (x and every parameter requiring grad, routing function included),
then backward of a fixed random dy; eager only (graph_us empty).

Output CSV columns start with the anchors' (shape,batch,prec,method,experts,
eager_us,graph_us), then the shape and the environment; bench/merge_peer.py
joins it with condconv-bench's CSV.

  python3 bench/peer_timm.py --from-csv bench.csv --csv peer.csv
  python3 bench/peer_timm.py --set issue5 --batch 1,32,128 --experts 8 --csv peer.csv
  python3 bench/peer_timm.py --dry-run        # no GPU needed: checks the methods agree, on the CPU
"""
import argparse
import csv
import datetime
import math
import statistics
import sys

# The layer sets of bench/layers.c: (cin, cout, k, stride, groups, H).
SETS = {
    "effnet-cc-b0": [
        (80, 480, 1, 1, 1, 14), (480, 480, 5, 1, 480, 14), (480, 112, 1, 1, 1, 14),
        (112, 672, 1, 1, 1, 14), (672, 672, 5, 1, 672, 14), (672, 112, 1, 1, 1, 14),
        (672, 672, 5, 2, 672, 14), (672, 192, 1, 1, 1, 7),
        (192, 1152, 1, 1, 1, 7), (1152, 1152, 5, 1, 1152, 7), (1152, 192, 1, 1, 1, 7),
        (1152, 1152, 3, 1, 1152, 7), (1152, 320, 1, 1, 1, 7),
    ],
    "mobilenet-v1": [
        (32, 64, 1, 1, 1, 112), (64, 128, 1, 1, 1, 56), (128, 128, 1, 1, 1, 56), (128, 256, 1, 1, 1, 28),
        (256, 256, 1, 1, 1, 28), (256, 512, 1, 1, 1, 14), (512, 512, 1, 1, 1, 14), (512, 1024, 1, 1, 1, 7),
        (1024, 1024, 1, 1, 1, 7),
    ],
    "resnet50": [
        (64, 64, 3, 1, 1, 56), (128, 128, 3, 2, 1, 56), (128, 128, 3, 1, 1, 28), (256, 256, 3, 2, 1, 28),
        (256, 256, 3, 1, 1, 14), (512, 512, 3, 2, 1, 14), (512, 512, 3, 1, 1, 7),
    ],
    "issue5": [
        (112, 672, 1, 1, 1, 14), (672, 672, 5, 1, 672, 14), (1152, 192, 1, 1, 1, 7),
        (1152, 1152, 3, 1, 1152, 7), (256, 256, 3, 1, 1, 14), (512, 512, 1, 1, 1, 14),
    ],
}
METHODS = ("static", "timm_grouped", "bmm", "moe_naive")
PRECS = ("fp32", "tf32", "fp16", "bf16")
CSV_COLUMNS = ["shape", "batch", "prec", "method", "experts", "eager_us", "graph_us", "eager_p10_us", "eager_p90_us",
               "graph_p10_us", "graph_p90_us", "cin", "cout", "k", "stride", "groups", "h", "w", "status", "note",
               "device", "torch", "timm", "cuda", "cudnn", "date"]


class Layer:
    def __init__(self, cin, cout, k, stride, groups, h, w=None):
        self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
        self.h, self.w = h, (w if w is not None else h)
        if cin % groups or cout % groups:
            raise ValueError(f"cin {cin} and cout {cout} must be multiples of groups {groups}")

    @property
    def pad(self):
        """PyTorch/timm static padding, as condconv-bench."""
        return ((self.stride - 1) + (self.k - 1)) // 2

    @property
    def name(self):
        """The shape name of bench/layers.c (bench_layer_set_name)."""
        if self.groups > 1 and self.groups == self.cin == self.cout:
            kind = f"dw{self.k}"
        elif self.groups == 1 and self.k == 1:
            kind = "pw"
        elif self.groups == 1:
            kind = f"c{self.k}"
        else:
            kind = f"g{self.groups}c{self.k}"
        if self.stride > 1:
            kind += f"s{self.stride}"
        chans = f"{self.cin}" if self.cin == self.cout else f"{self.cin}x{self.cout}"
        spatial = f"{self.h}" if self.h == self.w else f"{self.h}x{self.w}"
        return f"{kind}{'_' if kind[-1].isdigit() else ''}{chans}_{spatial}"

    def key(self):
        return (self.cin, self.cout, self.k, self.stride, self.groups, self.h, self.w)


def parse_list(text, kind=int):
    return [kind(v) for v in text.split(",") if v]


def parse_layer(spec):
    v = parse_list(spec)
    if len(v) not in (6, 7):
        raise argparse.ArgumentTypeError(f"--layer {spec}: expected cin,cout,k,stride,groups,H[,W]")
    return Layer(*v)


def plan_from_csv(path):
    """(layer, batch, prec, experts) cases from a condconv-bench CSV: the same
    shapes, batches, expert counts and precisions it measured."""
    layers, cases = {}, set()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                layer = Layer(*(int(row[c]) for c in ("cin", "cout", "k", "stride", "groups", "h", "w")))
            except (KeyError, ValueError):
                continue
            if row.get("method") == "cpu_reference":
                continue
            layers.setdefault(layer.key(), layer)
            cases.add((layer.key(), int(row["batch"]), row["prec"], int(row["experts"])))
    return layers, cases


def build_plan(args):
    """[(layer, batch, prec, [experts...])] in a stable order."""
    if args.from_csv:
        layers, cases = plan_from_csv(args.from_csv)
        grouped = {}
        for key, batch, prec, e in cases:
            grouped.setdefault((key, batch, prec), set())
            if e > 0:
                grouped[(key, batch, prec)].add(e)
        order = {key: i for i, key in enumerate(layers)}
        plan = [(layers[k], b, p, sorted(es)) for (k, b, p), es in grouped.items()]
        plan.sort(key=lambda t: (order[t[0].key()], t[1], t[2]))
        return plan
    layers = []
    for s in args.set or ([] if args.layer else ["effnet-cc-b0"]):
        for spec in SETS[s]:
            layer = Layer(*spec)
            if layer.key() not in [l.key() for l in layers]:
                layers.append(layer)
    for layer in args.layer or []:
        if layer.key() not in [l.key() for l in layers]:
            layers.append(layer)
    return [(l, b, p, list(args.experts)) for l in layers for b in args.batch for p in args.prec]


# ----------------------------------------------------------------- methods

def make_modules(torch, timm_layers, layer, experts, device, dtype):
    cc = timm_layers.CondConv2d(layer.cin, layer.cout, layer.k, stride=layer.stride, padding="",
                                groups=layer.groups, bias=False, num_experts=experts)
    routing = torch.nn.Linear(layer.cin, experts)
    return cc.to(device=device, dtype=dtype).eval(), routing.to(device=device, dtype=dtype).eval()


def forward_fn(torch, F, method, layer, cc, routing, static_w):
    """A callable x -> y for one method (no autograd)."""
    g, e = layer.groups, (cc.num_experts if cc is not None else 0)

    def route(x):
        return torch.sigmoid(routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))

    if method == "static":
        return lambda x: F.conv2d(x, static_w, None, layer.stride, layer.pad, 1, g)
    if method == "timm_grouped":
        return lambda x: cc(x, route(x))
    if method == "bmm":
        def bmm(x):
            b = x.shape[0]
            w = torch.matmul(route(x), cc.weight).view(b, layer.cout, layer.cin)
            return torch.bmm(w, x.reshape(b, layer.cin, -1)).view(b, layer.cout, layer.h, layer.w)
        return bmm
    if method == "moe_naive":
        # Experts reordered [g][E][Cout/g] so that the grouped conv sees each group's filters together.
        w_all = cc.weight.view(e, g, layer.cout // g, layer.cin // g, layer.k, layer.k)
        w_all = w_all.permute(1, 0, 2, 3, 4, 5).reshape(g * e * (layer.cout // g), layer.cin // g, layer.k, layer.k)
        w_all = w_all.contiguous()

        def moe(x):
            b = x.shape[0]
            z = F.conv2d(x, w_all, None, layer.stride, layer.pad, 1, g)
            z = z.view(b, g, e, layer.cout // g, z.shape[-2], z.shape[-1])
            y = torch.einsum("bgechw,be->bgchw", z, route(x))
            return y.reshape(b, layer.cout, z.shape[-2], z.shape[-1])
        return moe
    raise ValueError(method)


def applies(method, layer):
    if method == "bmm":
        return layer.k == 1 and layer.stride == 1 and layer.groups == 1
    return True


# ------------------------------------------------------------------ timing

def set_precision(torch, prec):
    tf32 = prec == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)


def time_method(torch, fn, inputs, iters, reps, warmup):
    """(eager [us], graph [us]) lists, per forward."""
    stream = torch.cuda.Stream()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n_in = len(inputs)
    eager, graph_t = [], []
    with torch.no_grad(), torch.cuda.stream(stream):
        k = 0
        for r in range(warmup + reps):
            start.record(stream)
            for _ in range(iters):
                fn(inputs[k % n_in])
                k += 1
            stop.record(stream)
            stop.synchronize()
            if r >= warmup:
                eager.append(start.elapsed_time(stop) * 1000.0 / iters)
        # Graphs: enough forwards per graph and graphs that replays walk all inputs.
        per_graph = max(iters, math.ceil(n_in / 8))
        graphs = []
        for gi in range(min(8, math.ceil(n_in / per_graph))):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream):
                for j in range(per_graph):
                    fn(inputs[(gi * per_graph + j) % n_in])
            graphs.append(g)
        for g in graphs:
            g.replay()
        for r in range(warmup + reps):
            start.record(stream)
            graphs[r % len(graphs)].replay()
            stop.record(stream)
            stop.synchronize()
            if r >= warmup:
                graph_t.append(start.elapsed_time(stop) * 1000.0 / per_graph)
    return eager, graph_t


def time_train(torch, fn, inputs, grads, params, iters, reps, warmup):
    """Eager [us] per forward + backward (x and params requiring grad, dy = grads)."""
    stream = torch.cuda.Stream()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n_in = len(inputs)
    eager = []
    with torch.cuda.stream(stream):
        k = 0
        for r in range(warmup + reps):
            start.record(stream)
            for _ in range(iters):
                for p in params:
                    p.grad = None
                x = inputs[k % n_in]
                x.grad = None
                torch.autograd.backward(fn(x), grads[k % n_in])
                k += 1
            stop.record(stream)
            stop.synchronize()
            if r >= warmup:
                eager.append(start.elapsed_time(stop) * 1000.0 / iters)
    return eager


def percentile(values, q):
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


# -------------------------------------------------------------------- main

def shrink(layer):
    """The same kind of layer (pointwise, depthwise, grouped, stride) with few
    channels and a small input, for the CPU check."""
    h, w = min(layer.h, 9), min(layer.w, 9)
    if layer.groups > 1 and layer.groups == layer.cin == layer.cout:
        c = min(layer.cin, 48)
        return Layer(c, c, layer.k, layer.stride, c, h, w)
    g = min(layer.groups, 4)
    return Layer(g * min(layer.cin // layer.groups, 12), g * min(layer.cout // layer.groups, 10), layer.k,
                 layer.stride, g, h, w)


def dry_run(args, plan):
    """No GPU: print the plan, then run every method once on the CPU at a
    small batch and check they agree with a per-sample reference."""
    import torch
    import torch.nn.functional as F
    import timm.layers as timm_layers
    print(f"peer_timm --dry-run: {len(plan)} (layer, batch, prec) cases, methods {','.join(args.methods)}")
    for layer, batch, prec, experts in plan:
        print(f"  {layer.name:16s} batch {batch:4d} {prec}  experts {','.join(map(str, experts)) or '-'}")
    torch.manual_seed(0)
    failures = 0
    checked = set()
    for layer, _, _, experts in plan:
        for e in experts[:1] or [4]:
            if (layer.key(), e) in checked:
                continue
            checked.add((layer.key(), e))
            small = shrink(layer)
            cc, routing = make_modules(torch, timm_layers, small, e, "cpu", torch.float64)
            x = torch.randn(3, small.cin, small.h, small.w, dtype=torch.float64)
            with torch.no_grad():
                alpha = torch.sigmoid(routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))
                ref = []
                for b in range(x.shape[0]):
                    wb = (alpha[b] @ cc.weight).view(small.cout, small.cin // small.groups, small.k, small.k)
                    ref.append(F.conv2d(x[b:b + 1], wb, None, small.stride, small.pad, 1, small.groups))
                ref = torch.cat(ref)
                for m in args.methods:
                    if m == "static" or not applies(m, small):
                        continue
                    y = forward_fn(torch, F, m, small, cc, routing, None)(x)
                    err = (y - ref).abs().max().item()
                    ok = y.shape == ref.shape and err < 1e-9
                    failures += not ok
                    print(f"  check {small.name:14s} E={e:2d} {m:13s} max |diff| {err:.2e} {'ok' if ok else 'FAIL'}")
                w = torch.randn(small.cout, small.cin // small.groups, small.k, small.k, dtype=torch.float64)
                y = forward_fn(torch, F, "static", small, None, None, w)(x)
                print(f"  check {small.name:14s} static output {tuple(y.shape)}")
    print("peer_timm --dry-run: " + ("all methods agree with the per-sample reference" if not failures
                                       else f"{failures} method(s) disagree"))
    return 1 if failures else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from-csv", help="take layers, batches, expert counts and precisions from a condconv-bench CSV")
    p.add_argument("--set", action="append", choices=sorted(SETS), help="a built-in layer set (repeatable)")
    p.add_argument("--layer", action="append", type=parse_layer, help="cin,cout,k,stride,groups,H[,W] (repeatable)")
    p.add_argument("--batch", type=parse_list, default=[32], help="batch sizes, e.g. 1,32,128 (default 32)")
    p.add_argument("--experts", type=parse_list, default=[1, 2, 4, 8, 16, 32], help="expert counts")
    p.add_argument("--prec", type=lambda s: parse_list(s, str), default=["fp32"], help="fp32,tf32,fp16,bf16")
    p.add_argument("--methods", type=lambda s: parse_list(s, str), default=["static", "timm_grouped"],
                   help="static,timm_grouped,bmm,moe_naive (default static,timm_grouped)")
    p.add_argument("--iters", type=int, default=20, help="forwards per timed loop and per graph (default 20)")
    p.add_argument("--reps", type=int, default=5, help="timed loops kept, median (default 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--csv", help="output CSV")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dry-run", action="store_true", help="no GPU: print the plan and check the methods on the CPU")
    p.add_argument("--backward", action="store_true", help="time forward + backward (eager) instead of the forward")
    args = p.parse_args(argv)
    for m in args.methods:
        if m not in METHODS:
            p.error(f"--methods: unknown {m} ({', '.join(METHODS)})")
    for pr in args.prec:
        if pr not in PRECS:
            p.error(f"--prec: unknown {pr} ({', '.join(PRECS)})")

    try:
        import torch
        import torch.nn.functional as F
        import timm
        import timm.layers as timm_layers
    except ImportError as e:
        print(f"peer_timm.py: needs torch and timm ({e}); install them (pip install torch timm)", file=sys.stderr)
        return 3
    plan = build_plan(args)
    if not plan:
        print("peer_timm.py: nothing to run (empty plan: check --from-csv / --set / --layer)", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args, plan)
    if not torch.cuda.is_available():
        print("peer_timm.py: no CUDA device is available to PyTorch (torch.cuda.is_available() is False), so "
              "nothing can be timed here. Run it on the GPU machine, or use --dry-run to check the methods "
              "on the CPU.", file=sys.stderr)
        return 3

    device = torch.device(args.device)
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    env = {"device": props.name, "torch": torch.__version__, "timm": timm.__version__,
           "cuda": torch.version.cuda or "", "cudnn": str(torch.backends.cudnn.version()),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    print(f"peer_timm: {env['device']}, torch {env['torch']}, timm {env['timm']}, CUDA {env['cuda']}, "
          f"cuDNN {env['cudnn']}; iters {args.iters}, reps {args.reps}")
    out = open(args.csv, "w", newline="") if args.csv else None
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if out else None
    if writer:
        writer.writeheader()
    print(f"{'shape':16s} {'batch':>5s} {'prec':4s} {'method':13s} {'E':>3s} {'eager_us':>10s} {'graph_us':>10s}")
    failures = 0
    for layer, batch, prec, experts in plan:
        dtype = set_precision(torch, prec)
        fmt = torch.channels_last if prec in ("fp16", "bf16") else torch.contiguous_format
        elem = 2 if dtype == torch.float16 else 4
        ho = (layer.h + 2 * layer.pad - layer.k) // layer.stride + 1
        wo = (layer.w + 2 * layer.pad - layer.k) // layer.stride + 1
        set_bytes = batch * (layer.cin * layer.h * layer.w + layer.cout * ho * wo) * elem
        n_in = max(2, min(512, math.ceil(2 * l2 / set_bytes) + 1))
        while n_in > 1 and n_in * set_bytes > torch.cuda.mem_get_info(device)[0] // 4:
            n_in -= 1
        inputs = [torch.randn(batch, layer.cin, layer.h, layer.w, device=device, dtype=dtype)
                  .contiguous(memory_format=fmt).requires_grad_(args.backward) for _ in range(n_in)]
        grads = [torch.randn(batch, layer.cout, ho, wo, device=device, dtype=dtype).contiguous(memory_format=fmt)
                 for _ in range(n_in)] if args.backward else []
        cases = []
        if "static" in args.methods:
            cases.append(("static", 0))
        for e in experts:
            for m in args.methods:
                if m != "static":
                    cases.append((m, e))
        for method, e in cases:
            row = {"shape": layer.name, "batch": batch, "prec": prec, "method": method, "experts": e,
                   "cin": layer.cin, "cout": layer.cout, "k": layer.k, "stride": layer.stride,
                   "groups": layer.groups, "h": layer.h, "w": layer.w, "status": "ok", "note": "", **env}
            if not applies(method, layer):
                row.update(status="n/a", note="bmm needs a 1x1 stride-1 ungrouped layer")
            else:
                try:
                    if method == "static":
                        cc = routing = None
                        w = torch.randn(layer.cout, layer.cin // layer.groups, layer.k, layer.k, device=device,
                                        dtype=dtype).contiguous(memory_format=fmt) / math.sqrt(
                                            layer.cin // layer.groups * layer.k * layer.k)
                    else:
                        cc, routing = make_modules(torch, timm_layers, layer, e, device, dtype)
                        w = None
                    fn = forward_fn(torch, F, method, layer, cc, routing, w)
                    if args.backward:
                        params = [w.requires_grad_()] if w is not None else [*cc.parameters(), *routing.parameters()]
                        eager = time_train(torch, fn, inputs, grads, params, args.iters, args.reps, args.warmup)
                        row.update(eager_us=f"{statistics.median(eager):.2f}",
                                   eager_p10_us=f"{percentile(eager, 0.1):.2f}",
                                   eager_p90_us=f"{percentile(eager, 0.9):.2f}", note="forward + backward, eager")
                    else:
                        eager, graph = time_method(torch, fn, inputs, args.iters, args.reps, args.warmup)
                        row.update(eager_us=f"{statistics.median(eager):.2f}",
                                   graph_us=f"{statistics.median(graph):.2f}",
                                   eager_p10_us=f"{percentile(eager, 0.1):.2f}",
                                   eager_p90_us=f"{percentile(eager, 0.9):.2f}",
                                   graph_p10_us=f"{percentile(graph, 0.1):.2f}",
                                   graph_p90_us=f"{percentile(graph, 0.9):.2f}")
                except RuntimeError as err:  # out of memory, or no kernel for this case
                    msg = str(err).splitlines()[0][:180]
                    row.update(status="n/a" if "out of memory" in msg else "error", note=msg)
                    failures += row["status"] == "error"
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            eager_cell = row.get("eager_us", row["status"])
            print(f"{layer.name:16s} {batch:5d} {prec:4s} {method:13s} {e:3d} {eager_cell:>10s} "
                  f"{row.get('graph_us', ''):>10s} {row['note']}", flush=True)
            if writer:
                writer.writerow(row)
                out.flush()
        del inputs
        torch.cuda.empty_cache()
    if out:
        out.close()
        print(f"CSV: {args.csv}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
