/* The registry of live handles: every context, layer descriptor and layer
 * the library created and has not destroyed, so that a call on any other
 * pointer (destroyed, or never created) is refused with BAD_VALUE instead of
 * reading freed memory, and a destroy runs once however often it is called.
 * It also counts the layers of each context: a context is not destroyed
 * while layers use it (condconv.h).
 *
 * Thread-safe: one reader-writer lock, so that forwards on several threads
 * look their layers up in parallel; create and destroy take it exclusively.
 * A lookup is a hash of the pointer and a few probes. */
#ifndef CONDCONV_HOST_REGISTRY_H
#define CONDCONV_HOST_REGISTRY_H

#include <stddef.h>

#include "condconv.h"

typedef enum cc_handle_kind { CC_HANDLE_CONTEXT = 1, CC_HANDLE_LAYER_DESC = 2, CC_HANDLE_LAYER = 3 } cc_handle_kind;

/* Registers a new handle. `owner`, if not NULL, must be a live context: it
 * then counts one more dependent layer (under the same lock, so a context
 * being destroyed never gains one). BAD_VALUE if the owner is not live,
 * ALLOC_FAILED if the table cannot grow. */
condconv_status cc_registry_add(const void *handle, cc_handle_kind kind, const void *owner, const char *func);

/* Unregisters a handle: BAD_VALUE when it is not a live handle of this kind,
 * or when it is a context that still has `dependents` layers (nothing is
 * removed then). The owner's count of dependents goes down by one. */
condconv_status cc_registry_remove(const void *handle, cc_handle_kind kind, const char *func);

/* NULL_POINTER naming `name` for NULL, BAD_VALUE when `handle` is not a live
 * handle of this kind. */
condconv_status cc_registry_check(const void *handle, cc_handle_kind kind, const char *name, const char *func);

/* Live handles of a kind (for tests). */
size_t cc_registry_count(cc_handle_kind kind);

#define CC_CHECK_CONTEXT(ptr, func) CC_TRY(cc_registry_check((ptr), CC_HANDLE_CONTEXT, #ptr, (func)))
#define CC_CHECK_DESC(ptr, func)    CC_TRY(cc_registry_check((ptr), CC_HANDLE_LAYER_DESC, #ptr, (func)))
#define CC_CHECK_LAYER(ptr, func)   CC_TRY(cc_registry_check((ptr), CC_HANDLE_LAYER, #ptr, (func)))

#endif
