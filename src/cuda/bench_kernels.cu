/*
 * bench_kernels.cu - device helpers for bench/bench_cuda.c (not used by the pipeline): random
 * weights and activations generated on the device (no host-side 1.7 GB per layer), the
 * read-only bandwidth probe and the plain cuBLASLt GEMM that the benchmark reports as its
 * in-run ceilings, and event timing of a sequence of ops on a session stream.
 */
#include "cuda/cuda_internal.h"
extern "C" {
#include "memory_plan.h"
}

#include <float.h>
#include <stdio.h>
#include <string.h>

static __device__ __forceinline__ float hash_uniform(uint64_t seed, size_t i)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

static __global__ void fill_kernel(void *dst, int bf16, size_t n, uint64_t seed, float amp)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = amp * hash_uniform(seed, i);
        if (bf16) {
            ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(v);
        } else {
            ((float *)dst)[i] = v;
        }
    }
}

/* Sums 16-byte words; the result is stored only if impossible, so the loads are not elided. */
static __global__ void read_kernel(const uint4 *p, size_t n, unsigned *sink)
{
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) {
        *sink = acc;
    }
}

static nvlm_status fill(nv_exec *ex, void *dst, int bf16, size_t n, uint64_t seed, float amp)
{
    NVLM_TRY(cuda_enter(ex));
    fill_kernel<<<cuda_blocks(n, 256), 256, 0, cuda_ex(ex)->stream>>>(dst, bf16, n, seed, amp);
    return cuda_status(ex->err_handle, cudaGetLastError(), "random fill");
}

extern "C" nvlm_status nv_cuda_random_f32(nv_exec *ex, float *dst, size_t n, uint64_t seed,
                                          float amp)
{
    return fill(ex, dst, 0, n, seed, amp);
}

extern "C" nvlm_status nv_cuda_random_weight(nv_exec *ex, int ndim, const int64_t *shape,
                                             uint64_t seed, float amp, nv_bweight *out)
{
    memset(out, 0, sizeof *out);
    if (ndim < 1 || ndim > NV_MAX_DIMS) {
        return nv_error(ex->err_handle, NVLM_ERR_INVALID_ARGUMENT, "random weight: ndim %d",
                        ndim);
    }
    out->t.ndim = ndim;
    size_t n = 1;
    int big = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || !nv_mul_size(n, (size_t)shape[d], &n)) {
            return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "random weight too large");
        }
        out->t.shape[d] = shape[d];
        big += shape[d] > 1;
    }
    int bf16 = big > 1;
    if (bf16 && shape[0] > 0) {
        /* the row padding weight_load gives convolution kernels (pad columns random too: they
         * meet zero activations) */
        size_t rows = (size_t)shape[0];
        int64_t ld = nv_mem_weight_ld(ndim, (int64_t)(n / rows));
        if (!nv_mul_size(rows, (size_t)ld, &n)) {
            return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "random weight too large");
        }
    }
    out->t.dtype = bf16 ? NV_BF16 : NV_F32;
    void *p = NULL;
    NVLM_TRY(ex->be->ops->alloc(ex, n * (bf16 ? 2 : 4), &p));
    out->t.data = p;
    out->t.device = cuda_ex(ex)->cb->device;
    out->owned = 1;
    return fill(ex, p, bf16, n, seed, amp);
}

extern "C" nvlm_status nv_cuda_time(nv_exec *ex, nvlm_status (*fn)(nv_exec *ex, void *arg),
                                    void *arg, double *ms)
{
    NVLM_TRY(cuda_enter(ex));
    cudaStream_t s = cuda_ex(ex)->stream;
    cudaEvent_t a = NULL;
    cudaEvent_t b = NULL;
    nvlm_status st = cuda_status(ex->err_handle, cudaEventCreate(&a), "event");
    if (st == NVLM_OK) {
        st = cuda_status(ex->err_handle, cudaEventCreate(&b), "event");
    }
    if (st == NVLM_OK) {
        st = cuda_status(ex->err_handle, cudaEventRecord(a, s), "event");
    }
    if (st == NVLM_OK) {
        st = fn(ex, arg);
    }
    if (st == NVLM_OK) {
        st = cuda_status(ex->err_handle, cudaEventRecord(b, s), "event");
    }
    if (st == NVLM_OK) {
        st = cuda_status(ex->err_handle, cudaEventSynchronize(b), "event");
    }
    float f = 0.0f;
    if (st == NVLM_OK) {
        st = cuda_status(ex->err_handle, cudaEventElapsedTime(&f, a, b), "event");
    }
    *ms = f;
    if (a != NULL) {
        cudaEventDestroy(a);
    }
    if (b != NULL) {
        cudaEventDestroy(b);
    }
    return st;
}

typedef struct read_arg {
    const uint4 *p;
    size_t n;
    unsigned *sink;
    int blocks;
} read_arg;

static nvlm_status read_once(nv_exec *ex, void *arg)
{
    read_arg *r = (read_arg *)arg;
    read_kernel<<<r->blocks, 512, 0, cuda_ex(ex)->stream>>>(r->p, r->n, r->sink);
    return cuda_status(ex->err_handle, cudaGetLastError(), "read probe");
}

extern "C" nvlm_status nv_cuda_read_probe(nv_exec *ex, size_t bytes, int reps, double *ms)
{
    *ms = 0.0;
    void *buf = NULL;
    NVLM_TRY(ex->be->ops->alloc(ex, bytes + 64, &buf));
    read_arg r;
    r.p = (const uint4 *)buf;
    r.n = bytes / sizeof(uint4);
    r.sink = (unsigned *)((char *)buf + bytes);
    r.blocks = cuda_ex(ex)->cb->sm_count * 4;
    nvlm_status st = fill(ex, buf, 0, bytes / 4, 7, 1.0f);
    double best = DBL_MAX;
    for (int i = 0; st == NVLM_OK && i < reps + 1; i++) {
        double t = 0.0;
        st = nv_cuda_time(ex, read_once, &r, &t);
        if (i > 0 && t < best) {
            best = t; /* the first pass warms up */
        }
    }
    ex->be->ops->free(ex, buf);
    *ms = best == DBL_MAX ? 0.0 : best;
    return st;
}

typedef struct gemm_arg {
    float *y;
    const __nv_bfloat16 *x;
    const __nv_bfloat16 *w;
    int M, N, K;
} gemm_arg;

static nvlm_status gemm_once(nv_exec *ex, void *arg)
{
    gemm_arg *g = (gemm_arg *)arg;
    return cuda_gemm_bf16(ex, g->y, g->x, g->w, NULL, g->M, g->N, g->K);
}

extern "C" nvlm_status nv_cuda_gemm_probe(nv_exec *ex, int M, int N, int K, int reps,
                                          double *ms)
{
    *ms = 0.0;
    void *x = NULL;
    void *w = NULL;
    void *y = NULL;
    nvlm_status st = ex->be->ops->alloc(ex, (size_t)M * K * 2, &x);
    if (st == NVLM_OK) {
        st = ex->be->ops->alloc(ex, (size_t)N * K * 2, &w);
    }
    if (st == NVLM_OK) {
        st = ex->be->ops->alloc(ex, (size_t)M * N * 4, &y);
    }
    if (st == NVLM_OK) {
        st = fill(ex, x, 1, (size_t)M * K, 11, 1.0f);
    }
    if (st == NVLM_OK) {
        st = fill(ex, w, 1, (size_t)N * K, 12, 0.02f);
    }
    gemm_arg g;
    g.y = (float *)y;
    g.x = (const __nv_bfloat16 *)x;
    g.w = (const __nv_bfloat16 *)w;
    g.M = M;
    g.N = N;
    g.K = K;
    double best = DBL_MAX;
    for (int i = 0; st == NVLM_OK && i < reps + 1; i++) {
        double t = 0.0;
        st = nv_cuda_time(ex, gemm_once, &g, &t);
        if (i > 0 && t < best) {
            best = t;
        }
    }
    ex->be->ops->free(ex, x);
    ex->be->ops->free(ex, w);
    ex->be->ops->free(ex, y);
    *ms = best == DBL_MAX ? 0.0 : best;
    return st;
}

extern "C" nvlm_status nv_cuda_device_info(nv_exec *ex, char *name, size_t name_len,
                                           size_t *mem_bytes, int *sm_count)
{
    cuda_backend *cb = cuda_ex(ex)->cb;
    cudaDeviceProp p;
    NVLM_TRY(cuda_status(ex->err_handle, cudaGetDeviceProperties(&p, cb->device), "properties"));
    snprintf(name, name_len, "%s", p.name);
    *mem_bytes = p.totalGlobalMem;
    *sm_count = p.multiProcessorCount;
    return NVLM_OK;
}
