/*
 * cuda_api.h - the CUDA backend as seen from C: device probe, backend constructor and the few
 * device helpers the benchmark uses. Inside the CUDA plugin (libnvlm-cuda.so) the .cu files of
 * src/cuda/ implement them (C linkage, hidden) and plugin_entry.c puts them in the plugin's
 * table; in the core, plugin/cuda_loader.c implements the same functions by calling through
 * that table, so the engine, tests and benchmarks call them alike. Only include it when
 * NVLM_WITH_CUDA is defined; the build defines it when nvcc is present.
 */
#ifndef NVLM_CUDA_API_H
#define NVLM_CUDA_API_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether device `device` exists, has compute capability 8.0+ and can run this build's kernels.
 * Never fails loudly: false when there is no driver or no device. (device.cu) */
bool nv_cuda_probe(int device);
/* The same, writing a one-line reason (why not, or the device's name) into buf. */
bool nv_cuda_probe_reason(int device, char *buf, size_t n);

/* Creates the CUDA backend on `device`: weights go to that device as bf16 (matrices) or f32
 * (vectors). *out is owned by the caller (ops->destroy). Errors: NVLM_ERR_NO_DEVICE,
 * NVLM_ERR_BACKEND, NVLM_ERR_OUT_OF_MEMORY; the text goes on ctx. (backend_cuda.cu) */
nvlm_status nv_backend_cuda_create(nvlm_context *ctx, int device, nv_backend **out);

/* Free and total bytes of `device` (cudaMemGetInfo on it; the calling thread's current device
 * is restored). Errors: NVLM_ERR_NO_DEVICE, NVLM_ERR_BACKEND; text to err_handle. Plugin side
 * only: the core asks through nv_cuda_device_memory (plugin/cuda_plugin.h). (upload.cu) */
nvlm_status nv_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes,
                             void *err_handle);

/* The CUDA stream (a cudaStream_t) of an exec of the CUDA backend, and the device of the
 * backend: what the NCCL communicator of tensor-parallel ranks enqueues on. */
void *nv_cuda_exec_stream(nv_exec *ex);
int nv_cuda_backend_device(const nv_backend *be);

/* ---- benchmark helpers (bench_kernels.cu); all run on the exec's stream ---- */

/* A weight of `ndim` dims on the device filled with uniform(-amp, amp) values from `seed`:
 * bf16 when ndim > 1, else f32 (as weight_load would lay it out). Free with ops->weight_free. */
nvlm_status nv_cuda_random_weight(nv_exec *ex, int ndim, const int64_t *shape, uint64_t seed,
                                  float amp, nv_bweight *out);
/* Fills n device floats with uniform(-amp, amp). */
nvlm_status nv_cuda_random_f32(nv_exec *ex, float *dst, size_t n, uint64_t seed, float amp);
/* Milliseconds per pass of a read-only reduction over `bytes` device bytes (best of `reps`). */
nvlm_status nv_cuda_read_probe(nv_exec *ex, size_t bytes, int reps, double *ms);
/* Milliseconds of one bf16 x bf16 -> f32 cuBLASLt GEMM of (M, K) x (N, K)^T (best of reps),
 * the plain library call without the f32 -> bf16 activation conversion. */
nvlm_status nv_cuda_gemm_probe(nv_exec *ex, int M, int N, int K, int reps, double *ms);
/* Device name, total memory (bytes) and SM count of the exec's device. */
nvlm_status nv_cuda_device_info(nv_exec *ex, char *name, size_t name_len, size_t *mem_bytes,
                                int *sm_count);
/* Events: elapsed milliseconds of fn(arg) enqueued on the exec's stream (synchronised). */
nvlm_status nv_cuda_time(nv_exec *ex, nvlm_status (*fn)(nv_exec *ex, void *arg), void *arg,
                         double *ms);

/* Reserves the backend's weight slab: one cudaMalloc of `bytes` (the estimator's weight bytes
 * of this rank, memory_plan.h). Later weight_loads take aligned pieces of it (a weight that
 * does not fit gets its own allocation); weight_free leaves slab pieces alone and destroy
 * frees the slab. Call once, before the first weight_load. Errors: NVLM_ERR_OUT_OF_MEMORY,
 * NVLM_ERR_BACKEND; text to err_handle. (upload.cu) */
nvlm_status nv_cuda_weight_slab(nv_backend *be, size_t bytes, void *err_handle);
/* Frees the pinned staging of the weight upload once every weight is on the device (the slab
 * stays). (upload.cu) */
void nv_cuda_upload_end(nv_backend *be);

#ifdef __cplusplus
}
#endif

#endif /* NVLM_CUDA_API_H */
