"""condconv.torch on CUDA tensors: every dtype and both layouts against timm, CUDA graphs, streams, math mode.

Skipped, with the reason, without torch, timm or a CUDA device (this machine class has none: these have NOT run
until a device check runs them).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch", reason="condconv.torch tests need PyTorch")
timm = pytest.importorskip("timm", reason="condconv.torch tests need timm (the reference CondConv2d)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU tests of condconv.torch did not run", allow_module_level=True)

from timm.layers import CondConv2d as TimmCondConv2d  # noqa: E402

import condconv.torch as cct  # noqa: E402

# Max |got - expected| / max |expected| against timm in f64 on the CPU with the same (rounded) weights and inputs.
# Strict f32: the GPU sums in another order than the reference, well inside 1e-5 for one layer. TF32 rounds each
# operand to 10 mantissa bits (2^-11 relative), f16 stores per-sample intermediates and the output in 11 bits,
# bf16 in 8 (2^-9 relative each); a few such roundings, relative to the largest output.
TOL = {"f32": 1e-5, "tf32": 5e-3, "f16": 5e-3, "bf16": 4e-2}
DTYPES = {"f32": torch.float32, "tf32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

CASES = [
    {"in_channels": 32, "out_channels": 64, "kernel_size": 1, "num_experts": 8},
    {"in_channels": 48, "out_channels": 48, "kernel_size": 5, "groups": 48, "num_experts": 8},  # depthwise
    {"in_channels": 48, "out_channels": 48, "kernel_size": 3, "stride": 2, "padding": "same", "groups": 48},
    {"in_channels": 16, "out_channels": 32, "kernel_size": 3, "bias": True, "num_experts": 4},
    {"in_channels": 16, "out_channels": 24, "kernel_size": 3, "stride": 2, "groups": 2, "dilation": 2},
]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().cpu().abs().max().clamp_min(1e-30))


@pytest.fixture(autouse=True)
def _restore_tf32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32 = saved


def _pair(kw: dict[str, object], dtype: torch.dtype) -> tuple[TimmCondConv2d, cct.CondConv2d]:
    torch.manual_seed(21)
    ref = TimmCondConv2d(**kw).eval()
    if ref.bias is not None:
        with torch.no_grad():
            ref.bias.uniform_(-1, 1)
    ours = cct.CondConv2d(**kw)
    ours.load_state_dict(ref.state_dict())
    ours = ours.to("cuda", dtype)
    ref_rounded = copy.deepcopy(ref).double()
    ref_rounded.load_state_dict({k: v.to(dtype).double() for k, v in ref.state_dict().items()})
    return ref_rounded, ours


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("prec", ["f32", "tf32", "f16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_layer_cuda_equals_timm(kw: dict[str, object], prec: str, channels_last: bool) -> None:
    torch.backends.cudnn.allow_tf32 = prec == "tf32"
    dtype = DTYPES[prec]
    ref, ours = _pair(kw, dtype)
    torch.manual_seed(22)
    x = torch.randn(5, kw["in_channels"], 14, 14).to(dtype)
    alpha = torch.rand(5, ours.num_experts)
    xd = x.cuda()
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = ours(xd, alpha.cuda())
        expected = ref(x.double(), alpha.double())
    assert got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last) if channels_last else got.is_contiguous()
    info = ours.plan_info(xd)
    assert info["math"] == ("tf32" if prec == "tf32" else "f32"), info
    assert rel_diff(got, expected) <= TOL[prec], info


@pytest.mark.parametrize("prec", ["f32", "tf32", "f16", "bf16"])
def test_network_cuda_equals_stock(prec: str) -> None:
    torch.backends.cudnn.allow_tf32 = prec == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = DTYPES[prec]
    torch.manual_seed(0)
    stock = timm.create_model("efficientnet_cc_b0_8e", pretrained=False).eval()
    x = torch.randn(4, 3, 96, 96)
    with torch.inference_mode():
        expected = stock.double()(x.to(dtype).double())
        model = copy.deepcopy(stock).to("cuda", dtype)
        if dtype != torch.float32:
            model = model.to(memory_format=torch.channels_last)
        assert cct.convert(model) == 24
        xd = x.to("cuda", dtype)
        if dtype != torch.float32:
            xd = xd.contiguous(memory_format=torch.channels_last)
        got = model(xd)
    # A whole network: the rest of it (BN, SE, convs) runs in the dtype too, so the tolerance is the network's.
    tol = {"f32": 1e-4, "tf32": 2e-2, "f16": 2e-2, "bf16": 1e-1}[prec]
    assert rel_diff(got, expected) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_graph_capture_and_replay(dtype: torch.dtype, channels_last: bool) -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    stock = timm.create_model("efficientnet_cc_b0_4e", pretrained=False).eval()
    model = copy.deepcopy(stock).to("cuda", dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    cct.convert(model)
    static_x = torch.randn(2, 3, 64, 64, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(static_x)  # prepares every shape, outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = model(static_x)
        for seed in (1, 2):
            torch.manual_seed(seed)
            static_x.copy_(torch.randn(2, 3, 64, 64, device="cuda", dtype=dtype))
            graph.replay()
            torch.cuda.synchronize()
            eager = model(static_x)
            # The same plans and kernels run; only torch's own layers might pick another cuDNN algorithm.
            tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
            assert rel_diff(static_y, eager) <= tol, f"graph replay differs from eager (seed {seed})"


def test_unprepared_shape_inside_capture_raises() -> None:
    layer = cct.CondConv2d(16, 16, 3, num_experts=4).cuda().requires_grad_(False)
    x = torch.randn(2, 16, 10, 10, device="cuda")
    alpha = torch.rand(2, 4, device="cuda")
    layer(x, alpha)  # this shape is prepared
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="never run by this layer"), torch.cuda.graph(graph):
        layer(torch.randn(3, 16, 10, 10, device="cuda"), torch.rand(3, 4, device="cuda"))
    fresh = cct.CondConv2d(16, 16, 3, num_experts=4).cuda().requires_grad_(False)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturing a CUDA graph"), torch.cuda.graph(graph):
        fresh(x, alpha)


def test_runs_on_current_stream_without_host_sync() -> None:
    layer = cct.CondConv2d(32, 32, 3, num_experts=8, bias=True).cuda().requires_grad_(False)
    x = torch.randn(8, 32, 14, 14, device="cuda")
    alpha = torch.rand(8, 8, device="cuda")
    expected = layer(x, alpha)  # prepares on the default stream
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(10_000_000)  # keeps the stream busy: a forward on another stream would race
            got = layer(x, alpha)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream.synchronize()
    assert torch.equal(got, expected)


def test_second_device_or_current_device_kept() -> None:
    layer = cct.CondConv2d(8, 8, 3, num_experts=4).requires_grad_(False)
    last = torch.cuda.device_count() - 1
    layer = layer.to(f"cuda:{last}")
    before = torch.cuda.current_device()
    layer(torch.randn(1, 8, 6, 6, device=f"cuda:{last}"), torch.rand(1, 4, device=f"cuda:{last}"))
    assert torch.cuda.current_device() == before


def test_compile_and_export_on_cuda() -> None:
    torch.manual_seed(11)
    model = timm.create_model("efficientnet_cc_b0_8e", pretrained=False).eval().cuda()
    stock = next(m for m in model.modules() if type(m).__name__ == "CondConvResidual")
    block = copy.deepcopy(stock)
    cct.convert(block)
    x = torch.randn(4, block.conv_pw.in_channels, 14, 14, device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        expected = block(x)
        torch._dynamo.reset()
        got = torch.compile(block, fullgraph=True)(x)
    assert rel_diff(got, expected) <= 1e-5
    with torch.no_grad():
        program = torch.export.export(block, (x,))
        assert rel_diff(program.module()(x), expected) <= 1e-5


def _grads(model: torch.nn.Module, x: torch.Tensor, alpha: torch.Tensor | None, g: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of <model(x[, alpha]), g> with respect to x, alpha and every parameter, in that order."""
    model.zero_grad(set_to_none=True)
    xr = x.detach().clone().requires_grad_()
    ar = None if alpha is None else alpha.detach().clone().requires_grad_()
    y = model(xr) if ar is None else model(xr, ar)
    (y.float() * g.float()).sum().backward()
    out = [xr.grad] + ([] if ar is None else [ar.grad]) + [p.grad for p in model.parameters()]
    assert all(t is not None for t in out)
    return [t.detach().clone() for t in out]  # type: ignore[union-attr]


# The GPU backward against the CPU one (double accumulation) on the same rounded values: f32 accumulation and, for
# half types, the per-sample filters and filter gradients stored in the dtype (8u of the largest gradient).
GRAD_TOL = {"f32": 1e-4, "tf32": 1e-2, "f16": 8e-3, "bf16": 6e-2}


@pytest.mark.parametrize("prec", ["f32", "tf32", "f16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("routed", [False, True])
def test_backward_on_cuda_equals_cpu(prec: str, channels_last: bool, routed: bool) -> None:
    """condconv_backward (CUDA) against condconv_backward_cpu: every gradient of a layer with bias, external routing
    (CondConv2d) or softmax routing with a temperature (RoutedCondConv2d); twice, bitwise equal (deterministic)."""
    torch.backends.cudnn.allow_tf32 = prec == "tf32"
    dtype = DTYPES[prec]
    torch.manual_seed(5)
    kw: dict[str, object] = {"kernel_size": 3, "stride": 2, "padding": "same", "bias": True, "num_experts": 4}
    cpu = (
        cct.RoutedCondConv2d(8, 12, routing="softmax", temperature=2.0, **kw) if routed else cct.CondConv2d(8, 12, **kw)
    ).to(dtype)
    gpu = copy.deepcopy(cpu).cuda()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 8, 10, 9).to(dtype).contiguous(memory_format=fmt)
    alpha = None if routed else torch.rand(3, 4)
    g = torch.randn(3, 12, 5, 5).to(dtype)
    want = _grads(cpu, x, alpha, g)
    args = (x.cuda(), None if alpha is None else alpha.cuda(), g.cuda())
    got = _grads(gpu, *args)
    again = _grads(gpu, *args)
    for w, a, b in zip(want, got, again):
        assert a.device.type == "cuda"
        assert a.dtype == w.dtype
        assert a.shape == w.shape
        assert rel_diff(a, w) <= GRAD_TOL[prec]
        assert torch.equal(a, b), "the GPU backward is not deterministic"


def test_training_step_in_a_cuda_graph() -> None:
    """A training step's forward and backward captured in a CUDA graph after one eager step, replayed: the same
    gradients as eager (the backward plans its shape outside the capture)."""
    layer = cct.RoutedCondConv2d(8, 8, 3, num_experts=4, routing="sigmoid").cuda()
    x = torch.randn(2, 8, 6, 6, device="cuda")
    eager = _grads(layer, x, None, torch.ones(2, 8, 6, 6, device="cuda"))
    static_x = x.clone().requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer(static_x).sum().backward()  # plans forward and backward outside the capture
    torch.cuda.current_stream().wait_stream(side)
    layer.zero_grad(set_to_none=False)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layer(static_x).sum().backward()
    graph.replay()
    torch.cuda.synchronize()
    assert static_x.grad is not None
    assert torch.equal(static_x.grad, eager[0])
    for p, e in zip(layer.parameters(), eager[1:]):
        assert p.grad is not None
        assert torch.equal(p.grad, e)
