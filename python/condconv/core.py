"""The NumPy core: contexts, layer specs and layers over libcondconv's C API.

Element types in NumPy: a layer's ``"f32"`` data are ``float32`` arrays, ``"f16"`` data ``float16`` arrays, and
``"bf16"`` data ``uint16`` arrays holding bfloat16 bit patterns (NumPy has no bfloat16); :func:`convert` converts
between the three (round to nearest even). Routing weights are always ``float32`` ``[N, E]``.

Two faces per layer: the NumPy one (:meth:`Layer.forward`, :meth:`Layer.route`, :meth:`Layer.backward`) runs the
CPU reference path on C-contiguous arrays it validates first; the low-level one (``*_ptr`` methods,
:meth:`Layer.prepare`, ...) passes raw addresses (ints, 0 for NULL) straight to C for callers that own their memory
(``condconv.torch``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Literal, Union

import numpy as np

from . import _lib
from ._lib import (
    ALGO_COUNT,
    DEVICE_CPU,
    Activation,
    Algo,
    AlgoSelect,
    CondConvError,
    DType,
    Layout,
    Math,
    PaddingMode,
    Routing,
    check,
    lib,
)

__all__ = [
    "Context",
    "Layer",
    "LayerSpec",
    "algo_names",
    "convert",
    "device_count",
    "numpy_dtype",
    "version",
]

DTypeName = Literal["f32", "f16", "bf16"]
LayoutName = Literal["nchw", "nhwc"]
IntPair = Union[int, tuple[int, int]]
Padding = Union[int, tuple[int, int], Literal["same"]]

_DTYPES: dict[str, tuple[DType, type[np.generic]]] = {
    "f32": (DType.F32, np.float32),
    "f16": (DType.F16, np.float16),
    "bf16": (DType.BF16, np.uint16),
}
_LAYOUTS: dict[str, Layout] = {"nchw": Layout.NCHW, "nhwc": Layout.NHWC}
_ROUTINGS: dict[str, Routing] = {"sigmoid": Routing.SIGMOID, "softmax": Routing.SOFTMAX, "external": Routing.EXTERNAL}
_ACTIVATIONS: dict[str, Activation] = {"none": Activation.NONE, "relu": Activation.RELU, "silu": Activation.SILU}
_MATHS: dict[str, Math] = {"f32": Math.F32, "tf32": Math.TF32}
_SELECTS: dict[str, AlgoSelect] = {"measure": AlgoSelect.MEASURE, "heuristic": AlgoSelect.HEURISTIC}


def _name_of(table: Mapping[str, int], value: int) -> str:
    for name, v in table.items():
        if v == value:
            return name
    raise ValueError(f"unknown enum value {value}")


def _enum(table: Mapping[str, Any], value: str | int, what: str) -> Any:
    """A name from ``table`` (case-insensitive) or an enum/int member of its values."""
    if isinstance(value, str):
        key = value.lower()
        if key not in table:
            raise ValueError(f"unknown {what} {value!r}; one of {sorted(table)}")
        return table[key]
    members = {int(v) for v in table.values()}
    if isinstance(value, (int, np.integer)) and int(value) in members:
        return type(next(iter(table.values())))(int(value))
    raise ValueError(f"unknown {what} {value!r}; one of {sorted(table)}")


_DTYPE_ENUMS: dict[str, DType] = {k: v[0] for k, v in _DTYPES.items()}


def _dtype_name(dtype: str | int) -> str:
    return _name_of(_DTYPE_ENUMS, _enum(_DTYPE_ENUMS, dtype, "dtype"))


def numpy_dtype(dtype: str | int) -> np.dtype[Any]:
    """The NumPy dtype holding a condconv dtype: float32, float16, or uint16 (bfloat16 bit patterns)."""
    return np.dtype(_DTYPES[_dtype_name(dtype)][1])


def _pair(value: IntPair, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Library-wide queries


def version() -> str:
    """The loaded library's version, "major.minor.patch"."""
    v = int(lib().condconv_version())
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def device_count() -> int:
    """CUDA devices usable by this process (0 without a GPU or driver)."""
    return int(lib().condconv_device_count())


def algo_names() -> list[str]:
    """Names of the algorithms, indexed by :class:`condconv.Algo` ("auto", "cudnn_grouped", ...)."""
    return [lib().condconv_algo_name(i).decode() for i in range(ALGO_COUNT)]


def backward_algo_names() -> list[str]:
    """Names of the GPU backward's algorithms, indexed by condconv_bwd_algo ("auto", "cudnn_grouped", "mixture",
    "folded_wgrad")."""
    names = []
    while (raw := lib().condconv_bwd_algo_name(len(names))) is not None:
        names.append(raw.decode())
    return names


def convert(array: np.ndarray, src: DTypeName | DType, dst: DTypeName | DType) -> np.ndarray:
    """Converts ``array`` (the NumPy type of ``src``) into a new array of ``dst``'s NumPy type, with the C
    library's ``condconv_convert`` (round to nearest even; NaN stays NaN; overflow gives infinity).
    ``convert(np.float32 array, "f32", "bf16")`` gives the uint16 bit patterns a bf16 layer takes."""
    src_name, dst_name = _dtype_name(src), _dtype_name(dst)
    src_np, dst_np = numpy_dtype(src_name), numpy_dtype(dst_name)
    arr = np.asarray(array)
    if arr.dtype != src_np:
        raise TypeError(f"convert: a {src_name} array must have NumPy dtype {src_np}, got {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    out = np.empty(arr.shape, dtype=dst_np)
    status = lib().condconv_convert(
        _DTYPES[src_name][0], arr.ctypes.data, _DTYPES[dst_name][0], out.ctypes.data, arr.size
    )
    check(status, "condconv_convert")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Context


class Context:
    """One CUDA device (``device=0, 1, ...``) and stream, or the CPU only (``device="cpu"``).

    Layers created on a context keep it alive; :meth:`close` destroys the layers made on it first (the C API
    requires that order). A context serves one thread at a time, like the C handle it wraps.
    """

    def __init__(self, device: int | Literal["cpu"] = "cpu") -> None:
        if device == "cpu":
            ordinal = DEVICE_CPU
        elif isinstance(device, (int, np.integer)) and not isinstance(device, bool) and int(device) >= 0:
            ordinal = int(device)
        else:
            raise ValueError(f"device must be a CUDA device ordinal (int >= 0) or 'cpu', got {device!r}")
        self._handle: int | None = None
        self._layers: weakref.WeakSet[Layer] = weakref.WeakSet()
        self._lock = threading.Lock()
        h = ctypes.c_void_p()
        check(lib().condconv_context_create(ctypes.byref(h), ordinal), "condconv_context_create")
        self._handle = h.value
        self._device = ordinal

    @property
    def handle(self) -> int:
        """The ``condconv_context_t`` address (raises once closed)."""
        if self._handle is None:
            raise ValueError("the condconv Context is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def device(self) -> int | Literal["cpu"]:
        return "cpu" if self._device == DEVICE_CPU else self._device

    @property
    def is_cpu(self) -> bool:
        return self._device == DEVICE_CPU

    def set_stream(self, stream_ptr: int) -> None:
        """All GPU work of the context goes on this ``cudaStream_t`` (an address; 0 is the legacy default)."""
        check(lib().condconv_context_set_stream(self.handle, int(stream_ptr) or None), "condconv_context_set_stream")

    @property
    def stream(self) -> int:
        s = ctypes.c_void_p()
        check(lib().condconv_context_get_stream(self.handle, ctypes.byref(s)), "condconv_context_get_stream")
        return s.value or 0

    def set_math(self, math: Literal["f32", "tf32"] | Math) -> None:
        """Arithmetic for f32 data in plans prepared afterwards: "f32" (strict, default) or "tf32"."""
        check(lib().condconv_context_set_math(self.handle, _enum(_MATHS, math, "math")), "condconv_context_set_math")

    @property
    def math(self) -> str:
        m = ctypes.c_int()
        check(lib().condconv_context_get_math(self.handle, ctypes.byref(m)), "condconv_context_get_math")
        return _name_of(_MATHS, m.value)

    def set_algo_select(self, select: Literal["measure", "heuristic"] | AlgoSelect) -> None:
        """How the AUTO algorithm chooses for shapes prepared afterwards: "measure" (default) or "heuristic"."""
        value = _enum(_SELECTS, select, "algo select")
        check(lib().condconv_context_set_algo_select(self.handle, value), "condconv_context_set_algo_select")

    @property
    def algo_select(self) -> str:
        s = ctypes.c_int()
        check(lib().condconv_context_get_algo_select(self.handle, ctypes.byref(s)), "condconv_context_get_algo_select")
        return _name_of(_SELECTS, s.value)

    def set_auto_budget(self, milliseconds: float) -> None:
        """Host time AUTO may spend measuring one shape (0: no bound); candidates beyond each algorithm's default
        are timed while it lasts."""
        check(
            lib().condconv_context_set_auto_budget(self.handle, ctypes.c_float(milliseconds)),
            "condconv_context_set_auto_budget",
        )

    @property
    def auto_budget(self) -> float:
        ms = ctypes.c_float()
        check(lib().condconv_context_get_auto_budget(self.handle, ctypes.byref(ms)), "condconv_context_get_auto_budget")
        return float(ms.value)

    def close(self) -> None:
        """Destroys the layers made on this context, then the context. Closing twice is a no-op."""
        with self._lock:
            if self._handle is None:
                return
            for layer in list(self._layers):
                layer.close()
            handle, self._handle = self._handle, None
        check(lib().condconv_context_destroy(handle), "condconv_context_destroy")

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown the module may be half torn down; a failing destroy has nowhere to go.
        try:
            if getattr(self, "_handle", None) is not None:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Context(device={self.device!r}{', closed' if self.closed else ''})"


# ---------------------------------------------------------------------------------------------------------------
# Layer descriptor


class _Desc:
    """A ``condconv_layer_desc_t`` for the duration of a ``with`` block."""

    def __init__(self) -> None:
        h = ctypes.c_void_p()
        check(lib().condconv_layer_desc_create(ctypes.byref(h)), "condconv_layer_desc_create")
        self.handle: int = h.value or 0

    def __enter__(self) -> _Desc:
        return self

    def __exit__(self, *exc: object) -> None:
        check(lib().condconv_layer_desc_destroy(self.handle), "condconv_layer_desc_destroy")

    def info(self) -> _lib.LayerInfo:
        info = _lib.LayerInfo()
        check(lib().condconv_layer_desc_get_info(self.handle, ctypes.byref(info)), "condconv_layer_desc_get_info")
        return info


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Everything that defines a CondConv layer but its weights (a ``condconv_layer_desc_t``).

    ``padding`` is an int, a pair (rows, columns) or "same" (TensorFlow/timm: ``Ho = ceil(H / stride)``, the odd
    row/column below/right). ``routing``: "sigmoid" (CondConv), "softmax" (Dynamic Convolution, divides the
    logits by ``temperature``) or "external" (the caller passes routing weights to each forward).
    The C library checks the values; a bad one raises :class:`CondConvError` when the spec is used.
    """

    in_channels: int
    out_channels: int
    kernel_size: IntPair
    stride: IntPair = 1
    padding: Padding = 0
    dilation: IntPair = 1
    groups: int = 1
    num_experts: int = 1
    bias: bool = True
    routing: Literal["sigmoid", "softmax", "external"] = "sigmoid"
    temperature: float = 1.0
    activation: Literal["none", "relu", "silu"] = "none"
    dtype: DTypeName = "f32"
    layout: LayoutName = "nchw"

    def __post_init__(self) -> None:
        # Names and arities here; the numbers are the C library's to judge.
        _pair(self.kernel_size, "kernel_size")
        _pair(self.stride, "stride")
        _pair(self.dilation, "dilation")
        if not (isinstance(self.padding, str) and self.padding.lower() == "same"):
            if isinstance(self.padding, str):
                raise ValueError(f"padding must be an int, a pair of ints or 'same', got {self.padding!r}")
            _pair(self.padding, "padding")
        _enum(_ROUTINGS, self.routing, "routing")
        _enum(_ACTIVATIONS, self.activation, "activation")
        _enum(_DTYPE_ENUMS, self.dtype, "dtype")
        _enum(_LAYOUTS, self.layout, "layout")

    # --- derived values ---------------------------------------------------------------------------------------
    @property
    def kernel_hw(self) -> tuple[int, int]:
        return _pair(self.kernel_size, "kernel_size")

    @property
    def stride_hw(self) -> tuple[int, int]:
        return _pair(self.stride, "stride")

    @property
    def dilation_hw(self) -> tuple[int, int]:
        return _pair(self.dilation, "dilation")

    @property
    def same_padding(self) -> bool:
        return isinstance(self.padding, str)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """float32, float16, or uint16 (bfloat16 bit patterns)."""
        return numpy_dtype(self.dtype)

    @property
    def channels_last(self) -> bool:
        return _enum(_LAYOUTS, self.layout, "layout") == Layout.NHWC

    @property
    def external_routing(self) -> bool:
        return _enum(_ROUTINGS, self.routing, "routing") == Routing.EXTERNAL

    @property
    def expert_shape(self) -> tuple[int, int, int, int, int]:
        """[E, Cout, Cin/groups, kh, kw] (timm also stores it flattened as [E, Cout*Cin/groups*kh*kw])."""
        kh, kw = self.kernel_hw
        return (self.num_experts, self.out_channels, self.in_channels // max(self.groups, 1), kh, kw)

    # --- the C descriptor -------------------------------------------------------------------------------------
    def _fill(self, desc: _Desc) -> None:
        L = lib()
        kh, kw = self.kernel_hw
        sh, sw = self.stride_hw
        dh, dw = self.dilation_hw
        check(
            L.condconv_layer_desc_set_conv(
                desc.handle, self.in_channels, self.out_channels, kh, kw, sh, sw, dh, dw, self.groups
            ),
            "condconv_layer_desc_set_conv",
        )
        if self.same_padding:
            check(
                L.condconv_layer_desc_set_padding(desc.handle, PaddingMode.SAME, 0, 0),
                "condconv_layer_desc_set_padding",
            )
        else:
            ph, pw = _pair(self.padding, "padding")  # type: ignore[arg-type]
            check(
                L.condconv_layer_desc_set_padding(desc.handle, PaddingMode.EXPLICIT, ph, pw),
                "condconv_layer_desc_set_padding",
            )
        check(
            L.condconv_layer_desc_set_experts(desc.handle, self.num_experts, 1 if self.bias else 0),
            "condconv_layer_desc_set_experts",
        )
        check(
            L.condconv_layer_desc_set_routing(
                desc.handle, _enum(_ROUTINGS, self.routing, "routing"), float(self.temperature)
            ),
            "condconv_layer_desc_set_routing",
        )
        check(
            L.condconv_layer_desc_set_activation(desc.handle, _enum(_ACTIVATIONS, self.activation, "activation")),
            "condconv_layer_desc_set_activation",
        )
        check(
            L.condconv_layer_desc_set_format(
                desc.handle, _DTYPES[_dtype_name(self.dtype)][0], _enum(_LAYOUTS, self.layout, "layout")
            ),
            "condconv_layer_desc_set_format",
        )

    def _desc(self) -> _Desc:
        desc = _Desc()
        try:
            self._fill(desc)
        except BaseException:
            desc.__exit__()
            raise
        return desc

    def validate(self) -> None:
        """Raises :class:`CondConvError` if the C library refuses this spec."""
        with self._desc():
            pass

    @classmethod
    def _from_info(cls, info: _lib.LayerInfo) -> LayerSpec:
        same = info.padding_mode == PaddingMode.SAME
        return cls(
            in_channels=info.in_channels,
            out_channels=info.out_channels,
            kernel_size=(info.kernel_h, info.kernel_w),
            stride=(info.stride_h, info.stride_w),
            padding="same" if same else (info.pad_h, info.pad_w),
            dilation=(info.dilation_h, info.dilation_w),
            groups=info.groups,
            num_experts=info.num_experts,
            bias=bool(info.has_bias),
            routing=_name_of(_ROUTINGS, info.routing),  # type: ignore[arg-type]
            temperature=float(info.temperature),
            activation=_name_of(_ACTIVATIONS, info.activation),  # type: ignore[arg-type]
            dtype=_name_of(_DTYPE_ENUMS, info.dtype),  # type: ignore[arg-type]
            layout=_name_of(_LAYOUTS, info.layout),  # type: ignore[arg-type]
        )

    def output_dims(self, h: int, w: int) -> tuple[int, int]:
        """(Ho, Wo) for an H x W input."""
        return self.output_geometry(h, w)[:2]  # type: ignore[return-value]

    def output_geometry(self, h: int, w: int) -> tuple[int, int, tuple[int, int, int, int]]:
        """(Ho, Wo, (pad_top, pad_bottom, pad_left, pad_right)) for an H x W input."""
        oh, ow, pads = ctypes.c_int(), ctypes.c_int(), (ctypes.c_int * 4)()
        with self._desc() as desc:
            check(
                lib().condconv_layer_desc_get_output_dims(
                    desc.handle, int(h), int(w), ctypes.byref(oh), ctypes.byref(ow), pads
                ),
                "condconv_layer_desc_get_output_dims",
            )
        return oh.value, ow.value, (pads[0], pads[1], pads[2], pads[3])

    def cost_model(self, n: int, h: int, w: int) -> dict[str, int]:
        """``condconv_cost_model``: multiply-adds, parameters and bytes of one forward of N x Cin x H x W."""
        cost = _lib.Cost()
        with self._desc() as desc:
            check(
                lib().condconv_cost_model(desc.handle, int(n), int(h), int(w), ctypes.byref(cost)),
                "condconv_cost_model",
            )
        return {name: int(getattr(cost, name)) for name, _ in _lib.Cost._fields_}


# ---------------------------------------------------------------------------------------------------------------
# Layer


def _ptr(value: int | None) -> int | None:
    """A raw address for ctypes: 0 and None are NULL."""
    return int(value) if value else None


def _fptr(value: int | None) -> Any:
    """A raw address as the ``float *`` ctypes argument of condconv_backward_cpu's gradients: 0 and None are NULL."""
    return ctypes.cast(int(value), ctypes.POINTER(ctypes.c_float)) if value else None


def _as_param(
    array: Any, shape: tuple[int, ...], dtype: str, what: str, alt_shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """A C-contiguous copy of a parameter array in the layer's NumPy type. Floating arrays are converted
    (float16 from float32 and float64 round to nearest even; bf16 through condconv_convert); a bf16 layer also
    takes uint16 bit patterns as they are."""
    arr = np.asarray(array)
    if arr.shape != shape and (alt_shape is None or arr.shape != alt_shape):
        wanted = f"{shape}" + (f" or {alt_shape}" if alt_shape is not None else "")
        raise ValueError(f"{what} must have shape {wanted}, got {arr.shape}")
    target = numpy_dtype(dtype)
    if arr.dtype == target:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind != "f":
        raise TypeError(f"{what} must be a floating-point array (or {target} for a {dtype} layer), got {arr.dtype}")
    if dtype == "bf16":
        return convert(np.ascontiguousarray(arr, dtype=np.float32), "f32", "bf16")
    return np.ascontiguousarray(arr, dtype=target)


class Layer:
    """A CondConv layer on a :class:`Context`: a :class:`LayerSpec` and its weights.

    Parameters use timm's layout whatever the activations' layout: ``experts`` [E, Cout, Cin/groups, kh, kw]
    (or timm's flattened [E, Cout*Cin/groups*kh*kw]), ``expert_bias`` [E, Cout] (iff ``spec.bias``),
    ``routing_weight`` [E, Cin] and ``routing_bias`` [E] (not with external routing; an absent routing bias is
    zeros). Arrays in the layer's NumPy type are used as they are; other floating arrays are converted.
    """

    def __init__(
        self,
        context: Context,
        spec: LayerSpec,
        experts: Any,
        expert_bias: Any = None,
        routing_weight: Any = None,
        routing_bias: Any = None,
    ) -> None:
        self._handle: int | None = None
        if not isinstance(context, Context):
            raise TypeError(f"context must be a condconv.Context, got {type(context).__name__}")
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"spec must be a condconv.LayerSpec, got {type(spec).__name__}")
        with spec._desc() as desc:  # the C library judges the spec's numbers before the arrays are checked
            e, cout, cin = spec.num_experts, spec.out_channels, spec.in_channels
            shape = spec.expert_shape
            flat = (e, int(np.prod(shape[1:])))
            arrays: dict[str, np.ndarray | None] = {"experts": _as_param(experts, shape, spec.dtype, "experts", flat)}
            if spec.bias:
                if expert_bias is None:
                    raise ValueError("expert_bias [E, Cout] is required: the spec says bias=True")
                arrays["expert_bias"] = _as_param(expert_bias, (e, cout), spec.dtype, "expert_bias")
            elif expert_bias is not None:
                raise ValueError("expert_bias given but the spec says bias=False")
            if spec.external_routing:
                if routing_weight is not None or routing_bias is not None:
                    raise ValueError("routing_weight/routing_bias given but the spec's routing is 'external'")
            else:
                if routing_weight is None:
                    raise ValueError(f"routing_weight [E, Cin] is required with {spec.routing!r} routing")
                arrays["routing_weight"] = _as_param(routing_weight, (e, cin), spec.dtype, "routing_weight")
                if routing_bias is not None:
                    arrays["routing_bias"] = _as_param(routing_bias, (e,), spec.dtype, "routing_bias")
            # The arrays stay referenced by `arrays` until condconv_layer_create has copied them.
            params = _lib.Params()
            for name, array in arrays.items():
                setattr(params, name, array.ctypes.data if array is not None else None)
            h = ctypes.c_void_p()
            status = lib().condconv_layer_create(context.handle, desc.handle, ctypes.byref(params), ctypes.byref(h))
            check(status, "condconv_layer_create")
        self._adopt(context, spec, h.value)

    def _adopt(self, context: Context, spec: LayerSpec, handle: int | None) -> None:
        self._context = context
        self._spec = spec
        self._handle = handle
        self._dtype = numpy_dtype(spec.dtype)
        context._layers.add(self)

    @classmethod
    def _wrap(cls, context: Context, spec: LayerSpec, handle: int | None) -> Layer:
        layer = cls.__new__(cls)
        layer._handle = None
        layer._adopt(context, spec, handle)
        return layer

    @classmethod
    def from_safetensors(
        cls,
        context: Context,
        source: str | os.PathLike[str] | bytes | bytearray | memoryview,
        spec: LayerSpec,
        prefix: str,
        routing_prefix: str | None = None,
    ) -> Layer:
        """A layer whose weights are the tensors ``<prefix>.weight`` (experts, [E, Cout*Cin/g*kh*kw] as timm
        stores them, or 5-D), ``<prefix>.bias`` and ``<routing_prefix>.weight``/``.bias`` (the routing FC; not
        with external routing) of a safetensors file (a path) or image (bytes). F32, F16 and BF16 tensors are
        converted to the spec's dtype."""
        if not isinstance(context, Context):
            raise TypeError(f"context must be a condconv.Context, got {type(context).__name__}")
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"spec must be a condconv.LayerSpec, got {type(spec).__name__}")
        rp = routing_prefix.encode() if routing_prefix is not None else None
        h = ctypes.c_void_p()
        with spec._desc() as desc:
            if isinstance(source, (bytes, bytearray, memoryview)):
                buf = np.frombuffer(source, dtype=np.uint8)
                status = lib().condconv_layer_create_from_safetensors_memory(
                    context.handle, desc.handle, _ptr(buf.ctypes.data), buf.size, prefix.encode(), rp, ctypes.byref(h)
                )
                check(status, "condconv_layer_create_from_safetensors_memory")
            else:
                path = os.fsencode(source)
                status = lib().condconv_layer_create_from_safetensors(
                    context.handle, desc.handle, path, prefix.encode(), rp, ctypes.byref(h)
                )
                check(status, "condconv_layer_create_from_safetensors")
        return cls._wrap(context, spec, h.value)

    def share(self, context: Context) -> Layer:
        """A layer on ``context`` (same device, or both CPU) sharing this one's parameters, with its own plans."""
        h = ctypes.c_void_p()
        check(
            lib().condconv_layer_create_shared(context.handle, self.handle, ctypes.byref(h)),
            "condconv_layer_create_shared",
        )
        return Layer._wrap(context, self._spec, h.value)

    # --- handle and properties --------------------------------------------------------------------------------
    @property
    def handle(self) -> int:
        """The ``condconv_layer_t`` address (raises once closed)."""
        if self._handle is None:
            raise ValueError("the condconv Layer is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def context(self) -> Context:
        return self._context

    @property
    def spec(self) -> LayerSpec:
        return self._spec

    def describe(self) -> LayerSpec:
        """The layer's descriptor as the C library holds it (``condconv_layer_get_desc``)."""
        with _Desc() as desc:
            check(lib().condconv_layer_get_desc(self.handle, desc.handle), "condconv_layer_get_desc")
            return LayerSpec._from_info(desc.info())

    def close(self) -> None:
        """Destroys the C layer. Closing twice is a no-op."""
        handle, self._handle = self._handle, None
        if handle is not None:
            check(lib().condconv_layer_destroy(handle), "condconv_layer_destroy")

    def __enter__(self) -> Layer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_handle", None) is not None:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Layer({self._spec!r}{', closed' if self.closed else ''})"

    # --- low level: raw addresses, for callers that own their memory (condconv.torch) ------------------------
    def output_dims(self, h: int, w: int) -> tuple[int, int]:
        """(Ho, Wo) for an H x W input."""
        return self._spec.output_dims(h, w)

    def set_algo(self, algo: str | int | Algo) -> None:
        """Forces an algorithm ("fused", :class:`Algo`.FUSED, ...) or "auto" for shapes prepared afterwards."""
        if isinstance(algo, str):
            names = algo_names()
            if algo.lower() not in names:
                raise ValueError(f"unknown algorithm {algo!r}; one of {names}")
            value = names.index(algo.lower())
        else:
            value = int(algo)  # C judges the range (BAD_VALUE)
        check(lib().condconv_layer_set_algo(self.handle, value), "condconv_layer_set_algo")

    def set_backward_algo(self, algo: str | int) -> None:
        """Forces the GPU backward's algorithm ("cudnn_grouped", "mixture", "folded_wgrad") or "auto" for shapes
        prepared afterwards."""
        if isinstance(algo, str):
            names = backward_algo_names()
            if algo.lower() not in names:
                raise ValueError(f"unknown backward algorithm {algo!r}; one of {names}")
            value = names.index(algo.lower())
        else:
            value = int(algo)  # C judges the range (BAD_VALUE)
        check(lib().condconv_layer_set_backward_algo(self.handle, value), "condconv_layer_set_backward_algo")

    def set_backward_deterministic(self, deterministic: bool) -> None:
        """True (default): bitwise reproducible GPU gradients; False lets cuDNN pick its non-deterministic
        (atomics) backward algorithms, for shapes prepared afterwards."""
        check(
            lib().condconv_layer_set_backward_deterministic(self.handle, int(bool(deterministic))),
            "condconv_layer_set_backward_deterministic",
        )

    def set_candidate(self, candidate: str | None) -> None:
        """Forces one of AUTO's candidates by the name plan info lists it under ("fused", "fused[nhwc coalesced]"),
        or None for AUTO again, for shapes prepared afterwards."""
        name = None if candidate is None else candidate.encode()
        check(lib().condconv_layer_set_candidate(self.handle, name), "condconv_layer_set_candidate")

    def set_kernel_variants(self, routing: int = -1, aggregate: int = -1) -> None:
        """Forces the routing and aggregation kernels' variants (0: the GPU-measured default; -1: AUTO times them)."""
        check(
            lib().condconv_layer_set_kernel_variants(self.handle, int(routing), int(aggregate)),
            "condconv_layer_set_kernel_variants",
        )

    def prepare(self, n: int, h: int, w: int) -> None:
        """Plans the GPU forward of N x Cin x H x W inputs (may allocate, synchronise and measure; never inside a
        CUDA graph capture)."""
        check(lib().condconv_prepare(self.handle, int(n), int(h), int(w)), "condconv_prepare")

    def workspace_size(self, n: int, h: int, w: int) -> int:
        """Workspace bytes the GPU forward needs at this shape (prepares if needed)."""
        size = ctypes.c_size_t()
        check(
            lib().condconv_get_workspace_size(self.handle, int(n), int(h), int(w), ctypes.byref(size)),
            "condconv_get_workspace_size",
        )
        return int(size.value)

    def backward_prepare(self, n: int, h: int, w: int) -> None:
        """Plans the GPU backward of N x Cin x H x W inputs (as :meth:`prepare` does the forward)."""
        check(lib().condconv_backward_prepare(self.handle, int(n), int(h), int(w)), "condconv_backward_prepare")

    def backward_workspace_size(self, n: int, h: int, w: int) -> int:
        """Workspace bytes the GPU backward needs at this shape (prepares if needed)."""
        size = ctypes.c_size_t()
        check(
            lib().condconv_get_backward_workspace_size(self.handle, int(n), int(h), int(w), ctypes.byref(size)),
            "condconv_get_backward_workspace_size",
        )
        return int(size.value)

    def plan_info(self, n: int, h: int, w: int) -> dict[str, Any]:
        """Why the GPU plan for this shape runs what it runs (prepares if needed): algo, requested, select, math,
        workspace_bytes, measured_us {algo: us or None}, applicable [algos], reason, backend, and what runs when x or
        y is less than 16-byte aligned: algo_unaligned, measured_unaligned_us; AUTO's candidates: winner, winner_us,
        runner_up, runner_up_us (None where nothing was measured), candidates (every one timed, with the routing and
        aggregation kernels' and the budget), routing_variant, aggregate_variant, budget_exhausted."""
        info = _lib.PlanInfo()
        check(
            lib().condconv_get_plan_info(self.handle, int(n), int(h), int(w), ctypes.byref(info)),
            "condconv_get_plan_info",
        )
        names = algo_names()
        return {
            "algo": names[info.algo],
            "requested": names[info.requested],
            "select": _name_of(_SELECTS, info.select),
            "math": _name_of(_MATHS, info.math),
            "workspace_bytes": int(info.workspace_bytes),
            "measured_us": {names[i]: (float(info.measured_us[i]) if info.measured_us[i] >= 0 else None)
                            for i in range(ALGO_COUNT)},
            "applicable": [names[i] for i in range(ALGO_COUNT) if info.applicable[i]],
            "reason": info.reason.decode(errors="replace"),
            "backend": info.backend.decode(errors="replace"),
            "algo_unaligned": names[info.algo_unaligned],
            "measured_unaligned_us": {
                names[i]: (float(info.measured_unaligned_us[i]) if info.measured_unaligned_us[i] >= 0 else None)
                for i in range(ALGO_COUNT)},
            "winner": info.winner.decode(errors="replace"),
            "winner_us": float(info.winner_us) if info.winner_us >= 0 else None,
            "runner_up": info.runner_up.decode(errors="replace"),
            "runner_up_us": float(info.runner_up_us) if info.runner_up_us >= 0 else None,
            "candidates": info.candidates.decode(errors="replace"),
            "routing_variant": int(info.routing_variant),
            "aggregate_variant": int(info.aggregate_variant),
            "budget_exhausted": bool(info.budget_exhausted),
        }  # fmt: skip

    def backward_plan_info(self, n: int, h: int, w: int) -> dict[str, Any]:
        """What the GPU backward runs for this shape (prepares its plan if needed): algo, requested, select, math,
        workspace_bytes, deterministic (bitwise identical gradients run to run), reason, backend."""
        info = _lib.BackwardPlanInfo()
        check(
            lib().condconv_get_backward_plan_info(self.handle, int(n), int(h), int(w), ctypes.byref(info)),
            "condconv_get_backward_plan_info",
        )

        def name(algo: int) -> str:
            raw = lib().condconv_bwd_algo_name(algo)
            return raw.decode() if raw else str(algo)

        return {
            "algo": name(info.algo),
            "requested": name(info.requested),
            "select": _name_of(_SELECTS, info.select),
            "math": _name_of(_MATHS, info.math),
            "workspace_bytes": int(info.workspace_bytes),
            "deterministic": bool(info.deterministic),
            "reason": info.reason.decode(errors="replace"),
            "backend": info.backend.decode(errors="replace"),
        }

    def forward_ptr(
        self,
        n: int,
        h: int,
        w: int,
        x_ptr: int,
        y_ptr: int,
        routing_in_ptr: int = 0,
        routing_out_ptr: int = 0,
        ws_ptr: int = 0,
        ws_bytes: int = 0,
    ) -> None:
        """``condconv_forward`` on device addresses (0 for NULL), asynchronous on the context's stream."""
        status = lib().condconv_forward(
            self.handle, n, h, w, _ptr(x_ptr), _ptr(y_ptr), _ptr(routing_in_ptr), _ptr(routing_out_ptr),
            _ptr(ws_ptr), ws_bytes,
        )  # fmt: skip
        check(status, "condconv_forward")

    def route_ptr(self, n: int, h: int, w: int, x_ptr: int, routing_out_ptr: int) -> None:
        """``condconv_route`` on device addresses: alpha [N][E] f32 into ``routing_out_ptr``."""
        check(lib().condconv_route(self.handle, n, h, w, _ptr(x_ptr), _ptr(routing_out_ptr)), "condconv_route")

    def forward_cpu_ptr(
        self, n: int, h: int, w: int, x_ptr: int, y_ptr: int, routing_in_ptr: int = 0, routing_out_ptr: int = 0
    ) -> None:
        """``condconv_forward_cpu`` on host addresses (0 for NULL). The caller vouches for sizes and types."""
        status = lib().condconv_forward_cpu(
            self.handle, n, h, w, _ptr(x_ptr), _ptr(y_ptr), _ptr(routing_in_ptr), _ptr(routing_out_ptr)
        )
        check(status, "condconv_forward_cpu")

    def route_cpu_ptr(self, n: int, h: int, w: int, x_ptr: int, routing_out_ptr: int) -> None:
        """``condconv_route_cpu`` on host addresses: alpha [N][E] f32 into ``routing_out_ptr``."""
        status = lib().condconv_route_cpu(self.handle, n, h, w, _ptr(x_ptr), _ptr(routing_out_ptr))
        check(status, "condconv_route_cpu")

    def backward_cpu_ptr(
        self,
        n: int,
        h: int,
        w: int,
        x_ptr: int,
        routing_in_ptr: int,
        dy_ptr: int,
        dx_ptr: int = 0,
        d_routing_in_ptr: int = 0,
        d_experts_ptr: int = 0,
        d_expert_bias_ptr: int = 0,
        d_routing_weight_ptr: int = 0,
        d_routing_bias_ptr: int = 0,
    ) -> None:
        """``condconv_backward_cpu`` on host addresses (0 for NULL): the gradients whose address is not 0 (at least
        one). dx in the layer's dtype and layout, the others f32. The caller vouches for sizes and types."""
        status = lib().condconv_backward_cpu(
            self.handle, n, h, w, _ptr(x_ptr), _ptr(routing_in_ptr), _ptr(dy_ptr), _ptr(dx_ptr),
            _fptr(d_routing_in_ptr), _fptr(d_experts_ptr), _fptr(d_expert_bias_ptr), _fptr(d_routing_weight_ptr),
            _fptr(d_routing_bias_ptr),
        )  # fmt: skip
        check(status, "condconv_backward_cpu")

    def backward_ptr(
        self,
        n: int,
        h: int,
        w: int,
        x_ptr: int,
        routing_in_ptr: int,
        dy_ptr: int,
        dx_ptr: int = 0,
        d_routing_in_ptr: int = 0,
        d_experts_ptr: int = 0,
        d_expert_bias_ptr: int = 0,
        d_routing_weight_ptr: int = 0,
        d_routing_bias_ptr: int = 0,
        ws_ptr: int = 0,
        ws_bytes: int = 0,
    ) -> None:
        """``condconv_backward`` on device addresses (0 for NULL), asynchronous on the context's stream: the
        gradients whose address is not 0, as :meth:`backward_cpu_ptr`."""
        status = lib().condconv_backward(
            self.handle, n, h, w, _ptr(x_ptr), _ptr(routing_in_ptr), _ptr(dy_ptr), _ptr(dx_ptr),
            _fptr(d_routing_in_ptr), _fptr(d_experts_ptr), _fptr(d_expert_bias_ptr), _fptr(d_routing_weight_ptr),
            _fptr(d_routing_bias_ptr), _ptr(ws_ptr), ws_bytes,
        )  # fmt: skip
        check(status, "condconv_backward")

    # --- NumPy face: the CPU reference path on validated arrays ----------------------------------------------
    def _check_input(self, x: Any) -> tuple[np.ndarray, int, int, int]:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        spec = self._spec
        if x.dtype != self._dtype:
            raise TypeError(
                f"x must have dtype {self._dtype} for a {spec.dtype} layer"
                + (" (bfloat16 bit patterns; see condconv.convert)" if spec.dtype == "bf16" else "")
                + f", got {x.dtype}"
            )
        order = "[N, H, W, Cin]" if spec.channels_last else "[N, Cin, H, W]"
        if x.ndim != 4:
            raise ValueError(f"x must be 4-D {order} ({spec.layout}), got shape {x.shape}")
        n, h, w = (x.shape[0], x.shape[1], x.shape[2]) if spec.channels_last else (x.shape[0], x.shape[2], x.shape[3])
        cin = x.shape[3] if spec.channels_last else x.shape[1]
        if cin != spec.in_channels:
            raise ValueError(f"x must be {order} with Cin = {spec.in_channels} ({spec.layout}), got shape {x.shape}")
        if not x.flags.c_contiguous:
            raise ValueError("x must be C-contiguous (numpy.ascontiguousarray)")
        return x, n, h, w

    def _check_routing(self, r: Any, n: int, what: str) -> np.ndarray:
        e = self._spec.num_experts
        if not isinstance(r, np.ndarray):
            raise TypeError(f"{what} must be a numpy.ndarray, got {type(r).__name__}")
        if r.dtype != np.float32:
            raise TypeError(f"{what} must be float32 (routing weights are always f32), got {r.dtype}")
        if r.shape != (n, e):
            raise ValueError(f"{what} must have shape [N, E] = {(n, e)}, got {r.shape}")
        if not r.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous")
        return r

    def forward(
        self, x: np.ndarray, routing_weights: np.ndarray | None = None, return_routing: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Runs the layer on the CPU reference path (double accumulation).

        ``x``: C-contiguous, [N, Cin, H, W] (nchw) or [N, H, W, Cin] (nhwc), in the layer's NumPy type.
        ``routing_weights``: float32 [N, E], required with external routing and refused otherwise.
        Returns y ([N, Cout, Ho, Wo] or [N, Ho, Wo, Cout]), and with ``return_routing`` also the routing
        weights used (float32 [N, E]).
        """
        x, n, h, w = self._check_input(x)
        spec = self._spec
        if spec.external_routing:
            if routing_weights is None:
                raise ValueError("this layer's routing is 'external': pass routing_weights [N, E] (float32)")
            r_in: np.ndarray | None = self._check_routing(routing_weights, n, "routing_weights")
        else:
            if routing_weights is not None:
                raise ValueError(f"routing_weights given, but this layer routes itself ({spec.routing!r})")
            r_in = None
        ho, wo = self.output_dims(h, w)
        shape = (n, ho, wo, spec.out_channels) if spec.channels_last else (n, spec.out_channels, ho, wo)
        y = np.empty(shape, dtype=self._dtype)
        r_out = np.empty((n, spec.num_experts), dtype=np.float32) if return_routing else None
        self.forward_cpu_ptr(
            n, h, w, x.ctypes.data, y.ctypes.data, r_in.ctypes.data if r_in is not None else 0,
            r_out.ctypes.data if r_out is not None else 0,
        )  # fmt: skip
        return (y, r_out) if r_out is not None else y

    GRADIENTS = ("x", "routing_weights", "experts", "expert_bias", "routing_weight", "routing_bias")

    def backward(
        self,
        x: np.ndarray,
        dy: np.ndarray,
        routing_weights: np.ndarray | None = None,
        wrt: tuple[str, ...] | list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """The backward of :meth:`forward` on the CPU reference path (``condconv_backward_cpu``, double accumulation).

        ``x`` and ``routing_weights`` as given to :meth:`forward`; ``dy``: the gradient of a loss with respect to
        its output y (y's shape, the layer's NumPy type, C-contiguous). ``wrt``: the gradients to compute, names
        of :attr:`GRADIENTS`, among those the layer has: "x" (the layer's NumPy type and layout; through the
        routing too when the layer routes itself), "routing_weights" (external routing only), "experts"
        ([E, Cout, Cin/groups, kh, kw]), "expert_bias" (layers with bias), "routing_weight" and "routing_bias"
        (layers that route themselves); None: every one the layer has. Returns ``{name: gradient}``, all float32
        (rounded once from double) but "x". A gradient the layer cannot have raises :class:`CondConvError`
        (BAD_VALUE, from the library).
        """
        x, n, h, w = self._check_input(x)
        spec = self._spec
        if spec.external_routing:
            if routing_weights is None:
                raise ValueError("this layer's routing is 'external': pass routing_weights [N, E] (float32)")
            r_in: np.ndarray | None = self._check_routing(routing_weights, n, "routing_weights")
        else:
            if routing_weights is not None:
                raise ValueError(f"routing_weights given, but this layer routes itself ({spec.routing!r})")
            r_in = None
        ho, wo = self.output_dims(h, w)
        y_shape = (n, ho, wo, spec.out_channels) if spec.channels_last else (n, spec.out_channels, ho, wo)
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"dy must be a numpy.ndarray, got {type(dy).__name__}")
        if dy.dtype != self._dtype:
            raise TypeError(f"dy must have dtype {self._dtype} for a {spec.dtype} layer (as y), got {dy.dtype}")
        if dy.shape != y_shape:
            raise ValueError(f"dy must have y's shape {y_shape}, got {dy.shape}")
        if not dy.flags.c_contiguous:
            raise ValueError("dy must be C-contiguous (numpy.ascontiguousarray)")
        if wrt is None:
            names = ["x", "experts"] + (["expert_bias"] if spec.bias else [])
            names += ["routing_weights"] if spec.external_routing else ["routing_weight", "routing_bias"]
        else:
            names = list(wrt)
            unknown = [name for name in names if name not in self.GRADIENTS]
            if unknown:
                raise ValueError(f"unknown gradient(s) {unknown}; names are {list(self.GRADIENTS)}")
        e, cout, cin = spec.num_experts, spec.out_channels, spec.in_channels
        shapes: dict[str, tuple[int, ...]] = {
            "routing_weights": (n, e),
            "experts": spec.expert_shape,
            "expert_bias": (e, cout),
            "routing_weight": (e, cin),
            "routing_bias": (e,),
        }
        out = {
            name: np.zeros(x.shape, dtype=self._dtype) if name == "x" else np.zeros(shapes[name], dtype=np.float32)
            for name in names
        }

        def addr(name: str) -> int:
            return out[name].ctypes.data if name in out else 0

        self.backward_cpu_ptr(
            n, h, w, x.ctypes.data, r_in.ctypes.data if r_in is not None else 0, dy.ctypes.data, addr("x"),
            addr("routing_weights"), addr("experts"), addr("expert_bias"), addr("routing_weight"),
            addr("routing_bias"),
        )  # fmt: skip
        return out

    def route(self, x: np.ndarray) -> np.ndarray:
        """The routing weights float32 [N, E] = act(FC(GAP(x))) on the CPU (not with external routing)."""
        x, n, h, w = self._check_input(x)
        out = np.empty((n, self._spec.num_experts), dtype=np.float32)
        self.route_cpu_ptr(n, h, w, x.ctypes.data, out.ctypes.data)
        return out


# Keep the error type importable from here too, for ``from condconv.core import CondConvError``.
__all__ += ["CondConvError"]
