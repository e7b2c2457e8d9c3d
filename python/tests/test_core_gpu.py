"""The core's GPU face (raw device addresses) against the CPU path: every applicable algorithm, dtype and layout.

Skipped without a CUDA device. Device memory comes from the CUDA runtime libcondconv itself loaded (found in this
process's mappings), so no framework is needed. Tolerances are those of tests/test_gpu_forward.c: f32 strict 1e-5,
f16 1.5e-3, bf16 1.2e-2 of the summed magnitudes (the reference's ``mag``), plus a small absolute term.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from test_core import CASES, make_layer, poison, quantize, ref_forward, to_f64

import condconv
from condconv import Context

pytestmark = pytest.mark.skipif(condconv.device_count() == 0, reason="needs a CUDA device")

RTOL = {"f32": 1e-5, "f16": 1.5e-3, "bf16": 1.2e-2}
ATOL = {"f32": 1e-6, "f16": 1e-5, "bf16": 1e-4}


class Cudart:
    """cudaMalloc/cudaMemcpy/cudaFree/cudaDeviceSynchronize from the libcudart libcondconv loaded."""

    def __init__(self) -> None:
        condconv._lib.lib()
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart" in line}
        assert paths, "libcondconv is loaded but no libcudart is mapped"
        rt = ctypes.CDLL(sorted(paths)[0])
        rt.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        rt.cudaFree.argtypes = [ctypes.c_void_p]
        rt.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for fn in (rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpy, rt.cudaDeviceSynchronize):
            fn.restype = ctypes.c_int
        self.rt = rt
        self.live: list[int] = []

    def _ok(self, err: int, what: str) -> None:
        assert err == 0, f"{what} failed with cudaError {err}"

    def alloc(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self._ok(self.rt.cudaMalloc(ctypes.byref(p), max(nbytes, 1)), "cudaMalloc")
        self.live.append(p.value or 0)
        return p.value or 0

    def upload(self, a: np.ndarray) -> int:
        p = self.alloc(a.nbytes)
        self._ok(self.rt.cudaMemcpy(p, a.ctypes.data, a.nbytes, 1), "cudaMemcpy H2D")
        return p

    def download(self, p: int, like: np.ndarray) -> np.ndarray:
        out = np.empty_like(like)
        self._ok(self.rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        self._ok(self.rt.cudaMemcpy(out.ctypes.data, p, out.nbytes, 2), "cudaMemcpy D2H")
        return out

    def free_all(self) -> None:
        for p in self.live:
            self.rt.cudaFree(p)
        self.live.clear()


@pytest.fixture
def cuda() -> Iterator[Cudart]:
    rt = Cudart()
    yield rt
    rt.free_all()


@pytest.fixture
def gpu_ctx() -> Iterator[Context]:
    with Context(0) as context:
        yield context


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gpu_forward_every_algorithm(gpu_ctx: Context, cuda: Cudart, case: int, dtype: str, layout: str) -> None:
    kwargs, n, h, w = CASES[case]
    m: dict[str, Any] = make_layer(gpu_ctx, kwargs, dtype, layout, seed=1000 * case + 7)
    spec, layer, rng = m["spec"], m["layer"], m["rng"]
    x_q, x = quantize(rng.standard_normal((n, spec.in_channels, h, w)), dtype)
    x_in = np.ascontiguousarray(x_q.transpose(0, 2, 3, 1)) if spec.channels_last else x_q
    alpha_in = rng.uniform(0.0, 1.0, (n, spec.num_experts)).astype(np.float32) if spec.external_routing else None
    y_ref, alpha_ref, mag = ref_forward(x, spec, m["experts"], m["bias"], m["rw"], m["rb"],
                                        alpha_in.astype(np.float64) if alpha_in is not None else None)  # fmt: skip
    ho, wo = layer.output_dims(h, w)
    y_shape = (n, ho, wo, spec.out_channels) if spec.channels_last else (n, spec.out_channels, ho, wo)

    info = layer.plan_info(n, h, w)
    assert info["requested"] == "auto"
    assert info["algo"] in info["applicable"]
    assert info["backend"]
    assert info["reason"]
    # AUTO measured its candidates: the winner is the algorithm it runs, timed; the list names it starred.
    assert info["winner"].split("[")[0] == info["algo"]
    assert info["winner_us"] is not None
    assert info["winner_us"] >= 0
    assert "*" + info["winner"] + " " in info["candidates"]
    assert info["runner_up_us"] is None or info["runner_up_us"] >= info["winner_us"]
    d_x = cuda.upload(x_in)
    d_alpha = cuda.upload(alpha_in) if alpha_in is not None else 0
    for algo in info["applicable"]:
        layer.set_algo(algo)
        ws = layer.workspace_size(n, h, w)
        assert layer.plan_info(n, h, w)["algo"] == algo
        d_ws = cuda.alloc(ws) if ws else 0
        d_y = cuda.upload(poison(y_shape, dtype))
        d_r = cuda.upload(np.full((n, spec.num_experts), np.nan, np.float32))
        layer.forward_ptr(n, h, w, d_x, d_y, d_alpha, d_r, d_ws, ws)
        y = to_f64(cuda.download(d_y, poison(y_shape, dtype)), dtype)
        r = cuda.download(d_r, np.empty((n, spec.num_experts), np.float32))
        if spec.channels_last:
            y = y.transpose(0, 3, 1, 2)
        assert not np.isnan(y).any(), f"{algo}: elements left unwritten"
        bad = np.abs(y - y_ref) > ATOL[dtype] + RTOL[dtype] * mag
        assert not bad.any(), f"{algo} {dtype} {layout}: {int(bad.sum())} of {y.size} elements out of tolerance"
        np.testing.assert_allclose(r, alpha_ref, atol=2e-5, err_msg=f"{algo}: routing weights")
    if not spec.external_routing:
        d_r = cuda.upload(np.full((n, spec.num_experts), np.nan, np.float32))
        layer.route_ptr(n, h, w, d_x, d_r)
        r = cuda.download(d_r, np.empty((n, spec.num_experts), np.float32))
        np.testing.assert_allclose(r, alpha_ref, atol=2e-5, err_msg="condconv_route")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_gpu_backward_equals_cpu_backward(gpu_ctx: Context, cuda: Cudart, dtype: str, layout: str) -> None:
    """condconv_backward on device pointers against condconv_backward_cpu of the same layer (a CPU-context twin),
    every gradient; its plan is the deterministic baseline."""
    kwargs, n, h, w = CASES[0]
    m: dict[str, Any] = make_layer(gpu_ctx, kwargs, dtype, layout, seed=17)
    spec, layer, rng = m["spec"], m["layer"], m["rng"]
    info = layer.backward_plan_info(n, h, w)
    assert info["algo"] == "cudnn_grouped"
    assert info["deterministic"]
    assert info["backend"]
    x_q, _ = quantize(rng.standard_normal((n, spec.in_channels, h, w)), dtype)
    x_in = np.ascontiguousarray(x_q.transpose(0, 2, 3, 1)) if spec.channels_last else x_q
    alpha = rng.uniform(0.0, 1.0, (n, spec.num_experts)).astype(np.float32) if spec.external_routing else None
    y = layer.forward(x_in, routing_weights=alpha)  # the CPU path gives y's shape and dtype
    dy_q, _ = quantize(rng.standard_normal(y.shape), dtype)
    want = layer.backward(x_in, dy_q, routing_weights=alpha)
    ws = layer.backward_workspace_size(n, h, w)
    d_ws = cuda.alloc(ws) if ws else 0
    outs = {name: cuda.upload(poison(g.shape, dtype) if name == "x" else np.full(g.shape, np.nan, np.float32))
            for name, g in want.items()}  # fmt: skip
    layer.backward_ptr(
        n, h, w, cuda.upload(x_in), cuda.upload(alpha) if alpha is not None else 0, cuda.upload(dy_q),
        outs.get("x", 0), outs.get("routing_weights", 0), outs.get("experts", 0), outs.get("expert_bias", 0),
        outs.get("routing_weight", 0), outs.get("routing_bias", 0), d_ws, ws,
    )  # fmt: skip
    for name, ref in want.items():
        got = cuda.download(outs[name], np.empty_like(ref))
        got64, ref64 = (to_f64(got, dtype), to_f64(ref, dtype)) if name == "x" else (got.astype(np.float64), ref)
        err = float(np.max(np.abs(got64 - ref64)))
        scale = float(np.max(np.abs(ref64))) or 1.0
        assert not np.isnan(got64).any(), f"{name}: elements left unwritten"
        assert err <= {"f32": 1e-4, "f16": 1e-2, "bf16": 6e-2}[dtype] * scale, f"{name} {dtype} {layout}: {err}"


def test_gpu_context_options(gpu_ctx: Context) -> None:
    assert gpu_ctx.device == 0
    assert gpu_ctx.stream == 0  # the legacy default stream until set
    gpu_ctx.set_algo_select("heuristic")
    assert gpu_ctx.algo_select == "heuristic"
