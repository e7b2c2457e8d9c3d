/* The random layer specs of test_util.c cover what they claim: every
 * property that has an h and a w (kernel, stride, dilation, explicit
 * padding) is drawn apart in a fair share of the draws, in every domain
 * that admits it, and stays in the documented ranges. A reference or kernel
 * that swaps the two axes, or reads one for both, passes every random test
 * when the draws never separate them (issue 18 item 17: dilations were
 * always equal). */
#include <stdio.h>

#include "test_util.h"

enum { DRAWS = 4000 };

typedef struct counts {
    int kernel, stride, dilation, padding, explicit_pads, dilated;
} counts;

static counts draw(tu_domain domain)
{
    counts c = {0};
    for (int i = 0; i < DRAWS; ++i) {
        const tu_layer_spec s = tu_random_spec(domain, 4, 5);
        EXPECT(s.stride_h >= 1 && s.stride_h <= 3 && s.stride_w >= 1 && s.stride_w <= 3, "stride %dx%d", s.stride_h,
               s.stride_w);
        EXPECT(s.dil_h >= 1 && s.dil_h <= 2 && s.dil_w >= 1 && s.dil_w <= 2, "dilation %dx%d", s.dil_h, s.dil_w);
        EXPECT(s.kh >= 1 && s.kh <= 5 && s.kw >= 1 && s.kw <= 5, "kernel %dx%d", s.kh, s.kw);
        c.kernel += s.kh != s.kw;
        c.stride += s.stride_h != s.stride_w;
        c.dilation += s.dil_h != s.dil_w;
        c.dilated += s.dil_h > 1 || s.dil_w > 1;
        if (s.pad_mode == CONDCONV_PADDING_EXPLICIT) {
            ++c.explicit_pads;
            c.padding += s.pad_h != s.pad_w;
        }
    }
    return c;
}

/* At least 5% of the draws (expected: a quarter or more for each). */
#define SHARE(n) ((n) >= DRAWS / 20)

int main(void)
{
    tu_rng_seed(20261202u);
    static const tu_domain domains[] = {TU_DENSE, TU_GROUPED, TU_DEPTHWISE, TU_POINTWISE, TU_ANY};
    static const char *const names[] = {"dense", "grouped", "depthwise", "pointwise", "any"};
    for (int d = 0; d < 5; ++d) {
        const counts c = draw(domains[d]);
        printf("%-9s of %d draws apart: kernel %d, stride %d, dilation %d, explicit padding %d of %d; dilated %d\n",
               names[d], DRAWS, c.kernel, c.stride, c.dilation, c.padding, c.explicit_pads, c.dilated);
        EXPECT(SHARE(c.stride), "%s: stride_h != stride_w in only %d of %d draws", names[d], c.stride, DRAWS);
        EXPECT(SHARE(c.dilation), "%s: dil_h != dil_w in only %d of %d draws", names[d], c.dilation, DRAWS);
        EXPECT(SHARE(c.dilated), "%s: a dilation > 1 in only %d of %d draws", names[d], c.dilated, DRAWS);
        EXPECT(SHARE(c.padding), "%s: pad_h != pad_w in only %d of %d draws", names[d], c.padding, DRAWS);
        if (domains[d] != TU_POINTWISE)
            EXPECT(SHARE(c.kernel), "%s: kh != kw in only %d of %d draws", names[d], c.kernel, DRAWS);
    }
    return tu_finish("test_util_draws");
}
