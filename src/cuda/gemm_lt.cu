/*
 * gemm_lt.cu - every cuBLASLt object of the backend: one handle, one 32 MiB workspace and a
 * cache of plans (descriptors + the heuristic's algorithms), all per exec (a session's stream,
 * used by one thread at a time, so nothing here is shared or locked). y (M, N) f32 = x (M, K)
 * bf16 . W (N, K)^T bf16 (+ bias (N) f32) with fp32 accumulation; in column-major terms
 * D (N x M) = op(A)^T B with A = W stored (K x N), B = x stored (K x M), D = y stored (N x M).
 * Which plan, which algorithm and what to do when one is rejected is gemm_plan.h's logic; this
 * file is its driver (gp_driver) over the real library.
 */
#include "cuda/cuda_internal.h"
#include "cuda/gemm_plan.h"

#include <cublasLt.h>
#include <string.h>

#define GEMM_WS_BYTES ((size_t)32 << 20)

static_assert(sizeof(cublasLtMatmulAlgo_t) == sizeof(((gp_cand *)0)->algo),
              "gp_cand.algo holds a cublasLtMatmulAlgo_t");

/* A plan: the matmul descriptor (M-independent) and the three layouts (B and D for the rows
 * of the last call). */
typedef struct lt_plan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    int epi;                /* epilogue set on desc: 1 bias, 0 plain, -1 none yet */
} lt_plan;

/* One GEMM call as the driver's run sees it. */
typedef struct lt_call {
    float *y;
    const __nv_bfloat16 *x;
    const __nv_bfloat16 *w;
    const float *bias;
    cudaStream_t stream;
    int fused;              /* out: the bias went through the epilogue */
} lt_call;

struct cuda_gemm {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    nvlm_context *ctx;
    gp_driver drv;
    gp_cache cache;
};

static nvlm_status lt_status(void *eh, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS) {
        return NVLM_OK;
    }
    return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt %s: %s (%d)", what, cublasLtGetStatusName(s),
                    (int)s);
}

/* ---- the driver ------------------------------------------------------------------------- */

/* Statuses that condemn one algorithm (or one epilogue), not the device: another may run. */
static bool lt_rejects(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE ||
           s == CUBLAS_STATUS_ARCH_MISMATCH;
}

static gp_res lt_res(cublasStatus_t s, int *lib)
{
    *lib = (int)s;
    if (s == CUBLAS_STATUS_SUCCESS) {
        return GP_OK;
    }
    return lt_rejects(s) ? GP_REJECT : GP_FAIL;
}

static const char *lt_name(int lib)
{
    return cublasLtGetStatusName((cublasStatus_t)lib);
}

static void lt_plan_destroy(void *self, void *plan)
{
    cuda_gemm *g = (cuda_gemm *)self;
    lt_plan *p = (lt_plan *)plan;
    if (p == NULL) {
        return;
    }
    if (p->desc != NULL) {
        cublasLtMatmulDescDestroy(p->desc);
    }
    if (p->a != NULL) {
        cublasLtMatrixLayoutDestroy(p->a);
    }
    if (p->b != NULL) {
        cublasLtMatrixLayoutDestroy(p->b);
    }
    if (p->d != NULL) {
        cublasLtMatrixLayoutDestroy(p->d);
    }
    nv_free(g->ctx, p);
}

static gp_res lt_plan_create(void *self, const gp_key *k, int M, void **plan, int *lib)
{
    cuda_gemm *g = (cuda_gemm *)self;
    *plan = NULL;
    lt_plan *p = (lt_plan *)nv_calloc(g->ctx, 1, sizeof *p);
    if (p == NULL) {
        *lib = (int)CUBLAS_STATUS_ALLOC_FAILED;
        return GP_FAIL;
    }
    p->epi = -1;
    cublasOperation_t ta = CUBLAS_OP_T;
    cublasOperation_t tb = CUBLAS_OP_N;
    cublasStatus_t s = cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, (uint64_t)k->k, (uint64_t)k->n, k->k);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, (uint64_t)k->k, (uint64_t)M, k->k);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatrixLayoutCreate(&p->d, CUDA_R_32F, (uint64_t)k->n, (uint64_t)M, k->n);
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        lt_plan_destroy(self, p);
        *lib = (int)s;
        return GP_FAIL;
    }
    *plan = p;
    return GP_OK;
}

static gp_res lt_plan_set_m(void *self, void *plan, int M, int *lib)
{
    (void)self;
    lt_plan *p = (lt_plan *)plan;
    uint64_t cols = (uint64_t)M;
    cublasStatus_t s = cublasLtMatrixLayoutSetAttribute(p->b, CUBLASLT_MATRIX_LAYOUT_COLS, &cols,
                                                        sizeof cols);
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatrixLayoutSetAttribute(p->d, CUBLASLT_MATRIX_LAYOUT_COLS, &cols,
                                             sizeof cols);
    }
    *lib = (int)s;
    return s == CUBLAS_STATUS_SUCCESS ? GP_OK : GP_FAIL;
}

static cublasStatus_t lt_set_epi(lt_plan *p, int epi_bias)
{
    if (p->epi == epi_bias) {
        return CUBLAS_STATUS_SUCCESS;
    }
    cublasLtEpilogue_t epi = epi_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    cublasStatus_t s = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                      &epi, sizeof epi);
    p->epi = s == CUBLAS_STATUS_SUCCESS ? epi_bias : -1;
    return s;
}

static gp_res lt_heuristic(void *self, void *plan, const gp_key *k, int epi_bias, gp_cand *out,
                           int max, int *n, int *lib)
{
    cuda_gemm *g = (cuda_gemm *)self;
    lt_plan *p = (lt_plan *)plan;
    *n = 0;
    cublasStatus_t s = lt_set_epi(p, epi_bias);
    if (s != CUBLAS_STATUS_SUCCESS) {
        return lt_res(s, lib);
    }
    cublasLtMatmulPreference_t pref = NULL;
    s = cublasLtMatmulPreferenceCreate(&pref);
    if (s != CUBLAS_STATUS_SUCCESS) {
        *lib = (int)s;
        return GP_FAIL;
    }
    size_t ws = g->ws_bytes;
    uint32_t al_a = (uint32_t)k->align_a;
    uint32_t al_b = (uint32_t)k->align_b;
    uint32_t al_d = (uint32_t)k->align_d;
    const struct {
        cublasLtMatmulPreferenceAttributes_t attr;
        const void *val;
        size_t size;
    } set[5] = {
        {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d},
    };
    for (int i = 0; i < 5 && s == CUBLAS_STATUS_SUCCESS; i++) {
        s = cublasLtMatmulPreferenceSetAttribute(pref, set[i].attr, set[i].val, set[i].size);
    }
    cublasLtMatmulHeuristicResult_t res[GP_MAX_CANDS];
    int got = 0;
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatmulAlgoGetHeuristic(g->lt, p->desc, p->a, p->b, p->d, p->d, pref,
                                           max < GP_MAX_CANDS ? max : GP_MAX_CANDS, res, &got);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) {
        return lt_res(s, lib);
    }
    for (int i = 0; i < got; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) {
            continue;
        }
        gp_cand *c = &out[*n];
        memset(c, 0, sizeof *c);
        memcpy(c->algo, &res[i].algo, sizeof c->algo);
        c->ws = res[i].workspaceSize;
        (*n)++;
    }
    *lib = (int)CUBLAS_STATUS_SUCCESS;
    return GP_OK;
}

static gp_res lt_check(void *self, void *plan, const gp_cand *c, size_t *ws, int *lib)
{
    cuda_gemm *g = (cuda_gemm *)self;
    lt_plan *p = (lt_plan *)plan;
    *ws = 0;
    cublasStatus_t s = lt_set_epi(p, c->epi_bias);
    if (s != CUBLAS_STATUS_SUCCESS) {
        return lt_res(s, lib);
    }
    cublasLtMatmulAlgo_t algo;
    memcpy(&algo, c->algo, sizeof algo);
    cublasLtMatmulHeuristicResult_t r;
    memset(&r, 0, sizeof r);
    s = cublasLtMatmulAlgoCheck(g->lt, p->desc, p->a, p->b, p->d, p->d, &algo, &r);
    if (s == CUBLAS_STATUS_SUCCESS) {
        *ws = r.workspaceSize;
    }
    return lt_res(s, lib);
}

static gp_res lt_run(void *self, void *plan, const gp_cand *c, void *call, int *lib)
{
    cuda_gemm *g = (cuda_gemm *)self;
    lt_plan *p = (lt_plan *)plan;
    lt_call *a = (lt_call *)call;
    cublasStatus_t s = lt_set_epi(p, c->epi_bias);
    if (s == CUBLAS_STATUS_SUCCESS && c->epi_bias) {
        const void *bp = a->bias;
        s = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp,
                                           sizeof bp);
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        return lt_res(s, lib);
    }
    cublasLtMatmulAlgo_t algo;
    memcpy(&algo, c->algo, sizeof algo);
    const float alpha = 1.0f;
    const float beta = 0.0f;
    s = cublasLtMatmul(g->lt, p->desc, &alpha, a->w, p->a, a->x, p->b, &beta, a->y, p->d, a->y,
                       p->d, &algo, g->ws, g->ws_bytes, a->stream);
    a->fused = c->epi_bias;
    return lt_res(s, lib);
}

/* ---- per exec --------------------------------------------------------------------------- */

nvlm_status cuda_gemm_create(nv_exec *ex, cuda_gemm **out)
{
    *out = NULL;
    nvlm_context *ctx = ex->be->ctx;
    cuda_gemm *g = (cuda_gemm *)nv_calloc(ctx, 1, sizeof *g);
    if (g == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for cuBLASLt");
    }
    g->ctx = ctx;
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
    g->drv.self = g;
    g->drv.ws_bytes = g->ws_bytes;
    g->drv.plan_create = lt_plan_create;
    g->drv.plan_destroy = lt_plan_destroy;
    g->drv.plan_set_m = lt_plan_set_m;
    g->drv.heuristic = lt_heuristic;
    g->drv.check = lt_check;
    g->drv.run = lt_run;
    g->drv.lib_name = lt_name;
    *out = g;
    return NVLM_OK;
}

/* Frees everything; the caller has synchronised the stream. */
void cuda_gemm_free(nvlm_context *ctx, cuda_gemm *g)
{
    if (g == NULL) {
        return;
    }
    gp_clear(&g->cache, &g->drv);
    if (g->ws != NULL) {
        cudaFree(g->ws);
    }
    cublasLtDestroy(g->lt);
    nv_free(ctx, g);
}

static int32_t ptr_align(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    if (u == 0) {
        return 256;
    }
    uintptr_t low = u & (~u + 1);
    return low >= 256 ? 256 : (int32_t)low;
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
    gp_key k;
    memset(&k, 0, sizeof k);
    k.n = N;
    k.k = K;
    k.bias = bias != NULL;
    k.align_a = ptr_align(w);
    k.align_b = ptr_align(x);
    k.align_d = ptr_align(y);
    lt_call call;
    memset(&call, 0, sizeof call);
    call.y = y;
    call.x = x;
    call.w = w;
    call.bias = bias;
    call.stream = ce->stream;
    NVLM_TRY(gp_gemm(&g->cache, &g->drv, ex->err_handle, &k, M, &call));
    if (bias != NULL && !call.fused) {
        NVLM_TRY(cuda_status(ex->err_handle, cuda_add_rows(ce->stream, y, bias, NV_F32, 1, M, N),
                             "matmul bias"));
    }
    return NVLM_OK;
}
