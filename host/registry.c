/* The registry of live handles (registry.h): an open-addressing hash table
 * keyed by the handle's address, linear probing, deletion by backward shift
 * (no tombstones), under one reader-writer lock. The table is freed when
 * the last handle goes, so a program that destroys everything leaves
 * nothing behind for leak checkers. */
#define _POSIX_C_SOURCE 200809L /* pthread_rwlock_t */
#include "registry.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "error.h"

typedef struct cc_entry {
    const void *handle; /* NULL: empty slot */
    const void *owner;  /* the context of a layer, else NULL */
    int kind;
    int dependents; /* layers of a context */
} cc_entry;

static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static cc_entry *g_table; /* g_capacity slots, a power of two */
static size_t g_capacity; /* 0 while no handle is live */
static size_t g_count;    /* live handles */
static size_t g_kinds[4]; /* live handles per kind */

static const char *kind_name(cc_handle_kind kind)
{
    return kind == CC_HANDLE_CONTEXT ? "context" : kind == CC_HANDLE_LAYER_DESC ? "layer descriptor" : "layer";
}

static size_t slot_of(const void *handle, size_t capacity)
{
    /* Heap addresses differ in their middle bits; Fibonacci hashing spreads them. */
    const uint64_t h = (uint64_t)(uintptr_t)handle * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 32) & (capacity - 1);
}

/* The entry of a live handle, or NULL. Caller holds the lock. */
static cc_entry *find(const void *handle)
{
    if (g_capacity == 0 || handle == NULL) return NULL;
    for (size_t i = slot_of(handle, g_capacity);; i = (i + 1) & (g_capacity - 1)) {
        if (g_table[i].handle == handle) return &g_table[i];
        if (g_table[i].handle == NULL) return NULL;
    }
}

static void insert(cc_entry *table, size_t capacity, cc_entry e)
{
    size_t i = slot_of(e.handle, capacity);
    while (table[i].handle != NULL) i = (i + 1) & (capacity - 1);
    table[i] = e;
}

/* Keeps the load at most 1/2. Caller holds the lock exclusively. */
static int reserve_one(void)
{
    if (2 * (g_count + 1) <= g_capacity) return 1;
    const size_t capacity = g_capacity ? 2 * g_capacity : 64;
    cc_entry *table = calloc(capacity, sizeof *table);
    if (table == NULL) return 0;
    for (size_t i = 0; i < g_capacity; ++i)
        if (g_table[i].handle != NULL) insert(table, capacity, g_table[i]);
    free(g_table);
    g_table = table;
    g_capacity = capacity;
    return 1;
}

/* Removes the entry at slot i, shifting back the entries of its probe run. */
static void erase(size_t i)
{
    const size_t mask = g_capacity - 1;
    g_table[i].handle = NULL;
    for (size_t j = (i + 1) & mask; g_table[j].handle != NULL; j = (j + 1) & mask) {
        const size_t home = slot_of(g_table[j].handle, g_capacity);
        /* Entry j may move into the hole at i unless its home lies cyclically in (i, j]. */
        const int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays) continue;
        g_table[i] = g_table[j];
        g_table[j].handle = NULL;
        i = j;
    }
    if (--g_count == 0) {
        free(g_table);
        g_table = NULL;
        g_capacity = 0;
    }
}

condconv_status cc_registry_add(const void *handle, cc_handle_kind kind, const void *owner, const char *func)
{
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    (void)pthread_rwlock_wrlock(&g_lock);
    cc_entry *o = owner != NULL ? find(owner) : NULL;
    if (owner != NULL && (o == NULL || o->kind != CC_HANDLE_CONTEXT)) {
        st = cc_fail(CONDCONV_STATUS_BAD_VALUE,
                     "%s: context %p is not a live condconv context (destroyed, or never "
                     "created)",
                     func, owner);
    } else if (!reserve_one()) {
        st = cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory for the handle registry", func);
    } else {
        const cc_entry e = {handle, owner, (int)kind, 0};
        insert(g_table, g_capacity, e);
        ++g_count;
        ++g_kinds[kind];
        if (owner != NULL) ++find(owner)->dependents; /* the table may have moved: look it up again */
    }
    (void)pthread_rwlock_unlock(&g_lock);
    return st;
}

condconv_status cc_registry_remove(const void *handle, cc_handle_kind kind, const char *func)
{
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    (void)pthread_rwlock_wrlock(&g_lock);
    cc_entry *e = find(handle);
    if (e == NULL || e->kind != (int)kind) {
        st =
            cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: %p is not a live condconv %s (destroyed already, or never created)",
                    func, handle, kind_name(kind));
    } else if (e->dependents > 0) {
        st = cc_fail(CONDCONV_STATUS_BAD_VALUE,
                     "%s: the context still has %d live layer%s; destroy them first (the context is kept)", func,
                     e->dependents, e->dependents == 1 ? "" : "s");
    } else {
        const void *owner = e->owner;
        --g_kinds[kind];
        erase((size_t)(e - g_table));
        cc_entry *o = owner != NULL ? find(owner) : NULL;
        if (o != NULL) --o->dependents;
    }
    (void)pthread_rwlock_unlock(&g_lock);
    return st;
}

condconv_status cc_registry_check(const void *handle, cc_handle_kind kind, const char *name, const char *func)
{
    if (handle == NULL) return cc_fail(CONDCONV_STATUS_NULL_POINTER, "%s: argument '%s' is NULL", func, name);
    (void)pthread_rwlock_rdlock(&g_lock);
    const cc_entry *e = find(handle);
    const int live = e != NULL && e->kind == (int)kind;
    (void)pthread_rwlock_unlock(&g_lock);
    if (!live)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                       "%s: %s %p is not a live condconv %s (destroyed already, or never created)", func, name, handle,
                       kind_name(kind));
    return CONDCONV_STATUS_SUCCESS;
}

size_t cc_registry_count(cc_handle_kind kind)
{
    (void)pthread_rwlock_rdlock(&g_lock);
    const size_t n = g_kinds[kind];
    (void)pthread_rwlock_unlock(&g_lock);
    return n;
}
