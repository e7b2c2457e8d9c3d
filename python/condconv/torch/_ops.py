# ruff: noqa: UP045
"""condconv's forward as torch.library custom ops, and the cache of C layers behind them.

Two ops, registered once at import:

    condconv::cond_conv2d(x, routing_weights, weight, bias?, geom, layer_id) -> y
        alpha given by the caller (timm's CondConv2d, EfficientNet-CondConv blocks)
    condconv::routed_cond_conv2d(x, weight, bias?, routing_weight, routing_bias?, geom, routing, temperature,
                                 layer_id) -> y
        alpha = sigmoid(FC(GAP(x))) or softmax(FC(GAP(x)) / temperature), computed by the library

Custom ops take tensors and numbers, not Python objects, so every parameter travels as a tensor (torch.compile and
torch.export see them as the graph's inputs), the geometry as ``geom`` (see ``GEOM_FIELDS``), and the module's
identity as an integer ``layer_id`` that keys the cache of C layers. Each op has a fake implementation that only
computes the output's shape and strides, so torch.compile(fullgraph=True), torch.export and CUDA-graph capture see
through it.

The C layer cache. A condconv layer keeps its own copy of the parameters (host, and on a GPU context device), in one
dtype and activation layout, with its plans. The cache holds, per layer_id, one C layer per (device, dtype, layout,
math) and remembers the parameters it was built from by (data_ptr, _version, dtype, shape) of each tensor, and holds
those storages (so that no later allocation can reuse their addresses while the fingerprint names them). Any change
to a parameter - an in-place update (``load_state_dict``, ``copy_``, an optimiser step; each bumps ``_version``), a
new tensor (``param.data = ...``, ``.to()``, ``.half()``) - drops every C layer of that id, and the next call
rebuilds them from the current values (a host copy of the parameters, synchronous). One exception: parameters that
are inference tensors (created under ``torch.inference_mode``) have no version counter, so an in-place update of one
inside inference mode is not seen; call ``condconv.torch.invalidate(model)`` after such an update. An entry is
created on first use and freed when its module is garbage-collected; an id without a module (an exported program run
later) gets an entry on first use all the same, since the op carries everything it needs.

CUDA: a call runs on the tensors' device and torch's current stream. The first call at a new (N, H, W) prepares
the shape (plan, algorithm choice; may synchronise) and must happen outside a CUDA-graph capture; inside a capture
an unprepared shape raises. Then each call takes its workspace from torch's caching allocator and launches without
synchronising the host. Math mode: TF32 for f32 when ``torch.backends.cudnn.allow_tf32`` is set, strict f32
otherwise.

CPU: the library's reference path (condconv_forward_cpu: direct convolution, double accumulation).

Autograd: both ops have autograd formulas (``register_autograd``) that call two backward custom ops on the library's
backward: condconv_backward_cpu for CPU tensors, condconv_backward (GPU, deterministic) for CUDA tensors; see
"Backward" below.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import _native

GEOM_FIELDS = (
    "in_channels",
    "out_channels",
    "kernel_h",
    "kernel_w",
    "stride_h",
    "stride_w",
    "pad_h",
    "pad_w",
    "dilation_h",
    "dilation_w",
    "groups",
    "same",
)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_ROUTING_NAMES = {_native.ROUTING_SIGMOID: "sigmoid", _native.ROUTING_SOFTMAX: "softmax"}


class CondConvInputError(ValueError):
    """A condconv.torch call was given tensors it cannot run on (the message says which and why)."""


# ----------------------------------------------------------------------------------------------------------------
# Shapes and checks (shared by the real and the fake implementations, so torch.compile raises the same errors)
# ----------------------------------------------------------------------------------------------------------------


def output_hw(h: int, w: int, geom: list[int]) -> tuple[int, int]:
    _, _, kh, kw, sh, sw, ph, pw, dh, dw, _, same = geom
    if same:
        # TensorFlow/timm 'same': ceil(H / stride), whatever the kernel.
        return -(-h // sh), -(-w // sw)
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def is_nhwc(x: torch.Tensor) -> bool:
    """Runs as NHWC: channels-last and not also plain contiguous (then NCHW wins; both hold when C or H*W is 1)."""
    return (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)


def _check_common(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geom: list[int], op: str) -> None:
    if len(geom) != len(GEOM_FIELDS):
        raise CondConvInputError(f"{op}: geom has {len(geom)} values, expected {len(GEOM_FIELDS)} ({GEOM_FIELDS})")
    cin, cout, kh, kw = geom[0], geom[1], geom[2], geom[3]
    groups = geom[10]
    if min(geom[:6]) < 1 or min(geom[8:11]) < 1 or min(geom[6:8]) < 0 or cin % groups or cout % groups:
        raise CondConvInputError(
            f"{op}: bad geometry {dict(zip(GEOM_FIELDS, geom))}: channels, kernel, stride, dilation and groups must "
            f"be >= 1, padding >= 0, channels divisible by groups"
        )
    if x.dim() != 4:
        raise CondConvInputError(f"{op}: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise CondConvInputError(f"{op}: x has dtype {x.dtype}; condconv runs float32, float16 and bfloat16")
    if x.dtype != weight.dtype:
        raise CondConvInputError(
            f"{op}: x has dtype {x.dtype} but the layer's weight is {weight.dtype}; convert one of them "
            f"(e.g. model.to(dtype))"
        )
    if x.device != weight.device:
        raise CondConvInputError(f"{op}: x is on {x.device} but the layer's weight is on {weight.device}")
    if bias is not None and (bias.device != weight.device or bias.dtype != weight.dtype):
        raise CondConvInputError(
            f"{op}: bias ({bias.dtype}, {bias.device}) must match weight ({weight.dtype}, {weight.device})"
        )
    if x.shape[1] != cin:
        raise CondConvInputError(f"{op}: x has {x.shape[1]} channels, the layer expects {cin}")
    if x.shape[0] == 0:
        raise CondConvInputError(f"{op}: empty batch (N = 0); condconv needs at least one sample")
    if x.shape[2] <= 0 or x.shape[3] <= 0:
        raise CondConvInputError(f"{op}: empty image {x.shape[2]}x{x.shape[3]}")
    per_expert = cout * (cin // groups) * kh * kw
    if weight.dim() != 2 or weight.shape[1] != per_expert:
        raise CondConvInputError(
            f"{op}: weight must be [E, {per_expert}] (Cout*Cin/groups*kh*kw), got {tuple(weight.shape)}"
        )
    if bias is not None and (bias.dim() != 2 or bias.shape[0] != weight.shape[0] or bias.shape[1] != cout):
        raise CondConvInputError(f"{op}: bias must be [E, Cout] = [{weight.shape[0]}, {cout}], got {tuple(bias.shape)}")
    ho, wo = output_hw(x.shape[2], x.shape[3], geom)
    if ho <= 0 or wo <= 0:
        raise CondConvInputError(f"{op}: a {x.shape[2]}x{x.shape[3]} input gives an empty {ho}x{wo} output")


def _check_alpha(x: torch.Tensor, alpha: torch.Tensor, num_experts: int) -> None:
    op = "condconv::cond_conv2d"
    if alpha.device != x.device:
        raise CondConvInputError(f"{op}: routing_weights are on {alpha.device} but x is on {x.device}")
    if not alpha.is_floating_point():
        raise CondConvInputError(f"{op}: routing_weights must be floating point, got {alpha.dtype}")
    if alpha.dim() != 2 or alpha.shape[0] != x.shape[0] or alpha.shape[1] != num_experts:
        raise CondConvInputError(
            f"{op}: routing_weights must be [N, E] = [{x.shape[0]}, {num_experts}], got {tuple(alpha.shape)}"
        )


def _empty_output(x: torch.Tensor, geom: list[int]) -> torch.Tensor:
    ho, wo = output_hw(x.shape[2], x.shape[3], geom)
    fmt = torch.channels_last if is_nhwc(x) else torch.contiguous_format
    return torch.empty((x.shape[0], geom[1], ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt)


# ----------------------------------------------------------------------------------------------------------------
# Contexts and the layer cache
# ----------------------------------------------------------------------------------------------------------------

_contexts: dict[tuple[int, int], _native.NativeContext] = {}
_contexts_lock = threading.Lock()


def _context(device: int, math: int) -> _native.NativeContext:
    key = (device, math)
    ctx = _contexts.get(key)
    if ctx is None:
        with _contexts_lock:
            ctx = _contexts.get(key)
            if ctx is None:
                ctx = _native.NativeContext(device, math)
                _contexts[key] = ctx
    return ctx


@dataclass
class _Entry:
    fingerprint: tuple[object, ...] = ()
    keep: tuple[torch.Tensor | None, ...] = ()
    layers: dict[tuple[object, ...], _native.NativeLayer] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        for layer in self.layers.values():
            layer.close()
        self.layers.clear()
        self.keep = ()


_registry: dict[int, _Entry] = {}
_registry_lock = threading.Lock()
_next_id = 1


def new_layer_id(owner: object) -> int:
    """A fresh id for a module; its C layers are freed when ``owner`` is garbage-collected."""
    global _next_id
    with _registry_lock:
        layer_id = _next_id
        _next_id += 1
    weakref.finalize(owner, release_layer_id, layer_id)
    return layer_id


def release_layer_id(layer_id: int) -> None:
    entry = _registry.pop(layer_id, None)
    if entry is not None:
        entry.clear()


def invalidate(layer_id: int) -> None:
    """Drops the C layers of this id; the next call rebuilds them from the parameters' current values."""
    entry = _registry.get(layer_id)
    if entry is not None:
        with entry.lock:
            entry.clear()
            entry.fingerprint = ()


def cached_layer_count(layer_id: int) -> int:
    """How many C layers the cache holds for this id (for tests and diagnostics)."""
    entry = _registry.get(layer_id)
    return len(entry.layers) if entry is not None else 0


def _fingerprint(tensors: tuple[torch.Tensor | None, ...]) -> tuple[object, ...]:
    # Inference tensors (made under torch.inference_mode) have no version counter: only a new tensor is seen.
    return tuple(
        None if t is None else (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, tuple(t.shape), t.device)
        for t in tensors
    )


def _host(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.detach().to(device="cpu", dtype=dtype).contiguous()


def _get_layer(
    layer_id: int,
    device: int,
    dtype: torch.dtype,
    nhwc: bool,
    math: int,
    geom: list[int],
    routing: int,
    temperature: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    routing_weight: torch.Tensor | None,
    routing_bias: torch.Tensor | None,
) -> _native.NativeLayer:
    entry = _registry.get(layer_id)
    if entry is None:
        with _registry_lock:
            entry = _registry.setdefault(layer_id, _Entry())
    fp = _fingerprint((weight, bias, routing_weight, routing_bias))
    key = (device, dtype, nhwc, math, tuple(geom), routing, temperature)
    with entry.lock:
        if fp != entry.fingerprint:
            # The parameters changed since the C layers were built: every copy is stale.
            entry.clear()
            entry.fingerprint = fp
            # Holding the storages the fingerprint names keeps their addresses from being reused by a later
            # allocation, so an equal data_ptr always means the same storage (detach: a later `param.data = ...`
            # does not move what is held).
            entry.keep = tuple(None if t is None else t.detach() for t in (weight, bias, routing_weight, routing_bias))
        layer = entry.layers.get(key)
        if layer is not None:
            return layer
        if device >= 0 and torch.cuda.is_current_stream_capturing():
            what = (
                f"cuda:{device}, {dtype}, {'NHWC' if nhwc else 'NCHW'}{', TF32' if math == _native.MATH_TF32 else ''}"
            )
            raise RuntimeError(
                f"condconv: this layer has no C layer yet for ({what}) and the current stream is capturing a CUDA "
                f"graph; run the model once with the same dtype, layout and shapes before capturing"
            )
        host = [_host(t, dtype) for t in (weight, bias, routing_weight, routing_bias)]
        layer = _native.NativeLayer(_context(device, math), geom, routing, temperature, dtype, nhwc, host)
        entry.layers[key] = layer
        return layer


def _layer_for(
    layer_id: int,
    x: torch.Tensor,
    nhwc: bool,
    geom: list[int],
    routing: int,
    temperature: float,
    params: tuple[torch.Tensor | None, ...],
) -> tuple[_native.NativeLayer, int]:
    """The C layer x runs on, and its device (CONDCONV_DEVICE_CPU for CPU tensors): on CUDA in the math mode torch
    asks for (TF32 for f32 when cudnn.allow_tf32), on the CPU in strict f32 (the reference accumulates in double)."""
    if x.device.type == "cpu":
        device, math = _native.CONDCONV_DEVICE_CPU, _native.MATH_F32
    else:
        device = x.device.index if x.device.index is not None else torch.cuda.current_device()
        math = _native.MATH_TF32 if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else _native.MATH_F32
    weight, bias, routing_weight, routing_bias = params
    assert weight is not None
    layer = _get_layer(
        layer_id, device, x.dtype, nhwc, math, geom, routing, temperature, weight, bias, routing_weight, routing_bias
    )
    return layer, device


def _run(
    layer_id: int,
    x: torch.Tensor,
    alpha: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    routing_weight: torch.Tensor | None,
    routing_bias: torch.Tensor | None,
    geom: list[int],
    routing: int,
    temperature: float,
) -> torch.Tensor:
    nhwc = is_nhwc(x)
    if not nhwc and not x.is_contiguous():
        x = x.contiguous()
    n, _, h, w = x.shape
    y = _empty_output(x, geom)
    if alpha is not None:
        # The library takes routing weights in f32 whatever the layer's dtype.
        alpha = alpha.to(torch.float32).contiguous()
    if x.device.type == "cpu":
        layer, _ = _layer_for(
            layer_id, x, nhwc, geom, routing, temperature, (weight, bias, routing_weight, routing_bias)
        )
        with layer.context.lock:
            layer.forward_cpu(n, h, w, x.data_ptr(), y.data_ptr(), 0 if alpha is None else alpha.data_ptr())
        return y
    if x.device.type != "cuda":
        raise CondConvInputError(f"condconv: tensors on {x.device} are not supported (CPU and CUDA only)")
    layer, device = _layer_for(
        layer_id, x, nhwc, geom, routing, temperature, (weight, bias, routing_weight, routing_bias)
    )
    guard = torch.cuda.device(device) if device != torch.cuda.current_device() else None
    if guard is not None:
        guard.__enter__()
    try:
        ctx = layer.context
        with ctx.lock:
            ctx.set_stream(torch.cuda.current_stream(device).cuda_stream)
            ws_bytes = layer.prepared.get((n, h, w))
            if ws_bytes is None:
                if torch.cuda.is_current_stream_capturing():
                    raise RuntimeError(
                        f"condconv: shape N={n} H={h} W={w} was never run by this layer and the current stream is "
                        f"capturing a CUDA graph; run it once with this shape before capturing (preparing a shape "
                        f"may allocate and synchronise, which a capture forbids)"
                    )
                ws_bytes = layer.prepare(n, h, w)
            ws = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device) if ws_bytes else None
            layer.forward(
                n,
                h,
                w,
                x.data_ptr(),
                y.data_ptr(),
                0 if alpha is None else alpha.data_ptr(),
                0 if ws is None else ws.data_ptr(),
                ws_bytes,
            )
    finally:
        if guard is not None:
            guard.__exit__(None, None, None)
    return y


def plan_info(
    layer_id: int,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geom: list[int],
    routing: int = _native.ROUTING_EXTERNAL,
    temperature: float = 1.0,
    routing_weight: torch.Tensor | None = None,
    routing_bias: torch.Tensor | None = None,
) -> dict[str, object]:
    """What the GPU runs for this input (algorithm, backend, why); prepares the shape. CUDA tensors only."""
    if x.device.type != "cuda":
        return {"algo": "cpu_reference", "reason": "CPU tensors run condconv_forward_cpu", "backend": "plain C"}
    nhwc = is_nhwc(x)
    layer, device = _layer_for(
        layer_id, x, nhwc, geom, routing, temperature, (weight, bias, routing_weight, routing_bias)
    )
    n, _, h, w = x.shape
    with torch.cuda.device(device), layer.context.lock:
        layer.context.set_stream(torch.cuda.current_stream(device).cuda_stream)
        if (n, h, w) not in layer.prepared:
            layer.prepare(n, h, w)
        return layer.plan_info(n, h, w)


# ----------------------------------------------------------------------------------------------------------------
# The custom ops
# ----------------------------------------------------------------------------------------------------------------


# torch.library reads these signatures at run time to make the ops' schemas: Optional (not `X | None`, hence the
# file-wide noqa UP045 at the top) keeps them readable on Python 3.9.
def cond_conv2d_impl(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    geom: list[int],
    layer_id: int,
) -> torch.Tensor:
    """CondConv with caller-given routing weights [N, E]: y_b = conv(x_b, sum_e alpha_be W_e) + sum_e alpha_be b_e."""
    _check_common(x, weight, bias, geom, "condconv::cond_conv2d")
    _check_alpha(x, routing_weights, int(weight.shape[0]))
    return _run(layer_id, x, routing_weights, weight, bias, None, None, geom, _native.ROUTING_EXTERNAL, 1.0)


# The registered op runs the same function; modules call cond_conv2d_impl directly in plain eager mode.
cond_conv2d = torch.library.custom_op("condconv::cond_conv2d", cond_conv2d_impl, mutates_args=())


@cond_conv2d.register_fake
def _cond_conv2d_fake(
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    geom: list[int],
    layer_id: int,
) -> torch.Tensor:
    _check_common(x, weight, bias, geom, "condconv::cond_conv2d")
    _check_alpha(x, routing_weights, int(weight.shape[0]))
    return _empty_output(x, geom)


def routed_cond_conv2d_impl(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    routing_weight: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    geom: list[int],
    routing: int,
    temperature: float,
    layer_id: int,
) -> torch.Tensor:
    """CondConv that routes itself: alpha = sigmoid(FC(GAP(x))) or softmax(FC(GAP(x)) / temperature)."""
    _check_routed(x, weight, bias, routing_weight, routing_bias, geom, routing, temperature)
    return _run(layer_id, x, None, weight, bias, routing_weight, routing_bias, geom, routing, temperature)


routed_cond_conv2d = torch.library.custom_op("condconv::routed_cond_conv2d", routed_cond_conv2d_impl, mutates_args=())


@routed_cond_conv2d.register_fake
def _routed_cond_conv2d_fake(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    routing_weight: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    geom: list[int],
    routing: int,
    temperature: float,
    layer_id: int,
) -> torch.Tensor:
    _check_routed(x, weight, bias, routing_weight, routing_bias, geom, routing, temperature)
    return _empty_output(x, geom)


def _check_routed(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    routing_weight: torch.Tensor,
    routing_bias: torch.Tensor | None,
    geom: list[int],
    routing: int,
    temperature: float,
) -> None:
    op = "condconv::routed_cond_conv2d"
    _check_common(x, weight, bias, geom, op)
    if routing not in _ROUTING_NAMES:
        raise CondConvInputError(f"{op}: routing must be {_ROUTING_NAMES} , got {routing}")
    if not temperature > 0.0:
        raise CondConvInputError(f"{op}: temperature must be > 0, got {temperature}")
    e, cin = int(weight.shape[0]), geom[0]
    if tuple(routing_weight.shape) != (e, cin):
        raise CondConvInputError(
            f"{op}: routing weight must be [E, Cin] = [{e}, {cin}], got {tuple(routing_weight.shape)}"
        )
    if routing_bias is not None and tuple(routing_bias.shape) != (e,):
        raise CondConvInputError(f"{op}: routing bias must be [E] = [{e}], got {tuple(routing_bias.shape)}")
    for name, t in (("routing weight", routing_weight), ("routing bias", routing_bias)):
        if t is not None and (t.device != weight.device or t.dtype != weight.dtype):
            raise CondConvInputError(
                f"{op}: {name} ({t.dtype}, {t.device}) must match weight ({weight.dtype}, {weight.device})"
            )


# ----------------------------------------------------------------------------------------------------------------
# Backward: two more custom ops on the library's CPU backward, and the autograd formulas that call them
# ----------------------------------------------------------------------------------------------------------------
#
#   condconv::cond_conv2d_backward(grad_y, x, routing_weights, weight, bias?, geom, layer_id, needs[4])
#       -> (dx, d_routing_weights, d_weight, d_bias)
#   condconv::routed_cond_conv2d_backward(grad_y, x, weight, bias?, routing_weight, routing_bias?, geom, routing,
#                                         temperature, layer_id, needs[5])
#       -> (dx, d_weight, d_bias, d_routing_weight, d_routing_bias)
#
# ``needs`` says which gradients to compute (the forward op's tensor inputs, in order); the library computes only
# those (NULL for the others) and an output not asked for is an empty tensor (shape [0]). Being custom ops with fake
# implementations, they let torch.compile and torch.export trace a training step's backward as well.
#
# Values: condconv_backward_cpu accumulates in double and rounds once; condconv_backward (CUDA) in f32. dx comes
# back in the layer's dtype and the forward's activation layout (NHWC for a channels_last x); the parameter and
# routing gradients come back f32 and are cast here to their tensors' dtypes (one more rounding for f16/bf16
# parameters, or f16/bf16/f64 routing weights).
# The timm weight layout [E, Cout*Cin/groups*kh*kw] is the library's [E][Cout][Cin/groups][kh][kw] flattened, so
# d_weight needs no permutation.
#
# CUDA: condconv_backward on torch's current stream with the forward's C layer (the same device, dtype, layout and
# math mode), its workspace from the caching allocator; a shape's backward plan is made on its first backward, which
# must happen outside a CUDA-graph capture (as the forward's). Nothing is computed in Python. Other devices raise
# CondConvInputError.


def _check_backward_device(x: torch.Tensor, op: str) -> None:
    if x.device.type not in ("cpu", "cuda"):
        raise CondConvInputError(f"{op}: backward of tensors on {x.device} is not supported (CPU and CUDA only)")


def _check_grad(grad: torch.Tensor, x: torch.Tensor, geom: list[int], op: str) -> None:
    _check_backward_device(x, op)
    if grad.device != x.device:
        raise CondConvInputError(f"{op}: grad_y is on {grad.device} but x is on {x.device}")
    if grad.dtype != x.dtype:
        raise CondConvInputError(f"{op}: grad_y has dtype {grad.dtype}, but the output (and x) are {x.dtype}")
    ho, wo = output_hw(x.shape[2], x.shape[3], geom)
    expected = (x.shape[0], geom[1], ho, wo)
    if tuple(grad.shape) != expected:
        raise CondConvInputError(f"{op}: grad_y must have the output's shape {expected}, got {tuple(grad.shape)}")


def _grad_like(t: torch.Tensor | None, need: bool) -> torch.Tensor:
    """The output for one gradient: t's shape, dtype and device (dense, contiguous), or an empty placeholder."""
    if t is None or not need:
        ref = t if t is not None else torch.empty(0)
        return torch.empty(0, dtype=ref.dtype, device=ref.device)
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _dx_like(x: torch.Tensor, need: bool) -> torch.Tensor:
    if not need:
        return torch.empty(0, dtype=x.dtype, device=x.device)
    fmt = torch.channels_last if is_nhwc(x) else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _run_backward(
    layer_id: int,
    grad: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    routing_weight: torch.Tensor | None,
    routing_bias: torch.Tensor | None,
    geom: list[int],
    routing: int,
    temperature: float,
    needs: dict[str, bool],
) -> dict[str, torch.Tensor]:
    """condconv_backward_cpu for the gradients ``needs`` names (x, alpha, weight, bias, routing_weight,
    routing_bias); each result in its input's dtype (dx also in x's layout), an empty tensor for the others."""
    nhwc = is_nhwc(x)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    out = {
        "x": _dx_like(x, needs["x"]),
        "alpha": _grad_like(alpha, needs["alpha"]),
        "weight": _grad_like(weight, needs["weight"]),
        "bias": _grad_like(bias, needs["bias"]),
        "routing_weight": _grad_like(routing_weight, needs["routing_weight"]),
        "routing_bias": _grad_like(routing_bias, needs["routing_bias"]),
    }
    wanted = [name for name, need in needs.items() if need and (name == "x" or out[name].numel() > 0)]
    if not wanted:
        return out
    dy = grad.contiguous(memory_format=fmt)
    alpha32 = None if alpha is None else alpha.to(torch.float32).contiguous()
    # The library writes the parameter and routing gradients in f32: straight into the output where that is f32.
    f32 = {
        name: out[name]
        if out[name].dtype == torch.float32
        else torch.empty(out[name].shape, dtype=torch.float32, device=out[name].device)
        for name in wanted
        if name != "x"
    }

    def ptr(name: str) -> int:
        return f32[name].data_ptr() if name in f32 else 0

    n, _, h, w = x.shape
    args = [x.data_ptr(), 0 if alpha32 is None else alpha32.data_ptr(), dy.data_ptr()]
    args += [out["x"].data_ptr() if "x" in wanted else 0]
    args += [ptr(name) for name in ("alpha", "weight", "bias", "routing_weight", "routing_bias")]
    if x.device.type == "cpu":
        layer, _ = _layer_for(
            layer_id, x, nhwc, geom, routing, temperature, (weight, bias, routing_weight, routing_bias)
        )
        with layer.context.lock:
            layer.backward_cpu(n, h, w, *args)
    else:
        _run_backward_cuda(layer_id, x, weight, bias, routing_weight, routing_bias, geom, routing, temperature, args)
    for name, value in f32.items():
        if value is not out[name]:
            out[name].copy_(value)
    return out


def _run_backward_cuda(
    layer_id: int,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    routing_weight: torch.Tensor | None,
    routing_bias: torch.Tensor | None,
    geom: list[int],
    routing: int,
    temperature: float,
    args: list[int],
) -> None:
    """condconv_backward on the current stream, with the forward's C layer (same device, dtype, layout and math
    mode) and a workspace from torch's caching allocator; the shape's backward plan made outside any capture."""
    nhwc = is_nhwc(x)
    n, _, h, w = x.shape
    layer, device = _layer_for(
        layer_id, x, nhwc, geom, routing, temperature, (weight, bias, routing_weight, routing_bias)
    )
    with torch.cuda.device(device), layer.context.lock:
        layer.context.set_stream(torch.cuda.current_stream(device).cuda_stream)
        ws_bytes = layer.bwd_prepared.get((n, h, w))
        if ws_bytes is None:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    f"condconv: the backward of shape N={n} H={h} W={w} was never run by this layer and the current "
                    f"stream is capturing a CUDA graph; run a training step with this shape before capturing"
                )
            ws_bytes = layer.backward_prepare(n, h, w)
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device) if ws_bytes else None
        layer.backward(n, h, w, *args, 0 if ws is None else ws.data_ptr(), ws_bytes)


def cond_conv2d_backward_impl(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    geom: list[int],
    layer_id: int,
    needs: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of cond_conv2d: (dx, d_routing_weights, d_weight, d_bias), those ``needs`` does not ask for empty."""
    _check_backward_cond_conv2d(grad_y, x, routing_weights, weight, bias, geom, needs)
    wants = dict(zip(("x", "alpha", "weight", "bias"), needs))
    out = _run_backward(
        layer_id,
        grad_y,
        x,
        routing_weights,
        weight,
        bias,
        None,
        None,
        geom,
        _native.ROUTING_EXTERNAL,
        1.0,
        {**wants, "routing_weight": False, "routing_bias": False},
    )
    return out["x"], out["alpha"], out["weight"], out["bias"]


def _check_backward_cond_conv2d(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    geom: list[int],
    needs: list[bool],
) -> None:
    op = "condconv::cond_conv2d_backward"
    if len(needs) != 4:
        raise CondConvInputError(f"{op}: needs has {len(needs)} values, expected 4 (x, routing_weights, weight, bias)")
    _check_common(x, weight, bias, geom, op)
    _check_alpha(x, routing_weights, int(weight.shape[0]))
    _check_grad(grad_y, x, geom, op)


cond_conv2d_backward = torch.library.custom_op(
    "condconv::cond_conv2d_backward", cond_conv2d_backward_impl, mutates_args=()
)


@cond_conv2d_backward.register_fake
def _cond_conv2d_backward_fake(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    routing_weights: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    geom: list[int],
    layer_id: int,
    needs: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_backward_cond_conv2d(grad_y, x, routing_weights, weight, bias, geom, needs)
    return (
        _dx_like(x, needs[0]),
        _grad_like(routing_weights, needs[1]),
        _grad_like(weight, needs[2]),
        _grad_like(bias, needs[3]),
    )


def routed_cond_conv2d_backward_impl(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    routing_weight: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    geom: list[int],
    routing: int,
    temperature: float,
    layer_id: int,
    needs: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of routed_cond_conv2d: (dx, d_weight, d_bias, d_routing_weight, d_routing_bias), those ``needs``
    does not ask for empty. dx includes the routing's share (through the global average pool)."""
    _check_backward_routed(grad_y, x, weight, bias, routing_weight, routing_bias, geom, routing, temperature, needs)
    wants = dict(zip(("x", "weight", "bias", "routing_weight", "routing_bias"), needs))
    out = _run_backward(
        layer_id,
        grad_y,
        x,
        None,
        weight,
        bias,
        routing_weight,
        routing_bias,
        geom,
        routing,
        temperature,
        {**wants, "alpha": False},
    )
    return out["x"], out["weight"], out["bias"], out["routing_weight"], out["routing_bias"]


def _check_backward_routed(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    routing_weight: torch.Tensor,
    routing_bias: torch.Tensor | None,
    geom: list[int],
    routing: int,
    temperature: float,
    needs: list[bool],
) -> None:
    op = "condconv::routed_cond_conv2d_backward"
    if len(needs) != 5:
        raise CondConvInputError(
            f"{op}: needs has {len(needs)} values, expected 5 (x, weight, bias, routing_weight, routing_bias)"
        )
    _check_routed(x, weight, bias, routing_weight, routing_bias, geom, routing, temperature)
    _check_grad(grad_y, x, geom, op)


routed_cond_conv2d_backward = torch.library.custom_op(
    "condconv::routed_cond_conv2d_backward", routed_cond_conv2d_backward_impl, mutates_args=()
)


@routed_cond_conv2d_backward.register_fake
def _routed_cond_conv2d_backward_fake(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    routing_weight: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    geom: list[int],
    routing: int,
    temperature: float,
    layer_id: int,
    needs: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_backward_routed(grad_y, x, weight, bias, routing_weight, routing_bias, geom, routing, temperature, needs)
    return (
        _dx_like(x, needs[0]),
        _grad_like(weight, needs[1]),
        _grad_like(bias, needs[2]),
        _grad_like(routing_weight, needs[3]),
        _grad_like(routing_bias, needs[4]),
    )


# The autograd formulas of the forward ops. The forward's tensors are saved with save_for_backward, so an in-place
# change between forward and backward (an optimiser step too early) is autograd's usual error, never a gradient
# of other weights; the C layer the backward uses is the forward's (same cache entry: same parameter versions).


def _setup_cond_conv2d(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: object) -> None:
    x, routing_weights, weight, bias, geom, layer_id = inputs
    ctx.save_for_backward(x, routing_weights, weight, bias)  # type: ignore[arg-type]
    ctx.geom = list(geom)  # type: ignore[attr-defined, arg-type]
    ctx.layer_id = layer_id  # type: ignore[attr-defined]


def _backward_cond_conv2d(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[object, ...]:
    x, routing_weights, weight, bias = ctx.saved_tensors  # type: ignore[attr-defined]
    needs = [bool(b) for b in ctx.needs_input_grad[:4]]  # type: ignore[attr-defined]
    _check_backward_device(x, "condconv::cond_conv2d")
    if not any(needs):
        return None, None, None, None, None, None
    geom, layer_id = ctx.geom, ctx.layer_id  # type: ignore[attr-defined]
    grads = torch.ops.condconv.cond_conv2d_backward(grad, x, routing_weights, weight, bias, geom, layer_id, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None, None)


def _setup_routed(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[object, ...], output: object) -> None:
    x, weight, bias, routing_weight, routing_bias, geom, routing, temperature, layer_id = inputs
    ctx.save_for_backward(x, weight, bias, routing_weight, routing_bias)  # type: ignore[arg-type]
    ctx.geom = list(geom)  # type: ignore[attr-defined, arg-type]
    ctx.routing = routing  # type: ignore[attr-defined]
    ctx.temperature = temperature  # type: ignore[attr-defined]
    ctx.layer_id = layer_id  # type: ignore[attr-defined]


def _backward_routed(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[object, ...]:
    x, weight, bias, routing_weight, routing_bias = ctx.saved_tensors  # type: ignore[attr-defined]
    needs = [bool(b) for b in ctx.needs_input_grad[:5]]  # type: ignore[attr-defined]
    _check_backward_device(x, "condconv::routed_cond_conv2d")
    if not any(needs):
        return (None,) * 9
    grads = torch.ops.condconv.routed_cond_conv2d_backward(
        grad,
        x,
        weight,
        bias,
        routing_weight,
        routing_bias,
        ctx.geom,  # type: ignore[attr-defined]
        ctx.routing,  # type: ignore[attr-defined]
        ctx.temperature,  # type: ignore[attr-defined]
        ctx.layer_id,  # type: ignore[attr-defined]
        needs,
    )
    return (*(g if need else None for g, need in zip(grads, needs)), None, None, None, None)


torch.library.register_autograd("condconv::cond_conv2d", _backward_cond_conv2d, setup_context=_setup_cond_conv2d)
torch.library.register_autograd("condconv::routed_cond_conv2d", _backward_routed, setup_context=_setup_routed)
