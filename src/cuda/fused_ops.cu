/*
 * fused_ops.cu - backend.h's optional fused ops on CUDA (the kernels are in fused.cu): the
 * residual add + RMSNorm that leaves the next GEMM's bf16 input in the session's scratch,
 * SiLU(gate) * up over a grouped gate|up output, RoPE fused into the KV append, and the
 * session's RoPE frequency table (host and device copies, made when head_dim or theta change).
 */
#include "cuda/cuda_internal.h"


static_assert(CUDA_ROPE_MAX_HALF * sizeof(float) <= sizeof(((cuda_exec *)0)->rope_host),
              "rope_host holds CUDA_ROPE_MAX_HALF frequencies");

nvlm_status cuda_rope_table(nv_exec *ex, int head_dim, double theta)
{
    cuda_exec *ce = cuda_ex(ex);
    int half = head_dim / 2;
    if (half <= 0 || half > CUDA_ROPE_MAX_HALF || head_dim % 2 != 0) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "head_dim %d not supported",
                        head_dim);
    }
    if (ce->rope_half == half && ce->rope_theta == theta) {
        return NVLM_OK;
    }
    cuda_rope_inv_freq(theta, head_dim, ce->rope_host);
    if (ce->rope_dev == NULL) {
        cudaError_t e = cudaMalloc((void **)&ce->rope_dev, CUDA_ROPE_MAX_HALF * sizeof(float));
        if (e != cudaSuccess) {
            cudaGetLastError();
            ce->rope_dev = NULL;
            return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                            "out of device memory for the RoPE table");
        }
    }
    /* Ordered on the stream before every kernel that reads the table; the host copy is
     * staged at once (pageable source), so rope_host may change later. */
    NVLM_TRY(cuda_status(ex->err_handle,
                         cudaMemcpyAsync(ce->rope_dev, ce->rope_host, (size_t)half * sizeof(float),
                                         cudaMemcpyHostToDevice, ce->stream),
                         "RoPE table"));
    ce->rope_half = half;
    ce->rope_theta = theta;
    return NVLM_OK;
}

nvlm_status cuda_add_rmsnorm_op(nv_exec *ex, float *h, const float *a, const nv_bweight *s,
                                float *x, const nv_bweight *w, int rows, int cols, float eps)
{
    if (w == NULL || w->t.dtype != NV_F32 || (s != NULL && s->t.dtype != NV_F32)) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "add_rmsnorm: weight vector not f32");
    }
    if (rows <= 0 || cols <= 0) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    cuda_exec *ce = cuda_ex(ex);
    size_t n = (size_t)rows * (size_t)cols;
    NVLM_TRY(cuda_scratch(ex, (void **)&ce->xbf, &ce->xbf_cap, n, sizeof(__nv_bfloat16),
                          "matmul input"));
    NVLM_TRY(cuda_status(ex->err_handle,
                         cuda_add_rmsnorm(ce->stream, h, a,
                                          s != NULL ? (const float *)s->t.data : NULL, x, ce->xbf,
                                          (const float *)w->t.data, rows, cols, eps),
                         "add_rmsnorm"));
    /* xbf now holds bf16(x): the next matmuls reading x skip their conversion. */
    ce->xbf_of = x;
    ce->xbf_n = n;
    return NVLM_OK;
}

nvlm_status cuda_silu_mul_cat_op(nv_exec *ex, float *y, const float *gu, int rows, int cols)
{
    NVLM_TRY(cuda_enter(ex));
    return cuda_status(ex->err_handle, cuda_silu_mul_cat(cuda_ex(ex)->stream, y, gu, rows, cols),
                       "silu_mul_cat");
}

nvlm_status cuda_rope_store_op(nv_exec *ex, void *dst, nv_dtype type, int64_t row0, float *src,
                               int lds, int rows, int n_heads, int head_dim, double theta)
{
    if (type != NV_F32 && type != NV_BF16) {
        return nv_error(ex->err_handle, NVLM_ERR_UNSUPPORTED, "cache dtype %s",
                        nv_dtype_name(type));
    }
    NVLM_TRY(cuda_enter(ex));
    NVLM_TRY(cuda_rope_table(ex, head_dim, theta));
    cuda_exec *ce = cuda_ex(ex);
    return cuda_status(ex->err_handle,
                       cuda_rope_store(ce->stream, dst, type, row0, src, lds, rows, n_heads,
                                       head_dim, ce->rope_dev),
                       "rope_store");
}
