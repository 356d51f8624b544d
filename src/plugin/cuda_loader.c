/*
 * cuda_loader.c - the core's side of the CUDA plugin (cuda_plugin.h): finding and opening
 * libnvlm-cuda.so.0, the services lent to it, the driver check of the `auto` backend, and the
 * C entry points of cuda/cuda_api.h, which reach the plugin through its table. The core links
 * no CUDA library; what a process loads for CUDA it loads here, on demand.
 */
#include "plugin/cuda_plugin.h"
#include "cuda/cuda_api.h"
#include "tp/comm.h"

#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifdef NVLM_WITH_CUDA
/* ---- services lent to the plugin ---- */

static nvlm_status host_error(void *handle, nvlm_status st, const char *msg)
{
    return nv_error(handle, st, "%s", msg);
}

static void host_log(nvlm_context *ctx, nvlm_log_level level, const char *msg)
{
    nv_log(ctx, level, "%s", msg);
}

static const nv_cuda_host g_host = {
    NV_CUDA_PLUGIN_ABI, sizeof(nv_cuda_host), NVLM_VERSION_STRING, NV_CUDA_PLUGIN_LAYOUT,
    host_error, host_log, nv_malloc, nv_realloc, nv_free,
};

/* ---- finding the plugin ---- */

/* The directory of the object this function is linked into (libnvlm.so, or the executable
 * that linked libnvlm.a), with a trailing '/'; "" when unknown. For the executable the loader
 * only knows argv[0] (a bare name when it was found through PATH, relative to a working
 * directory that may have changed since): its path comes from /proc/self/exe instead. */
static void core_dir(char *buf, size_t n)
{
    Dl_info info;
    struct link_map *map = NULL;
    buf[0] = '\0';
    if (dladdr1((void *)core_dir, &info, (void **)&map, RTLD_DL_LINKMAP) == 0 ||
        info.dli_fname == NULL) {
        return;
    }
    const char *file = info.dli_fname;
    char exe[4096];
    if (map == NULL || map->l_name == NULL || map->l_name[0] == '\0') {
        ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (len > 0) {
            exe[len] = '\0';
            file = exe;
        }
    }
    const char *slash = strrchr(file, '/');
    if (slash == NULL) {
        return;
    }
    size_t len = (size_t)(slash - file) + 1;
    if (len < n) {
        memcpy(buf, file, len);
        buf[len] = '\0';
    }
}

/* dlopen of `path`; on failure the loader's message goes to why (when it says more than "not
 * found", it is the reason the caller reports). */
static void *open_one(const char *path, char *why, size_t why_len, bool *exists)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (h == NULL) {
        const char *e = dlerror();
        /* "cannot open shared object file: No such file or directory" is about the plugin
         * itself only when it names the plugin's own path */
        bool missing = e == NULL || (strstr(e, "No such file") != NULL &&
                                     strstr(e, NV_CUDA_PLUGIN_SONAME ":") != NULL);
        if (!missing) {
            *exists = true;
            snprintf(why, why_len, "%s", e);
        }
    }
    return h;
}

#endif /* NVLM_WITH_CUDA */

/* The plugin once opened: the same table for every context of the process. */
static const nv_cuda_plugin *g_opened;

const nv_cuda_plugin *nv_cuda_plugin_open(char *why, size_t why_len)
{
    char tmp[512];
    if (why == NULL || why_len == 0) {
        why = tmp;
        why_len = sizeof tmp;
    }
    why[0] = '\0';
#ifndef NVLM_WITH_CUDA
    snprintf(why, why_len, "this build of libnvlm has no CUDA backend (built without nvcc)");
    return NULL;
#else
    char dir[4096];
    char path[4096 + 64];
    core_dir(dir, sizeof dir);
    bool exists = false;
    void *h = NULL;
    /* beside the core, then in ../lib of it (an executable in PREFIX/bin that linked
     * libnvlm.a, the plugin in PREFIX/lib) */
    static const char *const rel[] = {"", "../lib/"};
    for (size_t i = 0; i < 2 && h == NULL && !exists && dir[0] != '\0'; i++) {
        snprintf(path, sizeof path, "%s%s%s", dir, rel[i], NV_CUDA_PLUGIN_SONAME);
        h = open_one(path, why, why_len, &exists);
    }
    if (h == NULL && !exists) {
        h = open_one(NV_CUDA_PLUGIN_SONAME, why, why_len, &exists);
    }
    if (h == NULL) {
        if (!exists) {
            snprintf(why, why_len,
                     "%s not found (looked in %s, %s../lib/ and the library search path)",
                     NV_CUDA_PLUGIN_SONAME, dir[0] != '\0' ? dir : "libnvlm's directory", dir);
        }
        return NULL;
    }
    nv_cuda_plugin_entry_fn entry;
    void *sym = dlsym(h, NV_CUDA_PLUGIN_ENTRY);
    if (sym == NULL) {
        snprintf(why, why_len, "%s has no entry point %s", NV_CUDA_PLUGIN_SONAME,
                 NV_CUDA_PLUGIN_ENTRY);
        return NULL;
    }
    memcpy(&entry, &sym, sizeof entry);
    const nv_cuda_plugin *p = entry(&g_host, why, why_len);
    if (p == NULL) {
        if (why[0] == '\0') {
            snprintf(why, why_len, "%s refused to start", NV_CUDA_PLUGIN_SONAME);
        }
        return NULL;
    }
    if (p->abi != NV_CUDA_PLUGIN_ABI || p->size < sizeof *p || p->version == NULL ||
        strcmp(p->version, NVLM_VERSION_STRING) != 0) {
        snprintf(why, why_len, "%s is version %s (ABI %u), libnvlm is %s (ABI %u)",
                 NV_CUDA_PLUGIN_SONAME, p->version != NULL ? p->version : "?", (unsigned)p->abi,
                 NVLM_VERSION_STRING, (unsigned)NV_CUDA_PLUGIN_ABI);
        return NULL;
    }
    __atomic_store_n(&g_opened, p, __ATOMIC_RELEASE);
    return p;
#endif
}

/* ---- the driver check of `auto` ---- */

bool nv_cuda_driver_has_device(char *why, size_t why_len)
{
    char tmp[256];
    if (why == NULL || why_len == 0) {
        why = tmp;
        why_len = sizeof tmp;
    }
#ifndef NVLM_WITH_CUDA
    snprintf(why, why_len, "this build of libnvlm has no CUDA backend (built without nvcc)");
    return false;
#else
    /* the driver stays loaded: the plugin needs it next, and unloading a GPU driver's user
     * library is not something its vendor supports */
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (h == NULL) {
        snprintf(why, why_len, "no CUDA driver (libcuda.so.1 not found)");
        return false;
    }
    typedef int (*init_fn)(unsigned);
    typedef int (*count_fn)(int *);
    void *si = dlsym(h, "cuInit");
    void *sc = dlsym(h, "cuDeviceGetCount");
    if (si == NULL || sc == NULL) {
        snprintf(why, why_len, "libcuda.so.1 lacks cuInit/cuDeviceGetCount");
        return false;
    }
    init_fn cu_init;
    count_fn cu_count;
    memcpy(&cu_init, &si, sizeof si);
    memcpy(&cu_count, &sc, sizeof sc);
    int rc = cu_init(0);
    if (rc != 0) {
        snprintf(why, why_len, "the CUDA driver failed to initialise (CUresult %d)", rc);
        return false;
    }
    int n = 0;
    rc = cu_count(&n);
    if (rc != 0 || n <= 0) {
        snprintf(why, why_len, "the CUDA driver reports no device");
        return false;
    }
    snprintf(why, why_len, "%d CUDA device%s", n, n == 1 ? "" : "s");
    return true;
#endif
}

/* ---- cuda_api.h through the table ---- */

/* The plugin that made `be`, NULL unless it is a CUDA backend. A CUDA backend may live in a
 * context of another kind (nv_backend_cuda_create opens the plugin itself): the table is then
 * the process's opened one. */
static const nv_cuda_plugin *plugin_of(const nv_backend *be)
{
    if (be == NULL || be->ops == NULL || be->ops->name == NULL ||
        strcmp(be->ops->name, "cuda") != 0) {
        return NULL;
    }
    if (be->ctx != NULL && be->ctx->cuda != NULL) {
        return be->ctx->cuda;
    }
    return __atomic_load_n(&g_opened, __ATOMIC_ACQUIRE);
}

bool nv_cuda_probe_reason(int device, char *buf, size_t n)
{
    char tmp[512];
    if (buf == NULL || n == 0) {
        buf = tmp;
        n = sizeof tmp;
    }
    const nv_cuda_plugin *p = nv_cuda_plugin_open(buf, n);
    return p != NULL && p->probe_reason(device, buf, n);
}

bool nv_cuda_probe(int device)
{
    return nv_cuda_probe_reason(device, NULL, 0);
}

bool nv_cuda_available(int device)
{
    return nv_cuda_probe(device);
}

nvlm_status nv_backend_cuda_create(nvlm_context *ctx, int device, nv_backend **out)
{
    if (ctx == NULL || out == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "cuda backend: NULL argument");
    }
    *out = NULL;
    const nv_cuda_plugin *p = ctx->cuda;
    char why[512];
    if (p == NULL) {
        p = nv_cuda_plugin_open(why, sizeof why);
    }
    if (p == NULL) {
        return nv_error(ctx, NVLM_ERR_NO_DEVICE, "CUDA backend unavailable: %s", why);
    }
    return p->backend_create(ctx, device, out);
}

void *nv_cuda_exec_stream(nv_exec *ex)
{
    const nv_cuda_plugin *p = plugin_of(ex->be);
    return p != NULL ? p->exec_stream(ex) : NULL;
}

int nv_cuda_backend_device(const nv_backend *be)
{
    const nv_cuda_plugin *p = plugin_of(be);
    return p != NULL ? p->backend_device(be) : -1;
}

nvlm_status nv_cuda_device_memory(nvlm_context *ctx, int device, size_t *free_bytes,
                             size_t *total_bytes, void *err_handle)
{
    if (ctx == NULL || ctx->cuda == NULL) {
        return nv_error(err_handle, NVLM_ERR_NO_DEVICE, "the context has no CUDA backend");
    }
    return ctx->cuda->mem_info(device, free_bytes, total_bytes, err_handle);
}

nvlm_status nv_tp_comm_nccl_create(nvlm_context *ctx, int size, const int *devices,
                                   void *const *streams, void *err_handle, tp_comm **out)
{
    /* the context's plugin, or the one that made CUDA backends in a context of another kind */
    const nv_cuda_plugin *p = ctx != NULL && ctx->cuda != NULL
                                  ? ctx->cuda
                                  : __atomic_load_n(&g_opened, __ATOMIC_ACQUIRE);
    if (ctx == NULL || p == NULL) {
        return nv_error(err_handle, NVLM_ERR_UNSUPPORTED, "NCCL needs the CUDA backend");
    }
    return p->tp_comm_nccl_create(ctx, size, devices, streams, err_handle, out);
}

nvlm_status nv_cuda_weight_slab(nv_backend *be, size_t bytes, void *err_handle)
{
    const nv_cuda_plugin *p = plugin_of(be);
    if (p == NULL) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "not a CUDA backend");
    }
    return p->weight_slab(be, bytes, err_handle);
}

void nv_cuda_upload_end(nv_backend *be)
{
    const nv_cuda_plugin *p = plugin_of(be);
    if (p != NULL) {
        p->upload_end(be);
    }
}

/* The benchmark helpers: only for execs of a CUDA backend. */
#define NV_CUDA_HELPER(ex, call)                                                              \
    do {                                                                                      \
        const nv_cuda_plugin *p_ = plugin_of((ex)->be);                                       \
        if (p_ == NULL) {                                                                     \
            return nv_error((ex)->err_handle, NVLM_ERR_INVALID_ARGUMENT,                      \
                            "not an exec of the CUDA backend");                               \
        }                                                                                     \
        return p_->call;                                                                      \
    } while (0)

nvlm_status nv_cuda_random_weight(nv_exec *ex, int ndim, const int64_t *shape, uint64_t seed,
                                  float amp, nv_bweight *out)
{
    NV_CUDA_HELPER(ex, random_weight(ex, ndim, shape, seed, amp, out));
}

nvlm_status nv_cuda_random_f32(nv_exec *ex, float *dst, size_t n, uint64_t seed, float amp)
{
    NV_CUDA_HELPER(ex, random_f32(ex, dst, n, seed, amp));
}

nvlm_status nv_cuda_read_probe(nv_exec *ex, size_t bytes, int reps, double *ms)
{
    NV_CUDA_HELPER(ex, read_probe(ex, bytes, reps, ms));
}

nvlm_status nv_cuda_gemm_probe(nv_exec *ex, int M, int N, int K, int reps, double *ms)
{
    NV_CUDA_HELPER(ex, gemm_probe(ex, M, N, K, reps, ms));
}

nvlm_status nv_cuda_device_info(nv_exec *ex, char *name, size_t name_len, size_t *mem_bytes,
                                int *sm_count)
{
    NV_CUDA_HELPER(ex, device_info(ex, name, name_len, mem_bytes, sm_count));
}

nvlm_status nv_cuda_time(nv_exec *ex, nvlm_status (*fn)(nv_exec *ex, void *arg), void *arg,
                         double *ms)
{
    NV_CUDA_HELPER(ex, time(ex, fn, arg, ms));
}

void nv_cuda_step_stats_get(nv_exec *ex, nv_cuda_step_stats *out)
{
    const nv_cuda_plugin *p = plugin_of(ex->be);
    memset(out, 0, sizeof *out);
    if (p != NULL) {
        p->step_stats(ex, out);
    }
}
