"""nn.Modules over condconv's custom ops: a drop-in for timm's CondConv2d, a self-routing form, and convert()."""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn

from . import _native, _ops

IntOrPair = Union[int, tuple[int, int]]  # a runtime alias: Union for Python 3.9

__all__ = ["CondConv2d", "RoutedCondConv2d", "convert", "invalidate", "padding_value"]


def _pair(v: IntOrPair) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _symmetric_padding(kernel: int, stride: int, dilation: int) -> int:
    # timm.layers.padding.get_padding
    return ((stride - 1) + dilation * (kernel - 1)) // 2


def padding_value(
    padding: int | tuple[int, int] | str, kernel_size: IntOrPair, stride: IntOrPair, dilation: IntOrPair
) -> tuple[tuple[int, int], bool]:
    """timm's ``get_padding_value``: (explicit padding per axis, dynamic 'same').

    '' (timm's default): PyTorch-style symmetric ((stride - 1) + dilation * (k - 1)) // 2.
    'valid': 0. 'same': TensorFlow 'SAME'; static (the symmetric padding) when stride is 1 and dilation * (k - 1)
    is even on both axes, otherwise dynamic (asymmetric, depends on H and W; the library's CONDCONV_PADDING_SAME).
    An int or pair: explicit.
    """
    k, s, d = _pair(kernel_size), _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "same":
            if all(si == 1 and (di * (ki - 1)) % 2 == 0 for ki, si, di in zip(k, s, d)):
                return (_symmetric_padding(k[0], s[0], d[0]), _symmetric_padding(k[1], s[1], d[1])), False
            return (0, 0), True
        if mode == "valid":
            return (0, 0), False
        return (_symmetric_padding(k[0], s[0], d[0]), _symmetric_padding(k[1], s[1], d[1])), False
    return _pair(padding), False


def _eager(inputs: tuple[torch.Tensor, ...], params: tuple[torch.Tensor | None, ...]) -> bool:
    """A plain eager call that needs no gradient: not traced by torch.compile/export, no tensor subclass (fake,
    functional, proxy) among the inputs, and no autograd graph to record. Only then may the module skip the
    registered op (whose autograd formula the backward needs); anything else goes through it."""
    if torch.compiler.is_compiling() or any(type(t) is not torch.Tensor for t in inputs):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*inputs, *params)))


class CondConv2d(nn.Module):
    """timm's ``CondConv2d`` on condconv: same constructor, parameters and ``forward(x, routing_weights)``.

    Parameters (as timm, so timm state_dicts load both ways): ``weight`` [E, Cout * Cin/groups * kh * kw] and, with
    ``bias=True``, ``bias`` [E, Cout]. ``forward(x, routing_weights)`` computes for every sample b
    ``conv2d(x_b, sum_e alpha_be W_e) + sum_e alpha_be bias_e`` with timm's padding semantics ('' symmetric,
    'same' TensorFlow SAME, 'valid', int or pair).

    CUDA tensors run condconv's GPU path on torch's current stream (channels_last as NHWC, contiguous as NCHW,
    anything else made contiguous first); CPU tensors the library's reference path.

    Training: autograd works for x, ``routing_weights``, ``weight`` and ``bias``: on CPU tensors through the
    library's ``condconv_backward_cpu`` (double accumulation), on CUDA tensors through ``condconv_backward``
    (f32 accumulation, deterministic). See
    condconv.torch._ops for the C layer cache, the gradients' dtypes and the CUDA-graph rules.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair = 3,
        stride: IntOrPair = 1,
        padding: int | tuple[int, int] | str = "",
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = False,
        num_experts: int = 4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must divide by groups {groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        pad, dynamic = padding_value(padding, kernel_size, stride, dilation)
        self.dynamic_padding = dynamic
        self.padding = pad
        self.dilation = _pair(dilation)
        self.groups = groups
        self.num_experts = num_experts
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(num_experts, math.prod(self.weight_shape), device=device, dtype=dtype))
        if bias:
            self.bias_shape = (out_channels,)
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.empty(num_experts, out_channels, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("bias", None)
        self.layer_id = _ops.new_layer_id(self)
        self.reset_parameters()

    def __setstate__(self, state: dict[str, object]) -> None:
        # copy.deepcopy and unpickling come through here: the copy gets its own id, so that it never shares (and
        # keeps rebuilding) the original's C layers.
        super().__setstate__(state)
        self.layer_id = _ops.new_layer_id(self)

    @property
    def geom(self) -> list[int]:
        """The geometry the custom op takes (``condconv.torch._ops.GEOM_FIELDS``)."""
        return [
            self.in_channels,
            self.out_channels,
            self.kernel_size[0],
            self.kernel_size[1],
            self.stride[0],
            self.stride[1],
            self.padding[0],
            self.padding[1],
            self.dilation[0],
            self.dilation[1],
            self.groups,
            int(self.dynamic_padding),
        ]

    def reset_parameters(self) -> None:
        # timm's initialisation: each expert as a conv weight (kaiming uniform, a = sqrt(5)), biases uniform.
        with torch.no_grad():
            for e in range(self.num_experts):
                nn.init.kaiming_uniform_(self.weight[e].view(self.weight_shape), a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))
                nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={'same (dynamic)' if self.dynamic_padding else self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, num_experts={self.num_experts}"
        )
        return s + ("" if self.bias is not None else ", bias=False")

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        if _eager((x, routing_weights), (self.weight, self.bias)):
            # Plain eager call: the op's own implementation, without the dispatcher's per-call overhead.
            return _ops.cond_conv2d_impl(x, routing_weights, self.weight, self.bias, self.geom, self.layer_id)
        return torch.ops.condconv.cond_conv2d(x, routing_weights, self.weight, self.bias, self.geom, self.layer_id)

    def plan_info(self, x: torch.Tensor) -> dict[str, object]:
        """What runs for this input: on CUDA the algorithm the library chose, its backend and why."""
        return _ops.plan_info(self.layer_id, x, self.weight, self.bias, self.geom)

    @classmethod
    def from_timm(cls, module: nn.Module) -> CondConv2d:
        """A condconv CondConv2d with the parameters (shared, not copied), dtype and device of a timm CondConv2d."""
        p = module.padding
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_channels = int(module.in_channels)
        new.out_channels = int(module.out_channels)
        new.kernel_size = _pair(module.kernel_size)
        new.stride = _pair(module.stride)
        new.padding = _pair(p)
        new.dynamic_padding = bool(module.dynamic_padding)
        new.dilation = _pair(module.dilation)
        new.groups = int(module.groups)
        new.num_experts = int(module.num_experts)
        new.weight_shape = (new.out_channels, new.in_channels // new.groups, *new.kernel_size)
        new.weight = module.weight
        if module.bias is not None:
            new.bias_shape = (new.out_channels,)
            new.bias = module.bias
        else:
            new.register_parameter("bias", None)
        new.layer_id = _ops.new_layer_id(new)
        new.train(module.training)
        return new


class RoutedCondConv2d(CondConv2d):
    """A CondConv layer that routes itself, for models that route inside the layer.

    ``alpha = sigmoid(routing_fn(GAP(x)))`` (``routing='sigmoid'``, CondConv) or
    ``softmax(routing_fn(GAP(x)) / temperature)`` (``routing='softmax'``, Dynamic Convolution), with
    ``routing_fn = nn.Linear(in_channels, num_experts)``; then as CondConv2d. ``forward(x)``. The routing runs
    inside the library (one fused kernel on the GPU). Autograd on CPU tensors, as CondConv2d, also gives the
    gradients of ``routing_fn``'s weight and bias (and x's through the routing's average pool).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair = 3,
        stride: IntOrPair = 1,
        padding: int | tuple[int, int] | str = "",
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = False,
        num_experts: int = 4,
        routing: str = "sigmoid",
        temperature: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if routing not in ("sigmoid", "softmax"):
            raise ValueError(f"routing must be 'sigmoid' or 'softmax', got {routing!r}")
        if not temperature > 0.0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, num_experts, device, dtype
        )
        self.routing = routing
        self.temperature = float(temperature)
        self.routing_fn = nn.Linear(in_channels, num_experts, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", routing={self.routing}, temperature={self.temperature}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        fc = self.routing_fn
        mode = _native.ROUTING_SIGMOID if self.routing == "sigmoid" else _native.ROUTING_SOFTMAX
        eager = _eager((x,), (self.weight, self.bias, fc.weight, fc.bias))
        op = _ops.routed_cond_conv2d_impl if eager else torch.ops.condconv.routed_cond_conv2d
        return op(
            x,
            self.weight,
            self.bias,
            fc.weight,
            fc.bias,
            self.geom,
            mode,
            self.temperature,
            self.layer_id,
        )

    def plan_info(self, x: torch.Tensor) -> dict[str, object]:
        mode = _native.ROUTING_SIGMOID if self.routing == "sigmoid" else _native.ROUTING_SOFTMAX
        return _ops.plan_info(
            self.layer_id,
            x,
            self.weight,
            self.bias,
            self.geom,
            mode,
            self.temperature,
            self.routing_fn.weight,
            self.routing_fn.bias,
        )


def _timm_condconv_type() -> type | None:
    try:
        from timm.layers import CondConv2d as TimmCondConv2d
    except ImportError:
        return None
    return TimmCondConv2d


def convert(model: nn.Module) -> int:
    """Replaces every timm ``CondConv2d`` in ``model``, in place, by condconv's; returns how many it replaced.

    The new layers share the old ones' parameters (same tensors: weights, dtype and device kept, state_dict keys
    unchanged), and keep ``forward(x, routing_weights)``, so the blocks around them are untouched: an
    EfficientNet-CondConv block still routes once and passes its alpha to its three CondConv layers. ``model``
    itself is not replaced (wrap a bare CondConv2d in a container to convert it). Returns 0 without timm.
    """
    timm_type = _timm_condconv_type()
    if timm_type is None:
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, timm_type) and not isinstance(child, CondConv2d):
                setattr(parent, name, CondConv2d.from_timm(child))
                replaced += 1
    return replaced


def invalidate(model: nn.Module) -> int:
    """Drops the cached C layers of every condconv layer in ``model`` (itself included); returns how many layers.

    Needed only after an in-place update of parameters that are inference tensors (made under
    ``torch.inference_mode``), which carry no version counter; every other change is detected by itself.
    """
    layers = [m for m in model.modules() if isinstance(m, CondConv2d)]
    for m in layers:
        _ops.invalidate(m.layer_id)
    return len(layers)
