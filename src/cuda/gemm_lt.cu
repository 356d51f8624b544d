/*
 * gemm_lt.cu - every cuBLASLt object of the backend: one handle, one 32 MiB workspace and a
 * per-shape cache of descriptors + chosen algorithm, all per exec (a session's stream, used by
 * one thread at a time, so nothing here is shared or locked). y (M, N) f32 = x (M, K) bf16 .
 * W (N, K)^T bf16 (+ bias (N) f32) with fp32 accumulation; in column-major terms
 * D (N x M) = op(A)^T B with A = W stored (K x N), B = x stored (K x M), D = y stored (N x M).
 */
#include "cuda/cuda_internal.h"

#include <cublasLt.h>
#include <string.h>

#define GEMM_WS_BYTES ((size_t)32 << 20)
#define GEMM_CACHE 128

typedef struct gemm_key {
    int M, N, K;
    int bias;       /* a bias was passed */
    int align_y;    /* byte alignment of y (1..256) */
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    int used;
    int epi_bias;   /* bias fused in the epilogue (else added by a kernel afterwards) */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} gemm_entry;

struct cuda_gemm {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    gemm_entry cache[GEMM_CACHE];
};

static nvlm_status lt_status(void *eh, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS) {
        return NVLM_OK;
    }
    return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt %s: %s (%d)", what, cublasLtGetStatusName(s),
                    (int)s);
}

static void entry_clear(gemm_entry *e)
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

nvlm_status cuda_gemm_create(nv_exec *ex, cuda_gemm **out)
{
    *out = NULL;
    nvlm_context *ctx = ex->be->ctx;
    cuda_gemm *g = (cuda_gemm *)nv_calloc(ctx, 1, sizeof *g);
    if (g == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for cuBLASLt");
    }
    nvlm_status st = lt_status(ex->err_handle, cublasLtCreate(&g->lt), "create");
    if (st != NVLM_OK) {
        nv_free(ctx, g);
        return st;
    }
    cudaError_t e = cudaMalloc(&g->ws, GEMM_WS_BYTES);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cublasLtDestroy(g->lt);
        nv_free(ctx, g);
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                        "out of device memory for the cuBLASLt workspace");
    }
    g->ws_bytes = GEMM_WS_BYTES;
    *out = g;
    return NVLM_OK;
}

/* Frees everything; the caller has synchronised the stream. */
void cuda_gemm_free(nvlm_context *ctx, cuda_gemm *g)
{
    if (g == NULL) {
        return;
    }
    for (int i = 0; i < GEMM_CACHE; i++) {
        if (g->cache[i].used) {
            entry_clear(&g->cache[i]);
        }
    }
    if (g->ws != NULL) {
        cudaFree(g->ws);
    }
    cublasLtDestroy(g->lt);
    nv_free(ctx, g);
}

static int ptr_align(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    if (u == 0) {
        return 256;
    }
    uintptr_t low = u & (~u + 1);
    return low >= 256 ? 256 : (int)low;
}

static unsigned key_hash(const gemm_key *k)
{
    uint64_t h = 1469598103934665603ull;
    const int v[5] = {k->M, k->N, k->K, k->bias, k->align_y};
    for (int i = 0; i < 5; i++) {
        h = (h ^ (uint32_t)v[i]) * 1099511628211ull;
    }
    return (unsigned)(h ^ (h >> 29));
}

/* Builds descriptors and asks the heuristic for the best algorithm; with a bias it first tries
 * the BIAS epilogue and falls back to a plain GEMM (bias then added by add_rows). */
static nvlm_status entry_build(nv_exec *ex, cuda_gemm *g, gemm_entry *e, const gemm_key *k)
{
    void *eh = ex->err_handle;
    memset(e, 0, sizeof *e);
    e->key = *k;
    e->used = 1;
    nvlm_status st = lt_status(eh, cublasLtMatmulDescCreate(&e->desc, CUBLAS_COMPUTE_32F,
                                                            CUDA_R_32F), "matmul desc");
    cublasOperation_t ta = CUBLAS_OP_T;
    cublasOperation_t tb = CUBLAS_OP_N;
    if (st == NVLM_OK) {
        st = lt_status(eh, cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                          &ta, sizeof ta), "transa");
    }
    if (st == NVLM_OK) {
        st = lt_status(eh, cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                          &tb, sizeof tb), "transb");
    }
    if (st == NVLM_OK) {
        st = lt_status(eh, cublasLtMatrixLayoutCreate(&e->a, CUDA_R_16BF, (uint64_t)k->K,
                                                      (uint64_t)k->N, k->K), "layout A");
    }
    if (st == NVLM_OK) {
        st = lt_status(eh, cublasLtMatrixLayoutCreate(&e->b, CUDA_R_16BF, (uint64_t)k->K,
                                                      (uint64_t)k->M, k->K), "layout B");
    }
    if (st == NVLM_OK) {
        st = lt_status(eh, cublasLtMatrixLayoutCreate(&e->d, CUDA_R_32F, (uint64_t)k->N,
                                                      (uint64_t)k->M, k->N), "layout D");
    }
    cublasLtMatmulPreference_t pref = NULL;
    if (st == NVLM_OK) {
        st = lt_status(eh, cublasLtMatmulPreferenceCreate(&pref), "preference");
    }
    if (st == NVLM_OK) {
        size_t ws = g->ws_bytes;
        uint32_t al = 256;
        uint32_t ad = (uint32_t)k->align_y;
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
        for (int attempt = k->bias ? 0 : 1; attempt < 2; attempt++) {
            cublasLtEpilogue_t epi = attempt == 0 ? CUBLASLT_EPILOGUE_BIAS
                                                  : CUBLASLT_EPILOGUE_DEFAULT;
            cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                           sizeof epi);
            cublasLtMatmulHeuristicResult_t res;
            int n_res = 0;
            cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(g->lt, e->desc, e->a, e->b, e->d,
                                                              e->d, pref, 1, &res, &n_res);
            if (s == CUBLAS_STATUS_SUCCESS && n_res > 0) {
                e->algo = res.algo;
                e->epi_bias = attempt == 0;
                break;
            }
            if (attempt == 1) {
                st = nv_error(eh, NVLM_ERR_BACKEND,
                              "cuBLASLt has no algorithm for bf16 GEMM M %d N %d K %d (%s)",
                              k->M, k->N, k->K, cublasLtGetStatusName(s));
            }
        }
    }
    if (pref != NULL) {
        cublasLtMatmulPreferenceDestroy(pref);
    }
    if (st != NVLM_OK) {
        entry_clear(e);
    }
    return st;
}

nvlm_status cuda_gemm_bf16(nv_exec *ex, float *y, const __nv_bfloat16 *x,
                           const __nv_bfloat16 *w, const float *bias, int M, int N, int K)
{
    cuda_exec *ce = cuda_ex(ex);
    if (M <= 0 || N <= 0) {
        return NVLM_OK;
    }
    if (ce->gemm == NULL) {
        NVLM_TRY(cuda_gemm_create(ex, &ce->gemm));
    }
    cuda_gemm *g = ce->gemm;
    gemm_key k;
    memset(&k, 0, sizeof k);
    k.M = M;
    k.N = N;
    k.K = K;
    k.bias = bias != NULL;
    k.align_y = ptr_align(y);
    unsigned h = key_hash(&k) % GEMM_CACHE;
    gemm_entry *e = NULL;
    for (unsigned i = 0; i < GEMM_CACHE; i++) {
        gemm_entry *c = &g->cache[(h + i) % GEMM_CACHE];
        if (!c->used) {
            e = c;
            break;
        }
        if (memcmp(&c->key, &k, sizeof k) == 0) {
            e = c;
            break;
        }
    }
    if (e == NULL) {
        e = &g->cache[h]; /* full: replace the home slot */
        entry_clear(e);
    }
    if (!e->used) {
        NVLM_TRY(entry_build(ex, g, e, &k));
    }
    if (e->epi_bias) {
        const void *bp = bias;
        NVLM_TRY(lt_status(ex->err_handle,
                           cublasLtMatmulDescSetAttribute(e->desc,
                                                          CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                          &bp, sizeof bp),
                           "bias pointer"));
    }
    const float alpha = 1.0f;
    const float beta = 0.0f;
    NVLM_TRY(lt_status(ex->err_handle,
                       cublasLtMatmul(g->lt, e->desc, &alpha, w, e->a, x, e->b, &beta, y, e->d,
                                      y, e->d, &e->algo, g->ws, g->ws_bytes, ce->stream),
                       "matmul"));
    if (bias != NULL && !e->epi_bias) {
        NVLM_TRY(cuda_status(ex->err_handle, cuda_add_rows(ce->stream, y, bias, NV_F32, 1, M, N),
                             "matmul bias"));
    }
    return NVLM_OK;
}
