/* The records of tests/nvtx/nvtx_recorder.c, an NVTX injection library. */
#ifndef CONDCONV_TESTS_NVTX_RECORDER_H
#define CONDCONV_TESTS_NVTX_RECORDER_H

#define CC_NVTX_MAX_EVENTS 4096

typedef struct cc_nvtx_event {
    int push;      /* 1 push, 0 pop */
    int thread;    /* 1, 2, ...: the order in which threads first called NVTX */
    int depth;     /* push: ranges already open on the thread; pop: open after it (-1: a pop with none open) */
    char name[48]; /* push: the range's name; pop: "" */
} cc_nvtx_event;

/* Moves up to max events recorded since the last call into out and forgets
 * them; *overflow says whether any were lost. Returns the count. */
typedef int (*cc_nvtx_recorder_take_fn)(cc_nvtx_event *out, int max, int *overflow);
/* How many NVTX modules initialised the injection. */
typedef int (*cc_nvtx_recorder_inits_fn)(void);

__attribute__((visibility("default"))) int cc_nvtx_recorder_take(cc_nvtx_event *out, int max, int *overflow);
__attribute__((visibility("default"))) int cc_nvtx_recorder_inits(void);

#endif
