// Host-side argument checks the two fused kernels share: kernels/fused_conv.cu
// (strict f32, CUDA cores) and kernels/fused_conv_tc.cu (tensor cores). Their
// argument structs name the layer's geometry alike, so one template checks
// both; each kernel adds its own dtype and layout checks. Included by .cu
// files only.
#ifndef CONDCONV_KERNELS_FUSED_CHECKS_CUH
#define CONDCONV_KERNELS_FUSED_CHECKS_CUH

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include "common.cuh"

namespace cc_fused_checks {

// printf into reason (if not NULL): why a shape is refused.
__attribute__((format(printf, 3, 4))) inline void say(char *reason, size_t len, const char *fmt, ...)
{
    if (reason == nullptr || len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, len, fmt, ap);
    va_end(ap);
}

// Positive sizes, strides and dilations, non-negative paddings, channels
// divisible by the groups, not depthwise, 1..max_experts experts, a known
// activation; `who` prefixes the reason ("fused", "fused_tc").
template <typename Args>
inline bool geometry_ok(const Args *a, const char *who, int max_experts, char *reason, size_t len)
{
    if (a->n < 1 || a->in_channels < 1 || a->out_channels < 1 || a->groups < 1 || a->h < 1 || a->w < 1 ||
        a->out_h < 1 || a->out_w < 1 || a->kernel_h < 1 || a->kernel_w < 1 || a->stride_h < 1 || a->stride_w < 1 ||
        a->dilation_h < 1 || a->dilation_w < 1 || a->pad_top < 0 || a->pad_left < 0) {
        say(reason, len, "%s: sizes, strides and dilations must be positive, paddings non-negative", who);
        return false;
    }
    if (a->in_channels % a->groups != 0 || a->out_channels % a->groups != 0) {
        say(reason, len, "%s: channels %d -> %d not divisible by %d groups", who, a->in_channels, a->out_channels,
            a->groups);
        return false;
    }
    if (a->groups == a->in_channels && a->groups > 1) {
        say(reason, len, "%s: depthwise (groups == in_channels == %d) is depthwise_fused's", who, a->groups);
        return false;
    }
    if (a->experts < 1 || a->experts > max_experts) {
        say(reason, len, "%s: %d experts, the kernel takes 1 to %d", who, a->experts, max_experts);
        return false;
    }
    if (a->activation < CC_ACT_NONE || a->activation > CC_ACT_SILU) {
        say(reason, len, "%s: unknown activation %d", who, a->activation);
        return false;
    }
    return true;
}

} // namespace cc_fused_checks

#endif
