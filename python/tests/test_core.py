"""condconv's NumPy core against an independent NumPy float64 reference.

The reference below is written from the definitions (GAP -> FC -> sigmoid or softmax(logits / tau) routing,
per-sample kernels mixed from the experts, a grouped, strided, dilated, padded convolution, bias, activation),
not from the C code. Layers are random; every dtype, both layouts, groups (dense, grouped, depthwise), strides,
unequal dilations, explicit and "same" padding, E from 1 to 32, odd sizes. Outputs are poisoned with NaN before
each run, so an element the library leaves unwritten fails. Tolerances follow the dtype: the CPU path accumulates
in double and rounds its output once to f32 and then to the dtype, so the error is about one unit in the last
place of the dtype, plus a small multiple of the summed magnitudes for the order of summation.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import condconv
from condconv import CondConvError, Context, Layer, LayerSpec, Status, _lib

# ---------------------------------------------------------------------------------------------------------------
# Independent helpers: dtype rounding without the library


def bf16_bits_from_f32(a: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even) and return the uint16 bit patterns."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(a)
    out = rounded.astype(np.uint16)
    out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)  # quiet NaN, sign kept
    return out


def f64_from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def quantize(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(array in the layer's NumPy type, its exact values as float64)."""
    if dtype == "f32":
        q = values.astype(np.float32)
        return q, q.astype(np.float64)
    if dtype == "f16":
        q = values.astype(np.float16)
        return q, q.astype(np.float64)
    q = bf16_bits_from_f32(values.astype(np.float32))
    return q, f64_from_bf16_bits(q)


def to_f64(a: np.ndarray, dtype: str) -> np.ndarray:
    return f64_from_bf16_bits(a) if dtype == "bf16" else a.astype(np.float64)


def poison(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return np.full(shape, 0x7FC0, dtype=np.uint16)
    return np.full(shape, np.nan, dtype=np.float32 if dtype == "f32" else np.float16)


# Relative rounding of one output value (double -> f32 -> dtype: at most one unit in the last place).
ULP_REL = {"f32": 2.0**-23, "f16": 2.0**-10, "bf16": 2.0**-7}


# ---------------------------------------------------------------------------------------------------------------
# The float64 reference


def ref_routing(x: np.ndarray, rw: np.ndarray, rb: np.ndarray | None, routing: str, tau: float) -> np.ndarray:
    gap = x.mean(axis=(2, 3))  # [N, C]
    logits = gap @ rw.T + (rb if rb is not None else 0.0)
    if routing == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits / float(np.float32(tau))  # the descriptor keeps tau as float
    z = z - z.max(axis=1, keepdims=True)
    ez = np.exp(z)
    return ez / ez.sum(axis=1, keepdims=True)


def ref_pads(size: int, k: int, s: int, d: int, padding: Any, axis: int) -> tuple[int, int, int]:
    """(out, pad_before, pad_after) along one axis."""
    eff = (k - 1) * d + 1
    if padding == "same":
        out = -(-size // s)
        total = max((out - 1) * s + eff - size, 0)
        return out, total // 2, total - total // 2
    p = padding if isinstance(padding, int) else padding[axis]
    return (size + 2 * p - eff) // s + 1, p, p


def ref_conv(x: np.ndarray, wb: np.ndarray, spec: LayerSpec) -> np.ndarray:
    """Per-sample grouped conv: x [N, C, H, W], wb [N, Cout, C/g, kh, kw] -> [N, Cout, Ho, Wo]."""
    n, c, h, w = x.shape
    kh, kw = spec.kernel_hw
    sh, sw = spec.stride_hw
    dh, dw = spec.dilation_hw
    ho, pt, pb = ref_pads(h, kh, sh, dh, spec.padding, 0)
    wo, pl, pr = ref_pads(w, kw, sw, dw, spec.padding, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    g = spec.groups
    cin_g, cout_g = c // g, spec.out_channels // g
    y = np.zeros((n, spec.out_channels, ho, wo))
    for gi in range(g):
        xs = xp[:, gi * cin_g : (gi + 1) * cin_g]
        ws = wb[:, gi * cout_g : (gi + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw]
                y[:, gi * cout_g : (gi + 1) * cout_g] += np.einsum("nchw,noc->nohw", patch, ws[:, :, :, i, j])
    return y


def ref_forward(
    x: np.ndarray,
    spec: LayerSpec,
    experts: np.ndarray,
    bias: np.ndarray | None,
    rw: np.ndarray | None,
    rb: np.ndarray | None,
    alpha: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, alpha, magnitude) in NCHW float64; magnitude is the same sum over absolute values."""
    if alpha is None:
        alpha = ref_routing(x, rw, rb, spec.routing, spec.temperature)
    wb = np.einsum("ne,eokhw->nokhw", alpha, experts)
    y = ref_conv(x, wb, spec)
    mag = ref_conv(np.abs(x), np.abs(wb), spec)
    if bias is not None:
        bb = alpha @ bias
        y += bb[:, :, None, None]
        mag += np.abs(bb)[:, :, None, None]
    if spec.activation == "relu":
        y = np.maximum(y, 0.0)
    elif spec.activation == "silu":
        y = y / (1.0 + np.exp(-y))
    return y, alpha, mag


# ---------------------------------------------------------------------------------------------------------------
# Random layers

# (spec arguments, N, H, W): dense, grouped, depthwise; strides, unequal dilations, explicit and "same" padding;
# every routing and activation; E from 1 to 32; odd sizes.
CASES: list[tuple[dict[str, Any], int, int, int]] = [
    (dict(in_channels=6, out_channels=8, kernel_size=3, padding=1, num_experts=4), 2, 7, 9),
    (dict(in_channels=5, out_channels=7, kernel_size=1, num_experts=1, activation="relu"), 3, 5, 3),
    (dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding="same", groups=8, num_experts=8,
          activation="silu"), 2, 9, 8),
    (dict(in_channels=6, out_channels=4, kernel_size=3, padding=(2, 1), dilation=(2, 1), groups=2, num_experts=3,
          routing="softmax", temperature=0.5, activation="relu"), 2, 8, 7),
    (dict(in_channels=4, out_channels=6, kernel_size=5, stride=2, padding="same", dilation=(1, 2), num_experts=32,
          routing="softmax", temperature=2.0), 2, 11, 7),
    (dict(in_channels=6, out_channels=9, kernel_size=(3, 1), stride=(1, 2), padding=(1, 0), groups=3, num_experts=5,
          routing="external", activation="silu"), 3, 6, 9),
    (dict(in_channels=3, out_channels=5, kernel_size=3, padding="same", dilation=2, num_experts=2, bias=False),
     1, 9, 10),
    (dict(in_channels=4, out_channels=4, kernel_size=2, stride=3, num_experts=6, activation="relu"), 2, 10, 13),
    (dict(in_channels=12, out_channels=12, kernel_size=(5, 3), stride=(2, 1), padding="same", dilation=(1, 3),
          groups=12, num_experts=16, routing="softmax", temperature=0.25), 2, 9, 11),
]  # fmt: skip


def make_layer(ctx: Context, kwargs: dict[str, Any], dtype: str, layout: str, seed: int) -> dict[str, Any]:
    """A random layer and the float64 values of its (dtype-rounded) parameters."""
    rng = np.random.default_rng(seed)
    spec = LayerSpec(**kwargs, dtype=dtype, layout=layout)
    e, cout, cin = spec.num_experts, spec.out_channels, spec.in_channels
    fan_in = spec.expert_shape[2] * spec.expert_shape[3] * spec.expert_shape[4]
    experts_q, experts = quantize(rng.standard_normal(spec.expert_shape) / np.sqrt(fan_in), dtype)
    bias_q, bias = quantize(rng.standard_normal((e, cout)) * 0.5, dtype) if spec.bias else (None, None)
    if spec.external_routing:
        rw_q = rw = rb_q = rb = None
    else:
        rw_q, rw = quantize(rng.standard_normal((e, cin)), dtype)
        rb_q, rb = quantize(rng.standard_normal(e) * 0.5, dtype)
    layer = Layer(ctx, spec, experts_q, bias_q, rw_q, rb_q)
    return dict(spec=spec, layer=layer, experts=experts, bias=bias, rw=rw, rb=rb, rng=rng,
                q=(experts_q, bias_q, rw_q, rb_q))  # fmt: skip


def run_poisoned(layer: Layer, x: np.ndarray, alpha_in: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """forward_cpu_ptr into NaN-poisoned y and routing_out."""
    spec = layer.spec
    if spec.channels_last:
        n, h, w, _ = x.shape
    else:
        n, _, h, w = x.shape
    ho, wo = layer.output_dims(h, w)
    shape = (n, ho, wo, spec.out_channels) if spec.channels_last else (n, spec.out_channels, ho, wo)
    y = poison(shape, spec.dtype)
    r = np.full((n, spec.num_experts), np.nan, dtype=np.float32)
    layer.forward_cpu_ptr(n, h, w, x.ctypes.data, y.ctypes.data, alpha_in.ctypes.data if alpha_in is not None else 0,
                          r.ctypes.data)  # fmt: skip
    return y, r


def assert_close(got: np.ndarray, ref: np.ndarray, mag: np.ndarray, dtype: str, what: str) -> None:
    assert not np.isnan(got).any(), f"{what}: {int(np.isnan(got).sum())} elements left unwritten (NaN)"
    tol = ULP_REL[dtype] * np.abs(ref) + 1e-6 * mag + 1e-30
    err = np.abs(got - ref)
    bad = np.argwhere(err > tol)
    assert bad.size == 0, (
        f"{what}: {len(bad)} of {ref.size} elements off; first at {tuple(bad[0])}: got {got[tuple(bad[0])]!r}, "
        f"want {ref[tuple(bad[0])]!r} (tol {tol[tuple(bad[0])]:.3g})"
    )


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_matches_reference(ctx: Context, case: int, dtype: str, layout: str) -> None:
    kwargs, n, h, w = CASES[case]
    m = make_layer(ctx, kwargs, dtype, layout, seed=1000 * case + 7)
    spec, layer, rng = m["spec"], m["layer"], m["rng"]
    x_q, x = quantize(rng.standard_normal((n, spec.in_channels, h, w)), dtype)
    x_in = np.ascontiguousarray(x_q.transpose(0, 2, 3, 1)) if spec.channels_last else x_q
    alpha_in = rng.uniform(0.0, 1.0, (n, spec.num_experts)).astype(np.float32) if spec.external_routing else None

    y_ref, alpha_ref, mag = ref_forward(x, spec, m["experts"], m["bias"], m["rw"], m["rb"],
                                        alpha_in.astype(np.float64) if alpha_in is not None else None)  # fmt: skip
    y, r = run_poisoned(layer, x_in, alpha_in)
    y64 = to_f64(y, dtype)
    if spec.channels_last:
        y64 = y64.transpose(0, 3, 1, 2)
    assert y64.shape == y_ref.shape
    assert_close(y64, y_ref, mag, dtype, f"y ({dtype} {layout})")
    # Routing weights are f32 in every dtype, computed in double.
    np.testing.assert_allclose(r, alpha_ref, rtol=2e-7, atol=1e-7)

    # The NumPy face gives the same bits.
    y2, r2 = layer.forward(x_in, alpha_in, return_routing=True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(r2, r)
    if not spec.external_routing:
        np.testing.assert_array_equal(layer.route(x_in), r)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_given_routing_equals_internal(ctx: Context, dtype: str) -> None:
    """An external-routing layer given the routing weights an internal one computed gives the same output."""
    kwargs = dict(in_channels=6, out_channels=6, kernel_size=3, padding="same", groups=2, num_experts=8,
                  routing="softmax", temperature=0.7, activation="silu")  # fmt: skip
    m = make_layer(ctx, kwargs, dtype, "nchw", seed=5)
    internal = m["layer"]
    experts_q, bias_q, _, _ = m["q"]
    external = Layer(ctx, LayerSpec(**{**kwargs, "routing": "external"}, dtype=dtype), experts_q, bias_q)
    x_q, _ = quantize(m["rng"].standard_normal((3, 6, 7, 5)), dtype)
    y_int, alpha = internal.forward(x_q, return_routing=True)
    y_ext = external.forward(x_q, routing_weights=alpha)
    # alpha goes through f32 on the external side only: equal up to that rounding.
    np.testing.assert_allclose(to_f64(y_ext, dtype), to_f64(y_int, dtype), rtol=ULP_REL[dtype] * 2, atol=1e-6)
    # And a different routing gives a different output (the test can fail).
    assert not np.array_equal(external.forward(x_q, routing_weights=np.ascontiguousarray(alpha[::-1])), y_int)


def test_timm_flattened_experts(ctx: Context) -> None:
    """timm stores experts as [E, Cout*Cin/g*kh*kw]: the same layer either way."""
    spec = LayerSpec(4, 6, 3, padding=1, groups=2, num_experts=3)
    rng = np.random.default_rng(3)
    experts = rng.standard_normal(spec.expert_shape).astype(np.float32)
    bias = rng.standard_normal((3, 6)).astype(np.float32)
    rw = rng.standard_normal((3, 4)).astype(np.float32)
    a = Layer(ctx, spec, experts, bias, rw)
    b = Layer(ctx, spec, experts.reshape(3, -1), bias, rw)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_parameters_converted_from_float(ctx: Context) -> None:
    """Float64 parameters given to half layers are rounded to nearest even, as the bit patterns would be."""
    rng = np.random.default_rng(11)
    base = dict(in_channels=3, out_channels=4, kernel_size=1, num_experts=2)
    experts = rng.standard_normal((2, 4, 3, 1, 1))
    bias = rng.standard_normal((2, 4))
    rw = rng.standard_normal((2, 3))
    x32 = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    for dtype in ("f16", "bf16"):
        spec = LayerSpec(**base, dtype=dtype)
        from_float = Layer(ctx, spec, experts, bias, rw)
        from_bits = Layer(ctx, spec, *(quantize(a, dtype)[0] for a in (experts, bias, rw)))
        x = quantize(x32.astype(np.float64), dtype)[0]
        np.testing.assert_array_equal(from_float.forward(x), from_bits.forward(x))


# ---------------------------------------------------------------------------------------------------------------
# Spec, dims, cost model, convert


@pytest.mark.parametrize("case", range(len(CASES)))
def test_output_dims_and_describe(ctx: Context, case: int) -> None:
    kwargs, _, h, w = CASES[case]
    spec = LayerSpec(**kwargs)
    ho, pt, pb = ref_pads(h, spec.kernel_hw[0], spec.stride_hw[0], spec.dilation_hw[0], spec.padding, 0)
    wo, pl, pr = ref_pads(w, spec.kernel_hw[1], spec.stride_hw[1], spec.dilation_hw[1], spec.padding, 1)
    assert spec.output_geometry(h, w) == (ho, wo, (pt, pb, pl, pr))
    m = make_layer(ctx, kwargs, "f32", "nchw", seed=case)
    assert m["layer"].output_dims(h, w) == (ho, wo)
    back = m["layer"].describe()
    assert back.kernel_hw == spec.kernel_hw
    assert back.stride_hw == spec.stride_hw
    assert back.dilation_hw == spec.dilation_hw
    assert back.groups == spec.groups
    assert back.num_experts == spec.num_experts
    assert back.bias == spec.bias
    assert back.routing == spec.routing
    assert back.activation == spec.activation
    assert back.same_padding == spec.same_padding


def test_cost_model() -> None:
    spec = LayerSpec(16, 32, 3, stride=2, padding="same", groups=2, num_experts=4)
    n, h, w = 3, 9, 9
    cost = spec.cost_model(n, h, w)
    ho, wo = spec.output_dims(h, w)
    w_elems = 32 * (16 // 2) * 3 * 3
    assert (cost["out_h"], cost["out_w"]) == (ho, wo) == (5, 5)
    assert cost["conv_macs"] == n * w_elems * ho * wo
    assert cost["aggregation_macs"] == n * 4 * (w_elems + 32)
    assert cost["routing_macs"] == n * 16 * 4
    assert cost["routing_adds"] == n * 16 * h * w
    assert cost["expert_params"] == 4 * w_elems
    assert cost["bias_params"] == 4 * 32


def test_convert_matches_independent_rounding() -> None:
    rng = np.random.default_rng(2)
    a = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 10.0 ** rng.integers(-6, 6, 1000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3e38, 65520.0, 1.00390625],
                                 dtype=np.float32)]).astype(np.float32)  # fmt: skip
    np.testing.assert_array_equal(condconv.convert(a, "f32", "bf16"), bf16_bits_from_f32(a))
    with np.errstate(over="ignore"):  # 3e38 overflows to inf in both
        np.testing.assert_array_equal(condconv.convert(a, "f32", "f16"), a.astype(np.float16))
    bits = bf16_bits_from_f32(a)
    np.testing.assert_array_equal(condconv.convert(bits, "bf16", "f32"), f64_from_bf16_bits(bits).astype(np.float32))
    nan_bits = condconv.convert(np.array([np.nan], np.float32), "f32", "bf16")
    assert np.isnan(f64_from_bf16_bits(nan_bits))[0]
    with pytest.raises(TypeError, match="float32"):
        condconv.convert(a.astype(np.float64), "f32", "f16")
    with pytest.raises(ValueError, match="dtype"):
        condconv.convert(a, "f64", "f16")  # type: ignore[arg-type]


def test_library_queries() -> None:
    assert condconv.version() == "0.1.0"
    assert condconv.algo_names() == ["auto", "cudnn_grouped", "gemm_batched", "depthwise_fused", "mixture", "fused"]
    assert condconv.backward_algo_names() == ["auto", "cudnn_grouped", "mixture", "folded_wgrad"]
    assert condconv.device_count() >= 0
    assert condconv.numpy_dtype("bf16") == np.uint16


# ---------------------------------------------------------------------------------------------------------------
# Failing statuses raise CondConvError with the status name and condconv_last_error()'s text


def expect_status(excinfo: pytest.ExceptionInfo[CondConvError], status: Status, *words: str) -> None:
    e = excinfo.value
    name = f"CONDCONV_STATUS_{status.name}"
    assert e.status == status
    assert e.status_name == name
    assert e.message.startswith(name), e.message  # condconv_last_error() opens with the status name
    assert name in str(e)
    for word in words:
        assert word in e.message, (word, e.message)


@pytest.mark.parametrize(
    ("kwargs", "status", "word"),
    [
        (dict(in_channels=6, out_channels=8, kernel_size=3, groups=4), Status.BAD_GROUPS, "groups"),
        (dict(in_channels=0, out_channels=8, kernel_size=3), Status.BAD_SIZE, "in_channels"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, stride=0), Status.BAD_SIZE, "stride"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, num_experts=0), Status.BAD_EXPERTS, "0"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, num_experts=129), Status.BAD_EXPERTS, "129"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, routing="softmax", temperature=0.0), Status.BAD_VALUE,
         "temperature"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, padding=-1), Status.BAD_SIZE, "pad"),
    ],
)  # fmt: skip
def test_bad_spec_raises(kwargs: dict[str, Any], status: Status, word: str) -> None:
    with pytest.raises(CondConvError) as excinfo:
        LayerSpec(**kwargs).validate()
    expect_status(excinfo, status, word)


def test_bad_calls_raise(ctx: Context) -> None:
    m = make_layer(ctx, dict(in_channels=4, out_channels=4, kernel_size=3, num_experts=2), "f32", "nchw", seed=1)
    layer: Layer = m["layer"]
    x = np.zeros((2, 4, 5, 5), np.float32)
    y = np.zeros((2, 4, 3, 3), np.float32)
    with pytest.raises(CondConvError) as excinfo:
        layer.forward_cpu_ptr(2, 5, 5, 0, y.ctypes.data)
    expect_status(excinfo, Status.NULL_POINTER, "condconv_forward_cpu")
    with pytest.raises(CondConvError) as excinfo:
        layer.forward(np.zeros((0, 4, 5, 5), np.float32))  # empty batch
    expect_status(excinfo, Status.BAD_SIZE)
    with pytest.raises(CondConvError) as excinfo:
        layer.forward(np.zeros((1, 4, 2, 2), np.float32))  # 3x3 kernel, no padding, 2x2 input
    expect_status(excinfo, Status.EMPTY_OUTPUT)
    with pytest.raises(CondConvError) as excinfo:
        layer.set_algo(99)
    expect_status(excinfo, Status.BAD_VALUE, "99")
    with pytest.raises(CondConvError) as excinfo:
        layer.plan_info(2, 5, 5)  # a CPU context has no GPU plans
    expect_status(excinfo, Status.NO_DEVICE, "CPU")
    with pytest.raises(CondConvError) as excinfo:
        layer.workspace_size(2, 5, 5)
    expect_status(excinfo, Status.NO_DEVICE)
    with pytest.raises(CondConvError) as excinfo:
        layer.forward_ptr(2, 5, 5, x.ctypes.data, y.ctypes.data)
    expect_status(excinfo, Status.NO_DEVICE)
    assert np.all(y == 0), "a failing call wrote its output"

    ext = Layer(ctx, LayerSpec(4, 4, 1, num_experts=2, routing="external"), np.ones((2, 4, 4, 1, 1)), np.ones((2, 4)))
    with pytest.raises(CondConvError) as excinfo:
        ext.forward_cpu_ptr(2, 5, 5, x.ctypes.data, np.zeros((2, 4, 5, 5), np.float32).ctypes.data)
    expect_status(excinfo, Status.MISSING_ROUTING)
    with pytest.raises(CondConvError) as excinfo:
        ext.route(x)
    expect_status(excinfo, Status.NOT_SUPPORTED, "external")


def test_gpu_context_without_device() -> None:
    if condconv.device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(CondConvError) as excinfo:
        Context(0)
    expect_status(excinfo, Status.NO_DEVICE)


def test_plan_info_on_cpu_context(ctx: Context) -> None:
    """Plans are GPU plans: on a CPU context plan info says so (NO_DEVICE), and set_algo still checks names."""
    m = make_layer(ctx, dict(in_channels=4, out_channels=4, kernel_size=1, num_experts=2), "f32", "nchw", seed=1)
    layer: Layer = m["layer"]
    layer.set_algo("gemm_batched")
    layer.set_algo(condconv.Algo.AUTO)
    with pytest.raises(ValueError, match="unknown algorithm"):
        layer.set_algo("winograd")
    layer.set_candidate("fused[nhwc coalesced]")
    layer.set_candidate(None)
    with pytest.raises(CondConvError) as excinfo:
        layer.set_candidate("winograd")
    expect_status(excinfo, Status.BAD_VALUE, "condconv_layer_set_candidate")
    layer.set_kernel_variants(0, -1)
    with pytest.raises(CondConvError) as excinfo:
        layer.set_kernel_variants(-5, 0)
    expect_status(excinfo, Status.BAD_VALUE, "condconv_layer_set_kernel_variants")
    layer.set_backward_algo("mixture")
    layer.set_backward_algo("folded_wgrad")
    layer.set_backward_algo("auto")
    with pytest.raises(ValueError, match="unknown backward algorithm"):
        layer.set_backward_algo("winograd")
    with pytest.raises(CondConvError) as excinfo:
        layer.set_backward_algo(7)
    expect_status(excinfo, Status.BAD_VALUE, "condconv_layer_set_backward_algo")
    layer.set_backward_deterministic(False)
    layer.set_backward_deterministic(True)
    with pytest.raises(CondConvError) as excinfo:
        layer.plan_info(1, 4, 4)
    expect_status(excinfo, Status.NO_DEVICE, "condconv_get_plan_info")
    for call, name in ((layer.backward_plan_info, "condconv_get_backward_plan_info"),
                       (layer.backward_workspace_size, "condconv_get_backward_workspace_size"),
                       (layer.backward_prepare, "condconv_backward_prepare")):  # fmt: skip
        with pytest.raises(CondConvError) as excinfo:
            call(1, 4, 4)
        expect_status(excinfo, Status.NO_DEVICE, name)


def test_context_options(ctx: Context) -> None:
    assert ctx.device == "cpu"
    assert ctx.is_cpu
    assert ctx.math == "f32"
    assert ctx.algo_select == "measure"
    ctx.set_math("tf32")
    ctx.set_algo_select("heuristic")
    assert ctx.math == "tf32"
    assert ctx.algo_select == "heuristic"
    with pytest.raises(ValueError, match="math"):
        ctx.set_math("fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        Context(-3)
    assert ctx.auto_budget == 1000.0
    ctx.set_auto_budget(0.0)
    assert ctx.auto_budget == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(CondConvError) as excinfo:
            ctx.set_auto_budget(bad)
        expect_status(excinfo, Status.BAD_VALUE, "condconv_context_set_auto_budget")
    assert ctx.auto_budget == 0.0


def test_close_order_and_lifetime() -> None:
    ctx = Context("cpu")
    layer = Layer(ctx, LayerSpec(2, 2, 1), np.ones((1, 2, 2, 1, 1)), np.zeros((1, 2)), np.ones((1, 2)))
    ctx.close()  # destroys the layer first
    assert layer.closed
    assert ctx.closed
    with pytest.raises(ValueError, match="closed"):
        layer.forward(np.ones((1, 2, 3, 3), np.float32))
    ctx.close()
    layer.close()


# ---------------------------------------------------------------------------------------------------------------
# Python-side validation: nothing reaches C


def test_array_validation(ctx: Context) -> None:
    spec = LayerSpec(4, 6, 3, padding=1, num_experts=2, layout="nhwc", dtype="f16")
    rng = np.random.default_rng(0)
    experts = rng.standard_normal(spec.expert_shape)
    bias, rw = rng.standard_normal((2, 6)), rng.standard_normal((2, 4))
    with pytest.raises(ValueError, match=r"experts must have shape \(2, 6, 4, 3, 3\)"):
        Layer(ctx, spec, experts[:, :5], bias, rw)
    with pytest.raises(ValueError, match="expert_bias"):
        Layer(ctx, spec, experts, None, rw)
    with pytest.raises(ValueError, match="routing_weight"):
        Layer(ctx, spec, experts, bias, None)
    with pytest.raises(ValueError, match="routing_weight"):
        Layer(ctx, spec, experts, bias, rw.T)
    with pytest.raises(TypeError, match="floating-point"):
        Layer(ctx, spec, experts.astype(np.int32), bias, rw)
    layer = Layer(ctx, spec, experts, bias, rw)
    x = np.zeros((2, 5, 5, 4), np.float16)
    assert layer.forward(x).shape == (2, 5, 5, 6)
    with pytest.raises(TypeError, match="float16"):
        layer.forward(x.astype(np.float32))  # wrong dtype array
    with pytest.raises(ValueError, match=r"\[N, H, W, Cin\]"):
        layer.forward(np.zeros((2, 4, 5, 5), np.float16))  # NCHW to an NHWC layer
    with pytest.raises(ValueError, match="C-contiguous"):
        layer.forward(np.zeros((2, 5, 10, 4), np.float16)[:, :, ::2])
    with pytest.raises(ValueError, match="4-D"):
        layer.forward(np.zeros((5, 5, 4), np.float16))
    with pytest.raises(ValueError, match="routes itself"):
        layer.forward(x, routing_weights=np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError, match="numpy"):
        layer.forward(x.tolist())  # type: ignore[arg-type]
    bf = Layer(ctx, LayerSpec(4, 6, 1, num_experts=2, dtype="bf16", routing="external"), experts[..., :1, :1], bias)
    with pytest.raises(TypeError, match="bfloat16 bit patterns"):
        bf.forward(np.zeros((1, 4, 2, 2), np.float32), np.zeros((1, 2), np.float32))
    xb = np.zeros((1, 4, 2, 2), np.uint16)
    with pytest.raises(ValueError, match="external"):
        bf.forward(xb)
    with pytest.raises(ValueError, match=r"\[N, E\] = \(1, 2\)"):
        bf.forward(xb, np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        bf.forward(xb, np.zeros((1, 2), np.float64))
    with pytest.raises(ValueError, match="padding"):
        LayerSpec(4, 4, 3, padding="valid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="routing"):
        LayerSpec(4, 4, 3, routing="gumbel")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# safetensors, written here from the format's definition (8-byte little-endian header length, JSON header,
# raw little-endian data)


def write_safetensors(tensors: dict[str, tuple[str, np.ndarray]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_safetensors_round_trip(ctx: Context, tmp_path: pathlib.Path, dtype: str) -> None:
    kwargs = dict(in_channels=6, out_channels=4, kernel_size=3, padding="same", groups=2, num_experts=4,
                  routing="softmax", temperature=0.5, activation="relu")  # fmt: skip
    m = make_layer(ctx, kwargs, dtype, "nhwc", seed=21)
    experts_q, bias_q, rw_q, rb_q = m["q"]
    st = {"f32": "F32", "f16": "F16", "bf16": "BF16"}[dtype]
    image = write_safetensors({
        "blocks.0.conv.weight": (st, experts_q.reshape(4, -1)),  # timm's flattened layout
        "blocks.0.conv.bias": (st, bias_q),
        "blocks.0.routing_fn.weight": (st, rw_q),
        "blocks.0.routing_fn.bias": (st, rb_q),
        "unrelated": ("F32", np.zeros(3, np.float32)),
    })  # fmt: skip
    path = tmp_path / "layer.safetensors"
    path.write_bytes(image)
    spec = m["spec"]
    from_file = Layer.from_safetensors(ctx, path, spec, "blocks.0.conv", "blocks.0.routing_fn")
    from_mem = Layer.from_safetensors(ctx, image, spec, "blocks.0.conv", "blocks.0.routing_fn")
    x = quantize(m["rng"].standard_normal((2, 5, 7, 6)), dtype)[0]
    want = m["layer"].forward(x)
    np.testing.assert_array_equal(from_file.forward(x), want)
    np.testing.assert_array_equal(from_mem.forward(x), want)
    # F32 tensors into a half layer round like the layer's own conversion; 5-D experts load too.
    f32_image = write_safetensors({
        "c.weight": ("F32", m["experts"].astype(np.float32)),
        "c.bias": ("F32", m["bias"].astype(np.float32)),
        "r.weight": ("F32", m["rw"].astype(np.float32)),
        "r.bias": ("F32", m["rb"].astype(np.float32)),
    })  # fmt: skip
    np.testing.assert_array_equal(Layer.from_safetensors(ctx, f32_image, spec, "c", "r").forward(x), want)


def test_safetensors_errors(ctx: Context, tmp_path: pathlib.Path) -> None:
    spec = LayerSpec(2, 3, 1, num_experts=2)
    good = {
        "c.weight": ("F32", np.ones((2, 6), np.float32)),
        "c.bias": ("F32", np.zeros((2, 3), np.float32)),
        "r.weight": ("F32", np.ones((2, 2), np.float32)),
    }
    Layer.from_safetensors(ctx, write_safetensors(good), spec, "c", "r").close()  # the routing bias may be absent
    with pytest.raises(CondConvError) as excinfo:
        Layer.from_safetensors(ctx, write_safetensors(good), spec, "conv", "r")
    expect_status(excinfo, Status.TENSOR_NOT_FOUND, "conv.weight")
    bad_shape = {**good, "c.bias": ("F32", np.zeros((2, 4), np.float32))}
    with pytest.raises(CondConvError) as excinfo:
        Layer.from_safetensors(ctx, write_safetensors(bad_shape), spec, "c", "r")
    expect_status(excinfo, Status.TENSOR_MISMATCH, "c.bias")
    with pytest.raises(CondConvError) as excinfo:
        Layer.from_safetensors(ctx, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ", spec, "c", "r")
    expect_status(excinfo, Status.BAD_FILE)
    with pytest.raises(CondConvError) as excinfo:
        Layer.from_safetensors(ctx, tmp_path / "absent.safetensors", spec, "c", "r")
    expect_status(excinfo, Status.IO_ERROR, "absent.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# Packaging: imports without torch; a missing library is a clear error, not a crash


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def test_imports_without_torch() -> None:
    r = _python("import sys; sys.modules['torch'] = None; import condconv; print(condconv.version())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.1.0"


def test_missing_library_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "nowhere" / "libcondconv.so")
    r = _python("import condconv\ntry:\n    condconv.version()\nexcept condconv.LibraryNotFoundError as e:\n"
                "    print('LNF', e)\n", CONDCONV_LIBRARY=missing)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("LNF")
    assert "pip install ." in r.stdout
    assert missing in r.stdout


# ---------------------------------------------------------------------------------------------------------------
# The ctypes structs follow include/condconv.h field for field: the library writes whole structs, so a field the
# header gained and Python lacks would be a write past the Python object (plan_info grew two fields once).

_HEADER = pathlib.Path(__file__).resolve().parents[2] / "include" / "condconv.h"


def _header_struct_fields(name: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", "", _HEADER.read_text(), flags=re.S)
    body = re.search(r"typedef struct " + name + r" \{(.*?)\} " + name + ";", text, flags=re.S)
    assert body, f"struct {name} not found in {_HEADER}"
    fields: list[str] = []
    for decl in filter(None, (d.strip() for d in body.group(1).split(";"))):
        declarators = decl.split(",")
        first = declarators[0].split()[-1]  # "size_t workspace_bytes" -> the declarator after the type
        for d in [first, *declarators[1:]]:
            fields.append(re.sub(r"\[.*\]", "", d).strip(" *"))
    return fields


@pytest.mark.skipif(not _HEADER.exists(), reason="the C header is not beside this test (installed wheel)")
@pytest.mark.parametrize(
    ("c_name", "py_struct"),
    [("condconv_layer_info", "LayerInfo"), ("condconv_cost", "Cost"), ("condconv_params", "Params"),
     ("condconv_plan_info", "PlanInfo"), ("condconv_backward_plan_info", "BackwardPlanInfo")],
)  # fmt: skip
def test_ctypes_structs_match_the_header(c_name: str, py_struct: str) -> None:
    py_fields = [f[0] for f in getattr(_lib, py_struct)._fields_]
    assert py_fields == _header_struct_fields(c_name)


# ---------------------------------------------------------------------------------------------------------------
# The backward's NumPy face (condconv_backward_cpu); its values are checked against finite differences and float64
# autograd in test_torch_autograd.py (and tests/test_backward_cpu.c): here the binding, by exact identities.


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_backward_numpy_face(ctx: Context, layout: str) -> None:
    """y = conv(x, sum_e alpha_e W_e) + sum_e alpha_e b_e is linear in x (no bias), in alpha, and jointly in (W, b),
    so by Euler's theorem <dy, y> = <dx, x> (bias-free layer) = <d_alpha, alpha> = <d_W, W> + <d_b, b>: each side
    summed in double from values the library rounded once to f32, equal within a few u of sum |terms|."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    e, cin, cout = 3, 4, 6
    for bias in (False, True):
        spec = LayerSpec(cin, cout, 3, stride=2, padding="same", groups=2, num_experts=e, bias=bias,
                         routing="external", layout=layout)  # fmt: skip
        experts = rng.standard_normal(spec.expert_shape).astype(np.float32)
        b = rng.standard_normal((e, cout)).astype(np.float32) if bias else None
        layer = Layer(ctx, spec, experts, b)
        x = rng.standard_normal((2, 7, 6, cin) if layout == "nhwc" else (2, cin, 7, 6)).astype(np.float32)
        alpha = rng.random((2, e)).astype(np.float32)
        y = layer.forward(x, routing_weights=alpha)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        grads = layer.backward(x, dy, routing_weights=alpha)
        assert set(grads) == {"x", "routing_weights", "experts"} | ({"expert_bias"} if bias else set())
        assert grads["x"].shape == x.shape
        assert grads["x"].dtype == np.float32
        assert grads["experts"].shape == spec.expert_shape

        def dot(a: np.ndarray, c: np.ndarray) -> tuple[float, float]:
            p = a.astype(np.float64) * c.astype(np.float64)
            return float(p.sum()), float(np.abs(p).sum())

        lhs, scale = dot(dy, y)
        sides = [dot(grads["routing_weights"], alpha), dot(grads["experts"], experts)]
        if bias:
            sides[1] = tuple(map(sum, zip(sides[1], dot(grads["expert_bias"], b))))  # type: ignore[arg-type]
        else:
            sides.append(dot(grads["x"], x))
        for value, mag in sides:
            assert abs(value - lhs) <= 4 * 2.0**-24 * (scale + mag), (value, lhs)
        only_x = layer.backward(x, dy, routing_weights=alpha, wrt=["x"])
        assert list(only_x) == ["x"]
        assert np.array_equal(only_x["x"], grads["x"])
    with pytest.raises(CondConvError, match="every output is NULL") as info:
        layer.backward(x, dy, routing_weights=alpha, wrt=[])
    assert info.value.status == Status.BAD_VALUE
    with pytest.raises(CondConvError, match="d_routing_weight and d_routing_bias must be NULL"):
        layer.backward(x, dy, routing_weights=alpha, wrt=["routing_weight"])
    with pytest.raises(ValueError, match="unknown gradient"):
        layer.backward(x, dy, routing_weights=alpha, wrt=["bias"])
    with pytest.raises(ValueError, match="dy must have y's shape"):
        layer.backward(x, dy[:1], routing_weights=alpha)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        layer.backward(x, dy.astype(np.float64), routing_weights=alpha)
    with pytest.raises(ValueError, match="routing is 'external'"):
        layer.backward(x, dy)
