"""Autograd of condconv.torch on CPU tensors: the library's condconv_backward_cpu behind torch.library.

Three independent checks of the gradients, each with a tolerance derived in its docstring:
  - central finite differences of the library's own forward (f32: the library has no f64 dtype);
  - torch autograd of a plain-torch float64 CondConv written here (per-sample kernel mixing + F.conv2d);
  - a converted timm EfficientNet-CondConv (CC-B0-4e) against the stock model: every parameter's gradient, then one
    SGD step (parameters change in place) and a second forward.
Inputs are fresh random numbers on every run: the seed comes from os.urandom (or $CONDCONV_TEST_SEED to replay one)
and is printed, so pytest shows it with any failure.
"""

from __future__ import annotations

import copy
import math
import os
import types
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch", reason="condconv.torch tests need PyTorch")
timm = pytest.importorskip("timm", reason="condconv.torch tests need timm (the reference CondConv2d)")

import torch.nn.functional as F  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import condconv.torch as cct  # noqa: E402
from condconv.torch import CondConvInputError, _ops  # noqa: E402

U32 = 2.0**-24  # unit roundoff of f32 (round to nearest): |fl(v) - v| <= U32 |v|
FD_STEP = 2.0**-5  # the finite differences' step h (see test_gradients_equal_finite_differences)


@pytest.fixture
def gen() -> torch.Generator:
    """A generator seeded afresh per test; the seed is printed (pytest shows it when the test fails)."""
    env = os.environ.get("CONDCONV_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(8), "little") >> 1
    print(f"seed {seed} (replay: CONDCONV_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------
# The layers under test


# Small layers covering the routing kinds, dense/grouped/depthwise, stride, dilation, explicit and 'same' padding
# (static and dynamic), bias and no bias, E in {1, 3, 8}.
CASES: list[dict[str, object]] = [
    {"routing": "external", "cin": 4, "cout": 6, "k": 3, "padding": 1, "bias": True, "e": 1},
    {"routing": "external", "cin": 4, "cout": 6, "k": 3, "stride": 2, "groups": 2, "padding": 0, "e": 3},
    {"routing": "external", "cin": 6, "cout": 6, "k": 3, "dilation": 2, "groups": 6, "padding": "same", "e": 8,
     "bias": True},
    {"routing": "sigmoid", "cin": 4, "cout": 6, "k": 3, "stride": 2, "padding": "same", "bias": True, "e": 3},
    {"routing": "sigmoid", "cin": 4, "cout": 4, "k": 1, "e": 1},
    {"routing": "softmax", "temperature": 2.5, "cin": 6, "cout": 6, "k": 3, "groups": 3, "dilation": 2,
     "padding": (2, 1), "e": 8},
    {"routing": "softmax", "temperature": 0.7, "cin": 4, "cout": 4, "k": (3, 2), "stride": 2, "groups": 4,
     "padding": "same", "bias": True, "e": 3},
    {"routing": "external", "cin": 4, "cout": 8, "k": 2, "stride": (2, 1), "padding": "same", "bias": True, "e": 3,
     "channels_last": True},
    {"routing": "softmax", "temperature": 1.0, "cin": 4, "cout": 6, "k": 3, "padding": 1, "bias": True, "e": 3,
     "channels_last": True},
]  # fmt: skip


def case_id(case: dict[str, object]) -> str:
    return ",".join(f"{k}={v}" for k, v in case.items())


def make_layer(case: dict[str, object], gen: torch.Generator, quantum: float | None = None) -> cct.CondConv2d:
    """The layer of ``case`` with random parameters (biases and routing FC scaled up so that they matter); with
    ``quantum``, every parameter is a multiple of it (see test_gradients_equal_finite_differences)."""
    kw: dict[str, object] = {
        "kernel_size": case["k"],
        "stride": case.get("stride", 1),
        "padding": case.get("padding", ""),
        "dilation": case.get("dilation", 1),
        "groups": case.get("groups", 1),
        "bias": case.get("bias", False),
        "num_experts": case["e"],
    }
    if case["routing"] == "external":
        layer: cct.CondConv2d = cct.CondConv2d(case["cin"], case["cout"], **kw)  # type: ignore[arg-type]
    else:
        layer = cct.RoutedCondConv2d(
            case["cin"],  # type: ignore[arg-type]
            case["cout"],  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
            routing=case["routing"],  # type: ignore[arg-type]
            temperature=case.get("temperature", 1.0),  # type: ignore[arg-type]
        )
    with torch.no_grad():
        for name, p in layer.named_parameters():
            scale = 0.5 if name == "weight" else 1.5
            p.copy_(quantize(torch.randn(p.shape, generator=gen) * scale, quantum))
    return layer


def quantize(t: torch.Tensor, quantum: float | None) -> torch.Tensor:
    return t if quantum is None else torch.round(t.clamp(-4, 4) / quantum) * quantum


def make_inputs(
    layer: cct.CondConv2d, case: dict[str, object], gen: torch.Generator, quantum: float | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = quantize(torch.randn(2, layer.in_channels, 7, 6, generator=gen), quantum)
    if case.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    alpha = None
    if case["routing"] == "external":
        alpha = quantize(torch.rand(2, layer.num_experts, generator=gen) * 2 - 0.5, quantum)
    return x, alpha


def run(layer: cct.CondConv2d, x: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    return layer(x) if alpha is None else layer(x, alpha)  # type: ignore[call-arg]


def inputs_of(layer: cct.CondConv2d, x: torch.Tensor, alpha: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Every tensor the layer's output depends on, by name."""
    named = {"x": x, **({"alpha": alpha} if alpha is not None else {})}
    named.update({name: p for name, p in layer.named_parameters()})
    return named


def library_grads(
    layer: cct.CondConv2d, x: torch.Tensor, alpha: torch.Tensor | None, g: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The gradients of <g, y> through condconv's autograd (the library's backward)."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    alpha = None if alpha is None else alpha.detach().requires_grad_()
    y = run(layer, x, alpha)
    assert y.grad_fn is not None
    y.backward(g)
    grads = {name: t.grad for name, t in inputs_of(layer, x, alpha).items()}
    assert all(v is not None for v in grads.values()), [k for k, v in grads.items() if v is None]
    return grads  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# 1. Central finite differences of the library's forward


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradients_equal_finite_differences(case: dict[str, object], gen: torch.Generator) -> None:
    """<G, v> (the library's gradient of L = <g, y> along a random direction v of one input at a time) against the
    central difference D(h) = (L(p + h v) - L(p - h v)) / 2h of the library's f32 forward, for every input.

    Error analysis (u = 2^-24, the f32 unit roundoff):
      - Exact perturbations: p, x and alpha are multiples of 2^-8 in [-4, 4], v = k/16 with |k| <= 16 and
        h = 2^-5 (FD_STEP), so p +- h v and p +- 2 h v are multiples of 2^-9 below 5 in magnitude: exact in f32
        (12 bits; asserted), and the difference quotient sees exactly the step it divides by.
      - Rounding of L: the forward sums in double and rounds each output once, |y~ - y| <= u |y| (the double sums'
        own error, ~1e-16 relative, is negligible); L is summed in double from y~, so
        |L~ - L| <= u S with S = sum |g y|, and D(h) is off by at most eps(h) = u (S(p+hv) + S(p-hv)) / 2h.
      - Truncation: D(h) = L' + (h^2 / 6) L''' + O(h^4). With external routing L is linear in each input (y is
        bilinear in (x, kernel) and linear in alpha, weight and bias) and L''' = 0; routing inside the layer
        (sigmoid/softmax of an affine map of GAP(x)) is not. The h^2 term is measured, not guessed, by
        Richardson: D(2h) - D(h) = (h^2 / 2) L''' + O(h^4), so T = |D(2h) - D(h)| / 3 is the truncation of D(h)
        up to O(h^4) and up to the rounding of the two quotients, (eps(h) + eps(2h)) / 3.
      - The gradient itself: accumulated in double and rounded once to f32, so <G~, v> is within
        u sum |G v| of the true one (summed here in double).
    Bound: |<G, v> - D(h)| <= T + eps(h) + (eps(h) + eps(2h)) / 3 + u sum |G v| + O(h^4); the test allows twice
    that (the O(h^4) term and the double sums' residue are far below the factor). T never involves G, so a wrong
    gradient cannot widen its own tolerance. h: the rounding term falls as 1/h, the truncation (measured) grows as
    h^2; at 2^-5 no false failure in 108 seeded runs, while scaling every gradient by 1 + 1e-3 failed all 27 runs
    tried and by 1 + 1e-4 about half (test_gradients_equal_float64_torch is the sharper, element-wise check).
    """
    q, h = 2.0**-8, FD_STEP
    layer = make_layer(case, gen, quantum=q)
    x, alpha = make_inputs(layer, case, gen, quantum=q)
    y0 = run(layer, x, alpha)
    g = torch.randn(y0.shape, generator=gen)
    grads = library_grads(layer, x, alpha, g)
    g64 = g.double()

    def loss_and_scale(values: dict[str, torch.Tensor]) -> tuple[float, float]:
        with torch.no_grad():
            saved = {name: p.detach().clone() for name, p in layer.named_parameters()}
            for name, p in layer.named_parameters():
                p.copy_(values[name])
            y = run(layer, values["x"], values.get("alpha")).double()
            for name, p in layer.named_parameters():
                p.copy_(saved[name])  # in place: bumps the version, so the next call rebuilds the C layer
        return float((g64 * y).sum()), float((g64 * y).abs().sum())

    base = {name: t.detach() for name, t in inputs_of(layer, x, alpha).items()}
    for name, value in base.items():
        v = torch.randint(-16, 17, value.shape, generator=gen).to(torch.float32) / 16
        quotients, eps = [], []
        for step in (h, 2 * h):
            plus, minus = dict(base), dict(base)
            plus[name], minus[name] = value + step * v, value - step * v
            assert torch.equal(plus[name].double(), value.double() + step * v.double())  # exact in f32
            assert torch.equal(minus[name].double(), value.double() - step * v.double())
            lp, sp = loss_and_scale(plus)
            lm, sm = loss_and_scale(minus)
            quotients.append((lp - lm) / (2 * step))
            eps.append(U32 * (sp + sm) / (2 * step))
        g_v = float((grads[name].double() * v.double()).sum())
        g_round = U32 * float((grads[name].double() * v.double()).abs().sum())
        truncation = abs(quotients[1] - quotients[0]) / 3
        bound = truncation + eps[0] + (eps[0] + eps[1]) / 3 + g_round
        err = abs(g_v - quotients[0])
        assert err <= 2 * bound, (
            f"d/d{name}: <G, v> = {g_v:.9g}, central difference {quotients[0]:.9g} (2h: {quotients[1]:.9g}), "
            f"|diff| {err:.3g} > 2 * bound {bound:.3g} (truncation {truncation:.3g}, rounding {eps[0]:.3g})"
        )


# --------------------------------------------------------------------------------------------------------------
# 2. Torch autograd of an independent float64 CondConv


def reference_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geom: list[int],
    alpha: torch.Tensor | None = None,
    routing_weight: torch.Tensor | None = None,
    routing_bias: torch.Tensor | None = None,
    routing: str = "external",
    temperature: float = 1.0,
) -> torch.Tensor:
    """CondConv in plain torch: alpha (given, or sigmoid/softmax(FC(GAP(x)) / T)), each sample's kernel
    sum_e alpha_be W_e (timm's [E, Cout*Cin/g*kh*kw] read as [Cout][Cin/g][kh][kw]), one grouped F.conv2d over the
    batch folded into the groups, and the mixed bias. Padding: explicit, or TensorFlow 'same' (odd row/column
    below/right)."""
    cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, same = geom
    n, _, h, w = x.shape
    if alpha is None:
        assert routing_weight is not None
        logits = F.linear(x.mean(dim=(2, 3)), routing_weight, routing_bias)
        alpha = torch.sigmoid(logits) if routing == "sigmoid" else torch.softmax(logits / temperature, dim=1)
    if same:
        th = max((-(-h // sh) - 1) * sh + dh * (kh - 1) + 1 - h, 0)
        tw = max((-(-w // sw) - 1) * sw + dw * (kw - 1) + 1 - w, 0)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        pads = (pw, pw, ph, ph)
    xp = F.pad(x, pads)
    kernels = (alpha @ weight).reshape(n * cout, cin // groups, kh, kw)
    y = F.conv2d(xp.reshape(1, n * cin, *xp.shape[2:]), kernels, stride=(sh, sw), dilation=(dh, dw), groups=n * groups)
    y = y.reshape(n, cout, *y.shape[2:])
    if bias is not None:
        y = y + (alpha @ bias)[:, :, None, None]
    return y


def reference_grads(
    layer: cct.CondConv2d, x: torch.Tensor, alpha: torch.Tensor | None, g: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """y and the gradients of <g, y> from reference_forward in float64 on the same (f32) values."""
    named = {k: v.detach().double().requires_grad_() for k, v in inputs_of(layer, x, alpha).items()}
    routed = isinstance(layer, cct.RoutedCondConv2d)
    y = reference_forward(
        named["x"],
        named["weight"],
        named.get("bias"),
        layer.geom,
        alpha=named.get("alpha"),
        routing_weight=named.get("routing_fn.weight"),
        routing_bias=named.get("routing_fn.bias"),
        routing=layer.routing if routed else "external",  # type: ignore[union-attr]
        # The library holds the temperature as a float (condconv_layer_desc_set_routing): 0.7 is 0.699999988.
        temperature=float(torch.tensor(layer.temperature, dtype=torch.float32)) if routed else 1.0,  # type: ignore[union-attr]
    )
    grads = torch.autograd.grad(y, list(named.values()), g.double())
    return y, dict(zip(named, grads))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradients_equal_float64_torch(case: dict[str, object], gen: torch.Generator) -> None:
    """Every gradient element-wise against torch autograd of reference_forward in float64.

    Both compute the same function of the same f32 values in double precision (the library accumulates in double
    and rounds each gradient once to f32). So |G_lib - G_ref| <= u |G_ref| (u = 2^-24) plus the difference of two
    double computations in different orders, at most ~K 2^-53 of the sum of absolute terms (K < 10^4 terms here):
    allowed 2u |G_ref| + 2^-40 max|G_ref|. The forward's y is compared the same way.
    """
    layer = make_layer(case, gen)
    x, alpha = make_inputs(layer, case, gen)
    y = run(layer, x, alpha)
    g = torch.randn(y.shape, generator=gen)
    got = library_grads(layer, x, alpha, g)
    y_ref, expected = reference_grads(layer, x, alpha, g)
    assert y.shape == y_ref.shape
    assert bool(((y.double() - y_ref).abs() <= 2 * U32 * y_ref.abs() + 2.0**-40 * y_ref.abs().max()).all())
    if case.get("channels_last"):
        assert got["x"].is_contiguous(memory_format=torch.channels_last)  # dx in the layout x ran in
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        assert got[name].dtype == torch.float32, name
        err = (got[name].double() - ref).abs()
        tol = 2 * U32 * ref.abs() + 2.0**-40 * float(ref.abs().max())
        worst = float((err - tol).max())
        assert worst <= 0, f"d/d{name}: max |diff| {float(err.max()):.3g}, max |ref| {float(ref.abs().max()):.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("routing", ["external", "softmax"])
def test_half_gradients(dtype: torch.dtype, routing: str, gen: torch.Generator) -> None:
    """f16/bf16 layers: dx comes back in the dtype, parameter and routing gradients (f32 from the library) cast to
    the parameters' dtype. Against float64 autograd on the same half values: the library rounds dx double -> f32 ->
    dtype and the others double -> f32 -> dtype, i.e. within (u_dtype + u) |G| (u_dtype = 2^-11 for f16, 2^-8 for
    bf16); allowed 2 u_dtype |G| + 2^-40 max |G|."""
    case = {"routing": routing, "cin": 4, "cout": 6, "k": 3, "padding": "same", "groups": 2, "bias": True, "e": 3}
    layer = make_layer(case, gen).to(dtype)
    x, alpha = make_inputs(layer, case, gen)
    x = x.to(dtype)
    alpha = None if alpha is None else alpha.to(dtype)
    y = run(layer, x, alpha)
    assert y.dtype == dtype
    g = torch.randn(y.shape, generator=gen).to(dtype)
    got = library_grads(layer, x, alpha, g)
    _, expected = reference_grads(layer, x, alpha, g)
    unit = 2.0**-11 if dtype == torch.float16 else 2.0**-8
    for name, ref in expected.items():
        assert got[name].dtype == dtype, name
        err = (got[name].double() - ref).abs()
        tol = 2 * unit * ref.abs() + 2.0**-40 * float(ref.abs().max())
        assert bool((err <= tol).all()), f"d/d{name}: max |diff| {float(err.max()):.3g}"


def test_only_requested_gradients(gen: torch.Generator) -> None:
    """Only what needs a gradient gets one (the library is asked for just those); the values do not depend on it."""
    case = {"routing": "sigmoid", "cin": 4, "cout": 6, "k": 3, "padding": 1, "bias": True, "e": 3}
    layer = make_layer(case, gen)
    x, _ = make_inputs(layer, case, gen)
    g = torch.randn(2, 6, 7, 6, generator=gen)
    full = library_grads(layer, x, None, g)
    layer.zero_grad(set_to_none=True)
    layer.requires_grad_(False)
    xr = x.clone().requires_grad_()
    layer(xr).backward(g)
    assert torch.equal(xr.grad, full["x"])
    assert all(p.grad is None for p in layer.parameters())
    layer.routing_fn.weight.requires_grad_(True)  # type: ignore[union-attr]
    layer(x).backward(g)
    assert torch.equal(layer.routing_fn.weight.grad, full["routing_fn.weight"])  # type: ignore[union-attr, arg-type]
    # Called directly, asking for nothing returns empty tensors without calling the library.
    fc = layer.routing_fn
    outs = torch.ops.condconv.routed_cond_conv2d_backward(
        g, x, layer.weight, layer.bias, fc.weight, fc.bias, layer.geom, 0, 1.0, layer.layer_id, [False] * 5
    )
    assert all(o.numel() == 0 for o in outs)


# --------------------------------------------------------------------------------------------------------------
# 3. A converted timm network: one training step against the stock model


def test_converted_cc_b0_training_step(gen: torch.Generator) -> None:
    """CC-B0-4e (24 CondConv layers, external routing from each block's routing_fn) in train() mode, batch 2 at
    64x64: every parameter's gradient of a cross-entropy loss equals the stock timm model's, and after one SGD step
    (in-place updates: the layers' C copies must be rebuilt) the second forward equals the stock model's too.

    Tolerance. Both models compute the same function in f32, in different orders (torch's f32 convolutions, the
    library's double sums rounded once per layer), so they differ by rounding noise carried through ~50 layers
    forward and back. Measured once against the stock model in float64 (146 s, too slow for CI): stock f32 and
    converted are each within 3e-5 of the largest gradient in the network (max |G|) of the float64 gradients, and
    between seeds the two differ by about 1e-5 max |G|. Some gradients are zero up to rounding (a few BatchNorm
    biases measured max |G| ~ 1e-16 in float64: both f32 models' values there are noise), so the bound has a floor
    relative to the whole network: per tensor, max |diff| <= 2e-4 max |G_tensor| + 5e-5 max |G|
    (the worst tensor used 3-4% of it in the runs measured: slack for other seeds and BLAS builds, still far below
    an error of the layers). Logits: max |diff| / max |logit| ~ 2e-6 measured, 1e-4 allowed; after the step
    (lr 0.1), 3e-5 to 5e-5 measured, 1e-3 allowed (the step's gradient differences plus the forward's noise,
    through a network the step moved by O(1)). Sensitivity, tried by scaling one gradient of every CondConv layer
    by 1.01: d_routing_weights, d_weight and dx each failed the test (worst tensor 10x to 800x its tolerance). A
    stale C layer after the step would leave the output where the step moved it from, asserted to be far outside.
    """
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    stock = timm.create_model("efficientnet_cc_b0_4e", pretrained=False, drop_rate=0.0, drop_path_rate=0.0)
    ours = copy.deepcopy(stock)
    assert cct.convert(ours) == 24
    stock.train()
    ours.train()
    x = torch.randn(2, 3, 64, 64, generator=gen)
    target = torch.randint(0, 1000, (2,), generator=gen)

    def step(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logits = model(x)
        F.cross_entropy(logits, target).backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        assert all(g is not None for g in grads.values()), [k for k, g in grads.items() if g is None]
        return logits.detach(), grads  # type: ignore[return-value]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))

    logits_stock, grads_stock = step(stock)
    logits_ours, grads_ours = step(ours)
    assert rel(logits_ours, logits_stock) <= 1e-4
    assert grads_ours.keys() == grads_stock.keys()
    assert len(grads_stock) == len(list(stock.parameters()))
    scale = max(float(g.abs().max()) for g in grads_stock.values())
    ratio = {
        k: float((grads_ours[k] - g).abs().max()) / (2e-4 * float(g.abs().max()) + 5e-5 * scale)
        for k, g in grads_stock.items()
    }
    bad = {k: r for k, r in ratio.items() if r > 1}
    assert not bad, f"gradients differ (|diff| / tolerance): {bad}"
    print(f"worst |diff| / tolerance {max(ratio.values()):.3g} ({max(ratio, key=ratio.__getitem__)})")

    for model in (stock, ours):
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    with torch.no_grad():
        second_stock = stock(x)
        second_ours = ours(x)
    assert rel(second_ours, second_stock) <= 1e-3
    assert rel(second_stock, logits_stock) > 0.1  # the step moved the output far beyond the tolerance


# --------------------------------------------------------------------------------------------------------------
# torch.compile traces the backward too (fake implementations of the backward ops)


def test_compiled_training_step_equals_eager(gen: torch.Generator) -> None:
    layer = make_layer(
        {"routing": "softmax", "temperature": 2.0, "cin": 4, "cout": 6, "k": 3, "padding": 1, "bias": True, "e": 3},
        gen,
    )
    x = torch.randn(2, 4, 7, 6, generator=gen)
    g = torch.randn(2, 6, 7, 6, generator=gen)
    eager = library_grads(layer, x, None, g)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    layer.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    compiled(xr).backward(g)
    assert torch.equal(xr.grad, eager["x"])
    for name, p in layer.named_parameters():
        assert torch.equal(p.grad, eager[name]), name  # type: ignore[arg-type]


def test_opcheck(gen: torch.Generator) -> None:
    """torch.library.opcheck on the two ops and their backward ops: schema, autograd registration, fake tensors,
    AOT dispatch (tracing forward and backward with fake tensors)."""
    layer = make_layer({"routing": "external", "cin": 4, "cout": 6, "k": 3, "bias": True, "e": 3}, gen)
    routed = make_layer({"routing": "softmax", "temperature": 2.0, "cin": 4, "cout": 6, "k": 3, "e": 3}, gen)
    fc = routed.routing_fn
    x = torch.randn(2, 4, 5, 5, generator=gen, requires_grad=True)
    alpha = torch.rand(2, 3, generator=gen, requires_grad=True)
    g = torch.randn(2, 6, 5, 5, generator=gen)
    lid, rid = layer.layer_id, routed.layer_id
    ops = torch.ops.condconv
    calls = [
        (ops.cond_conv2d.default, (x, alpha, layer.weight, layer.bias, layer.geom, layer.layer_id)),
        (ops.routed_cond_conv2d.default, (x, routed.weight, None, fc.weight, fc.bias, routed.geom, 1, 2.0, rid)),
        (
            ops.cond_conv2d_backward.default,
            (g, x.detach(), alpha.detach(), layer.weight.detach(), layer.bias.detach(), layer.geom, lid, [True] * 4),
        ),
        (
            ops.routed_cond_conv2d_backward.default,
            (g, x.detach(), routed.weight.detach(), None, fc.weight.detach(), fc.bias.detach(), routed.geom, 1, 2.0,
             rid, [True, False, False, True, True]),
        ),
    ]  # fmt: skip
    for op, args in calls:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


# --------------------------------------------------------------------------------------------------------------
# Bad inputs and devices


def test_cuda_backward_fake_shapes() -> None:
    """CUDA tensors (fake, so this runs without a GPU): the backward op's fake implementation and the autograd
    formula give each gradient its input's shape, dtype and device, and an empty tensor where none was asked for.
    test_torch_cuda.py runs the GPU backward for real."""
    layer = cct.CondConv2d(4, 6, 3, num_experts=3)
    with FakeTensorMode():
        x = torch.empty(2, 4, 5, 5, device="cuda")
        alpha = torch.empty(2, 3, device="cuda")
        weight = torch.empty(3, 6 * 4 * 9, device="cuda")
        grad = torch.empty(2, 6, 5, 5, device="cuda")
        dx, da, dw, db = torch.ops.condconv.cond_conv2d_backward(
            grad, x, alpha, weight, None, layer.geom, 0, [True] * 3 + [False]
        )
        for got, like in ((dx, x), (da, alpha), (dw, weight)):
            assert got.shape == like.shape
            assert got.dtype == like.dtype
            assert got.device == like.device
        assert db.numel() == 0
        ctx = types.SimpleNamespace(
            saved_tensors=(x, alpha, weight, None), needs_input_grad=(True,) * 3 + (False,) * 3, geom=layer.geom,
            layer_id=0,
        )  # fmt: skip
        out = _ops._backward_cond_conv2d(ctx, grad)  # type: ignore[arg-type]
        assert out[0] is not None
        assert out[0].shape == x.shape
        assert out[3] is None


@pytest.mark.parametrize("routed", [False, True])
def test_meta_backward_raises(routed: bool) -> None:
    layer: cct.CondConv2d = (
        cct.RoutedCondConv2d(4, 6, 3, num_experts=3) if routed else cct.CondConv2d(4, 6, 3, num_experts=3)
    ).to("meta")
    x = torch.empty(2, 4, 5, 5, device="meta", requires_grad=True)
    y = layer(x) if routed else layer(x, torch.empty(2, 3, device="meta"))  # type: ignore[call-arg]
    with pytest.raises(CondConvInputError, match="backward of tensors on meta is not supported"):
        y.sum().backward()


def test_grad_dtype_and_shape(gen: torch.Generator) -> None:
    """autograd converts a float64 grad_output to the output's dtype (same gradients); the backward op itself,
    called directly, refuses a grad of another dtype or shape."""
    layer = cct.CondConv2d(4, 6, 3, bias=True, num_experts=3)
    x, alpha = torch.randn(2, 4, 5, 5, generator=gen), torch.rand(2, 3, generator=gen)
    g = torch.randn(2, 6, 5, 5, generator=gen)
    grads = library_grads(layer, x, alpha, g)
    xr = x.clone().requires_grad_()
    layer(xr, alpha).backward(g.double())
    assert torch.equal(xr.grad, grads["x"])
    call: Callable[[torch.Tensor], object] = lambda grad: torch.ops.condconv.cond_conv2d_backward(  # noqa: E731
        grad, x, alpha, layer.weight, layer.bias, layer.geom, layer.layer_id, [True] * 4
    )
    with pytest.raises(CondConvInputError, match=r"grad_y has dtype torch\.float64"):
        call(g.double())
    with pytest.raises(CondConvInputError, match=r"grad_y must have the output's shape \(2, 6, 5, 5\)"):
        call(g[:, :, :4])
    with pytest.raises(CondConvInputError, match="needs has 3 values"):
        torch.ops.condconv.cond_conv2d_backward(g, x, alpha, layer.weight, layer.bias, layer.geom, 0, [True] * 3)


def test_in_place_update_before_backward_is_refused(gen: torch.Generator) -> None:
    """The forward's tensors are saved for backward: updating a parameter in place between forward and backward is
    autograd's usual error, never a gradient computed with other weights."""
    layer = cct.CondConv2d(4, 6, 3, num_experts=3)
    y = layer(torch.randn(2, 4, 5, 5, generator=gen), torch.rand(2, 3, generator=gen))
    with torch.no_grad():
        layer.weight.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_grad_mode_forward_equals_no_grad(gen: torch.Generator) -> None:
    """Under grad mode the module goes through the registered op (autograd), otherwise its eager fast path: the
    same values either way."""
    layer = cct.RoutedCondConv2d(4, 6, 3, bias=True, num_experts=3, routing="sigmoid")
    x = torch.randn(2, 4, 5, 5, generator=gen)
    y = layer(x)
    assert y.requires_grad
    with torch.no_grad():
        assert torch.equal(layer(x), y.detach())
    assert math.isfinite(float(y.detach().sum()))


def test_double_backward_raises(gen: torch.Generator) -> None:
    """Second derivatives are not implemented: torch says so (no autograd formula on the backward op), never a
    silently missing term."""
    layer = cct.CondConv2d(4, 6, 3, num_experts=3)
    x = torch.randn(2, 4, 5, 5, generator=gen, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x, torch.rand(2, 3, generator=gen)).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula was registered"):
        gx.sum().backward()
