"""The one place that knows libcondconv's C ABI.

Finds the shared library (``$CONDCONV_LIBRARY``, else the copy installed next to this package), declares the
argument and result types of every function of ``include/condconv.h`` once, mirrors its enums and structs, and
turns a failing status into :class:`CondConvError` carrying the status name and ``condconv_last_error()``'s text.

Nothing here loads the library at import: :func:`lib` loads it on first use, so ``import condconv`` works (and
says clearly what to do) where the library has not been built. Nothing compiles, downloads or prints.
"""

from __future__ import annotations

import ctypes
import enum
import os
import pathlib
import threading
from ctypes import POINTER, c_char_p, c_float, c_int, c_size_t, c_uint64, c_void_p

__all__ = [
    "ALGO_COUNT",
    "DEVICE_CPU",
    "MAX_EXPERTS",
    "VERSION",
    "WORKSPACE_ALIGNMENT",
    "Activation",
    "Algo",
    "AlgoSelect",
    "CondConvError",
    "Cost",
    "DType",
    "LayerInfo",
    "Layout",
    "LibraryNotFoundError",
    "Math",
    "PaddingMode",
    "Params",
    "PlanInfo",
    "Routing",
    "Status",
    "check",
    "last_error",
    "lib",
    "library_path",
    "status_name",
]

# ---------------------------------------------------------------------------------------------------------------
# Constants and enums (values fixed by include/condconv.h)

DEVICE_CPU = -1
MAX_EXPERTS = 128
WORKSPACE_ALIGNMENT = 256
VERSION = (0, 1, 0)


class Status(enum.IntEnum):
    SUCCESS = 0
    NULL_POINTER = 1
    BAD_SIZE = 2
    BAD_GROUPS = 3
    BAD_EXPERTS = 4
    EMPTY_OUTPUT = 5
    SIZE_OVERFLOW = 6
    MISSING_ROUTING = 7
    WORKSPACE_TOO_SMALL = 8
    BAD_VALUE = 9
    MISALIGNED = 10
    NOT_SUPPORTED = 11
    NOT_PREPARED = 12
    ALLOC_FAILED = 13
    NO_DEVICE = 14
    CUDA_ERROR = 15
    CUDNN_ERROR = 16
    CUBLAS_ERROR = 17
    IO_ERROR = 18
    BAD_FILE = 19
    TENSOR_NOT_FOUND = 20
    TENSOR_MISMATCH = 21
    INTERNAL_ERROR = 22


class Routing(enum.IntEnum):
    SIGMOID = 0
    SOFTMAX = 1
    EXTERNAL = 2


class Activation(enum.IntEnum):
    NONE = 0
    RELU = 1
    SILU = 2


class DType(enum.IntEnum):
    F32 = 0
    F16 = 1
    BF16 = 2


class Layout(enum.IntEnum):
    NCHW = 0
    NHWC = 1


class PaddingMode(enum.IntEnum):
    EXPLICIT = 0
    SAME = 1


class Algo(enum.IntEnum):
    AUTO = 0
    CUDNN_GROUPED = 1
    GEMM_BATCHED = 2
    DEPTHWISE_FUSED = 3
    MIXTURE = 4
    FUSED = 5


ALGO_COUNT = 6


class AlgoSelect(enum.IntEnum):
    MEASURE = 0
    HEURISTIC = 1


class Math(enum.IntEnum):
    F32 = 0
    TF32 = 1


# ---------------------------------------------------------------------------------------------------------------
# Structs (field order and types exactly as in the header)


class LayerInfo(ctypes.Structure):
    _fields_ = [
        ("in_channels", c_int),
        ("out_channels", c_int),
        ("kernel_h", c_int),
        ("kernel_w", c_int),
        ("stride_h", c_int),
        ("stride_w", c_int),
        ("dilation_h", c_int),
        ("dilation_w", c_int),
        ("groups", c_int),
        ("padding_mode", c_int),
        ("pad_h", c_int),
        ("pad_w", c_int),
        ("num_experts", c_int),
        ("has_bias", c_int),
        ("routing", c_int),
        ("temperature", c_float),
        ("activation", c_int),
        ("dtype", c_int),
        ("layout", c_int),
    ]


class Cost(ctypes.Structure):
    _fields_ = [
        ("out_h", c_int),
        ("out_w", c_int),
        ("conv_macs", c_uint64),
        ("aggregation_macs", c_uint64),
        ("routing_macs", c_uint64),
        ("routing_adds", c_uint64),
        ("epilogue_ops", c_uint64),
        ("params", c_uint64),
        ("expert_params", c_uint64),
        ("bias_params", c_uint64),
        ("routing_params", c_uint64),
        ("min_bytes", c_uint64),
        ("materialized_bytes", c_uint64),
    ]


class Params(ctypes.Structure):
    _fields_ = [
        ("experts", c_void_p),
        ("expert_bias", c_void_p),
        ("routing_weight", c_void_p),
        ("routing_bias", c_void_p),
    ]


class PlanInfo(ctypes.Structure):
    _fields_ = [
        ("algo", c_int),
        ("requested", c_int),
        ("select", c_int),
        ("math", c_int),
        ("workspace_bytes", c_size_t),
        ("measured_us", c_float * ALGO_COUNT),
        ("applicable", c_int * ALGO_COUNT),
        ("reason", ctypes.c_char * 160),
        ("backend", ctypes.c_char * 256),
        ("algo_unaligned", c_int),
        ("measured_unaligned_us", c_float * ALGO_COUNT),
        ("winner", ctypes.c_char * 64),
        ("winner_us", c_float),
        ("runner_up", ctypes.c_char * 64),
        ("runner_up_us", c_float),
        ("candidates", ctypes.c_char * 512),
        ("routing_variant", c_int),
        ("aggregate_variant", c_int),
        ("budget_exhausted", c_int),
    ]


class BackwardPlanInfo(ctypes.Structure):
    _fields_ = [
        ("algo", c_int),
        ("requested", c_int),
        ("select", c_int),
        ("math", c_int),
        ("workspace_bytes", c_size_t),
        ("deterministic", c_int),
        ("reason", ctypes.c_char * 160),
        ("backend", ctypes.c_char * 256),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Errors


class CondConvError(RuntimeError):
    """A libcondconv call returned a status other than SUCCESS.

    Attributes: ``status`` (int, a :class:`Status` value), ``status_name`` (e.g. "CONDCONV_STATUS_BAD_GROUPS",
    from ``condconv_status_string``), ``message`` (``condconv_last_error()``'s text: what was wrong, with the
    values) and ``call`` (the C function that failed).
    """

    def __init__(self, status: int, status_name: str, message: str, call: str) -> None:
        self.status = int(status)
        self.status_name = status_name
        self.message = message
        self.call = call
        # The library's message already opens with the status name and usually names the call; say both once.
        text = message if message.startswith(status_name) else f"{status_name}: {message}".rstrip(": ")
        if call not in text:
            text += f" (in {call})"
        super().__init__(text)


class LibraryNotFoundError(ImportError):
    """libcondconv could not be found or loaded; the message says how to build it."""


# ---------------------------------------------------------------------------------------------------------------
# Finding and loading the library

_NATIVE_DIR = pathlib.Path(__file__).resolve().parent / "_native"
_LIB_NAME = "libcondconv.so"
_HOW_TO_BUILD = (
    "Install the package from a clone with `pip install .` (builds the library with CMake, needs the CUDA "
    "toolkit, cuDNN and libjansson-dev), or build it with `cmake -S . -B build && cmake --build build "
    "--target condconv` and set CONDCONV_LIBRARY=<build>/libcondconv.so."
)


def library_path() -> pathlib.Path:
    """The shared library :func:`lib` loads: ``$CONDCONV_LIBRARY`` if set, else the package's own copy."""
    env = os.environ.get("CONDCONV_LIBRARY")
    if env:
        path = pathlib.Path(env)
        if not path.is_file():
            raise LibraryNotFoundError(f"CONDCONV_LIBRARY={env} is not a file. {_HOW_TO_BUILD}")
        return path
    path = _NATIVE_DIR / _LIB_NAME
    if not path.is_file():
        raise LibraryNotFoundError(
            f"libcondconv is not installed with this package (no {path}) and CONDCONV_LIBRARY is not set. "
            + _HOW_TO_BUILD
        )
    return path


_H = c_void_p  # every opaque handle (context, descriptor, layer)
_PH = POINTER(c_void_p)
_PI = POINTER(c_int)
_PF = POINTER(c_float)

# name -> (restype, argtypes), one line per function of include/condconv.h, in the header's order.
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "condconv_status_string": (c_char_p, [c_int]),
    "condconv_last_error": (c_char_p, []),
    "condconv_version": (c_int, []),
    "condconv_convert": (c_int, [c_int, c_void_p, c_int, c_void_p, c_size_t]),
    "condconv_algo_name": (c_char_p, [c_int]),
    "condconv_context_create": (c_int, [_PH, c_int]),
    "condconv_context_destroy": (c_int, [_H]),
    "condconv_context_set_stream": (c_int, [_H, c_void_p]),
    "condconv_context_get_stream": (c_int, [_H, _PH]),
    "condconv_context_get_device": (c_int, [_H, _PI]),
    "condconv_context_set_math": (c_int, [_H, c_int]),
    "condconv_context_get_math": (c_int, [_H, _PI]),
    "condconv_context_set_algo_select": (c_int, [_H, c_int]),
    "condconv_context_get_algo_select": (c_int, [_H, _PI]),
    "condconv_context_set_auto_budget": (c_int, [_H, c_float]),
    "condconv_context_get_auto_budget": (c_int, [_H, ctypes.POINTER(c_float)]),
    "condconv_device_count": (c_int, []),
    "condconv_layer_desc_create": (c_int, [_PH]),
    "condconv_layer_desc_destroy": (c_int, [_H]),
    "condconv_layer_desc_set_conv": (c_int, [_H, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int]),
    "condconv_layer_desc_set_padding": (c_int, [_H, c_int, c_int, c_int]),
    "condconv_layer_desc_set_experts": (c_int, [_H, c_int, c_int]),
    "condconv_layer_desc_set_routing": (c_int, [_H, c_int, c_float]),
    "condconv_layer_desc_set_activation": (c_int, [_H, c_int]),
    "condconv_layer_desc_set_format": (c_int, [_H, c_int, c_int]),
    "condconv_layer_desc_get_info": (c_int, [_H, POINTER(LayerInfo)]),
    "condconv_layer_desc_get_output_dims": (c_int, [_H, c_int, c_int, _PI, _PI, _PI]),
    "condconv_cost_model": (c_int, [_H, c_int, c_int, c_int, POINTER(Cost)]),
    "condconv_layer_create": (c_int, [_H, _H, POINTER(Params), _PH]),
    "condconv_layer_create_shared": (c_int, [_H, _H, _PH]),
    "condconv_layer_destroy": (c_int, [_H]),
    "condconv_layer_get_desc": (c_int, [_H, _H]),
    "condconv_layer_create_from_safetensors": (c_int, [_H, _H, c_char_p, c_char_p, c_char_p, _PH]),
    "condconv_layer_create_from_safetensors_memory": (c_int, [_H, _H, c_void_p, c_size_t, c_char_p, c_char_p, _PH]),
    "condconv_layer_set_algo": (c_int, [_H, c_int]),
    "condconv_layer_set_candidate": (c_int, [_H, c_char_p]),
    "condconv_layer_set_kernel_variants": (c_int, [_H, c_int, c_int]),
    "condconv_layer_set_backward_algo": (c_int, [_H, c_int]),
    "condconv_layer_set_backward_deterministic": (c_int, [_H, c_int]),
    "condconv_prepare": (c_int, [_H, c_int, c_int, c_int]),
    "condconv_get_workspace_size": (c_int, [_H, c_int, c_int, c_int, POINTER(c_size_t)]),
    "condconv_get_plan_info": (c_int, [_H, c_int, c_int, c_int, POINTER(PlanInfo)]),
    "condconv_forward": (
        c_int,
        [_H, c_int, c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_size_t],
    ),
    "condconv_route": (c_int, [_H, c_int, c_int, c_int, c_void_p, c_void_p]),
    "condconv_forward_cpu": (c_int, [_H, c_int, c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p]),
    "condconv_route_cpu": (c_int, [_H, c_int, c_int, c_int, c_void_p, c_void_p]),
    # x, routing_in, dy, dx (void *); d_routing_in, d_experts, d_expert_bias, d_routing_weight, d_routing_bias (float *)
    "condconv_backward_cpu": (
        c_int,
        [_H, c_int, c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p, _PF, _PF, _PF, _PF, _PF],
    ),
    "condconv_backward_prepare": (c_int, [_H, c_int, c_int, c_int]),
    "condconv_get_backward_plan_info": (c_int, [_H, c_int, c_int, c_int, POINTER(BackwardPlanInfo)]),
    "condconv_bwd_algo_name": (ctypes.c_char_p, [c_int]),
    "condconv_get_backward_workspace_size": (c_int, [_H, c_int, c_int, c_int, POINTER(c_size_t)]),
    # condconv_backward_cpu's arguments, then workspace (void *) and its size
    "condconv_backward": (
        c_int,
        [_H, c_int, c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p, _PF, _PF, _PF, _PF, _PF, c_void_p, c_size_t],
    ),
}

_lock = threading.Lock()
_loaded: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """The loaded library, every function declared (loaded once, on first use)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            path = library_path()
            try:
                handle = ctypes.CDLL(str(path))
            except OSError as err:
                raise LibraryNotFoundError(
                    f"cannot load {path}: {err}. Its CUDA, cuDNN or Jansson libraries may be missing from the "
                    f"loader path (LD_LIBRARY_PATH). {_HOW_TO_BUILD}"
                ) from err
            for name, (restype, argtypes) in _SIGNATURES.items():
                try:
                    fn = getattr(handle, name)
                except AttributeError as err:
                    raise LibraryNotFoundError(f"{path} lacks {name}: it is older than this package.") from err
                fn.restype = restype
                fn.argtypes = argtypes
            _loaded = handle
    return _loaded


def status_name(status: int) -> str:
    """``condconv_status_string(status)``, e.g. "CONDCONV_STATUS_BAD_SIZE"."""
    raw = lib().condconv_status_string(int(status))
    return raw.decode() if raw else f"CONDCONV_STATUS_{status}"


def last_error() -> str:
    """``condconv_last_error()`` of the calling thread ("" if nothing failed)."""
    raw = lib().condconv_last_error()
    return raw.decode(errors="replace") if raw else ""


def check(status: int, call_name: str) -> None:
    """Raises :class:`CondConvError` unless ``status`` is SUCCESS. Call it right after the C call, on the same
    thread, since ``condconv_last_error()`` is per thread and overwritten by the next failure."""
    if status != Status.SUCCESS:
        raise CondConvError(status, status_name(status), last_error(), call_name)
