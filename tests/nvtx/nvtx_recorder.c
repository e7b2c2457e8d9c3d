/* An NVTX injection library for tests: records every range push and pop of
 * the process, with the range's name, the calling thread and the nesting
 * depth on that thread, for test_nvtx_ranges to read back.
 *
 * How NVTX v3 (header-only, nvtx3/ in the CUDA toolkit) finds it: the first
 * NVTX call of a module reads NVTX_INJECTION64_PATH, dlopen()s that library,
 * calls its InitializeInjectionNvtx2(getExportTable) and, on a nonzero
 * return, routes every NVTX call through the module's function table, which
 * the library fills through the export table NVTX_ETID_CALLBACKS
 * (GetModuleFunctionTable(NVTX_CB_MODULE_CORE)). This is the interface nsys
 * and ncu attach through; a range seen here is a range a profiler sees.
 * Each module (executable or shared object) that includes the NVTX header
 * initialises once, so InitializeInjectionNvtx2 may run more than once.
 *
 * The test reaches the records by dlopen() of the same path (the loader
 * returns the handle NVTX got) and dlsym() of cc_nvtx_recorder_*. */
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "nvtx_recorder.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static cc_nvtx_event events[CC_NVTX_MAX_EVENTS];
static int event_count, overflowed, inits;
static atomic_int next_thread = 1;
static _Thread_local int thread_index; /* 0: not yet numbered */
static _Thread_local int depth;        /* open ranges on this thread */

static int this_thread(void)
{
    if (thread_index == 0) thread_index = atomic_fetch_add(&next_thread, 1);
    return thread_index;
}

static void record(int push, const char *name, int at_depth)
{
    pthread_mutex_lock(&lock);
    if (event_count == CC_NVTX_MAX_EVENTS) {
        overflowed = 1;
    } else {
        cc_nvtx_event *e = &events[event_count++];
        e->push = push;
        e->thread = this_thread();
        e->depth = at_depth;
        if (name == NULL) name = "";
        strncpy(e->name, name, sizeof e->name - 1);
        e->name[sizeof e->name - 1] = '\0';
    }
    pthread_mutex_unlock(&lock);
}

/* NVTX's nvtxRangePushA: returns the depth of the range pushed (0-based), as the API says. */
static int NVTX_API range_push_a(const char *message)
{
    record(1, message, depth);
    return depth++;
}

static int NVTX_API range_push_ex(const nvtxEventAttributes_t *attrib)
{
    const char *name = attrib != NULL && attrib->messageType == NVTX_MESSAGE_TYPE_ASCII ? attrib->message.ascii
                                                                                        : "(non-ASCII message)";
    return range_push_a(name);
}

/* NVTX's nvtxRangePop: the depth of the range popped, or a negative value
 * when there was none open (recorded with depth -1, for the test to see). */
static int NVTX_API range_pop(void)
{
    if (depth == 0) {
        record(0, "", -1);
        return -1;
    }
    --depth;
    record(0, "", depth);
    return depth;
}

__attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table);
int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table)
{
    const NvtxExportTableCallbacks *callbacks = (const NvtxExportTableCallbacks *)get_export_table(NVTX_ETID_CALLBACKS);
    if (callbacks == NULL || callbacks->struct_size < sizeof *callbacks) return 0;
    NvtxFunctionTable table = NULL;
    unsigned int size = 0;
    if (!callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &table, &size) || table == NULL) return 0;
    if (size <= NVTX_CBID_CORE_RangePop || size <= NVTX_CBID_CORE_RangePushEx) return 0;
    *table[NVTX_CBID_CORE_RangePushA] = (NvtxFunctionPointer)range_push_a;
    *table[NVTX_CBID_CORE_RangePushEx] = (NvtxFunctionPointer)range_push_ex;
    *table[NVTX_CBID_CORE_RangePop] = (NvtxFunctionPointer)range_pop;
    pthread_mutex_lock(&lock);
    ++inits;
    pthread_mutex_unlock(&lock);
    return 1;
}

int cc_nvtx_recorder_take(cc_nvtx_event *out, int max, int *overflow)
{
    pthread_mutex_lock(&lock);
    const int n = event_count < max ? event_count : max;
    memcpy(out, events, sizeof(cc_nvtx_event) * (size_t)n);
    *overflow = overflowed || event_count > max;
    event_count = 0;
    overflowed = 0;
    pthread_mutex_unlock(&lock);
    return n;
}

int cc_nvtx_recorder_inits(void)
{
    pthread_mutex_lock(&lock);
    const int n = inits;
    pthread_mutex_unlock(&lock);
    return n;
}
