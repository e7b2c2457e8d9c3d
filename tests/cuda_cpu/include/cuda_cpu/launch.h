// cc_cpu::launch: the CPU build's side of kernels/common.cuh's cc_launch.
// Converts the arguments to the kernel's parameter types once (as
// cudaLaunchKernelEx and <<<>>> do), and hands the engine a body that each
// GPU thread runs with its own copy of them.
#ifndef CC_CPU_LAUNCH_H
#define CC_CPU_LAUNCH_H

#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "engine.h"

namespace cc_cpu {

template <typename T>
void collect_pointer(const T &value, const void **out, int &count)
{
    if constexpr (std::is_pointer_v<T>)
        out[count++] = const_cast<const void *>(reinterpret_cast<const volatile void *>(value));
}

template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args &&...args)
{
    static_assert(sizeof...(Params) == sizeof...(Args), "cc_launch: the kernel takes a different number of arguments");
    using tuple_t = std::tuple<std::decay_t<Params>...>;
    // Shared by every GPU thread of the launch, and by a graph that captured it.
    auto params = std::make_shared<const tuple_t>(std::forward<Args>(args)...);
    const void *pointers[sizeof...(Params) + 1] = {nullptr};
    int count = 0;
    std::apply([&](const auto &...p) { (collect_pointer(p, pointers, count), ...); }, *params);
    const launch_desc desc = {reinterpret_cast<const void *>(kernel), grid, block, smem, stream};
    return submit_launch(
        desc, [kernel, params]() { std::apply(kernel, *params); }, pointers, count);
}

} // namespace cc_cpu

#endif
