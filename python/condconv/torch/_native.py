"""The few C calls condconv.torch makes, on raw pointers.

condconv.torch passes torch's own pointers (any dtype, bf16 included, which NumPy lacks) and torch's current
stream, so it talks to the C API directly rather than through NumPy arrays. The shared library, its declared
prototypes and the exception type come from the core loader (``condconv._lib``); this module only adds thin
handle classes with the lifetime rules the torch side needs (contexts live for the process, layers are destroyed
with their cache entry).
"""

from __future__ import annotations

import ctypes
import threading

from condconv import _lib

CONDCONV_DEVICE_CPU = _lib.DEVICE_CPU

# Plain ints of the core's enum mirrors: they travel through torch custom ops and cache keys.
DTYPE_F32, DTYPE_F16, DTYPE_BF16 = int(_lib.DType.F32), int(_lib.DType.F16), int(_lib.DType.BF16)
LAYOUT_NCHW, LAYOUT_NHWC = int(_lib.Layout.NCHW), int(_lib.Layout.NHWC)
PADDING_EXPLICIT, PADDING_SAME = int(_lib.PaddingMode.EXPLICIT), int(_lib.PaddingMode.SAME)
ROUTING_SIGMOID, ROUTING_SOFTMAX, ROUTING_EXTERNAL = (
    int(_lib.Routing.SIGMOID),
    int(_lib.Routing.SOFTMAX),
    int(_lib.Routing.EXTERNAL),
)
ACTIVATION_NONE = int(_lib.Activation.NONE)
MATH_F32, MATH_TF32 = int(_lib.Math.F32), int(_lib.Math.TF32)


def _lib_handle() -> ctypes.CDLL:
    return _lib.lib()


def _call(name: str, *args: object) -> None:
    """Calls one C function and raises condconv.CondConvError (status name, last error) unless it succeeded."""
    _lib.check(getattr(_lib.lib(), name)(*args), name)


class NativeContext:
    """A condconv context on one CUDA device (or the CPU), with one math mode; lives for the process."""

    def __init__(self, device: int, math: int = MATH_F32) -> None:
        handle = ctypes.c_void_p()
        _call("condconv_context_create", ctypes.byref(handle), device)
        self.handle = handle
        self.device = device
        self.math = math
        # A context serves one host thread at a time (condconv.h); torch may call from several.
        self.lock = threading.Lock()
        self._stream: int | None = None
        if device != CONDCONV_DEVICE_CPU:
            _call("condconv_context_set_math", handle, math)

    def set_stream(self, stream: int) -> None:
        if stream != self._stream:
            _call("condconv_context_set_stream", self.handle, ctypes.c_void_p(stream))
            self._stream = stream


class NativeLayer:
    """One condconv layer (its own copy of the parameters) in one dtype and layout on one context."""

    def __init__(
        self,
        context: NativeContext,
        geom: list[int],
        num_experts: int,
        has_bias: bool,
        routing: int,
        temperature: float,
        dtype: int,
        layout: int,
        experts_ptr: int,
        bias_ptr: int,
        routing_weight_ptr: int,
        routing_bias_ptr: int,
    ) -> None:
        lib = _lib_handle()
        cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, same = geom
        desc = ctypes.c_void_p()
        _call("condconv_layer_desc_create", ctypes.byref(desc))
        layer = ctypes.c_void_p()
        try:
            _call("condconv_layer_desc_set_conv", desc, cin, cout, kh, kw, sh, sw, dh, dw, groups)
            if same:
                _call("condconv_layer_desc_set_padding", desc, PADDING_SAME, 0, 0)
            else:
                _call("condconv_layer_desc_set_padding", desc, PADDING_EXPLICIT, ph, pw)
            _call("condconv_layer_desc_set_experts", desc, num_experts, 1 if has_bias else 0)
            _call("condconv_layer_desc_set_routing", desc, routing, ctypes.c_float(temperature))
            _call("condconv_layer_desc_set_activation", desc, ACTIVATION_NONE)
            _call("condconv_layer_desc_set_format", desc, dtype, layout)
            params = _lib.Params(
                ctypes.c_void_p(experts_ptr or None),
                ctypes.c_void_p(bias_ptr or None),
                ctypes.c_void_p(routing_weight_ptr or None),
                ctypes.c_void_p(routing_bias_ptr or None),
            )
            _call("condconv_layer_create", context.handle, desc, ctypes.byref(params), ctypes.byref(layer))
        finally:
            lib.condconv_layer_desc_destroy(desc)
        self.handle = layer
        self.context = context
        # (n, h, w) -> workspace bytes, for every shape prepared outside a capture.
        self.prepared: dict[tuple[int, int, int], int] = {}

    def prepare(self, n: int, h: int, w: int) -> int:
        _call("condconv_prepare", self.handle, n, h, w)
        size = ctypes.c_size_t()
        _call("condconv_get_workspace_size", self.handle, n, h, w, ctypes.byref(size))
        self.prepared[(n, h, w)] = size.value
        return size.value

    def forward(self, n: int, h: int, w: int, x: int, y: int, alpha: int, ws: int, ws_bytes: int) -> None:
        status = _lib_handle().condconv_forward(self.handle, n, h, w, x, y, alpha or None, None, ws or None, ws_bytes)
        if status:
            _lib.check(status, "condconv_forward")

    def forward_cpu(self, n: int, h: int, w: int, x: int, y: int, alpha: int) -> None:
        _call("condconv_forward_cpu", self.handle, n, h, w, x, y, alpha or None, None)

    def plan_info(self, n: int, h: int, w: int) -> dict[str, object]:
        info = _lib.PlanInfo()
        _call("condconv_get_plan_info", self.handle, n, h, w, ctypes.byref(info))
        algo_name = _lib_handle().condconv_algo_name(info.algo)
        return {
            "algo": algo_name.decode() if isinstance(algo_name, bytes) else str(algo_name),
            "math": int(info.math),
            "workspace_bytes": int(info.workspace_bytes),
            "reason": info.reason.decode(errors="replace"),
            "backend": info.backend.decode(errors="replace"),
        }

    def close(self) -> None:
        if self.handle.value:
            try:
                _lib_handle().condconv_layer_destroy(self.handle)
            except (AttributeError, TypeError, OSError):
                pass  # interpreter shutdown: module globals may already be gone; the process frees the memory
            self.handle = ctypes.c_void_p()


def device_count() -> int:
    return int(_lib_handle().condconv_device_count())
