/* The cost model: multiply-adds, parameters and minimal bytes of a forward.
 * The arithmetic (the project's design note "where the time goes"): the
 * convolution costs N*|W|*Ho*Wo MACs as a static one does (|W| =
 * Cout*Cin/g*kh*kw); mixing the kernels adds N*E*(|W| + bias) once per
 * sample, not per pixel; routing pools N*Cin*H*W adds and its FC is
 * N*Cin*E MACs. The minimal bytes read x, the parameters and alpha once and
 * write y once; per-sample kernels that reach memory add 2*N*(|W| + bias)
 * elements (written, then read back), materialized_bytes. */
#include "checked_math.h"
#include "error.h"
#include "layer_desc.h"
#include "registry.h"

condconv_status condconv_cost_model(condconv_layer_desc_t desc, int n, int h, int w, condconv_cost *cost)
{
    static const char func[] = "condconv_cost_model";
    CC_CHECK_DESC(desc, func);
    CC_CHECK_NOT_NULL(cost, func);
    const condconv_layer_info *info = &desc->info;
    CC_TRY(cc_layer_info_validate(info, func));
    cc_param_sizes ps;
    CC_TRY(cc_param_sizes_make(info, &ps, func));
    cc_geometry g = {0};
    CC_TRY(cc_geometry_make(info, n, h, w, &g, func));

    const uint64_t N = (uint64_t)n, E = (uint64_t)info->num_experts;
    const uint64_t out_pixels = (uint64_t)g.out_h * (uint64_t)g.out_w;
    const uint64_t per_sample_filter = ps.filter_elems + (info->has_bias ? (uint64_t)info->out_channels : 0);
    const int owns_routing = info->routing != CONDCONV_ROUTING_EXTERNAL;
    const uint64_t es = cc_dtype_size(info->dtype);
    condconv_cost c = {0};
    c.out_h = g.out_h;
    c.out_w = g.out_w;
    c.expert_params = ps.experts_elems;
    c.bias_params = ps.bias_elems;
    c.routing_params = ps.routing_weight_elems + ps.routing_bias_elems;
    c.params = c.expert_params + c.bias_params + c.routing_params;

    /* Zero, not indeterminate, when the && chain below stops at an overflow. */
    uint64_t agg_elems = 0, epilogue_pixels = 0, min_elems = 0, materialized_extra = 0;
    int ok = cc_mul4_u64(N, ps.filter_elems, out_pixels, 1, &c.conv_macs) &&
             cc_mul4_u64(N, E, per_sample_filter, 1, &agg_elems) &&
             cc_mul4_u64(N, (uint64_t)info->out_channels, out_pixels, 1, &epilogue_pixels) &&
             cc_mul4_u64(2, N, per_sample_filter, es, &materialized_extra);
    c.aggregation_macs = agg_elems;
    if (ok && owns_routing) {
        ok = cc_mul4_u64(N, (uint64_t)info->in_channels, E, 1, &c.routing_macs) &&
             cc_mul4_u64(N, (uint64_t)info->in_channels, (uint64_t)h, (uint64_t)w, &c.routing_adds);
    }
    c.epilogue_ops = (info->has_bias || info->activation != CONDCONV_ACTIVATION_NONE) ? epilogue_pixels : 0;
    /* Every tensor crosses memory once: x, y, the experts, their biases, the
     * routing parameters, and alpha (written by routing, or read if external). */
    ok = ok && cc_add_u64(g.x_elems, g.y_elems, &min_elems) && cc_add_u64(min_elems, c.params, &min_elems) &&
         cc_add_u64(min_elems, g.alpha_elems, &min_elems) && cc_mul_u64(min_elems, es, &c.min_bytes) &&
         cc_add_u64(c.min_bytes, materialized_extra, &c.materialized_bytes);
    if (!ok)
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: the cost of a %d x %d x %d x %d forward overflows 64 bits",
                       func, n, info->in_channels, h, w);
    *cost = c;
    return CONDCONV_STATUS_SUCCESS;
}
