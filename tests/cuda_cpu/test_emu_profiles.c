/* The choosers against other cards' limits (issue 18): on every device
 * profile of the emulated runtime (H200, H100 PCIe, A100, L40S (sm_89), A10
 * (sm_86); hooks.h), every configuration that the fused kernel's chooser and
 * forced configs (every tile, split-K 1-3), the tensor-core kernel's chooser
 * (f16, bf16, TF32), its second generation's two (the CUDA-core mix and the
 * tensor-core mix; a card whose opt-in is below gen 2's two-blocks budget
 * may leave a large E without a config: counted, not a failure, as the
 * layer then reports the variant unsupported) and the depthwise kernel
 * produce for a sweep of shapes
 * must launch: the runtime refuses, as a GPU does, static plus dynamic
 * shared memory above the card's per-block opt-in, and an opt-in request
 * that leaves no room for the kernel's static shared memory. Launches are
 * only checked, not run (cc_cpu_set_launch_validate_only), so large sample
 * counts and every E from 1 to 128 are cheap. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "depthwise_fused.h"
#include "emu_util.h"
#include "formats.h"
#include "fused_conv.h"
#include "fused_conv_tc.h"

static long long launches, refused_before, gen2_configs, gen2_none;
static int printed;

static void *dummy; /* every pointer argument: launches are not run */

static void expect_launch(cudaError_t err, const char *what, const char *card, const char *shape)
{
    ++launches;
    if (err == cudaSuccess) return;
    if (printed++ < 12)
        eu_fail(__FILE__, __LINE__, "launch", "%s on the %s, %s: %s", what, card, shape, cudaGetErrorName(err));
    else
        ++eu_failures;
    (void)cudaGetLastError();
}

static void fused_shapes(const char *card, int sm_count, size_t optin)
{
    static const int ns[] = {1, 32, 64}, sizes[] = {2, 7, 14}, kernels[] = {1, 3}, groups[] = {1, 2};
    for (int layout = 0; layout < 2; ++layout)
        for (size_t in = 0; in < sizeof ns / sizeof ns[0]; ++in)
            for (size_t is = 0; is < sizeof sizes / sizeof sizes[0]; ++is)
                for (size_t ik = 0; ik < sizeof kernels / sizeof kernels[0]; ++ik)
                    for (size_t ig = 0; ig < sizeof groups / sizeof groups[0]; ++ig)
                        for (int e = 1; e <= CC_FUSED_MAX_EXPERTS; ++e) {
                            const int k = kernels[ik], hw = sizes[is];
                            cc_fused_args a;
                            memset(&a, 0, sizeof a);
                            a.x = a.alpha = a.expert_bias = a.packed = dummy;
                            a.y = a.partial = dummy;
                            a.counters = dummy;
                            a.n = ns[in];
                            a.in_channels = 32;
                            a.out_channels = 64;
                            a.groups = groups[ig];
                            a.experts = e;
                            a.h = a.w = a.out_h = a.out_w = hw;
                            a.kernel_h = a.kernel_w = k;
                            a.stride_h = a.stride_w = a.dilation_h = a.dilation_w = 1;
                            a.pad_top = a.pad_left = k / 2;
                            a.activation = 2;
                            a.layout = layout;
                            char shape[160];
                            snprintf(shape, sizeof shape, "fused %s n %d %dx%d k %d groups %d E %d",
                                     layout ? "NHWC" : "NCHW", a.n, hw, hw, k, a.groups, e);
                            cc_fused_config cfg;
                            if (cc_fused_choose(&a, sm_count, optin, CC_FUSED_MAX_SPLITS, &cfg)) {
                                char what[96];
                                snprintf(what, sizeof what, "chosen tile %d, %d quads, split-K %d, %zu B", cfg.tile,
                                         cfg.quads_per_block, cfg.splits, cfg.smem_bytes);
                                expect_launch(cc_launch_fused_conv(&a, &cfg, NULL), what, card, shape);
                                if (layout == CC_LAYOUT_NHWC) {
                                    /* issue 19's NHWC candidate: its own instances, the same shared memory */
                                    cfg.nhwc_loader = 1;
                                    snprintf(what, sizeof what, "chosen tile %d, %d quads, split-K %d, %zu B, loader 1",
                                             cfg.tile, cfg.quads_per_block, cfg.splits, cfg.smem_bytes);
                                    expect_launch(cc_launch_fused_conv(&a, &cfg, NULL), what, card, shape);
                                }
                            } else {
                                eu_fail(__FILE__, __LINE__, "choose", "%s on the %s: no config", shape, card);
                            }
                            for (int tile = 0; tile < CC_FUSED_TILE_COUNT; ++tile)
                                for (int splits = 1; splits <= 3; ++splits) {
                                    if (!cc_fused_make_config(&a, tile, splits, optin, &cfg)) continue;
                                    char what[96];
                                    snprintf(what, sizeof what, "forced tile %d, %d quads, split-K %d, %zu B", tile,
                                             cfg.quads_per_block, splits, cfg.smem_bytes);
                                    expect_launch(cc_launch_fused_conv(&a, &cfg, NULL), what, card, shape);
                                    if (layout == CC_LAYOUT_NHWC) {
                                        cfg.nhwc_loader = 1;
                                        snprintf(what, sizeof what,
                                                 "forced tile %d, %d quads, split-K %d, %zu B, loader 1", tile,
                                                 cfg.quads_per_block, splits, cfg.smem_bytes);
                                        expect_launch(cc_launch_fused_conv(&a, &cfg, NULL), what, card, shape);
                                    }
                                }
                        }
}

static void tc_shapes(const char *card, int sm_count, size_t optin)
{
    static const int dtypes[] = {CC_DTYPE_F16, CC_DTYPE_BF16, CC_DTYPE_F32}, ns[] = {1, 32, 64}, sizes[] = {2, 7, 14};
    for (size_t id = 0; id < sizeof dtypes / sizeof dtypes[0]; ++id)
        for (int layout = 0; layout < 2; ++layout)
            for (size_t in = 0; in < sizeof ns / sizeof ns[0]; ++in)
                for (size_t is = 0; is < sizeof sizes / sizeof sizes[0]; ++is)
                    for (int k = 1; k <= 3; k += 2)
                        for (int e = 1; e <= CC_FUSED_TC_MAX_EXPERTS; e += e < 64 && e % 16 == 12 ? 4 : 3) {
                            cc_fused_tc_args a;
                            memset(&a, 0, sizeof a);
                            a.dtype = dtypes[id];
                            a.layout = layout;
                            a.x = a.alpha = a.expert_bias = a.packed = dummy;
                            a.y = dummy;
                            a.n = ns[in];
                            a.in_channels = 32;
                            a.out_channels = 64;
                            a.groups = 1;
                            a.experts = e;
                            a.h = a.w = a.out_h = a.out_w = sizes[is];
                            a.kernel_h = a.kernel_w = k;
                            a.stride_h = a.stride_w = a.dilation_h = a.dilation_w = 1;
                            a.pad_top = a.pad_left = k / 2;
                            a.activation = 1;
                            char shape[160];
                            snprintf(shape, sizeof shape, "fused_tc dtype %d %s n %d %dx%d k %d E %d", a.dtype,
                                     layout ? "NHWC" : "NCHW", a.n, sizes[is], sizes[is], k, e);
                            cc_fused_tc_config cfg;
                            if (!cc_fused_tc_choose(&a, sm_count, optin, &cfg)) {
                                eu_fail(__FILE__, __LINE__, "choose", "%s on the %s: no config", shape, card);
                                continue;
                            }
                            char what[96];
                            snprintf(what, sizeof what, "tile %dx%d, %d samples, %zu B", cfg.tile_m, cfg.tile_n,
                                     cfg.samples_cap, cfg.smem_bytes);
                            expect_launch(cc_launch_fused_tc(&a, &cfg, NULL), what, card, shape);
                            for (int mix = 0; mix <= 1; ++mix) {
                                if (!(mix ? cc_fused_tc2_mma_mix_supported(&a, NULL, 0)
                                          : cc_fused_tc2_supported(&a, NULL, 0)))
                                    continue;
                                if (!(mix ? cc_fused_tc2_choose_mma_mix(&a, sm_count, optin, &cfg)
                                          : cc_fused_tc2_choose(&a, sm_count, optin, &cfg))) {
                                    ++gen2_none;
                                    continue;
                                }
                                ++gen2_configs;
                                EU_EXPECT(cfg.mix_mma == mix, "%s on the %s: mix_mma %d", shape, card, cfg.mix_mma);
                                snprintf(what, sizeof what, "gen 2%s tile %dx%d, %d samples, %zu B",
                                         mix ? " (tensor-core mix)" : "", cfg.tile_m, cfg.tile_n, cfg.samples_cap,
                                         cfg.smem_bytes);
                                expect_launch(cc_launch_fused_tc2(&a, &cfg, NULL), what, card, shape);
                            }
                        }
}

static void depthwise_shapes(const char *card)
{
    static const int dtypes[] = {CC_DTYPE_F32, CC_DTYPE_F16, CC_DTYPE_BF16}, sizes[] = {4, 7, 28, 112};
    for (size_t id = 0; id < sizeof dtypes / sizeof dtypes[0]; ++id)
        for (int layout = 0; layout < 2; ++layout)
            for (size_t is = 0; is < sizeof sizes / sizeof sizes[0]; ++is)
                for (int k = 1; k <= 9; k += 2)
                    for (int stride = 1; stride <= 2; ++stride)
                        for (int mult = 1; mult <= 2; ++mult) {
                            cc_depthwise_args a;
                            memset(&a, 0, sizeof a);
                            a.dtype = dtypes[id];
                            a.layout = layout;
                            a.x = a.experts = a.bias = a.alpha = dummy;
                            a.y = dummy;
                            a.n = 2;
                            a.in_channels = 32;
                            a.multiplier = mult;
                            a.experts_count = 8;
                            a.h = a.w = sizes[is];
                            a.out_h = a.out_w = (sizes[is] + 2 * (k / 2) - k) / stride + 1;
                            a.kernel_h = a.kernel_w = k;
                            a.stride_h = a.stride_w = stride;
                            a.dilation_h = a.dilation_w = 1;
                            a.pad_top = a.pad_left = k / 2;
                            if (cc_depthwise_fused_smem_bytes(&a) > CC_DEPTHWISE_MAX_SMEM ||
                                cc_depthwise_fused_tiles(&a) <= 0)
                                continue;
                            char shape[160];
                            snprintf(shape, sizeof shape, "depthwise dtype %d %s %dx%d k %d stride %d mult %d", a.dtype,
                                     layout ? "NHWC" : "NCHW", sizes[is], sizes[is], k, stride, mult);
                            expect_launch(cc_launch_depthwise_fused(&a, NULL), "launch", card, shape);
                        }
}

int main(void)
{
    if (cudaMalloc(&dummy, 4096) != cudaSuccess) return 1;
    cc_cpu_set_launch_validate_only(1);
    refused_before = cc_cpu_refused_launches();
    for (int p = 0; p < CC_CPU_DEVICE_PROFILE_COUNT; ++p) {
        EU_EXPECT(cc_cpu_set_device_profile((cc_cpu_device_profile)p) == 0, "profile %d", p);
        struct cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 1;
        const char *card = cc_cpu_device_profile_name((cc_cpu_device_profile)p);
        EU_EXPECT(strstr(prop.name, card) != NULL, "device name %s, want %s", prop.name, card);
        const long long before = launches;
        fused_shapes(card, prop.multiProcessorCount, prop.sharedMemPerBlockOptin);
        tc_shapes(card, prop.multiProcessorCount, prop.sharedMemPerBlockOptin);
        depthwise_shapes(card);
        printf("  %-10s sm_%d%d, %3d SMs, %zu B opt-in shared memory per block: %lld launches\n", card, prop.major,
               prop.minor, prop.multiProcessorCount, prop.sharedMemPerBlockOptin, launches - before);
    }
    EU_EXPECT(cc_cpu_set_device_profile(CC_CPU_DEVICE_PROFILE_COUNT) == -1, "an unknown profile must be refused");
    cc_cpu_set_device_profile(CC_CPU_DEVICE_H200);
    cc_cpu_set_launch_validate_only(0);
    EU_EXPECT(cc_cpu_refused_launches() == refused_before, "the layer refused %lld launch(es)",
              cc_cpu_refused_launches() - refused_before);
    cudaFree(dummy);
    EU_EXPECT(gen2_configs > 0, "gen 2 chose no config on any card");
    printf("test_emu_profiles: %lld launches on %d cards (gen 2: %lld configs; %lld supported shapes without one on a "
           "card's opt-in)\n",
           launches, CC_CPU_DEVICE_PROFILE_COUNT, gen2_configs, gen2_none);
    return eu_finish("test_emu_profiles");
}
