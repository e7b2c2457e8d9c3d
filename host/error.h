/* Per-thread error messages and the status that goes with them.
 *
 * Every public entry point that fails returns cc_fail(status, fmt, ...):
 * the message is formatted into a thread-local buffer, so concurrent callers
 * on different threads never see each other's messages, and nothing is ever
 * printed. */
#ifndef CONDCONV_HOST_ERROR_H
#define CONDCONV_HOST_ERROR_H

#include "condconv.h"

#if defined(__GNUC__)
#define CC_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define CC_PRINTF(fmt_index, first_arg)
#endif

/* Records "<status name>: <message>" for condconv_last_error. */
void cc_record_error(condconv_status status, const char *fmt, ...) CC_PRINTF(2, 3);

/* Records the message and evaluates to `status`, which is evaluated twice:
 * pass a constant or a variable. A macro rather than a function in error.c,
 * so that whoever reads the caller, static analysis included, sees that a
 * failure comes back as the status it was given, and never follows a failed
 * check as though it had succeeded. */
#define cc_fail(status, ...) (cc_record_error((status), __VA_ARGS__), (status))

/* Propagates a failure: the callee already set the message. */
#define CC_TRY(expr)                                                                                                   \
    do {                                                                                                               \
        condconv_status cc_try_status_ = (expr);                                                                       \
        if (cc_try_status_ != CONDCONV_STATUS_SUCCESS) return cc_try_status_;                                          \
    } while (0)

/* Returns CONDCONV_STATUS_NULL_POINTER naming the argument when it is NULL. */
#define CC_CHECK_NOT_NULL(ptr, func)                                                                                   \
    do {                                                                                                               \
        if ((ptr) == NULL) return cc_fail(CONDCONV_STATUS_NULL_POINTER, "%s: argument '%s' is NULL", func, #ptr);      \
    } while (0)

#endif
