/*
 * safetensors.h - reader for safetensors files (checkpoint shards and golden tensors).
 * Input: a file (8-byte little-endian header length H, H bytes of JSON, raw data); output: a
 * table of checked tensors (dtype known, shape within limits, byte count = dtype x shape,
 * offsets ordered, non-overlapping and covering the data area). Every file is untrusted.
 * Any safetensors dtype is accepted here (F32, BF16, I64, U8, ...); the model loader narrows it.
 */
#ifndef NVLM_SAFETENSORS_H
#define NVLM_SAFETENSORS_H

#include "model.h"

/* Header JSON bigger than this is refused (NVLM_ERR_LIMIT), as the safetensors library does. */
#define NV_ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024)

typedef struct nv_st_file nv_st_file;

typedef enum nv_st_mode {
    NV_ST_MMAP = 0,        /* map the file read-only (weights used in place) */
    NV_ST_READ = 1,        /* read the whole file into memory from the context's allocator */
    NV_ST_HEADER_ONLY = 2  /* read only the header: tensors have t.data == NULL */
} nv_st_mode;

/* Bounds a caller puts on one file, checked before anything per tensor is allocated: the
 * header's entry and value counts are taken by an allocation-free scan (nv_json_check) before
 * cJSON builds a tree. */
typedef struct nv_st_limits {
    size_t max_tensors;  /* tensors the header may list (plus one __metadata__) */
    uint64_t max_header; /* header bytes the file may have */
    const char *why;     /* what sets the bounds, ending the NVLM_ERR_LIMIT message */
} nv_st_limits;

/* Opens `path` and checks its header (mapped read-only). Error text goes to err_handle (a
 * context, model, ... handle; may be NULL). On success *out is owned by the caller
 * (nv_st_close). Returns NVLM_OK, NVLM_ERR_NOT_FOUND (no such file), NVLM_ERR_IO,
 * NVLM_ERR_FORMAT (corrupt header, bad offsets), NVLM_ERR_LIMIT (header too big, too many
 * dims), NVLM_ERR_UNSUPPORTED (unknown dtype, misaligned data), NVLM_ERR_OUT_OF_MEMORY. */
nvlm_status nv_st_open(nvlm_context *ctx, const char *path, void *err_handle, nv_st_file **out);
/* The same with an explicit mode. */
nvlm_status nv_st_open_mode(nvlm_context *ctx, const char *path, nv_st_mode mode,
                            void *err_handle, nv_st_file **out);
/* The same with bounds (NULL: only the built-in caps); a file over them is NVLM_ERR_LIMIT. */
nvlm_status nv_st_open_limited(nvlm_context *ctx, const char *path, nv_st_mode mode,
                               const nv_st_limits *limits, void *err_handle, nv_st_file **out);
/* Parses a whole safetensors file held in memory (the fuzzer's entry point). `buf` is
 * borrowed and must outlive *out (tensor data points into it). `name` labels messages. */
nvlm_status nv_st_parse(nvlm_context *ctx, const void *buf, size_t size, const char *name,
                        void *err_handle, nv_st_file **out);
void nv_st_close(nv_st_file *f);

/* Tensors in file order (sorted by data offset); NULL for i >= count. Borrowed from f. */
size_t nv_st_count(const nv_st_file *f);
const nv_weight *nv_st_at(const nv_st_file *f, size_t i);
/* The tensor called `name` (binary search), or NULL. Borrowed from f. */
const nv_weight *nv_st_find(const nv_st_file *f, const char *name);
/* Sum of the tensors' byte counts (= size of the data area). */
uint64_t nv_st_data_bytes(const nv_st_file *f);
/* Length of the header JSON in bytes. */
uint64_t nv_st_header_bytes(const nv_st_file *f);
/* The path (or name) the file was opened with. */
const char *nv_st_path(const nv_st_file *f);
/* Byte count of one tensor (dtype size x elements; the reader checked it does not overflow). */
uint64_t nv_st_nbytes(const nv_weight *w);

#endif /* NVLM_SAFETENSORS_H */
