/* The staging decision (host/staging.h): which of x and y a forward copies
 * through the workspace before a cuBLAS or cuDNN call, for every pointer
 * alignment an element-aligned view can have, and the alignment class a
 * plan chooses by. A pure function: no GPU needed. The copies themselves
 * run in tests/cuda_cpu/test_emu_staging.c and on a GPU in
 * test_gpu_forward's `unaligned` mode. */
#include <stdint.h>
#include <stdio.h>

#include "staging.h"
#include "test_util.h"

int main(void)
{
    static _Alignas(256) unsigned char base[1024];
    const size_t offsets[] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 32, 254, 256, 258};
    const size_t count = sizeof offsets / sizeof offsets[0];
    EXPECT(CC_LIB_ALIGNMENT == 16, "the line is cuBLAS's and cuDNN's 16 bytes, not %u", CC_LIB_ALIGNMENT);
    for (size_t i = 0; i < count; ++i)
        for (size_t j = 0; j < count; ++j) {
            const void *x = base + offsets[i], *y = base + offsets[j];
            const int x_off = offsets[i] % 16 != 0, y_off = offsets[j] % 16 != 0;
            EXPECT(cc_align_class(x, y) == (x_off || y_off), "class of x+%zu, y+%zu", offsets[i], offsets[j]);
            for (int reads = 0; reads < 2; ++reads)
                for (int writes = 0; writes < 2; ++writes) {
                    const cc_staging s = cc_staging_decide(reads, writes, x, y);
                    EXPECT(s.x == (reads && x_off), "x+%zu, library %s x: stage x = %d", offsets[i],
                           reads ? "reads" : "does not read", s.x);
                    EXPECT(s.y == (writes && y_off), "y+%zu, library %s y: stage y = %d", offsets[j],
                           writes ? "writes" : "does not write", s.y);
                }
        }
    return tu_finish("test_staging");
}
