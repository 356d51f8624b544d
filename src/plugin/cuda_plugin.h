/*
 * cuda_plugin.h - the contract between the core library and the CUDA plugin,
 * libnvlm-cuda.so.0. The plugin holds every CUDA object (kernels, cuBLASLt, NCCL glue) and
 * links the CUDA libraries; the core links none of them and opens the plugin with dlopen when
 * a context asks for the CUDA backend (or `auto` finds a CUDA driver with a device).
 *
 * Exactly one symbol crosses: the plugin exports NV_CUDA_PLUGIN_ENTRY, which takes the core's
 * services (nv_cuda_host: error text, logging, allocation) and returns the plugin's table
 * (nv_cuda_plugin). Nothing else is resolved by name in either direction, so the plugin works
 * the same under libnvlm.so and libnvlm.a. Both sides are built from one source tree: the
 * table carries the ABI number and the library version, and the core refuses a plugin of
 * another version (the tables share internal structs such as nv_backend_ops).
 */
#ifndef NVLM_PLUGIN_CUDA_PLUGIN_H
#define NVLM_PLUGIN_CUDA_PLUGIN_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct tp_comm;

/* Bumped whenever nv_cuda_host, nv_cuda_plugin or a struct they reach changes layout. */
#define NV_CUDA_PLUGIN_ABI 1u
/* The sizes of the internal structs the two sides share: a plugin built from another tree
 * (same version number, different layout) is refused instead of misreading them. */
#define NV_CUDA_PLUGIN_LAYOUT                                                                 \
    ((uint64_t)sizeof(nv_backend_ops) | (uint64_t)sizeof(nv_backend) << 16 |                  \
     (uint64_t)sizeof(nv_exec) << 28 | (uint64_t)sizeof(nv_bweight) << 40 |                   \
     (uint64_t)sizeof(nv_tensor) << 52)
/* The plugin's one exported symbol: const nv_cuda_plugin *ENTRY(const nv_cuda_host *host,
 * char *why, size_t why_len); NULL (with a reason in why) when it cannot serve this core. */
#define NV_CUDA_PLUGIN_ENTRY "nvlm_cuda_plugin_entry"
#define NV_CUDA_PLUGIN_SONAME "libnvlm-cuda.so.0"

/* What the core lends the plugin. The plugin's nv_error, nv_log, nv_malloc, ... forward here,
 * so its code reports errors on the same handles as the core's. */
typedef struct nv_cuda_host {
    uint32_t abi;                 /* NV_CUDA_PLUGIN_ABI */
    uint32_t size;                /* sizeof(nv_cuda_host) */
    const char *version;          /* the core's NVLM_VERSION_STRING */
    uint64_t layout;              /* NV_CUDA_PLUGIN_LAYOUT as the core was compiled */
    nvlm_status (*error)(void *handle, nvlm_status st, const char *msg);
    void (*log)(nvlm_context *ctx, nvlm_log_level level, const char *msg);
    void *(*malloc)(nvlm_context *ctx, size_t size);
    void *(*realloc)(nvlm_context *ctx, void *ptr, size_t size);
    void (*free)(nvlm_context *ctx, void *ptr);
} nv_cuda_host;

typedef nvlm_status (*nv_cuda_timed_fn)(nv_exec *ex, void *arg);

/* What the plugin serves. Functions named as in cuda/cuda_api.h do what that header says. */
typedef struct nv_cuda_plugin {
    uint32_t abi;                 /* NV_CUDA_PLUGIN_ABI */
    uint32_t size;                /* sizeof(nv_cuda_plugin) */
    const char *version;          /* NVLM_VERSION_STRING the plugin was built with */

    bool (*probe_reason)(int device, char *buf, size_t n);
    nvlm_status (*backend_create)(nvlm_context *ctx, int device, nv_backend **out);
    void *(*exec_stream)(nv_exec *ex);
    int (*backend_device)(const nv_backend *be);
    nvlm_status (*tp_comm_nccl_create)(nvlm_context *ctx, int size, const int *devices,
                                       void *const *streams, void *err_handle,
                                       struct tp_comm **out);
    /* Free and total bytes of `device` (cudaMemGetInfo); errors go to err_handle. */
    nvlm_status (*mem_info)(int device, size_t *free_bytes, size_t *total_bytes,
                            void *err_handle);
    nvlm_status (*weight_slab)(nv_backend *be, size_t bytes, void *err_handle);
    void (*upload_end)(nv_backend *be);

    /* benchmark and test helpers (bench_kernels.cu) */
    nvlm_status (*random_weight)(nv_exec *ex, int ndim, const int64_t *shape, uint64_t seed,
                                 float amp, nv_bweight *out);
    nvlm_status (*random_f32)(nv_exec *ex, float *dst, size_t n, uint64_t seed, float amp);
    nvlm_status (*read_probe)(nv_exec *ex, size_t bytes, int reps, double *ms);
    nvlm_status (*gemm_probe)(nv_exec *ex, int M, int N, int K, int reps, double *ms);
    nvlm_status (*device_info)(nv_exec *ex, char *name, size_t name_len, size_t *mem_bytes,
                               int *sm_count);
    nvlm_status (*time)(nv_exec *ex, nv_cuda_timed_fn fn, void *arg, double *ms);
} nv_cuda_plugin;

typedef const nv_cuda_plugin *(*nv_cuda_plugin_entry_fn)(const nv_cuda_host *host, char *why,
                                                         size_t why_len);

/* ---- the core's side (plugin/cuda_loader.c) ---- */

/* Opens the plugin: NV_CUDA_PLUGIN_SONAME beside the object that holds the core (the directory
 * of libnvlm.so, or of the executable that linked libnvlm.a), else through the dynamic
 * loader's search path. On failure: NULL and the reason in why ("libnvlm-cuda.so.0 not found
 * beside /usr/lib/libnvlm.so.0 or in the library path", the loader's message for a plugin that
 * cannot load, a version mismatch). The library stays loaded for the life of the process. */
const nv_cuda_plugin *nv_cuda_plugin_open(char *why, size_t why_len);

/* Whether a CUDA driver with at least one device is present, asked of libcuda.so.1 directly
 * (cuInit + cuDeviceGetCount) so that the `auto` backend on a machine without one never loads
 * the plugin and the CUDA runtime. */
bool nv_cuda_driver_has_device(char *why, size_t why_len);

/* Whether `device` is usable: the plugin opens and probes it (nv_cuda_probe). */
bool nv_cuda_available(int device);

/* Free and total bytes of a CUDA device, through the plugin of a context created for CUDA
 * (NVLM_ERR_NO_DEVICE for any other context). */
nvlm_status nv_cuda_device_memory(nvlm_context *ctx, int device, size_t *free_bytes,
                                  size_t *total_bytes, void *err_handle);

#ifdef __cplusplus
}
#endif

#endif /* NVLM_PLUGIN_CUDA_PLUGIN_H */
