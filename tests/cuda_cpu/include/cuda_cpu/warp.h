// Warp-level operations for kernels compiled as C++ by the CPU execution
// layer: shuffles, votes, matches, reductions and __syncwarp, each one
// exchange among the lanes of `mask` through the engine (engine.h), which
// checks what a GPU leaves undefined: a lane outside the mask calling, a
// mask naming lanes that do not exist or have returned, lanes of one mask
// at different call sites, a shuffle reading a lane that does not take part.
// Only __syncwarp orders memory (under TSan the others add no
// happens-before, as on a GPU). Included by device.h.
#ifndef CC_CPU_WARP_H
#define CC_CPU_WARP_H

#include <cstring>
#include <type_traits>

#include "engine.h"

namespace cc_cpu {
template <typename T>
inline T warp_value(warp_kind kind, unsigned mask, T value, int arg, int width, const char *file, int line)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kWarpValueBytes,
                  "warp operations move trivially copyable values of at most 16 bytes");
    T out;
    warp_collective(kind, mask, &value, sizeof(T), &out, arg, width, file, line);
    return out;
}
template <typename R, typename T>
inline R warp_to(warp_kind kind, unsigned mask, T value, const char *file, int line)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kWarpValueBytes && sizeof(R) <= kWarpValueBytes,
                  "warp operations move trivially copyable values of at most 16 bytes");
    unsigned char in[kWarpValueBytes] = {0}, out[kWarpValueBytes] = {0};
    std::memcpy(in, &value, sizeof(T));
    warp_collective(kind, mask, in, sizeof(T), out, 0, warpSize, file, line);
    R r;
    std::memcpy(&r, out, sizeof(R));
    return r;
}
} // namespace cc_cpu

inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    ::cc_cpu::warp_collective(::cc_cpu::warp_sync, mask, nullptr, 0, nullptr, 0, warpSize, file, line);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, const char *file = __builtin_FILE(),
                     int line = __builtin_LINE())
{
    return ::cc_cpu::warp_value(::cc_cpu::warp_shfl_idx, mask, var, src_lane, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                        const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ::cc_cpu::warp_value(::cc_cpu::warp_shfl_up, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ::cc_cpu::warp_value(::cc_cpu::warp_shfl_down, mask, var, static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, const char *file = __builtin_FILE(),
                         int line = __builtin_LINE())
{
    return ::cc_cpu::warp_value(::cc_cpu::warp_shfl_xor, mask, var, lane_mask, width, file, line);
}

inline unsigned __ballot_sync(unsigned mask, int predicate, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE())
{
    return ::cc_cpu::warp_to<unsigned>(::cc_cpu::warp_ballot, mask, predicate != 0, file, line);
}
inline int __all_sync(unsigned mask, int predicate, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ::cc_cpu::warp_to<int>(::cc_cpu::warp_all, mask, predicate != 0, file, line);
}
inline int __any_sync(unsigned mask, int predicate, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ::cc_cpu::warp_to<int>(::cc_cpu::warp_any, mask, predicate != 0, file, line);
}
inline unsigned __activemask() { return ::cc_cpu::active_mask(); }

template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE())
{
    return ::cc_cpu::warp_to<unsigned>(::cc_cpu::warp_match_any, mask, value, file, line);
}
template <typename T>
inline unsigned __match_all_sync(unsigned mask, T value, int *pred, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE())
{
    const unsigned r = ::cc_cpu::warp_to<unsigned>(::cc_cpu::warp_match_all, mask, value, file, line);
    *pred = r != 0;
    return r;
}

#define CC_CPU_REDUCE(name, kind, T)                                                                                   \
    inline T name(unsigned mask, T value, const char *file = __builtin_FILE(), int line = __builtin_LINE())            \
    {                                                                                                                  \
        return ::cc_cpu::warp_to<T>(::cc_cpu::kind, mask, value, file, line);                                          \
    }
CC_CPU_REDUCE(__reduce_add_sync, warp_reduce_add_u, unsigned)
CC_CPU_REDUCE(__reduce_min_sync, warp_reduce_min_u, unsigned)
CC_CPU_REDUCE(__reduce_max_sync, warp_reduce_max_u, unsigned)
CC_CPU_REDUCE(__reduce_add_sync, warp_reduce_add_i, int)
CC_CPU_REDUCE(__reduce_min_sync, warp_reduce_min_i, int)
CC_CPU_REDUCE(__reduce_max_sync, warp_reduce_max_i, int)
CC_CPU_REDUCE(__reduce_and_sync, warp_reduce_and, unsigned)
CC_CPU_REDUCE(__reduce_or_sync, warp_reduce_or, unsigned)
CC_CPU_REDUCE(__reduce_xor_sync, warp_reduce_xor, unsigned)
#undef CC_CPU_REDUCE

#endif
