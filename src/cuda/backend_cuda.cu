/*
 * backend_cuda.cu - the CUDA implementation of backend.h's op table. Per model: the device
 * and the weights (matrices bf16, round to nearest even from f32/f16 checkpoints, or FP8 E4M3
 * codes with per-row f32 scales as given (fp8.cu); vectors f32), uploaded once into one slab
 * by several host threads through pinned staging (upload.cu). Per session: one non-blocking
 * stream, the cuBLASLt state and scratch that grows at the first prefill, so decode allocates
 * nothing.
 * Activations are f32 device buffers; every op enqueues on the session's stream and returns;
 * download and sync wait. CUDA errors become NVLM_ERR_BACKEND with text on the err_handle.
 */
#include "cuda/cuda_internal.h"
#include "cuda/fault.h"
extern "C" {
#include "memory_plan.h"
}

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static nvlm_context *ctx_of(nv_exec *ex)
{
    return ex->be->ctx;
}

static cuda_backend *cb_of(nv_backend *be)
{
    return (cuda_backend *)be->impl;
}

/* Runs a launcher's result through cuda_status with the op's name. */
static nvlm_status launched(nv_exec *ex, cudaError_t e, const char *op)
{
    NVLM_TRY(cuda_status(ex->err_handle, e, op));
    return cuda_synced(ex, op);
}

/* The public calls around their ops: the application's current device comes back as it was. */
static int cuda_thread_enter(nv_backend *be)
{
    (void)be;
    int cur = -1;
    return cudaGetDevice(&cur) == cudaSuccess ? cur : -1;
}

static void cuda_thread_leave(nv_backend *be, int saved)
{
    (void)be;
    cuda_restore_device(saved);
}

/* ---- weights ---------------------------------------------------------------------------- */

static nvlm_status cuda_weight_load(nv_backend *be, const nv_tensor *src, const nv_tp_cut *cut,
                                    nv_bweight *out, void *err_handle)
{
    (void)cut;
    memset(out, 0, sizeof *out);
    if (src->dtype == NV_F8_E4M3 &&
        (src->ndim != 2 || src->scale == NULL || src->shape[0] < 0 || src->shape[1] < 0)) {
        return nv_error(err_handle, NVLM_ERR_SHAPE, "an FP8 weight must be a 2-D matrix with "
                        "per-row scales");
    }
    if (src->dtype != NV_BF16 && src->dtype != NV_F16 && src->dtype != NV_F32 &&
        src->dtype != NV_F8_E4M3) {
        return nv_error(err_handle, NVLM_ERR_SHAPE, "weight dtype %s is not bf16/f16/f32",
                        nv_dtype_name(src->dtype));
    }
    /* one piece of the weight slab, filled by the upload lanes (upload.cu); an FP8 matrix
     * keeps its codes, then (256-byte aligned) its f32 row scales */
    NVLM_TRY(cuda_alive(cb_of(be)->device, err_handle));
    return cuda_weight_upload(be, src, out, err_handle);
}

/* n tensors of one dtype as one weight: their rows in order (backend.h weight_load_group). */
static nvlm_status cuda_weight_load_group(nv_backend *be, const nv_tensor *srcs, int n,
                                          nv_bweight *out, bool *grouped, void *err_handle)
{
    memset(out, 0, sizeof *out);
    *grouped = false;
    if (n < 1 || (srcs[0].dtype != NV_BF16 && srcs[0].dtype != NV_F16 &&
                  srcs[0].dtype != NV_F32)) {
        return NVLM_OK;
    }
    int ndim = srcs[0].ndim;
    int64_t rows = 0;
    int64_t K = ndim == 2 ? srcs[0].shape[1] : 1;
    for (int i = 0; i < n; i++) {
        if (srcs[i].dtype != srcs[0].dtype || srcs[i].ndim != ndim || ndim < 1 || ndim > 2 ||
            (ndim == 2 && srcs[i].shape[1] != K) || srcs[i].shape[0] <= 0) {
            return NVLM_OK;
        }
        rows += srcs[i].shape[0];
    }
    /* Laid out as weight_load lays out the whole: bf16 matrices, f32 vectors. */
    nv_dtype dt = ndim == 2 && K > 1 ? NV_BF16 : NV_F32;
    NVLM_TRY(cuda_alive(cb_of(be)->device, err_handle));
    NVLM_TRY(cuda_weight_upload_group(be, srcs, n, dt, rows, K, out, err_handle));
    *grouped = true;
    return NVLM_OK;
}

static void cuda_weight_free(nv_backend *be, nv_bweight *w)
{
    /* slab pieces go with the slab (destroy) */
    if (w->owned && w->t.data != NULL && !cuda_slab_owns(cb_of(be), w->t.data)) {
        int prev = cuda_thread_enter(be);
        cudaSetDevice(cb_of(be)->device);
        cudaFree(w->t.data);
        cuda_thread_leave(be, prev);
    }
    memset(w, 0, sizeof *w);
}

static void cuda_destroy(nv_backend *be)
{
    if (be == NULL) {
        return;
    }
    cuda_backend *cb = cb_of(be);
    if (cb != NULL) {
        bool clean = cudaPeekAtLastError() == cudaSuccess; /* else the application's: kept */
        int prev = -1;
        cudaGetDevice(&prev);
        cuda_upload_free(be);
        cudaSetDevice(cb->device);
        /* the last backend on a device whose context was lost resets it, so that the next
         * model loads on a fresh one */
        if (cuda_fault_backend_destroyed(cb->device)) {
            cudaDeviceReset();
        }
        if (clean) {
            cudaGetLastError();
        }
        cuda_restore_device(prev);
        nv_free(be->ctx, cb);
    }
    nv_free(be->ctx, be);
}

/* ---- exec ------------------------------------------------------------------------------- */

static void cuda_exec_free(nv_exec *ex)
{
    if (ex == NULL) {
        return;
    }
    nvlm_context *ctx = ctx_of(ex);
    cuda_exec *ce = cuda_ex(ex);
    if (ce != NULL) {
        bool clean = cudaPeekAtLastError() == cudaSuccess; /* else the application's: kept */
        int prev = cuda_thread_enter(ex->be);
        cudaSetDevice(ce->cb->device);
        if (ce->stream != NULL) {
            cudaStreamSynchronize(ce->stream);
        }
        cuda_graphs_free(ctx, ce);
        cuda_gemm_free(ctx, ce->gemm);
        cuda_fp8_free(ctx, ce->fp8);
        cuda_sample_free(ctx, ce);
        if (ce->xbf != NULL) {
            cudaFree(ce->xbf);
        }
        if (ce->idx != NULL) {
            cudaFree(ce->idx);
        }
        if (ce->part != NULL) {
            cudaFree(ce->part);
        }
        if (ce->rope_dev != NULL) {
            cudaFree(ce->rope_dev);
        }
        if (ce->stream != NULL) {
            cudaStreamDestroy(ce->stream);
        }
        if (clean) {
            cudaGetLastError();
        }
        cuda_thread_leave(ex->be, prev);
        nv_free(ctx, ce);
    }
    nv_free(ctx, ex);
}

static nvlm_status cuda_exec_create(nv_backend *be, int n_threads, void *err_handle,
                                    nv_exec **out)
{
    (void)n_threads;
    *out = NULL;
    nv_exec *ex = (nv_exec *)nv_calloc(be->ctx, 1, sizeof *ex);
    cuda_exec *ce = (cuda_exec *)nv_calloc(be->ctx, 1, sizeof *ce);
    if (ex == NULL || ce == NULL) {
        nv_free(be->ctx, ex);
        nv_free(be->ctx, ce);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for an exec");
    }
    ex->be = be;
    ex->err_handle = err_handle;
    ex->impl = ce;
    ce->cb = cb_of(be);
    int prev = cuda_thread_enter(be);
    nvlm_status st = cuda_alive(ce->cb->device, err_handle);
    if (st == NVLM_OK) {
        st = cuda_status(err_handle, cudaSetDevice(ce->cb->device), "select device");
    }
    if (st == NVLM_OK) {
        st = cuda_status(err_handle, cudaStreamCreateWithFlags(&ce->stream,
                                                               cudaStreamNonBlocking),
                         "create stream");
    }
    cuda_thread_leave(be, prev);
    if (st != NVLM_OK) {
        cuda_exec_free(ex);
        return st;
    }
    *out = ex;
    return NVLM_OK;
}

/* ---- memory ----------------------------------------------------------------------------- */

static nvlm_status cuda_alloc_op(nv_exec *ex, size_t bytes, void **out)
{
    *out = NULL;
    NVLM_TRY(cuda_enter(ex));
    cudaError_t e = cudaMalloc(out, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *out = NULL;
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                        "out of device memory (%zu bytes of activations)", bytes);
    }
    return NVLM_OK;
}

static nvlm_status cuda_alloc_kv_op(nv_exec *ex, int64_t rows, int kv_heads, int head_dim,
                                    nv_dtype dtype, void **out)
{
    size_t bytes;
    if (!nv_kv_bytes(rows, kv_heads, head_dim, dtype, &bytes)) {
        return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "KV cache size overflows");
    }
    return cuda_alloc_op(ex, bytes, out);
}

static void cuda_free_op(nv_exec *ex, void *ptr)
{
    if (ptr != NULL) {
        cudaSetDevice(cuda_ex(ex)->cb->device);
        /* cudaFree waits for the device, so in-flight kernels never see freed memory. */
        if (cudaFree(ptr) != cudaSuccess) {
            cudaGetLastError();
        }
    }
}

static nvlm_status cuda_upload_op(nv_exec *ex, void *dst, const void *host, size_t bytes)
{
    if (bytes == 0) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    /* From pageable memory the call returns once `host` has been staged: the caller may reuse
     * it at once. */
    return launched(ex, cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice,
                                        cuda_ex(ex)->stream), "upload");
}

static nvlm_status cuda_download_op(nv_exec *ex, void *host, const void *src, size_t bytes)
{
    if (bytes == 0) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    cudaStream_t s = cuda_ex(ex)->stream;
    NVLM_TRY(launched(ex, cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, s),
                      "download"));
    return launched(ex, cudaStreamSynchronize(s), "download");
}

static nvlm_status cuda_copy_op(nv_exec *ex, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                                        cuda_ex(ex)->stream), "copy");
}

static nvlm_status cuda_copy_2d_op(nv_exec *ex, void *dst, size_t dpitch, const void *src,
                                   size_t spitch, size_t width, size_t rows)
{
    if (width == 0 || rows == 0) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows,
                                          cudaMemcpyDeviceToDevice, cuda_ex(ex)->stream),
                    "copy_2d");
}

static nvlm_status cuda_zero_op(nv_exec *ex, void *dst, size_t bytes)
{
    if (bytes == 0) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cudaMemsetAsync(dst, 0, bytes, cuda_ex(ex)->stream), "zero");
}

static nvlm_status cuda_sync_op(nv_exec *ex)
{
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cudaStreamSynchronize(cuda_ex(ex)->stream), "sync");
}

/* ---- compute ---------------------------------------------------------------------------- */

static nvlm_status cuda_matmul_op(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                                  const nv_bweight *bias, int M)
{
    const nv_tensor *t = &w->t;
    int64_t N = t->shape[0];
    int64_t K = nv_tensor_nelem(t) / (N > 0 ? N : 1);
    if (t->dtype == NV_F8_E4M3) {
        return cuda_matmul_fp8(ex, y, x, w, bias, M);
    }
    if (N > INT32_MAX || K > INT32_MAX - NV_MEM_K_ALIGN || t->dtype != NV_BF16) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED,
                        "matmul: weight (%lld, %lld) %s not supported", (long long)N,
                        (long long)K, nv_dtype_name(t->dtype));
    }
    if (M <= 0 || N <= 0) {
        return NVLM_OK;
    }
    cuda_exec *ce = cuda_ex(ex);
    int64_t ld = nv_mem_weight_ld(t->ndim, K); /* the weight's stored row length */
    size_t n = (size_t)M * (size_t)K;
    /* add_rmsnorm (fused_ops.cu) may have left x in bf16 already (dense rows: ld == K). */
    bool have = ld == K && ce->xbf_of == x && ce->xbf_n == n;
    NVLM_TRY(cuda_enter(ex));
    if (have) {
        /* Still valid for the next matmul unless this one overwrites x. */
        const char *y0 = (const char *)y;
        const char *x0 = (const char *)x;
        size_t yb = (size_t)M * (size_t)N * sizeof(float);
        if (y0 + yb <= x0 || x0 + n * sizeof(float) <= y0) {
            ce->xbf_of = x;
            ce->xbf_n = n;
        }
    } else if (ld == K) {
        NVLM_TRY(cuda_scratch(ex, (void **)&ce->xbf, &ce->xbf_cap, n, sizeof(__nv_bfloat16),
                              "matmul input"));
        NVLM_TRY(launched(ex, cuda_to_bf16(ce->stream, ce->xbf, x, n), "matmul input"));
    } else {
        /* rows padded to the weight's (a convolution kernel, gemm_pad.cu) */
        NVLM_TRY(cuda_scratch(ex, (void **)&ce->xbf, &ce->xbf_cap, (size_t)M * (size_t)ld,
                              sizeof(__nv_bfloat16), "matmul input"));
        NVLM_TRY(launched(ex, cuda_to_bf16_pad(ce->stream, ce->xbf, (int)ld, x, (size_t)M,
                                               (int)K), "matmul input"));
    }
    NVLM_TRY(cuda_gemm_bf16(ex, y, ce->xbf, (const __nv_bfloat16 *)t->data,
                            bias != NULL ? (const float *)bias->t.data : NULL, M, (int)N,
                            (int)ld));
    return cuda_synced(ex, "matmul");
}

static nvlm_status need_f32(nv_exec *ex, const nv_bweight *w, const char *op)
{
    if (w == NULL || w->t.dtype != NV_F32) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "%s: weight vector not f32", op);
    }
    return NVLM_OK;
}

static nvlm_status cuda_rmsnorm_op(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                                   const nv_bweight *w, int rows, int cols, int stat_cols,
                                   float eps)
{
    NVLM_TRY(need_f32(ex, w, "rmsnorm"));
    if (stat_cols <= 0 || stat_cols > cols) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "rmsnorm: stat_cols %d of %d",
                        stat_cols, cols);
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_rmsnorm(cuda_ex(ex)->stream, y, ldy, x, ldx,
                                     (const float *)w->t.data, rows, cols, stat_cols, eps),
                    "rmsnorm");
}

static nvlm_status cuda_rows_sumsq_op(nv_exec *ex, float *out, const float *x, int ld, int rows,
                                      int cols)
{
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_rows_sumsq(cuda_ex(ex)->stream, out, x, ld, rows, cols),
                    "rows_sumsq");
}

static nvlm_status cuda_rmsnorm_scale_op(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                                         const nv_bweight *w, int rows, int cols,
                                         const float *sumsq, int n, float eps)
{
    NVLM_TRY(need_f32(ex, w, "rmsnorm_scale"));
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_rmsnorm_scale(cuda_ex(ex)->stream, y, ldy, x, ldx,
                                           (const float *)w->t.data, rows, cols, sumsq, n, eps),
                    "rmsnorm_scale");
}

static nvlm_status cuda_layernorm_op(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                                     const nv_bweight *b, int rows, int cols, float eps)
{
    NVLM_TRY(need_f32(ex, w, "layernorm"));
    NVLM_TRY(need_f32(ex, b, "layernorm"));
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_layernorm(cuda_ex(ex)->stream, y, x, (const float *)w->t.data,
                                       (const float *)b->t.data, rows, cols, eps),
                    "layernorm");
}

static nvlm_status cuda_rope_op(nv_exec *ex, float *x, int ld, int rows, int n_heads,
                                int head_dim, int64_t pos0, double theta)
{
    NVLM_TRY(cuda_enter(ex));
    /* The session's table, made once (fused_ops.cu). */
    NVLM_TRY(cuda_rope_table(ex, head_dim, theta));
    return launched(ex, cuda_rope(cuda_ex(ex)->stream, x, ld, rows, n_heads, head_dim, pos0,
                                  cuda_ex(ex)->rope_host), "rope");
}

static nvlm_status cuda_attention_op(nv_exec *ex, float *out, int ldo, const float *q, int ldq,
                                     const void *k, const void *v, int ldkv, nv_dtype kv_type,
                                     int batch, int n_q, int n_kv, int n_heads, int n_kv_heads,
                                     int head_dim, float scale, int64_t causal_pos0,
                                     nv_tp_part heads)
{
    (void)heads;
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || n_q <= 0 || n_kv <= 0 || batch <= 0) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "bad attention shape");
    }
    if (kv_type != NV_F32 && kv_type != NV_BF16 && kv_type != NV_F16) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "kv dtype %s",
                        nv_dtype_name(kv_type));
    }
    if (head_dim > CUDA_ATTN_MAX_HD || (int64_t)batch * n_kv_heads > 65535) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED,
                        "attention: head_dim %d (max %d), %d sequences x %d kv heads", head_dim,
                        CUDA_ATTN_MAX_HD, batch, n_kv_heads);
    }
    NVLM_TRY(cuda_enter(ex));
    cuda_exec *ce = cuda_ex(ex);
    size_t part = cuda_attention_part_floats(ce->cb, batch, n_q, n_kv, n_heads, n_kv_heads,
                                             head_dim, causal_pos0);
    /* Prefill and ViT shapes that fill the device unsplit: the tensor-core kernel. */
    if (part == 0 && cuda_flash_ok(n_q, n_heads, n_kv_heads, head_dim)) {
        return launched(ex, cuda_flash_attention(ce->stream, out, ldo, q, ldq, k, v, ldkv,
                                                 kv_type, batch, n_q, n_kv, n_heads, n_kv_heads,
                                                 head_dim, scale, causal_pos0),
                        "attention");
    }
    if (part > 0) {
        NVLM_TRY(cuda_scratch(ex, (void **)&ce->part, &ce->part_cap, part, sizeof(float),
                              "attention"));
    }
    return launched(ex, cuda_attention(ce->stream, ce->cb, ce->part, out, ldo, q, ldq, k, v,
                                       ldkv, kv_type, batch, n_q, n_kv, n_heads, n_kv_heads,
                                       head_dim, scale, causal_pos0), "attention");
}

static nvlm_status cuda_gelu_op(nv_exec *ex, float *y, const float *x, size_t n)
{
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_gelu(cuda_ex(ex)->stream, y, x, n), "gelu");
}

static nvlm_status cuda_silu_mul_op(nv_exec *ex, float *y, const float *g, const float *u,
                                    size_t n)
{
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_silu_mul(cuda_ex(ex)->stream, y, g, u, n), "silu_mul");
}

static nvlm_status cuda_add_scaled_op(nv_exec *ex, float *y, const float *x, const nv_bweight *s,
                                      int rows, int cols)
{
    if (s != NULL) {
        NVLM_TRY(need_f32(ex, s, "add_scaled"));
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_add_scaled(cuda_ex(ex)->stream, y, x,
                                        s != NULL ? (const float *)s->t.data : NULL, rows, cols),
                    "add_scaled");
}

static nvlm_status cuda_add_rows_op(nv_exec *ex, float *y, const nv_bweight *b, int b_rows,
                                    int rows, int cols)
{
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_add_rows(cuda_ex(ex)->stream, y, b->t.data, b->t.dtype, b_rows,
                                      rows, cols), "add_rows");
}

static nvlm_status cuda_rows_copy_op(nv_exec *ex, float *dst, const int32_t *dst_idx,
                                     const void *src, nv_dtype src_type, const int32_t *src_idx,
                                     size_t n, int cols)
{
    if (n == 0) {
        return NVLM_OK;
    }
    if (src_type != NV_F32 && src_type != NV_BF16 && src_type != NV_F16) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "rows_copy from %s",
                        nv_dtype_name(src_type));
    }
    NVLM_TRY(cuda_enter(ex));
    cuda_exec *ce = cuda_ex(ex);
    size_t need = (dst_idx != NULL ? n : 0) + (src_idx != NULL ? n : 0);
    int32_t *ddi = NULL;
    int32_t *dsi = NULL;
    if (need > 0) {
        NVLM_TRY(cuda_scratch(ex, (void **)&ce->idx, &ce->idx_cap, need, sizeof(int32_t),
                              "row index"));
        size_t at = 0;
        if (dst_idx != NULL) {
            ddi = ce->idx;
            NVLM_TRY(launched(ex, cudaMemcpyAsync(ddi, dst_idx, n * sizeof(int32_t),
                                                  cudaMemcpyHostToDevice, ce->stream),
                              "row index upload"));
            at = n;
        }
        if (src_idx != NULL) {
            dsi = ce->idx + at;
            NVLM_TRY(launched(ex, cudaMemcpyAsync(dsi, src_idx, n * sizeof(int32_t),
                                                  cudaMemcpyHostToDevice, ce->stream),
                              "row index upload"));
        }
    }
    return launched(ex, cuda_rows_copy(ce->stream, dst, ddi, src, src_type, dsi, n, cols),
                    "rows_copy");
}

static nvlm_status cuda_store_rows_op(nv_exec *ex, void *dst, nv_dtype type, int64_t row0,
                                      const float *src, int lds, size_t n, int cols)
{
    if (type != NV_F32 && type != NV_BF16) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "cache dtype %s",
                        nv_dtype_name(type));
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_store_rows(cuda_ex(ex)->stream, dst, type, row0, src, lds, n, cols),
                    "store_rows");
}

static nvlm_status cuda_im2col_op(nv_exec *ex, float *out, const float *pix, int batch,
                                  int channels, int height, int width, int patch)
{
    if (patch <= 0) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "im2col: patch %d", patch);
    }
    NVLM_TRY(cuda_enter(ex));
    return launched(ex, cuda_im2col(cuda_ex(ex)->stream, out, pix, batch, channels, height,
                                    width, patch), "im2col");
}

/* ---- table ------------------------------------------------------------------------------ */

static nv_backend_ops make_ops(void)
{
    nv_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.weight_load = cuda_weight_load;
    o.weight_free = cuda_weight_free;
    o.destroy = cuda_destroy;
    o.exec_create = cuda_exec_create;
    o.exec_free = cuda_exec_free;
    o.alloc = cuda_alloc_op;
    o.alloc_kv = cuda_alloc_kv_op;
    o.free = cuda_free_op;
    o.upload = cuda_upload_op;
    o.download = cuda_download_op;
    o.copy = cuda_copy_op;
    o.copy_2d = cuda_copy_2d_op;
    o.zero = cuda_zero_op;
    o.sync = cuda_sync_op;
    o.matmul = cuda_matmul_op;
    o.rmsnorm = cuda_rmsnorm_op;
    o.rows_sumsq = cuda_rows_sumsq_op;
    o.rmsnorm_scale = cuda_rmsnorm_scale_op;
    o.layernorm = cuda_layernorm_op;
    o.rope = cuda_rope_op;
    o.attention = cuda_attention_op;
    o.gelu = cuda_gelu_op;
    o.silu_mul = cuda_silu_mul_op;
    o.add_scaled = cuda_add_scaled_op;
    o.add_rows = cuda_add_rows_op;
    o.rows_copy = cuda_rows_copy_op;
    o.store_rows = cuda_store_rows_op;
    o.im2col = cuda_im2col_op;
    o.thread_enter = cuda_thread_enter;
    o.thread_leave = cuda_thread_leave;
    o.weight_load_group = cuda_weight_load_group;
    o.add_rmsnorm = cuda_add_rmsnorm_op;
    o.silu_mul_cat = cuda_silu_mul_cat_op;
    o.rope_store = cuda_rope_store_op;
    o.sample = cuda_sample;
    return o;
}

/* Built once at static initialisation (a const table; C++ has no designated initialisers). */
static const nv_backend_ops cuda_ops = make_ops();
/* What the backend exposes: cuda_ops wrapped for captured decode steps (graph.cu). */
static const nv_backend_ops cuda_step_ops = cuda_graph_ops(&cuda_ops);

extern "C" void *nv_cuda_exec_stream(nv_exec *ex)
{
    return (void *)cuda_ex(ex)->stream;
}

extern "C" int nv_cuda_backend_device(const nv_backend *be)
{
    return ((const cuda_backend *)be->impl)->device;
}

extern "C" nvlm_status nv_backend_cuda_create(nvlm_context *ctx, int device, nv_backend **out)
{
    if (out == NULL) {
        return NVLM_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
    char why[256];
    if (!nv_cuda_probe_reason(device, why, sizeof why)) {
        return nv_error(ctx, NVLM_ERR_NO_DEVICE, "no usable CUDA device %d: %s", device, why);
    }
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
        return cuda_status(ctx, e, "device properties");
    }
    nv_backend *be = (nv_backend *)nv_calloc(ctx, 1, sizeof *be);
    cuda_backend *cb = (cuda_backend *)nv_calloc(ctx, 1, sizeof *cb);
    if (be == NULL || cb == NULL) {
        nv_free(ctx, be);
        nv_free(ctx, cb);
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the CUDA backend");
    }
    cb->device = device;
    cb->debug_sync = cuda_fault_sync_requested(getenv("NVLM_CUDA_SYNC"));
    cb->sm_count = p.multiProcessorCount;
    snprintf(cb->name, sizeof cb->name, "%s", p.name);
    cb->eager = &cuda_ops;
    be->ops = &cuda_step_ops;
    be->ctx = ctx;
    be->kv_default = NV_BF16;
    be->kv_reserve_all = true;
    be->device_memory = true;
    be->impl = cb;
    cuda_fault_backend_created(device);
    *out = be;
    return NVLM_OK;
}
