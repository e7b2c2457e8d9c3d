"""The C layers behind condconv.torch, on the core's Context and Layer (``condconv.core``).

condconv.torch hands the library torch's own pointers and torch's current stream, so it uses the core's
low-level face (``Layer.forward_ptr``, ``forward_cpu_ptr``, ``prepare``, ``workspace_size``). This module adds
only what the torch side needs around it: a lock per context (a context serves one host thread at a time and torch
may call from several), a remembered stream (``set_stream`` only when it changes), the shapes prepared outside a
capture with their workspace sizes, and parameters taken from torch tensors (bf16 included, as bit patterns).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from condconv import _lib
from condconv.core import Context, Layer, LayerSpec

CONDCONV_DEVICE_CPU = _lib.DEVICE_CPU

# Plain ints of the core's enum mirrors: they travel through torch custom ops and cache keys.
ROUTING_SIGMOID, ROUTING_SOFTMAX, ROUTING_EXTERNAL = (
    int(_lib.Routing.SIGMOID),
    int(_lib.Routing.SOFTMAX),
    int(_lib.Routing.EXTERNAL),
)
MATH_F32, MATH_TF32 = int(_lib.Math.F32), int(_lib.Math.TF32)

_ROUTING_NAMES = {ROUTING_SIGMOID: "sigmoid", ROUTING_SOFTMAX: "softmax", ROUTING_EXTERNAL: "external"}
_DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


class NativeContext:
    """A core Context on one CUDA device (or the CPU) with one math mode; lives for the process."""

    def __init__(self, device: int, math: int = MATH_F32) -> None:
        self.context = Context("cpu" if device == CONDCONV_DEVICE_CPU else device)
        if device != CONDCONV_DEVICE_CPU:
            self.context.set_math(_lib.Math(math))
        self.device = device
        self.math = math
        self.lock = threading.Lock()
        self._stream: int | None = None

    def set_stream(self, stream: int) -> None:
        if stream != self._stream:
            self.context.set_stream(stream)
            self._stream = stream


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """A host tensor as the NumPy array the core takes (bf16 as uint16 bit patterns), without a copy."""
    if t is None:
        return None
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


class NativeLayer:
    """One C layer (its own copy of the parameters) in one dtype and activation layout on one context."""

    def __init__(
        self,
        context: NativeContext,
        geom: list[int],
        routing: int,
        temperature: float,
        dtype: torch.dtype,
        nhwc: bool,
        host_params: list[torch.Tensor | None],
    ) -> None:
        cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, same = geom
        weight, bias, routing_weight, routing_bias = host_params
        assert weight is not None
        spec = LayerSpec(
            in_channels=cin,
            out_channels=cout,
            kernel_size=(kh, kw),
            stride=(sh, sw),
            padding="same" if same else (ph, pw),
            dilation=(dh, dw),
            groups=groups,
            num_experts=int(weight.shape[0]),
            bias=bias is not None,
            routing=_ROUTING_NAMES[routing],  # type: ignore[arg-type]
            temperature=float(temperature),
            activation="none",
            dtype=_DTYPE_NAMES[dtype],  # type: ignore[arg-type]
            layout="nhwc" if nhwc else "nchw",
        )
        self.layer = Layer(
            context.context, spec, _numpy(weight), _numpy(bias), _numpy(routing_weight), _numpy(routing_bias)
        )
        self.context = context
        # (n, h, w) -> workspace bytes, for every shape prepared (outside a capture).
        self.prepared: dict[tuple[int, int, int], int] = {}
        # The same for the backward's plans.
        self.bwd_prepared: dict[tuple[int, int, int], int] = {}

    def prepare(self, n: int, h: int, w: int) -> int:
        self.layer.prepare(n, h, w)
        size = self.layer.workspace_size(n, h, w)
        self.prepared[(n, h, w)] = size
        return size

    def forward(self, n: int, h: int, w: int, x: int, y: int, alpha: int, ws: int, ws_bytes: int) -> None:
        self.layer.forward_ptr(n, h, w, x, y, alpha, 0, ws, ws_bytes)

    def forward_cpu(self, n: int, h: int, w: int, x: int, y: int, alpha: int) -> None:
        self.layer.forward_cpu_ptr(n, h, w, x, y, alpha, 0)

    def backward_cpu(
        self,
        n: int,
        h: int,
        w: int,
        x: int,
        alpha: int,
        dy: int,
        dx: int,
        d_alpha: int,
        d_weight: int,
        d_bias: int,
        d_routing_weight: int,
        d_routing_bias: int,
    ) -> None:
        self.layer.backward_cpu_ptr(
            n, h, w, x, alpha, dy, dx, d_alpha, d_weight, d_bias, d_routing_weight, d_routing_bias
        )

    def backward_prepare(self, n: int, h: int, w: int) -> int:
        self.layer.backward_prepare(n, h, w)
        size = self.layer.backward_workspace_size(n, h, w)
        self.bwd_prepared[(n, h, w)] = size
        return size

    def backward(
        self,
        n: int,
        h: int,
        w: int,
        x: int,
        alpha: int,
        dy: int,
        dx: int,
        d_alpha: int,
        d_weight: int,
        d_bias: int,
        d_routing_weight: int,
        d_routing_bias: int,
        ws: int,
        ws_bytes: int,
    ) -> None:
        self.layer.backward_ptr(
            n, h, w, x, alpha, dy, dx, d_alpha, d_weight, d_bias, d_routing_weight, d_routing_bias, ws, ws_bytes
        )

    def plan_info(self, n: int, h: int, w: int) -> dict[str, object]:
        return self.layer.plan_info(n, h, w)

    def close(self) -> None:
        self.layer.close()
