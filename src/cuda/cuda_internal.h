/*
 * cuda_internal.h - what the CUDA backend's .cu files share (C++ only): the per-model state
 * (cuda_backend), the per-session stream and scratch (cuda_exec), the error helper and the
 * host launchers of each op family. Kernels live in their op's file; every launcher enqueues
 * on the given stream and returns the launch status (cudaGetLastError), never synchronises.
 * Activations are f32 (backend.h); weights are bf16 matrices, FP8 E4M3 matrices with per-row
 * f32 scales, or f32 vectors.
 */
#ifndef NVLM_CUDA_INTERNAL_H
#define NVLM_CUDA_INTERNAL_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

/* Every kernel launch is written NV_LAUNCH(kernel, grid, block, shmem, stream)(args...): the
 * <<<>>> launch under nvcc; the host emulation of the kernels (emu/cuda_host.h) defines it as a
 * call that runs the grid on the CPU. */
#ifndef NV_LAUNCH
#define NV_LAUNCH(k, grid, block, shmem, stream) k<<<(grid), (block), (shmem), (stream)>>>
#endif

/* The library's C headers carry no extern "C" of their own. */
extern "C" {
#include "backend.h"
}
#include "cuda_api.h"

typedef struct cuda_gemm cuda_gemm; /* cuBLASLt state of one exec (gemm_lt.cu) */
typedef struct cuda_fp8 cuda_fp8;   /* FP8 matmul scratch and cuBLASLt state (fp8.cu) */
typedef struct cuda_sampler cuda_sampler; /* the sampler's workspace of one exec (sample.cu) */
typedef struct cuda_graphs cuda_graphs; /* new: graph - decode-step graphs of one exec */

/* Per model: the device and the weight slab. */
typedef struct cuda_backend {
    const nv_backend_ops *eager; /* new: graph - the ops graph.cu's step wrappers forward to */
    int device;
    int sm_count;
    char name[256];
    struct cuda_upload *up;     /* weight slab and upload lanes (upload.cu), NULL until used */
    bool debug_sync;            /* NVLM_CUDA_SYNC: synchronise after every op */
} cuda_backend;

/* Per session: one stream; scratch grows on demand (first prefill), then is reused, so the
 * decode loop allocates nothing. */
typedef struct cuda_exec {
    cuda_backend *cb;
    cudaStream_t stream;
    cuda_gemm *gemm;            /* cuBLASLt handle, workspace, per-shape cache */
    __nv_bfloat16 *xbf;         /* bf16 copy of a matmul's activations */
    size_t xbf_cap;             /* elements */
    int32_t *idx;               /* device copies of rows_copy's index arrays */
    size_t idx_cap;             /* elements */
    float *part;                /* split-KV attention partials */
    size_t part_cap;            /* floats */
    cuda_fp8 *fp8;              /* FP8 matmul state, created at the first FP8 prefill */
    /* fused_ops.cu: add_rmsnorm left bf16(xbf_of[0..xbf_n)) in xbf for the matmuls reading xbf_of
     * next; cuda_enter clears it (any other op may change xbf_of or xbf). */
    const float *xbf_of;
    size_t xbf_n;
    /* fused_ops.cu: RoPE inverse frequencies for (rope_half * 2, rope_theta), host and device
     * copies, made at the first rope of the session (rope_half 0: none yet). */
    int rope_half;
    double rope_theta;
    float *rope_dev;
    float rope_host[256];       /* CUDA_ROPE_MAX_HALF */
    cuda_sampler *sampler;      /* sample.cu: created at the first sample */
    /* new: graph */
    uint64_t gen;               /* bumped whenever a scratch buffer is replaced or a buffer
                                   freed (captured graphs may hold the old addresses) */
    cuda_graphs *graphs;        /* decode-step graphs (graph.cu), NULL until the first step */
} cuda_exec;

static inline cuda_exec *cuda_ex(nv_exec *ex)
{
    return (cuda_exec *)ex->impl;
}

/* ---- device.cu ---- */

/* NVLM_OK for cudaSuccess; else NVLM_ERR_BACKEND with "CUDA <what>: <name> (<text>)" on
 * err_handle. Clears a non-sticky error so the next call starts clean. */
nvlm_status cuda_status(void *err_handle, cudaError_t e, const char *what);
/* NVLM_OK when `device`'s context is usable from this thread: not lost to a sticky error
 * (fault.h), and no CUDA error of someone else's pending on the thread (left there, not
 * taken). Else NVLM_ERR_BACKEND saying which. */
nvlm_status cuda_alive(int device, void *err_handle);
/* cuda_alive, then makes the exec's device current on the calling thread (sessions may change
 * threads; the public calls restore the application's device through the backend's
 * thread_enter/thread_leave). */
nvlm_status cuda_enter(nv_exec *ex);
/* Puts the calling thread back on device `saved` (what cudaGetDevice said when the library's
 * call began; < 0: nothing). A device whose primary context is not active is not selected
 * again: cudaGetDevice says 0 on a thread that never chose a device, and selecting it would
 * create a context there (hundreds of MiB on a GPU the process does not use); the thread then
 * stays on the library's device. */
void cuda_restore_device(int saved);
/* With NVLM_CUDA_SYNC set: synchronises the exec's stream after op `op`, so that an
 * asynchronous failure is reported by the op that caused it. NVLM_OK otherwise. */
nvlm_status cuda_synced(nv_exec *ex, const char *op);
/* Ensures *buf holds at least `need` elements of `elem` bytes (synchronises the stream before
 * replacing it: an in-flight kernel may still read the old one). */
nvlm_status cuda_scratch(nv_exec *ex, void **buf, size_t *cap, size_t need, size_t elem,
                         const char *what);
/* Grid size for n elements with `threads` per block, capped (kernels use grid-stride loops). */
unsigned cuda_blocks(size_t n, unsigned threads);

/* ---- upload.cu ---- */

/* Lays out one weight on the device (matrices bf16, vectors f32, FP8 codes + f32 row scales;
 * memory_plan.h's nv_mem_weight_store): a piece of the slab when one is reserved and has room,
 * else its own allocation; converted and copied by the upload lanes. Text to eh. */
nvlm_status cuda_weight_upload(nv_backend *be, const nv_tensor *src, nv_bweight *out, void *eh);
/* Several checkpoint tensors of `cols` columns as one weight of `rows` rows of dtype dt (bf16
 * or f32), in order, in one piece of the slab (weight_load_group). */
nvlm_status cuda_weight_upload_group(nv_backend *be, const nv_tensor *srcs, int n, nv_dtype dt,
                                     int64_t rows, int64_t cols, nv_bweight *out, void *eh);
/* Whether p lies in the backend's weight slab (weight_free leaves it alone). */
bool cuda_slab_owns(const cuda_backend *cb, const void *p);
/* Frees the upload lanes and the slab (backend destroy). */
void cuda_upload_free(nv_backend *be);
/* ---- graph.cu (new: graph) ---- */

/* The backend's op table: base's ops wrapped for decode steps (outside a step each forwards
 * to base, which must be the backend's cuda_backend.eager) plus step_begin / step_end. */
nv_backend_ops cuda_graph_ops(const nv_backend_ops *base);
/* Destroys an exec's graphs, pinned step buffers and device step block (stream synchronised). */
void cuda_graphs_free(nvlm_context *ctx, cuda_exec *ce);

/* ---- gemm_lt.cu ---- */

nvlm_status cuda_gemm_create(nv_exec *ex, cuda_gemm **out);
void cuda_gemm_free(nvlm_context *ctx, cuda_gemm *g);
/* y[M][N] (f32) = x[M][K] (bf16) . w[N][K]^T (bf16) (+ bias[N] f32), fp32 accumulation.
 * Plans are cached per bucket of M (gemm_plan.h); a rejected algorithm falls back to the next
 * the heuristic offered; NVLM_ERR_BACKEND naming the shape when none runs. */
nvlm_status cuda_gemm_bf16(nv_exec *ex, float *y, const __nv_bfloat16 *x,
                           const __nv_bfloat16 *w, const float *bias, int M, int N, int K);

/* ---- gemm_pad.cu ---- */

/* y (rows, ld) bf16 = x (rows, cols) f32 rounded to nearest even, columns cols..ld-1 zero. */
cudaError_t cuda_to_bf16_pad(cudaStream_t s, __nv_bfloat16 *y, int ld, const float *x,
                             size_t rows, int cols);
/* ---- fp8.cu: FP8 E4M3 weights (codes N x K, one f32 scale per row, both on the device) ---- */

/* Rows of x up to which an FP8 matmul is the GEMV (above: the prefill GEMM). */
#define CUDA_FP8_GEMV_MAX_M 8
/* y = x . W^T: FP8 weight w (t.data codes, t.scale row scales, device memory), f32 x and y. */
nvlm_status cuda_matmul_fp8(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                            const nv_bweight *bias, int M);
void cuda_fp8_free(nvlm_context *ctx, cuda_fp8 *f);
/* The kernels (exposed for tests): y[m][n] = scale[n] * sum_k x[m][k] e4m3(q[n][k]) (+ bias)
 * for M in 1 .. CUDA_FP8_GEMV_MAX_M; f32 or bf16 x. */
cudaError_t cuda_fp8_gemv_f32(cudaStream_t s, float *y, const float *x, const uint8_t *q,
                              const float *scale, const float *bias, int M, int N, int K);
cudaError_t cuda_fp8_gemv_bf16(cudaStream_t s, float *y, const __nv_bfloat16 *x,
                               const uint8_t *q, const float *scale, const float *bias, int M,
                               int N, int K);
/* Per-row dynamic quantization of x (M x K f32) to E4M3 codes q and scales a_scale. */
cudaError_t cuda_fp8_quant_rows(cudaStream_t s, uint8_t *q, float *a_scale, const float *x,
                                int M, int K);
/* y[m][n0 + j] = acc[m][j] * a_scale[m] (NULL: 1) * w_scale[n0 + j] (+ bias[n0 + j]). */
cudaError_t cuda_fp8_epilogue(cudaStream_t s, float *y, int ldy, int n0, const float *acc,
                              int nc, const float *a_scale, const float *w_scale,
                              const float *bias, int M);
/* out[i] = bf16(e4m3(q[i])), exact. */
cudaError_t cuda_fp8_to_bf16(cudaStream_t s, __nv_bfloat16 *out, const uint8_t *q, size_t n);

/* ---- norm.cu ---- */

cudaError_t cuda_rmsnorm(cudaStream_t s, float *y, int ldy, const float *x, int ldx,
                         const float *w, int rows, int cols, int stat_cols, float eps);
cudaError_t cuda_rows_sumsq(cudaStream_t s, float *out, const float *x, int ld, int rows,
                            int cols);
cudaError_t cuda_rmsnorm_scale(cudaStream_t s, float *y, int ldy, const float *x, int ldx,
                               const float *w, int rows, int cols, const float *sumsq, int n,
                               float eps);
cudaError_t cuda_layernorm(cudaStream_t s, float *y, const float *x, const float *w,
                           const float *b, int rows, int cols, float eps);

/* ---- rope.cu ---- */

#define CUDA_ROPE_MAX_HALF 256
cudaError_t cuda_rope(cudaStream_t s, float *x, int ld, int rows, int n_heads, int head_dim,
                      int64_t pos0, const float *inv_freq);
/* new: graph */
/* The same with positions from a decode step's device block: row r is at dpos[r / per_seq] +
 * r % per_seq. */
cudaError_t cuda_rope_step(cudaStream_t s, float *x, int ld, int rows, int n_heads,
                           int head_dim, const int64_t *dpos, int per_seq, const float *inv_freq);
/* inv_freq[i] = 1 / theta^(2i / head_dim) in f32 as the CPU op computes it (head_dim / 2). */
void cuda_rope_inv_freq(double theta, int head_dim, float *inv_freq);

/* ---- attention.cu ---- */

#define CUDA_ATTN_MAX_HD 128
/* Partial floats the split-KV path needs (0 when it runs unsplit). */
size_t cuda_attention_part_floats(const cuda_backend *cb, int batch, int n_q, int n_kv,
                                  int n_heads, int n_kv_heads, int head_dim, int64_t cpos0);
cudaError_t cuda_attention(cudaStream_t s, const cuda_backend *cb, float *part, float *out,
                           int ldo, const float *q, int ldq, const void *k, const void *v,
                           int ldkv, nv_dtype kv_type, int batch, int n_q, int n_kv, int n_heads,
                           int n_kv_heads, int head_dim, float scale, int64_t cpos0);
/* new: graph */
/* A decode step's attention: the grid and partials are planned for kv_rows keys (size part
 * with cuda_attention_part_floats(..., kv_rows, ...)); sequence b sees keys
 * 0 .. dpos[b] + n_q - 1 (device step block), query i keys <= dpos[b] + i. */
cudaError_t cuda_attention_step(cudaStream_t s, const cuda_backend *cb, float *part, float *out,
                                int ldo, const float *q, int ldq, const void *k, const void *v,
                                int ldkv, nv_dtype kv_type, int batch, int n_q, int kv_rows,
                                int n_heads, int n_kv_heads, int head_dim, float scale,
                                const int64_t *dpos);

/* ---- act.cu ---- */

cudaError_t cuda_gelu(cudaStream_t s, float *y, const float *x, size_t n);
cudaError_t cuda_silu_mul(cudaStream_t s, float *y, const float *g, const float *u, size_t n);
cudaError_t cuda_add_scaled(cudaStream_t s, float *y, const float *x, const float *sc,
                            int rows, int cols);
cudaError_t cuda_add_rows(cudaStream_t s, float *y, const void *b, nv_dtype bt, int b_rows,
                          int rows, int cols);

/* ---- fused.cu ---- */

cudaError_t cuda_add_rmsnorm(cudaStream_t s, float *h, const float *a, const float *sc,
                             float *x, __nv_bfloat16 *xbf, const float *w, int rows, int cols,
                             float eps);
cudaError_t cuda_silu_mul_cat(cudaStream_t s, float *y, const float *gu, int rows, int cols);
cudaError_t cuda_rope_store(cudaStream_t s, void *dst, nv_dtype type, int64_t row0,
                            const float *src, int lds, int rows, int n_heads, int head_dim,
                            const float *inv_freq);

/* ---- fused_ops.cu ---- */

/* Makes the session's RoPE table current for (head_dim, theta): ce->rope_host and, ordered on
 * the stream, ce->rope_dev. Computed only when head_dim or theta change. */
nvlm_status cuda_rope_table(nv_exec *ex, int head_dim, double theta);

/* backend.h's optional fused ops. */
nvlm_status cuda_add_rmsnorm_op(nv_exec *ex, float *h, const float *a, const nv_bweight *s,
                                float *x, const nv_bweight *w, int rows, int cols, float eps);
nvlm_status cuda_silu_mul_cat_op(nv_exec *ex, float *y, const float *gu, int rows, int cols);
nvlm_status cuda_rope_store_op(nv_exec *ex, void *dst, nv_dtype type, int64_t row0, float *src,
                               int lds, int rows, int n_heads, int head_dim, double theta);

/* ---- flash_attn.cu ---- */

/* Whether the tensor-core flash kernel can take this attention (at least CUDA_FLASH_MIN_ROWS
 * (position, head) rows per kv head, head_dim <= 128). The attention op uses it for such
 * shapes when the split-KV plan of attention.cu does not split (prefill, the ViT). */
#define CUDA_FLASH_MIN_ROWS 128
bool cuda_flash_ok(int n_q, int n_heads, int n_kv_heads, int head_dim);
cudaError_t cuda_flash_attention(cudaStream_t s, float *out, int ldo, const float *q, int ldq,
                                 const void *k, const void *v, int ldkv, nv_dtype kv_type,
                                 int batch, int n_q, int n_kv, int n_heads, int n_kv_heads,
                                 int head_dim, float scale, int64_t cpos0);

/* ---- rows.cu ---- */

cudaError_t cuda_to_bf16(cudaStream_t s, __nv_bfloat16 *y, const float *x, size_t n);
cudaError_t cuda_rows_copy(cudaStream_t s, float *dst, const int32_t *dst_idx, const void *src,
                           nv_dtype src_type, const int32_t *src_idx, size_t n, int cols);
cudaError_t cuda_store_rows(cudaStream_t s, void *dst, nv_dtype type, int64_t row0,
                            const float *src, int lds, size_t n, int cols);
/* new: graph */
/* The KV append at the row a decode step's device block holds (*drow). */
cudaError_t cuda_store_rows_step(cudaStream_t s, void *dst, nv_dtype type, const int64_t *drow,
                                 const float *src, int lds, size_t n, int cols);
cudaError_t cuda_im2col(cudaStream_t s, float *out, const float *pix, int batch, int channels,
                        int height, int width, int patch);

/* ---- sample.cu ---- */

#define CUDA_SAMPLE_THREADS 1024   /* the one block's threads (launches may use fewer) */

/* The kernel's arguments (by value). Device pointers except where noted. */
typedef struct cuda_sample_kargs {
    const float *logits;         /* n */
    const unsigned char *usable; /* n flags */
    int n;
    float *val;                  /* n: workspace, the biased and penalised logits */
    unsigned long long *key;     /* n: workspace, 0 = not a candidate */
    double *prob;                /* n: workspace */
    const int32_t *list;         /* n_bias (token, bias bits) then n_pen (token, count) */
    int n_bias;
    int bias_serial;             /* the bias list names a token twice: one thread, in order */
    int n_pen;
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float rep;
    float presence;
    float freq;
    double uniform;
    int32_t *out;                /* [token, outcome] */
} cuda_sample_kargs;

/* Runs the sampler kernel: one block of `threads` (a power of two, 256..1024) threads. */
cudaError_t cuda_sample_launch(cudaStream_t s, int threads, const cuda_sample_kargs *k);

/* The backend's sample op (backend.h): the whole sampler on the device, only the token id and
 * outcome come back (synchronises). */
nvlm_status cuda_sample(nv_exec *ex, const nv_sample_args *a, int32_t *token, int *outcome);
void cuda_sample_free(nvlm_context *ctx, cuda_exec *ce);

/* Sum over a warp (all 32 lanes active); every lane gets the total. */
static __device__ __forceinline__ float cuda_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

/* Sum over the block (blockDim a multiple of 32, sh at least blockDim / 32 floats of shared
 * memory); every thread gets the total, and sh may be written again once it returns. */
static __device__ __forceinline__ float cuda_block_sum(float v, float *sh)
{
    v = cuda_warp_sum(v);
    if ((threadIdx.x & 31) == 0) {
        sh[threadIdx.x >> 5] = v;
    }
    __syncthreads();
    float t = 0.0f;
    int nw = (int)(blockDim.x >> 5);
    for (int i = 0; i < nw; i++) {
        t += sh[i];
    }
    __syncthreads();
    return t;
}

/* Element loads shared by the kernels: f32, bf16 or f16 storage read as f32. */
__device__ __forceinline__ float cuda_load(const void *p, nv_dtype t, size_t i)
{
    if (t == NV_F32) {
        return ((const float *)p)[i];
    }
    if (t == NV_BF16) {
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    }
    return __half2float(((const __half *)p)[i]);
}

#endif /* NVLM_CUDA_INTERNAL_H */
