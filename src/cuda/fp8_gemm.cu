/*
 * fp8_gemm.cu - the FP8 matmul op of the CUDA backend (cuda_matmul_fp8): which path runs (the
 * kernels are in fp8.cu), its per-exec scratch and the cuBLASLt E4M3 x E4M3 GEMM (its own
 * handle, an 8 MiB workspace and a 16-entry cache of descriptors + algorithm per shape, so
 * gemm_lt.cu's bf16 cache is untouched). Paths: M <= CUDA_FP8_GEMV_MAX_M the GEMV; above, with
 * precision FAST on sm_89+ and K % 16 == 0, E4M3 activations x E4M3 weights with the per-token
 * and per-row scales in an epilogue; otherwise (and when cuBLASLt offers no FP8 algorithm) the
 * weight widened to bf16 codes in blocks of rows, the bf16 GEMM, and the epilogue.
 */
#include "cuda/cuda_internal.h"
extern "C" {
#include "memory_plan.h"
}

#include <cublasLt.h>
#include <string.h>

/* The sizes the memory estimator counts (memory_plan.h). */
#define FP8_LT_WS ((size_t)NV_MEM_FP8_WORKSPACE)
#define FP8_LT_CACHE 16

/* ---- per-exec state: scratch and the cuBLASLt E4M3 x E4M3 GEMM ------------------------ */

typedef struct fp8_lt_entry {
    int M, N, K, align_y, used;
    int failed;                   /* cublasLtMatmul refused it once: the widening path */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} fp8_lt_entry;

struct cuda_fp8 {
    int cc;                       /* compute capability major * 10 + minor */
    uint8_t *xq;                  /* E4M3 activations, M x K */
    size_t xq_cap;
    float *a_scale;               /* their per-row scales */
    size_t a_scale_cap;
    __nv_bfloat16 *wdq;           /* a block of weight rows widened to bf16 */
    size_t wdq_cap;
    float *acc;                   /* that block's GEMM output */
    size_t acc_cap;
    cublasLtHandle_t lt;          /* created at the first FP8 GEMM */
    void *ws;
    fp8_lt_entry cache[FP8_LT_CACHE];
    int next;                     /* round-robin replacement */
    int lt_broken;                /* cuBLASLt FP8 unusable here: dequantizing path only */
};

static void lt_entry_clear(fp8_lt_entry *e)
{
    if (e->desc != NULL) {
        cublasLtMatmulDescDestroy(e->desc);
    }
    if (e->a != NULL) {
        cublasLtMatrixLayoutDestroy(e->a);
    }
    if (e->b != NULL) {
        cublasLtMatrixLayoutDestroy(e->b);
    }
    if (e->d != NULL) {
        cublasLtMatrixLayoutDestroy(e->d);
    }
    memset(e, 0, sizeof *e);
}

void cuda_fp8_free(nvlm_context *ctx, cuda_fp8 *f)
{
    if (f == NULL) {
        return;
    }
    for (int i = 0; i < FP8_LT_CACHE; i++) {
        lt_entry_clear(&f->cache[i]);
    }
    if (f->lt != NULL) {
        cublasLtDestroy(f->lt);
    }
    void *bufs[5] = {f->xq, f->a_scale, f->wdq, f->acc, f->ws};
    for (int i = 0; i < 5; i++) {
        if (bufs[i] != NULL) {
            cudaFree(bufs[i]);
        }
    }
    nv_free(ctx, f);
}

static nvlm_status fp8_state(nv_exec *ex, cuda_fp8 **out)
{
    cuda_exec *ce = cuda_ex(ex);
    if (ce->fp8 == NULL) {
        cuda_fp8 *f = (cuda_fp8 *)nv_calloc(ex->be->ctx, 1, sizeof *f);
        if (f == NULL) {
            return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                            "out of memory for the FP8 matmul state");
        }
        int major = 0;
        int minor = 0;
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ce->cb->device);
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ce->cb->device);
        f->cc = major * 10 + minor;
        ce->fp8 = f;
    }
    *out = ce->fp8;
    return NVLM_OK;
}

/* Byte alignment of a device pointer (1 .. 256). */
static int ptr_align(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    if (u == 0) {
        return 256;
    }
    uintptr_t low = u & (~u + 1);
    return low >= 256 ? 256 : (int)low;
}

/* The cached descriptors and algorithm of an E4M3 x E4M3 -> f32 GEMM of this shape and output
 * alignment (A and B are scratch or weight allocations: 256-byte aligned), or NULL (no error
 * set) when cuBLASLt offers none or refused it at run time. D (N x M, column-major) = A^T B with A = the
 * codes stored K x N (TN: the layout FP8 GEMMs require), B = xq stored K x M. */
static fp8_lt_entry *lt_entry(cuda_fp8 *f, int M, int N, int K, int align_y)
{
    for (int i = 0; i < FP8_LT_CACHE; i++) {
        fp8_lt_entry *e = &f->cache[i];
        if (e->used && e->M == M && e->N == N && e->K == K && e->align_y == align_y) {
            return e->failed ? NULL : e;
        }
    }
    fp8_lt_entry *e = &f->cache[f->next];
    f->next = (f->next + 1) % FP8_LT_CACHE;
    lt_entry_clear(e);
    cublasOperation_t ta = CUBLAS_OP_T;
    cublasOperation_t tb = CUBLAS_OP_N;
    bool ok = cublasLtMatmulDescCreate(&e->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) ==
              CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                              sizeof ta) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                              sizeof tb) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&e->a, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)N,
                                          K) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&e->b, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)M,
                                          K) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&e->d, CUDA_R_32F, (uint64_t)N, (uint64_t)M, N) ==
                   CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulPreference_t pref = NULL;
    ok = ok && cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS;
    if (ok) {
        size_t ws = FP8_LT_WS;
        uint32_t al = 256;
        uint32_t ad = (uint32_t)align_y;
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof ws);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                             &al, sizeof al);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                             &al, sizeof al);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                             &ad, sizeof ad);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                             &ad, sizeof ad);
        cublasLtMatmulHeuristicResult_t res;
        int n_res = 0;
        ok = cublasLtMatmulAlgoGetHeuristic(f->lt, e->desc, e->a, e->b, e->d, e->d, pref, 1,
                                            &res, &n_res) == CUBLAS_STATUS_SUCCESS && n_res > 0;
        if (ok) {
            e->algo = res.algo;
        }
    }
    if (pref != NULL) {
        cublasLtMatmulPreferenceDestroy(pref);
    }
    if (!ok) {
        lt_entry_clear(e);
        return NULL;
    }
    e->M = M;
    e->N = N;
    e->K = K;
    e->align_y = align_y;
    e->used = 1;
    return e;
}

/* The FP8 x FP8 path; *done false when cuBLASLt has no algorithm for the shape or refuses it
 * (then at most the activation quantization was enqueued, its output unused). */
static nvlm_status fp8_gemm_lt(nv_exec *ex, cuda_fp8 *f, float *y, const float *x,
                               const uint8_t *q, const float *w_scale, const float *bias, int M,
                               int N, int K, bool *done)
{
    *done = false;
    cuda_exec *ce = cuda_ex(ex);
    void *eh = ex->err_handle;
    if (f->lt == NULL) {
        if (cublasLtCreate(&f->lt) != CUBLAS_STATUS_SUCCESS) {
            f->lt = NULL;
            f->lt_broken = 1;
            return NVLM_OK;
        }
    }
    if (f->ws == NULL) {
        /* Apart from the handle: after a failed allocation the next call tries again rather
         * than hand cublasLtMatmul a NULL workspace of FP8_LT_WS bytes. */
        cudaError_t e = cudaMalloc(&f->ws, FP8_LT_WS);
        if (e != cudaSuccess) {
            cudaGetLastError();
            f->ws = NULL;
            return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY,
                            "out of device memory for the FP8 GEMM workspace");
        }
    }
    fp8_lt_entry *e = lt_entry(f, M, N, K, ptr_align(y));
    if (e == NULL) {
        return NVLM_OK;
    }
    size_t n = (size_t)M * (size_t)K;
    NVLM_TRY(cuda_scratch(ex, (void **)&f->xq, &f->xq_cap, n, 1, "FP8 activations"));
    NVLM_TRY(cuda_scratch(ex, (void **)&f->a_scale, &f->a_scale_cap, (size_t)M, sizeof(float),
                          "FP8 activation scales"));
    NVLM_TRY(cuda_status(eh, cuda_fp8_quant_rows(ce->stream, f->xq, f->a_scale, x, M, K),
                         "FP8 activation quantization"));
    const float alpha = 1.0f;
    const float beta = 0.0f;
    cublasStatus_t s = cublasLtMatmul(f->lt, e->desc, &alpha, q, e->a, f->xq, e->b, &beta, y,
                                      e->d, y, e->d, &e->algo, f->ws, FP8_LT_WS, ce->stream);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE ||
        s == CUBLAS_STATUS_ARCH_MISMATCH) {
        /* refused at run time (nothing enqueued; the codes in xq are unused): this shape takes
         * the widening path from now on */
        e->failed = 1;
        return NVLM_OK;
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        /* an execution or allocation failure is the device's, not this shape's: say so */
        return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt FP8 GEMM M %d N %d K %d: %s", M, N, K,
                        cublasLtGetStatusString(s));
    }
    NVLM_TRY(cuda_status(eh, cuda_fp8_epilogue(ce->stream, y, N, 0, y, N, f->a_scale, w_scale,
                                               bias, M), "FP8 matmul epilogue"));
    *done = true;
    return NVLM_OK;
}

/* Blocks of weight rows widened to bf16 codes, the bf16 GEMM, then the weight scales. */
static nvlm_status fp8_gemm_dequant(nv_exec *ex, cuda_fp8 *f, float *y, const float *x,
                                    const uint8_t *q, const float *w_scale, const float *bias,
                                    int M, int N, int K)
{
    cuda_exec *ce = cuda_ex(ex);
    void *eh = ex->err_handle;
    size_t n = (size_t)M * (size_t)K;
    NVLM_TRY(cuda_scratch(ex, (void **)&ce->xbf, &ce->xbf_cap, n, sizeof(__nv_bfloat16),
                          "matmul input"));
    NVLM_TRY(cuda_status(eh, cuda_to_bf16(ce->stream, ce->xbf, x, n), "matmul input"));
    int nc = (int)nv_mem_fp8_block_rows(N, K);
    NVLM_TRY(cuda_scratch(ex, (void **)&f->wdq, &f->wdq_cap, (size_t)nc * (size_t)K,
                          sizeof(__nv_bfloat16), "FP8 weight block"));
    if (nc < N) {
        NVLM_TRY(cuda_scratch(ex, (void **)&f->acc, &f->acc_cap, (size_t)M * (size_t)nc,
                              sizeof(float), "FP8 matmul block"));
    }
    for (int n0 = 0; n0 < N; n0 += nc) {
        int c = N - n0 < nc ? N - n0 : nc;
        float *acc = nc < N ? f->acc : y;
        NVLM_TRY(cuda_status(eh, cuda_fp8_to_bf16(ce->stream, f->wdq,
                                                  q + (size_t)n0 * (size_t)K,
                                                  (size_t)c * (size_t)K), "FP8 weight block"));
        NVLM_TRY(cuda_gemm_bf16(ex, acc, ce->xbf, f->wdq, NULL, M, c, K));
        NVLM_TRY(cuda_status(eh, cuda_fp8_epilogue(ce->stream, y, N, n0, acc, c, NULL, w_scale,
                                                   bias, M), "FP8 matmul epilogue"));
    }
    return NVLM_OK;
}

nvlm_status cuda_matmul_fp8(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                            const nv_bweight *bias, int M)
{
    const nv_tensor *t = &w->t;
    if (t->ndim != 2 || t->scale == NULL || t->shape[0] > INT32_MAX || t->shape[1] > INT32_MAX) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "matmul: malformed FP8 weight");
    }
    int N = (int)t->shape[0];
    int K = (int)t->shape[1];
    if (M <= 0 || N <= 0) {
        return NVLM_OK;
    }
    NVLM_TRY(cuda_enter(ex));
    cuda_exec *ce = cuda_ex(ex);
    const uint8_t *q = (const uint8_t *)t->data;
    const float *b = bias != NULL ? (const float *)bias->t.data : NULL;
    if (M <= CUDA_FP8_GEMV_MAX_M) {
        if (M == 1) {
            return cuda_status(ex->err_handle, cuda_fp8_gemv_f32(ce->stream, y, x, q, t->scale,
                                                                 b, M, N, K), "FP8 GEMV");
        }
        size_t n = (size_t)M * (size_t)K;
        NVLM_TRY(cuda_scratch(ex, (void **)&ce->xbf, &ce->xbf_cap, n, sizeof(__nv_bfloat16),
                              "matmul input"));
        NVLM_TRY(cuda_status(ex->err_handle, cuda_to_bf16(ce->stream, ce->xbf, x, n),
                             "matmul input"));
        return cuda_status(ex->err_handle, cuda_fp8_gemv_bf16(ce->stream, y, ce->xbf, q,
                                                              t->scale, b, M, N, K), "FP8 GEMV");
    }
    cuda_fp8 *f = NULL;
    NVLM_TRY(fp8_state(ex, &f));
    if (ex->be->precision == NVLM_PRECISION_FAST && f->cc >= 89 && K % 16 == 0 &&
        !f->lt_broken) {
        bool done = false;
        NVLM_TRY(fp8_gemm_lt(ex, f, y, x, q, t->scale, b, M, N, K, &done));
        if (done) {
            return NVLM_OK;
        }
    }
    return fp8_gemm_dequant(ex, f, y, x, q, t->scale, b, M, N, K);
}
