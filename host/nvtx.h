/* NVTX ranges that name the phases of a forward in nsys and ncu
 * (condconv.forward > condconv.route, condconv.aggregate, condconv.gather,
 * condconv.conv, condconv.epilogue). NVTX3 is header-only; with no profiler attached a
 * push/pop costs a few nanoseconds. Build with -DCONDCONV_NVTX=OFF to
 * compile them out. */
#ifndef CONDCONV_HOST_NVTX_H
#define CONDCONV_HOST_NVTX_H

#if defined(CONDCONV_WITH_NVTX) && CONDCONV_WITH_NVTX
#include <nvtx3/nvToolsExt.h>
#define CC_NVTX_PUSH(name) ((void)nvtxRangePushA(name))
#define CC_NVTX_POP()      ((void)nvtxRangePop())
#else
#define CC_NVTX_PUSH(name) ((void)0)
#define CC_NVTX_POP()      ((void)0)
#endif

#endif
