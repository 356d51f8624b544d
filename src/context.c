/*
 * context.c - the root handle: allocator hooks, log callback, thread count, backend choice;
 * plus the pieces every module shares (status names, per-handle error text, file reading).
 */
#include "internal.h"
#include "plugin/cuda_plugin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *nvlm_version(void)
{
    return NVLM_VERSION_STRING;
}

uint32_t nvlm_version_number(void)
{
    return NVLM_VERSION_NUMBER;
}

const char *nvlm_status_str(nvlm_status status)
{
    switch (status) {
    case NVLM_OK: return "ok";
    case NVLM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case NVLM_ERR_OUT_OF_MEMORY: return "out of memory";
    case NVLM_ERR_IO: return "i/o error";
    case NVLM_ERR_FORMAT: return "malformed input";
    case NVLM_ERR_UNSUPPORTED: return "unsupported";
    case NVLM_ERR_LIMIT: return "limit exceeded";
    case NVLM_ERR_SHAPE: return "tensor shape mismatch";
    case NVLM_ERR_NOT_FOUND: return "not found";
    case NVLM_ERR_CANCELLED: return "cancelled";
    case NVLM_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case NVLM_ERR_CONTEXT_FULL: return "context full";
    case NVLM_ERR_BACKEND: return "backend error";
    case NVLM_ERR_NO_DEVICE: return "no device";
    case NVLM_ERR_INTERNAL: return "internal error";
    case NVLM_ERR_BUSY: return "session busy";
    }
    return "unknown status";
}

/* ---- handles and error text ------------------------------------------------------------- */

void nv_handle_init(nv_handle *h, uint32_t magic, nvlm_context *ctx)
{
    h->magic = magic;
    h->ctx = ctx;
    h->err[0] = '\0';
}

static bool is_handle(const nv_handle *h)
{
    switch (h->magic) {
    case NV_MAGIC_CONTEXT:
    case NV_MAGIC_MODEL:
    case NV_MAGIC_TOKENIZER:
    case NV_MAGIC_SESSION:
    case NV_MAGIC_IMAGE:
    case NV_MAGIC_STREAM:
        return true;
    default:
        return false;
    }
}

const char *nvlm_last_error(const void *handle)
{
    if (handle == NULL) {
        return "";
    }
    const nv_handle *h = handle;
    if (!is_handle(h)) {
        return "invalid handle";
    }
    return h->err;
}

/* Handles that threads share (the context, models, tokenizers) may take error text from several
 * threads at once, so every write goes under the owning context's lock. */
static void set_text(nv_handle *h, const char *text)
{
    nvlm_context *ctx = h->ctx;
    if (ctx != NULL) {
        pthread_mutex_lock(&ctx->err_lock);
    }
    snprintf(h->err, sizeof h->err, "%s", text);
    if (ctx != NULL) {
        pthread_mutex_unlock(&ctx->err_lock);
    }
}

nvlm_status nv_error(void *handle, nvlm_status st, const char *fmt, ...)
{
    if (handle == NULL) {
        return st;
    }
    nv_handle *h = handle;
    char buf[NV_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    set_text(h, buf);
    nv_log(h->ctx, NVLM_LOG_DEBUG, "%s: %s", nvlm_status_str(st), buf);
    return st;
}

nvlm_status nv_error_copy(void *dst, const void *src, nvlm_status st)
{
    if (dst != NULL && src != NULL && dst != src) {
        set_text(dst, ((const nv_handle *)src)->err);
    }
    return st;
}

void nv_clear(void *handle)
{
    nv_handle *h = handle;
    if (h == NULL) {
        return;
    }
    nvlm_context *ctx = h->ctx;
    if (ctx != NULL) {
        pthread_mutex_lock(&ctx->err_lock);
    }
    h->err[0] = '\0';
    if (ctx != NULL) {
        pthread_mutex_unlock(&ctx->err_lock);
    }
}

void nv_log(nvlm_context *ctx, nvlm_log_level level, const char *fmt, ...)
{
    if (ctx == NULL || ctx->log_fn == NULL || level > ctx->log_level) {
        return;
    }
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ctx->log_fn(ctx->log_user, level, buf);
}

/* ---- allocation ---------------------------------------------------------------------------- */

void *nv_malloc(nvlm_context *ctx, size_t size)
{
    if (size == 0) {
        size = 1;
    }
    if (ctx != NULL && ctx->alloc_fn != NULL) {
        return ctx->alloc_fn(ctx->alloc_user, size);
    }
    return malloc(size);
}

void *nv_calloc(nvlm_context *ctx, size_t n, size_t size)
{
    size_t total;
    if (!nv_mul_size(n, size, &total)) {
        return NULL;
    }
    void *p = nv_malloc(ctx, total);
    if (p != NULL) {
        memset(p, 0, total);
    }
    return p;
}

void *nv_alloc_array(nvlm_context *ctx, size_t n, size_t size)
{
    size_t total;
    if (!nv_mul_size(n, size, &total)) {
        return NULL;
    }
    return nv_malloc(ctx, total);
}

void *nv_realloc(nvlm_context *ctx, void *ptr, size_t size)
{
    if (size == 0) {
        size = 1;
    }
    if (ctx != NULL && ctx->realloc_fn != NULL) {
        return ctx->realloc_fn(ctx->alloc_user, ptr, size);
    }
    return realloc(ptr, size);
}

void nv_free(nvlm_context *ctx, void *ptr)
{
    if (ptr == NULL) {
        return;
    }
    if (ctx != NULL && ctx->free_fn != NULL) {
        ctx->free_fn(ctx->alloc_user, ptr);
        return;
    }
    free(ptr);
}

char *nv_strndup(nvlm_context *ctx, const char *s, size_t n)
{
    size_t total;
    if (!nv_add_size(n, 1, &total)) {
        return NULL;
    }
    char *p = nv_malloc(ctx, total);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

char *nv_strdup(nvlm_context *ctx, const char *s)
{
    return nv_strndup(ctx, s, strlen(s));
}

bool nv_params_copy(void *dst, size_t dst_size, const void *src, size_t min_size)
{
    if (src == NULL) {
        return true;
    }
    uint32_t size;
    memcpy(&size, src, sizeof size);
    if (size < sizeof(uint32_t) || size < min_size) {
        return false;
    }
    size_t n = NV_MIN((size_t)size, dst_size);
    memcpy(dst, src, n);
    memcpy(dst, &(uint32_t){(uint32_t)dst_size}, sizeof(uint32_t));
    return true;
}

/* What a non-regular file is, for the refusal message. */
static const char *kind_name(mode_t mode)
{
    if (S_ISFIFO(mode)) {
        return "a FIFO";
    }
    if (S_ISDIR(mode)) {
        return "a directory";
    }
    if (S_ISCHR(mode)) {
        return "a character device";
    }
    if (S_ISBLK(mode)) {
        return "a block device";
    }
    if (S_ISSOCK(mode)) {
        return "a socket";
    }
    return "a special file";
}

nvlm_status nv_open_regular(void *err_handle, const char *path, int *fd, struct stat *sb)
{
    *fd = -1;
    /* stat first: a device is refused without being opened (opening one can have effects) */
    if (stat(path, sb) != 0) {
        return nv_error(err_handle, errno == ENOENT ? NVLM_ERR_NOT_FOUND : NVLM_ERR_IO,
                        "cannot open %s: %s", path, strerror(errno));
    }
    if (!S_ISREG(sb->st_mode)) {
        return nv_error(err_handle, NVLM_ERR_IO, "%s is %s, not a regular file", path,
                        kind_name(sb->st_mode));
    }
    /* O_NONBLOCK: if the path was swapped for a FIFO since the stat, the open still returns */
    int f = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (f < 0) {
        return nv_error(err_handle, errno == ENOENT ? NVLM_ERR_NOT_FOUND : NVLM_ERR_IO,
                        "cannot open %s: %s", path, strerror(errno));
    }
    if (fstat(f, sb) != 0) {
        int e = errno;
        close(f);
        return nv_error(err_handle, NVLM_ERR_IO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb->st_mode)) {
        close(f);
        return nv_error(err_handle, NVLM_ERR_IO, "%s is %s, not a regular file", path,
                        kind_name(sb->st_mode));
    }
    int flags = fcntl(f, F_GETFL);
    if (flags < 0 || fcntl(f, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(f);
        return nv_error(err_handle, NVLM_ERR_IO, "cannot set up %s: %s", path, strerror(e));
    }
    *fd = f;
    return NVLM_OK;
}

bool nv_read_fd(int fd, void *buf, size_t n, uint64_t off)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, NV_MIN(n, (size_t)1 << 30), (off_t)off);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            return false;
        }
        p += got;
        n -= (size_t)got;
        off += (uint64_t)got;
    }
    return true;
}

nvlm_status nv_read_file(nvlm_context *ctx, void *err_handle, const char *path, size_t max_size,
                         char **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    int fd;
    struct stat sb;
    NVLM_TRY(nv_open_regular(err_handle, path, &fd, &sb));
    if (sb.st_size < 0 || (uint64_t)sb.st_size > max_size || (uint64_t)sb.st_size >= SIZE_MAX) {
        close(fd);
        return nv_error(err_handle, NVLM_ERR_LIMIT, "%s is %lld bytes, more than the %zu allowed",
                        path, (long long)sb.st_size, max_size);
    }
    size_t len = (size_t)sb.st_size;
    char *buf = nv_malloc(ctx, len + 1);
    if (buf == NULL) {
        close(fd);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory reading %s", path);
    }
    bool ok = nv_read_fd(fd, buf, len, 0);
    close(fd);
    if (!ok) {
        nv_free(ctx, buf);
        return nv_error(err_handle, NVLM_ERR_IO, "short read on %s", path);
    }
    buf[len] = '\0';
    *data = buf;
    *size = len;
    return NVLM_OK;
}

double nv_time_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ---- context ---------------------------------------------------------------------------------- */

void nvlm_context_params_init(nvlm_context_params *p, size_t size)
{
    if (p == NULL || size < sizeof(uint32_t)) {
        return;
    }
    nvlm_context_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)NV_MIN(size, sizeof d);
    d.n_threads = 0;
    d.backend = NVLM_BACKEND_AUTO;
    d.device = 0;
    d.log_level = NVLM_LOG_WARN;
    d.tp_size = 1;
    memcpy(p, &d, NV_MIN(size, sizeof d));
    p->struct_size = (uint32_t)size;
}

/* Whether CUDA can serve every one of the devices: the plugin opens and each device probes
 * usable. NULL with the reason in why otherwise. `auto` first asks the driver whether any
 * device exists, so that a machine without one never loads the plugin and the CUDA runtime. */
static const nv_cuda_plugin *cuda_for(nvlm_backend backend, const int32_t *devs, int32_t n,
                                      char *why, size_t why_len)
{
    if (backend == NVLM_BACKEND_CPU) {
        snprintf(why, why_len, "the CPU backend was asked for");
        return NULL;
    }
    if (backend == NVLM_BACKEND_AUTO && !nv_cuda_driver_has_device(why, why_len)) {
        return NULL;
    }
    const nv_cuda_plugin *cuda = nv_cuda_plugin_open(why, why_len);
    for (int32_t r = 0; r < n && cuda != NULL; r++) {
        if (!cuda->probe_reason(devs[r], why, why_len)) {
            cuda = NULL;
        }
    }
    return cuda;
}

nvlm_status nvlm_backend_probe(nvlm_backend backend, int32_t device, char *reason,
                               size_t reason_len)
{
    char tmp[512];
    if (reason == NULL || reason_len == 0) {
        reason = tmp;
        reason_len = sizeof tmp;
    }
    reason[0] = '\0';
    if (backend < NVLM_BACKEND_AUTO || backend > NVLM_BACKEND_CUDA || device < 0) {
        snprintf(reason, reason_len, "invalid backend or device");
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (backend == NVLM_BACKEND_CPU) {
        snprintf(reason, reason_len, "CPU");
        return NVLM_OK;
    }
    const nv_cuda_plugin *cuda = cuda_for(backend, &device, 1, reason, reason_len);
    if (cuda != NULL) {
        return NVLM_OK;
    }
    if (backend == NVLM_BACKEND_AUTO) {
        char why[512];
        snprintf(why, sizeof why, "%s", reason);
        snprintf(reason, reason_len, "CPU (CUDA: %s)", why);
        return NVLM_OK;
    }
    return NVLM_ERR_NO_DEVICE;
}

nvlm_status nvlm_context_create(const nvlm_context_params *params, nvlm_context **out)
{
    if (out == NULL) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
    nvlm_context_params p;
    nvlm_context_default_params(&p);
    if (!nv_params_copy(&p, sizeof p, params, offsetof(nvlm_context_params, backend))) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    bool hooks = p.alloc_fn != NULL;
    if ((p.realloc_fn != NULL) != hooks || (p.free_fn != NULL) != hooks) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    if (p.n_threads < 0 || p.n_threads > 4096 || p.log_level < NVLM_LOG_ERROR ||
        p.log_level > NVLM_LOG_DEBUG || p.backend < NVLM_BACKEND_AUTO ||
        p.backend > NVLM_BACKEND_CUDA || p.device < 0 || p.tp_size < 0 ||
        p.tp_size > NV_TP_MAX_RANKS || p.n_devices < 0 || p.n_devices > NV_TP_MAX_RANKS ||
        (p.n_devices > 0 && p.devices == NULL)) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    /* the device of each rank: the list given, or devices 0 .. tp_size - 1 (`device` alone) */
    int32_t tp = p.tp_size > 1 ? p.tp_size : 1;
    if (p.n_devices > 0) {
        if (p.tp_size > 1 && p.tp_size != p.n_devices) {
            return NVLM_ERR_INVALID_ARGUMENT;
        }
        tp = p.n_devices;
    }
    int32_t devs[NV_TP_MAX_RANKS];
    for (int32_t r = 0; r < tp; r++) {
        devs[r] = p.n_devices > 0 ? p.devices[r] : tp == 1 ? p.device : r;
        if (devs[r] < 0) {
            return NVLM_ERR_INVALID_ARGUMENT;
        }
    }
    char why[512];
    const nv_cuda_plugin *cuda = cuda_for(p.backend, devs, tp, why, sizeof why);
    nvlm_backend backend = p.backend;
    if (backend == NVLM_BACKEND_CUDA && cuda == NULL) {
        /* no handle to carry the text: the log gets it, and nvlm_backend_probe tells it too */
        if (p.log_fn != NULL && p.log_level >= NVLM_LOG_ERROR) {
            char msg[600];
            snprintf(msg, sizeof msg, "CUDA backend unavailable: %s", why);
            p.log_fn(p.log_user, NVLM_LOG_ERROR, msg);
        }
        return NVLM_ERR_NO_DEVICE;
    }
    if (backend == NVLM_BACKEND_AUTO) {
        backend = cuda != NULL ? NVLM_BACKEND_CUDA : NVLM_BACKEND_CPU;
        if (cuda == NULL && p.log_fn != NULL && p.log_level >= NVLM_LOG_INFO) {
            char msg[600];
            snprintf(msg, sizeof msg, "backend auto: CPU (CUDA: %s)", why);
            p.log_fn(p.log_user, NVLM_LOG_INFO, msg);
        }
    }
    nvlm_context *ctx;
    if (hooks) {
        ctx = p.alloc_fn(p.alloc_user, sizeof *ctx);
    } else {
        ctx = malloc(sizeof *ctx);
    }
    if (ctx == NULL) {
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    memset(ctx, 0, sizeof *ctx);
    ctx->alloc_fn = p.alloc_fn;
    ctx->realloc_fn = p.realloc_fn;
    ctx->free_fn = p.free_fn;
    ctx->alloc_user = p.alloc_user;
    memcpy(ctx->devices, devs, (size_t)tp * sizeof *devs);
    nv_handle_init(&ctx->h, NV_MAGIC_CONTEXT, ctx);
    pthread_mutex_init(&ctx->err_lock, NULL);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    ctx->n_threads = p.n_threads > 0 ? p.n_threads : (int32_t)(cores > 0 ? cores : 1);
    ctx->backend = backend;
    ctx->cuda = cuda;
    ctx->backend_auto = p.backend == NVLM_BACKEND_AUTO;
    ctx->device = devs[0];
    ctx->tp_size = tp;
    ctx->log_fn = p.log_fn;
    ctx->log_user = p.log_user;
    ctx->log_level = p.log_level;
    *out = ctx;
    return NVLM_OK;
}

void nvlm_context_free(nvlm_context *ctx)
{
    if (ctx == NULL || ctx->h.magic != NV_MAGIC_CONTEXT) {
        return;
    }
    pthread_mutex_destroy(&ctx->err_lock);
    ctx->h.magic = NV_MAGIC_DEAD;
    if (ctx->free_fn != NULL) {
        ctx->free_fn(ctx->alloc_user, ctx);
    } else {
        free(ctx);
    }
}

nvlm_backend nvlm_context_backend(const nvlm_context *ctx)
{
    return ctx != NULL ? ctx->backend : NVLM_BACKEND_CPU;
}

const char *nvlm_backend_name(nvlm_backend backend)
{
    switch (backend) {
    case NVLM_BACKEND_AUTO: return "auto";
    case NVLM_BACKEND_CPU: return "cpu";
    case NVLM_BACKEND_CUDA: return "cuda";
    }
    return "unknown";
}
