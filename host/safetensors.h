/* Reading .safetensors images: an 8-byte little-endian header length, a
 * JSON header (parsed by Jansson) naming each tensor's dtype, shape and
 * byte range, then the raw little-endian tensor data.
 *
 * The parser trusts nothing in the image: every length, offset, dimension
 * and byte count is checked before it is used, so a hostile file yields
 * CONDCONV_STATUS_BAD_FILE and a message saying what is wrong, never an
 * out-of-bounds read. Internal to condconv; the tests use it too, to read
 * golden inputs and outputs. */
#ifndef CONDCONV_HOST_SAFETENSORS_H
#define CONDCONV_HOST_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "condconv.h"

/* More dimensions than any real tensor has: a header asking for more is
 * hostile, not ambitious. */
#define CC_ST_MAX_RANK 8
/* The header-size limit of the reference implementation (safetensors'
 * Rust crate); a larger length is refused before anything is allocated. */
#define CC_ST_MAX_HEADER_BYTES 100000000u

/* Every dtype the format defines, so that files holding tensors we do not
 * load (e.g. int64 step counters) still parse. */
typedef enum cc_st_dtype {
    CC_ST_BOOL,
    CC_ST_U8,
    CC_ST_I8,
    CC_ST_F8_E4M3,
    CC_ST_F8_E5M2,
    CC_ST_I16,
    CC_ST_U16,
    CC_ST_F16,
    CC_ST_BF16,
    CC_ST_I32,
    CC_ST_U32,
    CC_ST_F32,
    CC_ST_I64,
    CC_ST_U64,
    CC_ST_F64,
    CC_ST_DTYPE_COUNT
} cc_st_dtype;

typedef struct cc_st_tensor {
    char *name; /* valid UTF-8 without NUL (Jansson checks both) */
    cc_st_dtype dtype;
    int rank;
    uint64_t shape[CC_ST_MAX_RANK];
    uint64_t elems;            /* product of shape; 1 for rank 0 */
    uint64_t begin, end;       /* byte range in the data section, end - begin = elems * dtype size */
    const unsigned char *data; /* first byte, inside the image; no alignment promised */
} cc_st_tensor;

typedef struct cc_st_meta {
    char *key, *value;
} cc_st_meta;

/* A parsed image. Tensor data points into the image, which must outlive
 * this (cc_st_load's image is owned here). */
typedef struct cc_st_file {
    cc_st_tensor *tensors;
    size_t count;
    cc_st_meta *meta; /* "__metadata__": string -> string */
    size_t meta_count;
    unsigned char *owned_image; /* the file's bytes when cc_st_load read them, else NULL */
} cc_st_file;

/* Parses and validates an image of `size` bytes. `source` names it in
 * messages (a path, or "memory image"); `func` names the public entry
 * point. BAD_FILE for anything malformed, ALLOC_FAILED when host memory
 * runs out; *file is written only on success. */
condconv_status cc_st_parse(const void *image, size_t size, const char *source, cc_st_file *file, const char *func);

/* Reads the whole file at `path` and parses it: IO_ERROR when it cannot be
 * opened or read, or is not a regular file; otherwise as cc_st_parse. */
condconv_status cc_st_load(const char *path, cc_st_file *file, const char *func);

/* Frees what cc_st_parse or cc_st_load allocated; the struct is zeroed. */
void cc_st_release(cc_st_file *file);

/* The tensor called `name`, or NULL. */
const cc_st_tensor *cc_st_find(const cc_st_file *file, const char *name);

/* The "__metadata__" value for `key`, or NULL. */
const char *cc_st_meta_get(const cc_st_file *file, const char *key);

/* "F32", "BF16", ...; "?" for an invalid value. */
const char *cc_st_dtype_name(cc_st_dtype dtype);

/* Bytes per element of a dtype. */
size_t cc_st_dtype_size(cc_st_dtype dtype);

/* 1 for the dtypes cc_st_to_f32 converts (F32, F16, BF16). */
int cc_st_converts_to_f32(cc_st_dtype dtype);

/* Converts all t->elems elements to f32 into dst (exactly: F16 and BF16
 * values are all representable in f32). TENSOR_MISMATCH, naming the
 * tensor, for a dtype that does not convert. */
condconv_status cc_st_to_f32(const cc_st_tensor *t, float *dst, const char *func);

/* A tensor name made safe for a one-line message: at most out_size - 1
 * bytes, cut at a UTF-8 character boundary, control characters as '?',
 * and "..." when cut. */
void cc_st_printable(const char *name, char *out, size_t out_size);

/* "[4, 8, 3, 3]" into out (truncated to out_size). */
void cc_st_shape_string(const cc_st_tensor *t, char *out, size_t out_size);

#endif
