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

CONDCONV_DEVICE_CPU = -1

# Enum values of include/condconv.h (mirrored here so that this module reads without the header).
DTYPE_F32, DTYPE_F16, DTYPE_BF16 = 0, 1, 2
LAYOUT_NCHW, LAYOUT_NHWC = 0, 1
PADDING_EXPLICIT, PADDING_SAME = 0, 1
ROUTING_SIGMOID, ROUTING_SOFTMAX, ROUTING_EXTERNAL = 0, 1, 2
ACTIVATION_NONE = 0
MATH_F32, MATH_TF32 = 0, 1


def _lib_handle() -> ctypes.CDLL:
    return _lib.lib()


def _check(status: int) -> None:
    _lib.check(status)


class NativeContext:
    """A condconv context on one CUDA device (or the CPU), with one math mode; lives for the process."""

    def __init__(self, device: int, math: int = MATH_F32) -> None:
        lib = _lib_handle()
        handle = ctypes.c_void_p()
        _check(lib.condconv_context_create(ctypes.byref(handle), device))
        self.handle = handle
        self.device = device
        self.math = math
        # A context serves one host thread at a time (condconv.h); torch may call from several.
        self.lock = threading.Lock()
        self._stream: int | None = None
        if device != CONDCONV_DEVICE_CPU:
            _check(lib.condconv_context_set_math(handle, math))

    def set_stream(self, stream: int) -> None:
        if stream != self._stream:
            _check(_lib_handle().condconv_context_set_stream(self.handle, ctypes.c_void_p(stream)))
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
        _check(lib.condconv_layer_desc_create(ctypes.byref(desc)))
        layer = ctypes.c_void_p()
        try:
            _check(lib.condconv_layer_desc_set_conv(desc, cin, cout, kh, kw, sh, sw, dh, dw, groups))
            if same:
                _check(lib.condconv_layer_desc_set_padding(desc, PADDING_SAME, 0, 0))
            else:
                _check(lib.condconv_layer_desc_set_padding(desc, PADDING_EXPLICIT, ph, pw))
            _check(lib.condconv_layer_desc_set_experts(desc, num_experts, 1 if has_bias else 0))
            _check(lib.condconv_layer_desc_set_routing(desc, routing, ctypes.c_float(temperature)))
            _check(lib.condconv_layer_desc_set_activation(desc, ACTIVATION_NONE))
            _check(lib.condconv_layer_desc_set_format(desc, dtype, layout))
            params = _lib.condconv_params(
                ctypes.c_void_p(experts_ptr or None),
                ctypes.c_void_p(bias_ptr or None),
                ctypes.c_void_p(routing_weight_ptr or None),
                ctypes.c_void_p(routing_bias_ptr or None),
            )
            _check(lib.condconv_layer_create(context.handle, desc, ctypes.byref(params), ctypes.byref(layer)))
        finally:
            lib.condconv_layer_desc_destroy(desc)
        self.handle = layer
        self.context = context
        # (n, h, w) -> workspace bytes, for every shape prepared outside a capture.
        self.prepared: dict[tuple[int, int, int], int] = {}

    def prepare(self, n: int, h: int, w: int) -> int:
        lib = _lib_handle()
        _check(lib.condconv_prepare(self.handle, n, h, w))
        size = ctypes.c_size_t()
        _check(lib.condconv_get_workspace_size(self.handle, n, h, w, ctypes.byref(size)))
        self.prepared[(n, h, w)] = size.value
        return size.value

    def forward(self, n: int, h: int, w: int, x: int, y: int, alpha: int, ws: int, ws_bytes: int) -> None:
        _check(
            _lib_handle().condconv_forward(
                self.handle,
                n,
                h,
                w,
                ctypes.c_void_p(x),
                ctypes.c_void_p(y),
                ctypes.c_void_p(alpha or None),
                None,
                ctypes.c_void_p(ws or None),
                ctypes.c_size_t(ws_bytes),
            )
        )

    def forward_cpu(self, n: int, h: int, w: int, x: int, y: int, alpha: int) -> None:
        _check(
            _lib_handle().condconv_forward_cpu(
                self.handle, n, h, w, ctypes.c_void_p(x), ctypes.c_void_p(y), ctypes.c_void_p(alpha or None), None
            )
        )

    def plan_info(self, n: int, h: int, w: int) -> dict[str, object]:
        info = _lib.condconv_plan_info()
        _check(_lib_handle().condconv_get_plan_info(self.handle, n, h, w, ctypes.byref(info)))
        algo_name = _lib_handle().condconv_algo_name(info.algo)
        return {
            "algo": algo_name.decode() if isinstance(algo_name, bytes) else str(algo_name),
            "math": int(info.math),
            "workspace_bytes": int(info.workspace_bytes),
            "reason": info.reason.decode(errors="replace"),
            "backend": info.backend.decode(errors="replace"),
        }

    def close(self) -> None:
        if self.handle:
            try:
                _lib_handle().condconv_layer_destroy(self.handle)
            except Exception:  # noqa: BLE001 - interpreter shutdown may have unloaded ctypes; nothing to report
                pass
            self.handle = ctypes.c_void_p()


def device_count() -> int:
    return int(_lib_handle().condconv_device_count())
