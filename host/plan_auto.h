/* How a plan's algorithm and kernel variants are chosen: by rule
 * (CONDCONV_SELECT_HEURISTIC, like cudnnGet) or by timing every candidate
 * on the user's GPU at prepare (CONDCONV_SELECT_MEASURE, like cudnnFind)
 * within a time budget. Candidates are the algorithms, each algorithm's
 * kernel variants (cc_algo_ops.variants), and the routing and aggregation
 * kernels' variants (issue 19): ideas a careful read supports but no GPU
 * has measured compete there with the kernels a GPU measured, never
 * replacing them. */
#ifndef CONDCONV_HOST_PLAN_AUTO_H
#define CONDCONV_HOST_PLAN_AUTO_H

#include "plan.h"
#include "scratch.h"

typedef struct cc_auto_budget {
    double start_ms;
    float limit_ms; /* 0: no bound */
    int exhausted;
} cc_auto_budget;

/* One timed unit of work on the context's stream. */
typedef condconv_status (*cc_auto_timed_fn)(const void *arg, const char *func);

/* Median over a few event-timed runs of fn, after a warm-up (the
 * backward's AUTO times with it too). A candidate whose second warm-up run
 * (the first one pays for lazy module loading) already takes longer than
 * give_up_us (> 0) is not timed further: that time is its measurement. */
condconv_status cc_auto_time_runs(cudaStream_t stream, cc_auto_timed_fn fn, const void *arg, float give_up_us,
                                  float *median_us, const char *func);

void cc_auto_budget_start(cc_auto_budget *budget, float limit_ms);
/* Writes the budget's use into the plan info (candidates, budget_exhausted). */
void cc_auto_budget_report(const cc_auto_budget *budget, condconv_plan_info *info);

/* The routing and aggregation kernels' variants: timed against each other
 * under MEASURE (variant 0 always, the others while the budget lasts),
 * variant 0 under HEURISTIC. Creates the plan's routing buffers. */
condconv_status cc_auto_choose_kernels(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                       cc_auto_budget *budget, const char *func);
/* The algorithm forced by condconv_layer_set_algo or _set_candidate: its
 * default variant, or the variant named by the candidate (NOT_SUPPORTED,
 * listing the shape's variants, if it has none of that name). */
condconv_status cc_auto_prepare_forced(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                       const char *func);
/* The rule's ranking, the first that prepares. */
condconv_status cc_auto_choose_by_rule(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                       const char *func);
/* Every applicable algorithm and variant timed in both alignment classes;
 * the fastest of each class kept. */
condconv_status cc_auto_choose_by_measuring(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                            cc_auto_budget *budget, const char *func);

#endif
