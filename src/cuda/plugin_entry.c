/*
 * plugin_entry.c - the CUDA plugin's side of plugin/cuda_plugin.h: its one exported entry
 * point, the table it returns, and the plugin's copies of the core services its .cu files call
 * (nv_error, nv_log, nv_malloc, ...), which forward to the services the core lends at entry.
 * Compiled into libnvlm-cuda.so only; everything here but the entry is hidden.
 */
#include "plugin/cuda_plugin.h"
#include "cuda/cuda_api.h"
#include "tp/comm.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The services of the core that opened the plugin. Every core that can open this file is the
 * same build (the entry refuses another version or layout), so the first one serves all: its
 * functions work on any handle of that build. Written once under the lock, then read only. */
static const nv_cuda_host *g_host;
static pthread_mutex_t g_host_lock = PTHREAD_MUTEX_INITIALIZER;

static const nv_cuda_host *host(void)
{
    return __atomic_load_n(&g_host, __ATOMIC_ACQUIRE);
}

nvlm_status nv_error(void *handle, nvlm_status st, const char *fmt, ...)
{
    if (handle == NULL) {
        return st;
    }
    char buf[NV_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return host()->error(handle, st, buf);
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
    host()->log(ctx, level, buf);
}

void *nv_malloc(nvlm_context *ctx, size_t size)
{
    return host()->malloc(ctx, size);
}

void *nv_calloc(nvlm_context *ctx, size_t n, size_t size)
{
    size_t total;
    if (!nv_mul_size(n, size, &total)) {
        return NULL;
    }
    void *p = host()->malloc(ctx, total);
    if (p != NULL) {
        memset(p, 0, total);
    }
    return p;
}

void *nv_alloc_array(nvlm_context *ctx, size_t n, size_t size)
{
    size_t total;
    return nv_mul_size(n, size, &total) ? host()->malloc(ctx, total) : NULL;
}

void *nv_realloc(nvlm_context *ctx, void *ptr, size_t size)
{
    return host()->realloc(ctx, ptr, size);
}

void nv_free(nvlm_context *ctx, void *ptr)
{
    host()->free(ctx, ptr);
}

static nvlm_status cuda_timed(nv_exec *ex, nv_cuda_timed_fn fn, void *arg, double *ms)
{
    return nv_cuda_time(ex, fn, arg, ms);
}

static const nv_cuda_plugin g_plugin = {
    .abi = NV_CUDA_PLUGIN_ABI,
    .size = sizeof(nv_cuda_plugin),
    .version = NVLM_VERSION_STRING,
    .probe_reason = nv_cuda_probe_reason,
    .backend_create = nv_backend_cuda_create,
    .exec_stream = nv_cuda_exec_stream,
    .backend_device = nv_cuda_backend_device,
    .tp_comm_nccl_create = nv_tp_comm_nccl_create,
    .mem_info = nv_cuda_mem_info,
    .weight_slab = nv_cuda_weight_slab,
    .upload_end = nv_cuda_upload_end,
    .random_weight = nv_cuda_random_weight,
    .random_f32 = nv_cuda_random_f32,
    .read_probe = nv_cuda_read_probe,
    .gemm_probe = nv_cuda_gemm_probe,
    .device_info = nv_cuda_device_info,
    .time = cuda_timed,
};

__attribute__((visibility("default"))) const nv_cuda_plugin *
nvlm_cuda_plugin_entry(const nv_cuda_host *host, char *why, size_t why_len)
{
    char tmp[256];
    if (why == NULL || why_len == 0) {
        why = tmp;
        why_len = sizeof tmp;
    }
    if (host == NULL || host->abi != NV_CUDA_PLUGIN_ABI || host->size < sizeof *host ||
        host->version == NULL || strcmp(host->version, NVLM_VERSION_STRING) != 0 ||
        host->layout != NV_CUDA_PLUGIN_LAYOUT) {
        snprintf(why, why_len,
                 "%s %s (ABI %u) does not match this libnvlm%s%s: install the plugin built with "
                 "it", NV_CUDA_PLUGIN_SONAME, NVLM_VERSION_STRING, (unsigned)NV_CUDA_PLUGIN_ABI,
                 host != NULL && host->version != NULL ? " " : "",
                 host != NULL && host->version != NULL ? host->version : "");
        return NULL;
    }
    pthread_mutex_lock(&g_host_lock);
    if (g_host == NULL) {
        __atomic_store_n(&g_host, host, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_host_lock);
    return &g_plugin;
}
