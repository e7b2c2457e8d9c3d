#!/usr/bin/env python3
"""Golden vectors for condconv from timm's CondConv2d.

For each configuration below, builds timm's CondConv2d and a timm-style
routing function (global average pool -> nn.Linear -> sigmoid, as in timm's
EfficientNet CondConv blocks) from a fixed seed, runs them on a random input
and writes one small .safetensors file to tests/data/:

    x                    input [N, Cin, H, W]                        F32
    conv.weight          experts, timm's [E, Cout*Cin/g*kh*kw]
                         (5-D [E, Cout, Cin/g, kh, kw] where noted)  F32/F16/BF16
    conv.bias            expert biases [E, Cout] (biased layers)     F32/F16/BF16
    routing_fn.weight    routing FC [E, Cin]                         F32/F16/BF16
    routing_fn.bias      routing FC bias [E]                         F32/F16/BF16
    alpha                routing weights sigmoid(FC(GAP(x))) [N, E]  F32
    y                    timm's output [N, Cout, Ho, Wo]             F32

The __metadata__ (all strings, as safetensors requires) describes the layer
(in_channels ... has_bias, padding_mode explicit|same, pad_h, pad_w), the
input (n, h, w) and how the file was made (torch, timm and safetensors
versions, seed). tests/test_golden_cpu.c and tests/test_golden_gpu.c build
the descriptor from it.

Parameters stored as F16 or BF16 are rounded first, and timm runs on the
rounded values (in f32), so the outputs stay exact references for a loader
that converts exactly.

Half-precision runs (run_dtype F16 or BF16): x and the parameters are
rounded to that dtype and stored in it, and the file holds three results:
    y          timm's CondConv2d run in that dtype (what a PyTorch user of
               half precision gets)                            F16/BF16
    y_exact    timm in f32 on the same rounded values (the exact reference
               up to f32 summation)                            F32
    alpha      the routing function in f32 on the rounded x     F32
so a half-precision layer is checked tightly against y_exact and loosely
against timm's own half output.

Usage (torch CPU build, timm and safetensors from the package registry):
    python scripts/make_golden.py [--out tests/data] [--only NAME[,NAME]]
"""
import argparse
import json
import math
import os
import platform
import sys

import safetensors
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.layers import CondConv2d

SEED = 20240601
FORMAT = "condconv-golden-1"

# name, Cin, Cout, kernel, stride, padding (timm's argument), dilation, groups, E, bias, N, H, W, options
CONFIGS = [
    dict(name="pointwise", cin=16, cout=24, k=1, stride=1, padding="", dil=1, groups=1, E=4, bias=True,
         n=3, h=7, w=9),
    dict(name="pointwise_s2", cin=32, cout=16, k=1, stride=2, padding="", dil=1, groups=1, E=8, bias=True,
         n=3, h=9, w=11),
    dict(name="conv3x3_s2", cin=8, cout=16, k=3, stride=2, padding="", dil=1, groups=1, E=4, bias=True,
         n=3, h=11, w=9),
    # TF "same" with stride 2 on an even height: one more padding row below than above.
    dict(name="conv3x3_s2_same", cin=8, cout=12, k=3, stride=2, padding="same", dil=1, groups=1, E=8,
         bias=False, n=1, h=10, w=13),
    dict(name="depthwise3x3", cin=16, cout=16, k=3, stride=1, padding="", dil=1, groups=16, E=4, bias=True,
         n=3, h=9, w=9),
    dict(name="depthwise5x5_s2", cin=24, cout=24, k=5, stride=2, padding="", dil=1, groups=24, E=8, bias=True,
         n=3, h=15, w=13),
    dict(name="depthwise5x5_s2_same", cin=24, cout=24, k=5, stride=2, padding="same", dil=1, groups=24, E=4,
         bias=False, n=1, h=14, w=11),
    dict(name="depthwise3x3_x2", cin=8, cout=16, k=3, stride=1, padding="", dil=1, groups=8, E=4, bias=True,
         n=1, h=7, w=5),
    dict(name="grouped3x3", cin=16, cout=24, k=3, stride=1, padding="", dil=1, groups=4, E=4, bias=True,
         n=3, h=9, w=7, layout="5d"),
    dict(name="single_expert", cin=6, cout=10, k=3, stride=1, padding="", dil=1, groups=1, E=1, bias=False,
         n=1, h=9, w=5),
    dict(name="dilated3x3", cin=8, cout=8, k=3, stride=1, padding="", dil=2, groups=1, E=4, bias=True,
         n=1, h=13, w=9),
    dict(name="conv3x3_f16", cin=8, cout=8, k=3, stride=1, padding="", dil=1, groups=1, E=4, bias=True,
         n=3, h=7, w=7, dtype="F16"),
    dict(name="pointwise_bf16", cin=16, cout=16, k=1, stride=1, padding="", dil=1, groups=1, E=8, bias=True,
         n=3, h=5, w=5, dtype="BF16"),
    # Half-precision runs: x, parameters and timm's output in the dtype.
    dict(name="run_f16_pointwise", cin=32, cout=24, k=1, stride=1, padding="", dil=1, groups=1, E=8, bias=True,
         n=3, h=7, w=7, dtype="F16", run_dtype="F16"),
    dict(name="run_f16_conv3x3_s2_same", cin=8, cout=16, k=3, stride=2, padding="same", dil=1, groups=1, E=4,
         bias=True, n=2, h=10, w=9, dtype="F16", run_dtype="F16"),
    dict(name="run_f16_depthwise5x5_s2", cin=24, cout=24, k=5, stride=2, padding="", dil=1, groups=24, E=8,
         bias=True, n=3, h=15, w=13, dtype="F16", run_dtype="F16"),
    dict(name="run_bf16_pointwise", cin=32, cout=24, k=1, stride=1, padding="", dil=1, groups=1, E=8, bias=True,
         n=3, h=7, w=7, dtype="BF16", run_dtype="BF16"),
    dict(name="run_bf16_grouped3x3", cin=16, cout=24, k=3, stride=1, padding="", dil=1, groups=4, E=4, bias=True,
         n=2, h=9, w=7, dtype="BF16", run_dtype="BF16"),
    dict(name="run_bf16_depthwise3x3", cin=16, cout=16, k=3, stride=1, padding="", dil=1, groups=16, E=4,
         bias=False, n=3, h=9, w=9, dtype="BF16", run_dtype="BF16"),
    # Unequal dilation and stride per axis (timm takes (h, w) tuples): a reference or
    # kernel that swaps the two axes, or uses one for both, fails these.
    dict(name="conv3x3_dil21_s12", cin=8, cout=12, k=3, stride=(1, 2), padding="", dil=(2, 1), groups=1, E=4,
         bias=True, n=2, h=11, w=10),
    dict(name="depthwise3x3_dil12_s21", cin=16, cout=16, k=3, stride=(2, 1), padding="", dil=(1, 2), groups=16,
         E=4, bias=False, n=2, h=10, w=9),
]

TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def make_case(cfg, index):
    torch.manual_seed(SEED + index)
    conv = CondConv2d(cfg["cin"], cfg["cout"], kernel_size=cfg["k"], stride=cfg["stride"], padding=cfg["padding"],
                      dilation=cfg["dil"], groups=cfg["groups"], bias=cfg["bias"], num_experts=cfg["E"])
    routing_fn = torch.nn.Linear(cfg["cin"], cfg["E"])
    dtype = TORCH_DTYPES[cfg.get("dtype", "F32")]
    stored = {}
    with torch.no_grad():
        for prefix, module in (("conv", conv), ("routing_fn", routing_fn)):
            for pname, p in module.named_parameters():
                rounded = p.detach().to(dtype)
                p.copy_(rounded.to(torch.float32))  # timm runs on exactly what the file holds
                stored[f"{prefix}.{pname}"] = rounded.contiguous()
        # A per-sample, per-channel offset keeps GAP(x) O(1), so the routing
        # weights spread over (0, 1) instead of all sitting near 0.5.
        n, cin, h, w = cfg["n"], cfg["cin"], cfg["h"], cfg["w"]
        x = torch.randn(n, cin, h, w) + torch.randn(n, cin, 1, 1)
        run_dtype = cfg.get("run_dtype")
        if run_dtype:
            x = x.to(TORCH_DTYPES[run_dtype]).to(torch.float32)  # the values the file holds
        alpha = torch.sigmoid(routing_fn(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        y = conv(x, alpha)
        if run_dtype:
            half = TORCH_DTYPES[run_dtype]
            conv_half = conv.to(half)
            y_half = conv_half(x.to(half), alpha.to(half))
    if cfg.get("layout") == "5d":
        stored["conv.weight"] = stored["conv.weight"].reshape((cfg["E"],) + conv.weight_shape).contiguous()
    if run_dtype:
        tensors = dict(stored, x=x.to(half).contiguous(), alpha=alpha.contiguous(), y=y_half.contiguous(),
                       y_exact=y.contiguous())
    else:
        tensors = dict(stored, x=x.contiguous(), alpha=alpha.contiguous(), y=y.contiguous())

    same = cfg["padding"] == "same"
    pad_h, pad_w = (0, 0) if same else conv.padding
    meta = {
        "format": FORMAT,
        "name": cfg["name"],
        "generator": "scripts/make_golden.py",
        "seed": str(SEED + index),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "safetensors_version": safetensors.__version__,
        "python_version": platform.python_version(),
        "timm_module": "timm.layers.CondConv2d",
        "timm_padding_argument": json.dumps(cfg["padding"]),
        "routing": "sigmoid",
        "expert_prefix": "conv",
        "routing_prefix": "routing_fn",
        "weight_layout": "5d" if cfg.get("layout") == "5d" else "flat",
        "param_dtype": cfg.get("dtype", "F32"),
        "run_dtype": cfg.get("run_dtype", "F32"),
        "in_channels": cfg["cin"],
        "out_channels": cfg["cout"],
        "kernel_h": cfg["k"],
        "kernel_w": cfg["k"],
        "stride_h": conv.stride[0],
        "stride_w": conv.stride[1],
        "dilation_h": conv.dilation[0],
        "dilation_w": conv.dilation[1],
        "groups": cfg["groups"],
        "padding_mode": "same" if same else "explicit",
        "pad_h": pad_h,
        "pad_w": pad_w,
        "num_experts": cfg["E"],
        "has_bias": int(cfg["bias"]),
        "n": cfg["n"],
        "h": cfg["h"],
        "w": cfg["w"],
        "out_h": y.shape[2],
        "out_w": y.shape[3],
    }
    return tensors, {k: str(v) for k, v in meta.items()}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "tests", "data")))
    parser.add_argument("--only", default="", help="comma-separated names: write only these files (the others keep "
                        "the bytes, and the recorded versions, they were made with)")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    unknown = only - {cfg["name"] for cfg in CONFIGS}
    if unknown:
        sys.exit(f"--only: unknown configuration(s) {sorted(unknown)}")
    torch.set_num_threads(1)  # one summation order, run to run
    os.makedirs(args.out, exist_ok=True)
    total = 0
    written = 0
    for index, cfg in enumerate(CONFIGS):
        if only and cfg["name"] not in only:
            continue
        written += 1
        tensors, meta = make_case(cfg, index)
        path = os.path.join(args.out, f"golden_{cfg['name']}.safetensors")
        safetensors.torch.save_file(tensors, path, metadata=meta)
        size = os.path.getsize(path)
        total += size
        print(f"{path}: {size} bytes, y {list(tensors['y'].shape)}")
    print(f"{written} files, {total} bytes (torch {torch.__version__}, timm {timm.__version__})")
    if not only and total > 2 * 1024 * 1024:
        sys.exit("golden data exceeds 2 MB; shrink the configurations")


if __name__ == "__main__":
    main()
