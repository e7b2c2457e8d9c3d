"""condconv.torch on CPU tensors (the library's reference path) against timm and explicit torch computations.

Skipped, with the reason, where torch or timm is not installed; everything here runs without a GPU.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="condconv.torch tests need PyTorch")
timm = pytest.importorskip("timm", reason="condconv.torch tests need timm (the reference CondConv2d)")

import torch.nn.functional as F  # noqa: E402
from timm.layers import CondConv2d as TimmCondConv2d  # noqa: E402

import condconv.torch as cct  # noqa: E402
from condconv.torch import CondConvInputError  # noqa: E402


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the issue's measure of agreement for whole networks."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def timm_pair(**kw: object) -> tuple[TimmCondConv2d, cct.CondConv2d]:
    torch.manual_seed(1234)
    ref = TimmCondConv2d(**kw).eval()
    if ref.bias is not None:
        with torch.no_grad():
            ref.bias.uniform_(-1.0, 1.0)  # timm's init leaves the biases small; make them matter
    ours = cct.CondConv2d(**kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


# --------------------------------------------------------------------------------------------------------------
# Whole networks


@pytest.mark.parametrize(
    ("name", "expected_layers"),
    [("efficientnet_cc_b0_4e", 24), ("efficientnet_cc_b0_8e", 24), ("efficientnet_cc_b1_8e", 33)],
)
def test_converted_network_equals_timm(name: str, expected_layers: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        expected = model(x)
        replaced = cct.convert(model)
        got = model(x)
    assert replaced == expected_layers
    assert sum(isinstance(m, TimmCondConv2d) and not isinstance(m, cct.CondConv2d) for m in model.modules()) == 0
    # The blocks still route once: every converted layer is fed by its block's routing_fn.
    blocks = [m for m in model.modules() if type(m).__name__ == "CondConvResidual"]
    assert blocks
    assert all(isinstance(b.conv_pw, cct.CondConv2d) and isinstance(b.conv_dw, cct.CondConv2d) for b in blocks)
    assert got.shape == expected.shape
    diff = rel_diff(got, expected)
    assert diff <= 1e-5, f"{name}: converted vs timm max abs diff / max abs = {diff:.3g}"


def test_convert_keeps_parameters_dtype_and_device() -> None:
    model = timm.create_model("efficientnet_cc_b0_4e", pretrained=False).eval().to(torch.bfloat16)
    before = {k: v for k, v in model.state_dict().items()}
    assert cct.convert(model) == 24
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert after[k].data_ptr() == v.data_ptr(), k  # the same tensors, not copies
        assert after[k].dtype == v.dtype, k
    convs = [m for m in model.modules() if isinstance(m, cct.CondConv2d)]
    assert len(convs) == 24
    assert all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert cct.convert(model) == 0  # nothing left to replace


def test_state_dict_round_trip_bitwise() -> None:
    torch.manual_seed(3)
    model = timm.create_model("efficientnet_cc_b0_8e", pretrained=False).eval()
    original = copy.deepcopy(model.state_dict())
    converted = copy.deepcopy(model)
    assert cct.convert(converted) == 24
    ours_sd = converted.state_dict()
    assert ours_sd.keys() == original.keys()
    back = timm.create_model("efficientnet_cc_b0_8e", pretrained=False).eval()
    back.load_state_dict(ours_sd, strict=True)
    for k, v in back.state_dict().items():
        assert v.dtype == original[k].dtype, k
        assert torch.equal(v, original[k]), k
    # A timm state_dict loads into a freshly converted model, bitwise too.
    fresh = timm.create_model("efficientnet_cc_b0_8e", pretrained=False)
    cct.convert(fresh)
    fresh.load_state_dict(original, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_layer_state_dict_both_ways() -> None:
    ref = TimmCondConv2d(16, 32, 3, stride=2, padding="same", groups=2, bias=True, num_experts=6)
    ours = cct.CondConv2d(16, 32, 3, stride=2, padding="same", groups=2, bias=True, num_experts=6)
    assert ours.weight.shape == ref.weight.shape == (6, 32 * 8 * 9)
    assert ours.bias is not None
    assert ours.bias.shape == ref.bias.shape == (6, 32)
    ours.load_state_dict(ref.state_dict(), strict=True)
    back = TimmCondConv2d(16, 32, 3, stride=2, padding="same", groups=2, bias=True, num_experts=6)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ref.state_dict().values()))


# --------------------------------------------------------------------------------------------------------------
# Single layers: timm's padding semantics, groups, stride, dilation, bias, layouts


LAYER_CASES = [
    {"in_channels": 8, "out_channels": 12, "kernel_size": 3},
    {"in_channels": 8, "out_channels": 12, "kernel_size": 3, "padding": "valid", "bias": True},
    {
        "in_channels": 8,
        "out_channels": 8,
        "kernel_size": 5,
        "stride": 2,
        "padding": "same",
        "groups": 8,
    },  # dynamic SAME
    {"in_channels": 8, "out_channels": 16, "kernel_size": 3, "stride": 2, "padding": "", "groups": 2, "bias": True},
    {"in_channels": 6, "out_channels": 9, "kernel_size": (3, 1), "padding": (1, 0), "dilation": 2, "groups": 3},
    {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "dilation": 2, "padding": "same"},  # static SAME
    {
        "in_channels": 8,
        "out_channels": 10,
        "kernel_size": 4,
        "stride": 3,
        "padding": "same",
        "bias": True,
    },  # asymmetric SAME
    {"in_channels": 8, "out_channels": 10, "kernel_size": 1, "num_experts": 1},
]


@pytest.mark.parametrize("kw", LAYER_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_layer_equals_timm(kw: dict[str, object], layout: str) -> None:
    kw = {"num_experts": 4, **kw}
    ref, ours = timm_pair(**kw)
    assert ours.padding == ref.padding
    assert ours.dynamic_padding == ref.dynamic_padding
    torch.manual_seed(5)
    x = torch.randn(3, kw["in_channels"], 13, 10)
    alpha = torch.rand(3, kw["num_experts"])
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(3, kw["in_channels"], 13, 20)[:, :, :, ::2]  # neither layout: made contiguous once
        assert not x.is_contiguous()
        assert not x.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = ref(x, alpha)
        got = ours(x, alpha)
    assert got.shape == expected.shape
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)
    else:
        assert got.is_contiguous()
    assert rel_diff(got, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_layer_on_cpu(dtype: torch.dtype) -> None:
    """f16/bf16 on the CPU reference path: the same rounded weights and inputs, computed in f32 by timm."""
    ref, ours = timm_pair(in_channels=8, out_channels=12, kernel_size=3, bias=True, num_experts=4)
    ours = ours.to(dtype)
    ref_rounded = copy.deepcopy(ref)
    ref_rounded.load_state_dict({k: v.to(dtype).float() for k, v in ref.state_dict().items()})
    x = torch.randn(2, 8, 9, 9).to(dtype)
    alpha = torch.rand(2, 4)
    with torch.no_grad():
        expected = ref_rounded(x.float(), alpha)
        got = ours(x, alpha)
    assert got.dtype == dtype
    # One rounding of the output (f32 accumulation inside): half an ulp of the dtype, relative to the largest.
    tol = 2e-3 if dtype == torch.float16 else 1.6e-2
    assert rel_diff(got.float(), expected) <= tol


def test_parameter_update_invalidates_cache() -> None:
    ref, ours = timm_pair(in_channels=8, out_channels=8, kernel_size=3, num_experts=4)
    x, alpha = torch.randn(2, 8, 7, 7), torch.rand(2, 4)
    with torch.no_grad():
        first = ours(x, alpha)
        assert cct.cached_layer_count(ours.layer_id) == 1
        ours(x.contiguous(memory_format=torch.channels_last), alpha)
        assert cct.cached_layer_count(ours.layer_id) == 2  # one C layer per layout
        ref.weight.mul_(-2.0)  # new weights, loaded in place (bumps _version, same data_ptr)
        ours.load_state_dict(ref.state_dict())
        second = ours(x, alpha)
        assert cct.cached_layer_count(ours.layer_id) == 1  # both stale layers dropped, one rebuilt
        assert rel_diff(second, ref(x, alpha)) <= 1e-5
        assert rel_diff(second, -2.0 * first) <= 1e-5
        ours.weight.data = ours.weight.data * 0.5  # a new tensor
        assert rel_diff(ours(x, alpha), -first) <= 1e-5


# --------------------------------------------------------------------------------------------------------------
# Self-routing form


@pytest.mark.parametrize(("routing", "temperature"), [("sigmoid", 1.0), ("softmax", 1.0), ("softmax", 30.0)])
def test_routed_layer_equals_explicit_torch(routing: str, temperature: float) -> None:
    torch.manual_seed(7)
    layer = cct.RoutedCondConv2d(
        8, 12, 3, stride=2, padding="same", groups=2, bias=True, num_experts=5, routing=routing, temperature=temperature
    )
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
        layer.routing_fn.weight.mul_(4.0)
    x = torch.randn(3, 8, 11, 12)
    with torch.no_grad():
        logits = F.linear(x.mean(dim=(2, 3)), layer.routing_fn.weight, layer.routing_fn.bias)
        alpha = torch.sigmoid(logits) if routing == "sigmoid" else torch.softmax(logits / temperature, dim=1)
        # Explicit per-sample kernels and the TensorFlow SAME padding, written out.
        outs = []
        for b in range(x.shape[0]):
            w = (alpha[b] @ layer.weight).view(12, 4, 3, 3)
            bias = alpha[b] @ layer.bias
            ih, iw = x.shape[2:]
            ph = max((-(-ih // 2) - 1) * 2 + 3 - ih, 0)
            pw = max((-(-iw // 2) - 1) * 2 + 3 - iw, 0)
            xb = F.pad(x[b : b + 1], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            outs.append(F.conv2d(xb, w, bias, stride=2, groups=2))
        expected = torch.cat(outs)
        got = layer(x)
    assert got.shape == expected.shape
    assert rel_diff(got, expected) <= 1e-5


def test_routed_layer_rejects_bad_routing() -> None:
    with pytest.raises(ValueError, match="routing must be"):
        cct.RoutedCondConv2d(8, 8, routing="relu")
    with pytest.raises(ValueError, match="temperature"):
        cct.RoutedCondConv2d(8, 8, routing="softmax", temperature=0.0)


# --------------------------------------------------------------------------------------------------------------
# torch.compile and torch.export


def _converted_block() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(11)
    model = timm.create_model("efficientnet_cc_b0_8e", pretrained=False).eval()
    stock = next(m for m in model.modules() if type(m).__name__ == "CondConvResidual")
    block = copy.deepcopy(stock)
    assert cct.convert(block) == 3
    return stock, block


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_converted_block(backend: str) -> None:
    stock, block = _converted_block()
    x = torch.randn(2, block.conv_pw.in_channels, 12, 12)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    with torch.no_grad():
        expected = stock(x)
        got = compiled(x)
        got_cl = compiled(x.contiguous(memory_format=torch.channels_last))
    assert rel_diff(got, expected) <= 1e-5
    assert rel_diff(got_cl, expected) <= 1e-5


def test_export_converted_block() -> None:
    stock, block = _converted_block()
    x = torch.randn(2, block.conv_pw.in_channels, 12, 12)
    with torch.no_grad():
        program = torch.export.export(block, (x,))
        targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        assert sum("condconv.cond_conv2d" in t for t in targets) == 3, targets
        got = program.module()(x)
        expected = stock(x)
    assert rel_diff(got, expected) <= 1e-5


def test_export_routed_layer() -> None:
    layer = cct.RoutedCondConv2d(8, 12, 3, num_experts=4, routing="softmax", temperature=2.0).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        program = torch.export.export(layer, (x,))
        assert any("routed_cond_conv2d" in str(n.target) for n in program.graph.nodes)
        assert torch.equal(program.module()(x), layer(x))


def test_fake_tensor_shapes_and_strides() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = cct.CondConv2d(8, 16, 5, stride=2, padding="same", num_experts=3)
    mode = FakeTensorMode()
    w = mode.from_tensor(layer.weight.detach())
    with mode:
        x = torch.empty(2, 8, 11, 11).contiguous(memory_format=torch.channels_last)
        alpha = torch.empty(2, 3)
        y = torch.ops.condconv.cond_conv2d(x, alpha, w, None, layer.geom, layer.layer_id)
    assert tuple(y.shape) == (2, 16, 6, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------------------------
# Bad inputs raise clear errors


@pytest.fixture
def layer() -> cct.CondConv2d:
    return cct.CondConv2d(8, 12, 3, num_experts=4)


def test_wrong_dtype(layer: cct.CondConv2d) -> None:
    with torch.no_grad():
        with pytest.raises(CondConvInputError, match="float64"):
            layer(torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.rand(2, 4))
        with pytest.raises(CondConvInputError, match=r"weight is torch\.float32"):
            layer(torch.randn(2, 8, 5, 5, dtype=torch.float16), torch.rand(2, 4))
        with pytest.raises(CondConvInputError, match="floating point"):
            layer(torch.randn(2, 8, 5, 5), torch.ones(2, 4, dtype=torch.int64))


def test_wrong_device(layer: cct.CondConv2d) -> None:
    with torch.no_grad():
        with pytest.raises(CondConvInputError, match="x is on meta"):
            layer(torch.empty(2, 8, 5, 5, device="meta"), torch.rand(2, 4))
        with pytest.raises(CondConvInputError, match="routing_weights are on meta"):
            layer(torch.randn(2, 8, 5, 5), torch.empty(2, 4, device="meta"))
    if torch.cuda.is_available():
        with torch.no_grad(), pytest.raises(CondConvInputError, match="cuda"):
            layer(torch.randn(2, 8, 5, 5, device="cuda"), torch.rand(2, 4, device="cuda"))


def test_mismatched_routing_shape(layer: cct.CondConv2d) -> None:
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        for alpha in (torch.rand(2, 5), torch.rand(3, 4), torch.rand(8), torch.rand(2, 4, 1)):
            with pytest.raises(CondConvInputError, match=r"routing_weights must be \[N, E\] = \[2, 4\]"):
                layer(x, alpha)


def test_wrong_channels_and_rank(layer: cct.CondConv2d) -> None:
    with torch.no_grad():
        with pytest.raises(CondConvInputError, match="has 7 channels, the layer expects 8"):
            layer(torch.randn(2, 7, 5, 5), torch.rand(2, 4))
        with pytest.raises(CondConvInputError, match="4-D"):
            layer(torch.randn(8, 5, 5), torch.rand(1, 4))


def test_empty_batch_and_empty_output() -> None:
    layer = cct.CondConv2d(8, 12, 5, padding=0, num_experts=4)
    with torch.no_grad():
        with pytest.raises(CondConvInputError, match="empty batch"):
            layer(torch.randn(0, 8, 5, 5), torch.rand(0, 4))
        with pytest.raises(CondConvInputError, match="empty 0x0 output"):
            layer(torch.randn(1, 8, 4, 4), torch.rand(1, 4))


def test_non_contiguous_inputs_are_accepted(layer: cct.CondConv2d) -> None:
    """Not an error: x in neither layout is made contiguous once, alpha of any stride and float dtype is used."""
    x = torch.randn(2, 8, 5, 10)[..., ::2]
    alpha = torch.rand(4, 2).t()
    with torch.no_grad():
        assert torch.equal(layer(x, alpha), layer(x.contiguous(), alpha.contiguous()))
        assert torch.equal(layer(x, alpha.double()), layer(x, alpha))


def test_library_errors_carry_status() -> None:
    """A failure inside the C library surfaces as condconv's CondConvError with the status name and message."""
    from condconv._lib import CondConvError

    too_many = cct.CondConv2d(4, 4, 1, num_experts=129)  # CONDCONV_MAX_EXPERTS is 128: only the library knows
    with torch.no_grad(), pytest.raises(CondConvError) as info:
        too_many(torch.randn(1, 4, 3, 3), torch.rand(1, 129))
    assert info.value.status_name == "CONDCONV_STATUS_BAD_EXPERTS"
    assert "129" in info.value.message


def test_bad_geometry_is_refused() -> None:
    layer = cct.CondConv2d(8, 12, 3, num_experts=4)
    geom = layer.geom
    geom[4] = 0  # stride 0
    with torch.no_grad(), pytest.raises(CondConvInputError, match="stride"):
        torch.ops.condconv.cond_conv2d(torch.randn(1, 8, 5, 5), torch.rand(1, 4), layer.weight, None, geom, 0)


def test_parameters_made_in_inference_mode() -> None:
    """Inference tensors carry no version counter: the layer still runs, and invalidate() picks up in-place edits."""
    ref, _ = timm_pair(in_channels=8, out_channels=8, kernel_size=3, num_experts=4)
    x, alpha = torch.randn(2, 8, 7, 7), torch.rand(2, 4)
    with torch.inference_mode():
        model = torch.nn.ModuleDict({"conv": copy.deepcopy(ref)})
        model = copy.deepcopy(model)  # parameters are inference tensors now
        assert model["conv"].weight.is_inference()
        assert cct.convert(model) == 1
        assert rel_diff(model["conv"](x, alpha), ref(x, alpha)) <= 1e-5
        model["conv"].weight.mul_(3.0)  # invisible to the cache without a version counter
        assert cct.invalidate(model) == 1
        assert rel_diff(model["conv"](x, alpha), 3.0 * ref(x, alpha)) <= 1e-5


def test_eager_fast_path_equals_registered_op() -> None:
    """Plain eager calls skip the dispatcher (same implementation); the registered op gives the same bits."""
    layer = cct.CondConv2d(8, 12, 3, bias=True, num_experts=4)
    routed = cct.RoutedCondConv2d(8, 12, 3, num_experts=4, routing="softmax", temperature=3.0)
    x, alpha = torch.randn(2, 8, 9, 9), torch.rand(2, 4)
    with torch.inference_mode():
        via_op = torch.ops.condconv.cond_conv2d(x, alpha, layer.weight, layer.bias, layer.geom, layer.layer_id)
        assert torch.equal(layer(x, alpha), via_op)
        fc = routed.routing_fn
        via_op = torch.ops.condconv.routed_cond_conv2d(
            x, routed.weight, routed.bias, fc.weight, fc.bias, routed.geom, 1, 3.0, routed.layer_id
        )
        assert torch.equal(routed(x), via_op)


def test_deepcopy_and_pickle_get_their_own_layer_id() -> None:
    import io

    ref, ours = timm_pair(in_channels=8, out_channels=8, kernel_size=3, num_experts=4)
    x, alpha = torch.randn(2, 8, 7, 7), torch.rand(2, 4)
    with torch.no_grad():
        ours(x, alpha)
        twin = copy.deepcopy(ours)
        assert twin.layer_id != ours.layer_id
        twin.weight.mul_(2.0)
        assert rel_diff(twin(x, alpha), 2.0 * ref(x, alpha)) <= 1e-5
        assert rel_diff(ours(x, alpha), ref(x, alpha)) <= 1e-5
        assert cct.cached_layer_count(ours.layer_id) == 1  # the original's C layer was not rebuilt by the twin
        buf = io.BytesIO()
        torch.save(ours, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert loaded.layer_id not in (ours.layer_id, twin.layer_id)
        assert torch.equal(loaded(x, alpha), ours(x, alpha))
