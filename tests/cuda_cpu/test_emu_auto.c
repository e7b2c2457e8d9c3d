/* AUTO's candidates (issue 19) end to end on the CPU execution layer: a
 * measured plan names its winner and runner-up with their times, lists
 * every candidate it timed (algorithms, their kernel variants, the routing
 * and aggregation kernels' variants) and the budget; the budget bounds the
 * candidates (a budget that is already spent leaves only the GPU-measured
 * defaults, and says so); the rule and forced algorithms keep every
 * default. Whatever wins, the forward equals the double reference, on
 * layers that reach each kind of candidate: f32 NHWC dense (the fused
 * kernel's NHWC loaders), f16 NCHW pointwise and a depthwise layer (the
 * aggregation variants through cudnn_grouped and gemm_batched), with
 * routing inside the layer (the routing variants) and external. Each
 * candidate can be forced by its name, and each kernel variant by number
 * (the bench's row per candidate). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregate.h"
#include "emu_forward.h"
#include "emu_util.h"
#include "gpu_util.h"
#include "routing.h"
#include "test_util.h"

typedef struct layer_case {
    const char *name;
    tu_layer_spec spec;
    condconv_dtype dtype;
    condconv_layout layout;
    int n, h, w;
} layer_case;

/* How many entries a "kind: a 1.0 us, *b 2.0 us" list of `candidates` has. */
static int listed(const char *candidates, const char *kind)
{
    const char *p = strstr(candidates, kind);
    if (p == NULL) return 0;
    int count = 0;
    for (; *p && *p != ';'; ++p) count += p[0] == ' ' && p[1] == 'u' && p[2] == 's';
    return count;
}

/* The algorithm part of a candidate's name ("fused[nhwc coalesced]" -> "fused"). */
static int names_algo(const char *candidate, condconv_algo algo)
{
    const char *name = condconv_algo_name(algo);
    const size_t len = strlen(name);
    return strncmp(candidate, name, len) == 0 && (candidate[len] == '\0' || candidate[len] == '[');
}

/* Extra candidates (beyond each kernel's default) a plan timed. */
static int extra_candidates(const condconv_plan_info *info)
{
    int extra = 0;
    for (const char *p = info->candidates; (p = strchr(p, '[')) != NULL; ++p) ++extra;
    const int routes = listed(info->candidates, "routing:"), aggregates = listed(info->candidates, "aggregate:");
    return extra + (routes > 1 ? routes - 1 : 0) + (aggregates > 1 ? aggregates - 1 : 0);
}

static void check_measured(const layer_case *lc, const condconv_plan_info *info, float budget_ms)
{
    EXPECT(info->winner[0] != '\0' && info->winner_us >= 0.0f, "%s: no winner (%s)", lc->name, info->candidates);
    EXPECT(names_algo(info->winner, info->algo), "%s: winner %s, plan runs %s", lc->name, info->winner,
           condconv_algo_name(info->algo));
    EXPECT(info->winner_us == info->measured_us[info->algo], "%s: winner %.3f us, %s measured %.3f us", lc->name,
           (double)info->winner_us, condconv_algo_name(info->algo), (double)info->measured_us[info->algo]);
    char starred[80];
    snprintf(starred, sizeof starred, "*%s ", info->winner);
    EXPECT(strstr(info->candidates, starred) != NULL, "%s: '%s' not starred in '%s'", lc->name, info->winner,
           info->candidates);
    int timed = 0;
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a)
        if (info->measured_us[a] >= 0.0f) {
            ++timed;
            EXPECT(strstr(info->candidates, condconv_algo_name((condconv_algo)a)) != NULL, "%s: %s timed, not listed",
                   lc->name, condconv_algo_name((condconv_algo)a));
        }
    if (timed + extra_candidates(info) > 1) {
        EXPECT(info->runner_up[0] != '\0' && info->runner_up_us >= info->winner_us, "%s: runner-up '%s' %.3f us",
               lc->name, info->runner_up, (double)info->runner_up_us);
        EXPECT(strcmp(info->runner_up, info->winner) != 0, "%s: runner-up is the winner", lc->name);
    }
    const int internal = lc->spec.routing != CONDCONV_ROUTING_EXTERNAL;
    EXPECT(info->routing_variant >= 0 && info->routing_variant < CC_ROUTING_VARIANTS, "%s: routing variant %d",
           lc->name, info->routing_variant);
    EXPECT(info->aggregate_variant >= 0 && info->aggregate_variant < CC_AGGREGATE_VARIANTS, "%s: aggregate variant %d",
           lc->name, info->aggregate_variant);
    if (budget_ms == 0.0f) {
        EXPECT(!info->budget_exhausted && strstr(info->candidates, "no budget") != NULL, "%s: unbounded: '%s'",
               lc->name, info->candidates);
        /* Every variant of the two kernels timed (none refuses these shapes). */
        EXPECT(!internal || CC_ROUTING_VARIANTS < 2 || listed(info->candidates, "routing:") == CC_ROUTING_VARIANTS,
               "%s: routing variants in '%s'", lc->name, info->candidates);
        EXPECT(CC_AGGREGATE_VARIANTS < 2 || listed(info->candidates, "aggregate:") == CC_AGGREGATE_VARIANTS,
               "%s: aggregation variants in '%s'", lc->name, info->candidates);
    } else {
        /* Spent at the first candidate: the defaults only. */
        EXPECT(extra_candidates(info) == 0, "%s: candidates timed past the budget: '%s'", lc->name, info->candidates);
        EXPECT(info->routing_variant == 0 && info->aggregate_variant == 0, "%s: an untimed variant chosen", lc->name);
        EXPECT(strstr(info->candidates, "budget") != NULL, "%s: budget not reported: '%s'", lc->name, info->candidates);
    }
}

static void check_unmeasured(const layer_case *lc, const condconv_plan_info *info)
{
    EXPECT(info->winner[0] == '\0' && info->winner_us < 0.0f && info->runner_up[0] == '\0' && info->runner_up_us < 0.0f,
           "%s: winner '%s' runner-up '%s' without measuring", lc->name, info->winner, info->runner_up);
    EXPECT(info->routing_variant == 0 && info->aggregate_variant == 0 && !info->budget_exhausted,
           "%s: a candidate variant (routing %d, aggregation %d) without measuring", lc->name, info->routing_variant,
           info->aggregate_variant);
}

/* A case's layer, its parameters (host, f32 and in the dtype) and output size. */
typedef struct case_layer {
    tu_params p;
    void *hp[4];
    condconv_layer_desc_t desc;
    condconv_layer_t layer; /* NULL if creating it failed (reported) */
    int ho, wo;
} case_layer;

static void case_layer_create(condconv_context_t ctx, const layer_case *lc, case_layer *cl)
{
    tu_make_params(&lc->spec, &cl->p);
    tu_params_in_dtype(&cl->p, lc->dtype, cl->hp);
    const condconv_params view = {cl->hp[0], cl->hp[1], cl->hp[2], cl->hp[3]};
    cl->desc = tu_make_desc(&lc->spec);
    EXPECT_OK(condconv_layer_desc_set_format(cl->desc, lc->dtype, lc->layout));
    cl->ho = cl->wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(cl->desc, lc->h, lc->w, &cl->ho, &cl->wo, NULL));
    cl->layer = NULL;
    if (!EXPECT_OK(condconv_layer_create(ctx, cl->desc, &view, &cl->layer))) cl->layer = NULL;
}

static void case_layer_destroy(case_layer *cl)
{
    if (cl->layer) condconv_layer_destroy(cl->layer);
    condconv_layer_desc_destroy(cl->desc);
    for (int i = 0; i < 4; ++i) free(cl->hp[i]);
    tu_free_params(&cl->p);
}

/* extras: candidates beyond the defaults the unbounded plan timed (for the budget check). */
static void run(condconv_context_t ctx, const layer_case *lc, condconv_algo algo, condconv_algo_select select,
                float budget_ms, int *extras)
{
    EXPECT_OK(condconv_context_set_algo_select(ctx, select));
    EXPECT_OK(condconv_context_set_auto_budget(ctx, budget_ms));
    case_layer cl;
    case_layer_create(ctx, lc, &cl);
    condconv_layer_t layer = cl.layer;
    if (layer != NULL) {
        EXPECT_OK(condconv_layer_set_algo(layer, algo));
        condconv_plan_info info;
        if (EXPECT_OK(condconv_get_plan_info(layer, lc->n, lc->h, lc->w, &info))) {
            printf("  %s, %s%s, budget %g ms: %s runs; %s\n", lc->name,
                   select == CONDCONV_SELECT_MEASURE ? "measured" : "by rule", algo ? " (forced)" : "",
                   (double)budget_ms, condconv_algo_name(info.algo), info.candidates);
            if (algo == CONDCONV_ALGO_AUTO && select == CONDCONV_SELECT_MEASURE) {
                check_measured(lc, &info, budget_ms);
                if (budget_ms == 0.0f)
                    *extras = extra_candidates(&info);
                else
                    EXPECT(info.budget_exhausted == (*extras > 0), "%s: budget_exhausted %d with %d candidates cut",
                           lc->name, info.budget_exhausted, *extras);
            } else if (select == CONDCONV_SELECT_HEURISTIC) {
                check_unmeasured(lc, &info);
                /* The rule says whether a GPU measured this format (f32 NCHW) or it guesses. */
                const int measured = lc->dtype == CONDCONV_DTYPE_F32 && lc->layout == CONDCONV_LAYOUT_NCHW;
                if (algo == CONDCONV_ALGO_AUTO)
                    EXPECT(strstr(info.reason, measured ? "(from H200 f32 NCHW runs)" : "(a guess") != NULL,
                           "%s: rule's reason '%s'", lc->name, info.reason);
            } else { /* forced, measuring: no algorithm candidates; the kernels' variants are timed */
                EXPECT(info.winner[0] == '\0' && info.winner_us < 0.0f, "%s: forced, winner '%s'", lc->name,
                       info.winner);
                EXPECT(strstr(info.reason, "forced") != NULL, "%s: reason '%s'", lc->name, info.reason);
            }
            eu_check_forward(layer, lc->name, &lc->spec, lc->dtype, lc->layout, &cl.p, lc->n, lc->h, lc->w, cl.ho,
                             cl.wo);
        }
    }
    case_layer_destroy(&cl);
}

/* Each candidate AUTO listed, forced by its name (condconv_layer_set_candidate,
 * as the bench makes a row per candidate), and each routing and aggregation
 * variant forced by number: the plan runs exactly that, says so, and the
 * forward equals the reference. Then the names and numbers it must refuse. */
static void forced_candidates(condconv_context_t ctx, const layer_case *lc)
{
    EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_MEASURE));
    EXPECT_OK(condconv_context_set_auto_budget(ctx, 0.0f));
    case_layer cl;
    case_layer_create(ctx, lc, &cl);
    condconv_layer_t layer = cl.layer;
    condconv_plan_info info;
    if (layer == NULL || !EXPECT_OK(condconv_get_plan_info(layer, lc->n, lc->h, lc->w, &info))) {
        case_layer_destroy(&cl);
        return;
    }
    /* The algorithm candidates: "[*]name t us" entries up to the first ';'. */
    char list[sizeof info.candidates];
    snprintf(list, sizeof list, "%s", info.candidates);
    char *end = strchr(list, ';');
    if (end) *end = '\0';
    int forced = 0;
    for (char *entry = list, *next; entry != NULL; entry = next) {
        next = strchr(entry, ','); /* entries split in place, as strtok would, without its hidden state */
        if (next) *next++ = '\0';
        while (*entry == ' ' || *entry == '*') ++entry;
        char *cut = strstr(entry, " us");
        if (cut == NULL) continue;
        while (cut > entry && cut[-1] != ' ') --cut; /* back over the time */
        if (cut > entry) cut[-1] = '\0';
        char name[64];
        snprintf(name, sizeof name, "%.63s", entry);
        EXPECT_OK(condconv_layer_set_candidate(layer, name));
        condconv_plan_info f;
        if (!EXPECT_OK(condconv_get_plan_info(layer, lc->n, lc->h, lc->w, &f))) continue;
        const int variant = strchr(name, '[') != NULL;
        EXPECT(strncmp(name, condconv_algo_name(f.algo), strlen(condconv_algo_name(f.algo))) == 0 &&
                   f.requested == f.algo,
               "%s: forced '%s', runs %s", lc->name, name, condconv_algo_name(f.algo));
        EXPECT(strstr(f.reason, variant ? "condconv_layer_set_candidate" : "its default variant") != NULL &&
                   (!variant || strstr(f.reason, name) != NULL),
               "%s: forced '%s', reason '%s'", lc->name, name, f.reason);
        printf("  %s, forced candidate %s: %s\n", lc->name, name, f.backend);
        eu_check_forward(layer, lc->name, &lc->spec, lc->dtype, lc->layout, &cl.p, lc->n, lc->h, lc->w, cl.ho, cl.wo);
        ++forced;
    }
    EXPECT(forced >= 1, "%s: no candidate parsed from '%s'", lc->name, info.candidates);
    /* The kernels' variants by number, under the forced cudnn_grouped
     * (it aggregates) where it applies, else under AUTO. */
    EXPECT_OK(condconv_layer_set_candidate(layer, NULL));
    if (info.applicable[CONDCONV_ALGO_CUDNN_GROUPED]) EXPECT_OK(condconv_layer_set_candidate(layer, "cudnn_grouped"));
    const int internal = lc->spec.routing != CONDCONV_ROUTING_EXTERNAL;
    for (int r = 0; r < CC_ROUTING_VARIANTS; ++r)
        for (int a = 0; a < CC_AGGREGATE_VARIANTS; ++a) {
            if (!EXPECT_OK(condconv_layer_set_kernel_variants(layer, r, a))) continue;
            condconv_plan_info f;
            if (!EXPECT_OK(condconv_get_plan_info(layer, lc->n, lc->h, lc->w, &f))) continue;
            EXPECT(f.routing_variant == (internal ? r : 0) && f.aggregate_variant == a,
                   "%s: forced routing %d aggregation %d, plan runs %d and %d", lc->name, r, a, f.routing_variant,
                   f.aggregate_variant);
            eu_check_forward(layer, lc->name, &lc->spec, lc->dtype, lc->layout, &cl.p, lc->n, lc->h, lc->w, cl.ho,
                             cl.wo);
        }
    /* Refusals: nothing changes on a refused call. */
    EXPECT(condconv_layer_set_candidate(layer, "no_such_algo") == CONDCONV_STATUS_BAD_VALUE, "unknown algorithm");
    EXPECT(condconv_layer_set_candidate(layer, "fused[") == CONDCONV_STATUS_BAD_VALUE, "unclosed bracket");
    EXPECT(condconv_layer_set_candidate(layer, "fused[]") == CONDCONV_STATUS_BAD_VALUE, "empty variant");
    EXPECT(condconv_layer_set_candidate(layer, "fused[x]y") == CONDCONV_STATUS_BAD_VALUE, "text after ]");
    EXPECT(condconv_layer_set_candidate(NULL, "fused") == CONDCONV_STATUS_NULL_POINTER, "NULL layer");
    EXPECT(condconv_layer_set_kernel_variants(layer, CC_ROUTING_VARIANTS, 0) == CONDCONV_STATUS_BAD_VALUE,
           "routing variant past the last");
    EXPECT(condconv_layer_set_kernel_variants(layer, 0, -2) == CONDCONV_STATUS_BAD_VALUE, "aggregation variant -2");
    EXPECT_OK(condconv_layer_set_kernel_variants(layer, -1, -1));
    if (info.applicable[CONDCONV_ALGO_FUSED]) {
        EXPECT_OK(condconv_layer_set_candidate(layer, "fused[no such variant]"));
        EXPECT(condconv_prepare(layer, lc->n, lc->h, lc->w) == CONDCONV_STATUS_NOT_SUPPORTED &&
                   strstr(condconv_last_error(), "no variant \"no such variant\"") != NULL,
               "%s: an unknown variant: '%s'", lc->name, condconv_last_error());
    }
    /* NULL: AUTO again. */
    EXPECT_OK(condconv_layer_set_candidate(layer, NULL));
    condconv_plan_info back;
    if (EXPECT_OK(condconv_get_plan_info(layer, lc->n, lc->h, lc->w, &back)))
        EXPECT(back.requested == CONDCONV_ALGO_AUTO && back.winner[0] != '\0', "%s: AUTO after NULL", lc->name);
    case_layer_destroy(&cl);
}

int main(void)
{
    tu_seed_from_env();
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_emu_auto");
    layer_case cases[4];
    cases[0] = (layer_case){
        "f32 NHWC dense 3x3", tu_basic_spec(12, 10, 3, 4), CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NHWC, 3, 7, 6};
    cases[0].spec.pad_h = cases[0].spec.pad_w = 1;
    cases[0].spec.routing = CONDCONV_ROUTING_SIGMOID;
    cases[0].spec.has_bias = 1;
    cases[1] = (layer_case){
        "f16 NCHW pointwise", tu_basic_spec(16, 12, 1, 3), CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NCHW, 5, 4, 5};
    cases[1].spec.routing = CONDCONV_ROUTING_SOFTMAX;
    cases[1].spec.activation = CONDCONV_ACTIVATION_RELU;
    cases[2] = (layer_case){
        "f32 NCHW depthwise", tu_basic_spec(6, 6, 3, 5), CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW, 2, 6, 7};
    cases[2].spec.groups = 6;
    cases[2].spec.pad_h = cases[2].spec.pad_w = 1;
    cases[2].spec.routing = CONDCONV_ROUTING_SIGMOID;
    /* E = 16: fused's tensor-core candidates include gen 2 with the MMA mix. */
    cases[3] = (layer_case){
        "bf16 NHWC external E16", tu_basic_spec(8, 8, 1, 16), CONDCONV_DTYPE_BF16, CONDCONV_LAYOUT_NHWC, 4, 3, 3};
    cases[3].spec.routing = CONDCONV_ROUTING_EXTERNAL;
    for (int c = 0; c < 4; ++c) {
        int extras = 0;
        run(ctx, &cases[c], CONDCONV_ALGO_AUTO, CONDCONV_SELECT_MEASURE, 0.0f, &extras);
        run(ctx, &cases[c], CONDCONV_ALGO_AUTO, CONDCONV_SELECT_MEASURE, 1e-6f, &extras);
        run(ctx, &cases[c], CONDCONV_ALGO_AUTO, CONDCONV_SELECT_HEURISTIC, 0.0f, &extras);
    }
    /* Forced: the algorithm's default variant, no winner; by rule the
     * kernels' defaults too. */
    int unused = 0;
    run(ctx, &cases[0], CONDCONV_ALGO_FUSED, CONDCONV_SELECT_MEASURE, 0.0f, &unused);
    run(ctx, &cases[1], CONDCONV_ALGO_GEMM_BATCHED, CONDCONV_SELECT_HEURISTIC, 0.0f, &unused);
    /* Every candidate by name: the fused NHWC loader (case 0), the
     * aggregation variants under cudnn_grouped (case 1), external routing and
     * fused[tc gen2 mma-mix] (case 3). */
    forced_candidates(ctx, &cases[0]);
    forced_candidates(ctx, &cases[1]);
    forced_candidates(ctx, &cases[3]);
    EXPECT_OK(condconv_context_destroy(ctx));
    return tu_finish("test_emu_auto");
}
