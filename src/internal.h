/*
 * internal.h - what every module shares: handle headers, error text, allocation through the
 * context's hooks, logging and overflow-checked size arithmetic. Never installed.
 */
#ifndef NVLM_INTERNAL_H
#define NVLM_INTERNAL_H

#define NVLM_BUILD 1
#include "nvlm/nvlm.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* Every public handle starts with this header, so nvlm_last_error works on any of them. */
enum {
    NV_MAGIC_CONTEXT = 0x4e56430au,
    NV_MAGIC_MODEL = 0x4e564d0au,
    NV_MAGIC_TOKENIZER = 0x4e56540au,
    NV_MAGIC_SESSION = 0x4e56530au,
    NV_MAGIC_IMAGE = 0x4e56490au,
    NV_MAGIC_STREAM = 0x4e56440au,
    NV_MAGIC_DEAD = 0xdeadbeefu
};

#define NV_ERR_MAX 1024
/* The most tensor-parallel ranks a context may ask for. */
#define NV_TP_MAX_RANKS 256

typedef struct nv_handle {
    uint32_t magic;
    struct nvlm_context *ctx;  /* owning context (the context itself for a context) */
    char err[NV_ERR_MAX];      /* last error text, "" after success */
} nv_handle;

/* A device memory probe (memory_plan.h): free and total bytes of CUDA device `device`. */
typedef nvlm_status (*nv_mem_probe_fn)(void *user, int device, size_t *free_bytes,
                                       size_t *total_bytes, void *err_handle);

struct nvlm_context {
    nv_handle h;
    pthread_mutex_t err_lock;  /* guards h.err: context calls are thread-safe */
    int32_t n_threads;
    nvlm_backend backend;
    int32_t device;
    int32_t tp_size;           /* tensor-parallel ranks per model (1: none) */
    int32_t devices[NV_TP_MAX_RANKS]; /* CUDA device of each rank (tp_size entries) */
    nvlm_log_fn log_fn;
    void *log_user;
    nvlm_log_level log_level;
    nvlm_alloc_fn alloc_fn;
    nvlm_realloc_fn realloc_fn;
    nvlm_free_fn free_fn;
    void *alloc_user;
    /* The CUDA plugin's table (plugin/cuda_plugin.h) when backend is NVLM_BACKEND_CUDA, opened
     * at creation and fixed from then on; NULL otherwise. */
    const struct nv_cuda_plugin *cuda;
    bool backend_auto;         /* backend came from NVLM_BACKEND_AUTO (the fit check says so) */
    nv_mem_probe_fn mem_probe; /* tests: stands in for the devices' free memory (NULL: CUDA) */
    void *mem_probe_user;
};

/* Initialise a handle header (magic, ctx, empty error). */
void nv_handle_init(nv_handle *h, uint32_t magic, nvlm_context *ctx);

/* Set the handle's error text and return `st` (pass NULL handle to only return st).
 * Also logs the message at NVLM_LOG_DEBUG. For a context handle the write is locked. */
nvlm_status nv_error(void *handle, nvlm_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Copy one handle's error text to another (e.g. an inner tokenizer's text to its model). */
nvlm_status nv_error_copy(void *dst, const void *src, nvlm_status st);
/* Clear the handle's error text (called at the start of a public entry point). */
void nv_clear(void *handle);

void nv_log(nvlm_context *ctx, nvlm_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Allocation through the context's hooks. ctx may be NULL (plain libc). nv_calloc and
 * nv_alloc_array check n * size for overflow and return NULL on it. */
void *nv_malloc(nvlm_context *ctx, size_t size);
void *nv_calloc(nvlm_context *ctx, size_t n, size_t size);
void *nv_realloc(nvlm_context *ctx, void *ptr, size_t size);
void *nv_alloc_array(nvlm_context *ctx, size_t n, size_t size);
void nv_free(nvlm_context *ctx, void *ptr);
char *nv_strdup(nvlm_context *ctx, const char *s);
char *nv_strndup(nvlm_context *ctx, const char *s, size_t n);

/* Overflow-checked arithmetic: return true on success, false on overflow. */
static inline bool nv_mul_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool nv_add_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}
static inline bool nv_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool nv_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* Read the first `size` bytes a caller's params struct holds into a defaults-filled copy:
 * dst must already hold defaults; src may be NULL (defaults kept). Returns false when
 * src->struct_size (first uint32_t) is smaller than 4 or than `min_size`. */
bool nv_params_copy(void *dst, size_t dst_size, const void *src, size_t min_size);

/* Opens `path` for reading, refusing anything that is not a regular file without blocking:
 * stat, then open with O_NONBLOCK (a FIFO swapped in meanwhile cannot block the open), fstat,
 * then O_NONBLOCK is cleared. A FIFO, directory, device or socket is NVLM_ERR_IO with
 * "PATH is a FIFO, not a regular file" (a directory, a character device, ...); a missing file is
 * NVLM_ERR_NOT_FOUND. On success *fd (O_CLOEXEC) belongs to the caller and *sb describes it.
 * Every file the library reads is opened through here. Errors go to `err_handle`. */
nvlm_status nv_open_regular(void *err_handle, const char *path, int *fd, struct stat *sb);
/* Reads exactly n bytes at offset off (pread, EINTR retried); false on error or end of file. */
bool nv_read_fd(int fd, void *buf, size_t n, uint64_t off);

/* Read a whole file into memory allocated from ctx (a NUL byte is appended, not counted).
 * max_size bounds the file; bigger files return NVLM_ERR_LIMIT. The file is opened with
 * nv_open_regular (anything but a regular file is NVLM_ERR_IO). Errors go to `err_handle`. */
nvlm_status nv_read_file(nvlm_context *ctx, void *err_handle, const char *path, size_t max_size,
                         char **data, size_t *size);

/* Monotonic clock in milliseconds. */
double nv_time_ms(void);

/* Forward a non-OK status to the caller. */
#define NVLM_TRY(expr)                     \
    do {                                   \
        nvlm_status nv_try_st_ = (expr);   \
        if (nv_try_st_ != NVLM_OK) {       \
            return nv_try_st_;             \
        }                                  \
    } while (0)

#define NV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NV_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif /* NVLM_INTERNAL_H */
