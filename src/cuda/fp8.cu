/*
 * fp8.cu - FP8 E4M3 weights on the device (fp8.h's scheme: N x K codes, one f32 scale per
 * output row n; y[m][n] = scale[n] * sum_k x[m][k] * e4m3(q[n][k]) (+ bias[n])).
 *
 * Decode (M <= CUDA_FP8_GEMV_MAX_M rows of x): a weight-only GEMV. Every code is read once,
 * 16 per thread per load (16-byte vector loads), decoded to f32 in registers
 * (__nv_cvt_fp8x2_to_halfraw2: one cvt per pair on sm_89+, bit operations before), multiplied
 * with x (f32 for one row, else bf16) and accumulated in f32; a block of 128 threads owns R rows
 * and splits K among its four warps (enough loads in flight for the narrow k/v projections).
 *
 * Prefill, NVLM_PRECISION_EXACT (the default): blocks of weight rows are widened exactly to
 * bf16 codes (no scale: every E4M3 value is a bf16 value) and go through the bf16 GEMM with x
 * in bf16 (as every CUDA GEMM reads it), then an epilogue applies the weight scales and the
 * bias: the result stays within bf16 rounding of x of the CPU's FP8 layer.
 *
 * Prefill, NVLM_PRECISION_FAST, sm_89+: each row m of x is quantized to E4M3 with its own
 * dynamic scale (a_scale[m] = max_k |x[m][k]| / 448, 1 for an all-zero row; q = E4M3(x /
 * a_scale), round to nearest even, saturating), cuBLASLt multiplies codes by codes (E4M3 x E4M3, f32 accumulation,
 * unit scales) into y, and an epilogue kernel applies y[m][n] = y[m][n] * a_scale[m] *
 * w_scale[n] + bias[n]. cuBLASLt's per-row (outer vector) scale mode is not used: it is not
 * available on every sm_89/sm_90 build of the library, and the epilogue is one pass over y.
 * Rounding x to E4M3 moves each output by about 2-3 % (relative L2), which is why this is not
 * the default. On sm_80, for K not a multiple of 16 and when cuBLASLt offers no FP8 algorithm,
 * FAST takes the bf16 path above.
 */
#include "cuda/cuda_internal.h"

#include <cublasLt.h>
#include <cuda_fp8.h>
#include <string.h>

#define FP8_THREADS 128           /* GEMV block: four warps on the same rows */
#define FP8_WARPS (FP8_THREADS / 32)
#define FP8_LT_WS ((size_t)8 << 20)
#define FP8_LT_CACHE 16
/* Elements of the bf16 weight block of the dequantizing path (64 MiB). */
#define FP8_DQ_ELEMS ((size_t)32 << 20)

/* ---- decode helpers ------------------------------------------------------------------- */

/* Four codes (one 32-bit word, code 0 in the low byte) as f32. */
static __device__ __forceinline__ void fp8x4_to_f32(uint32_t w, float *o)
{
    __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3);
    __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> 16), __NV_E4M3);
    float2 a = __half22float2(*(const __half2 *)&lo);
    float2 b = __half22float2(*(const __half2 *)&hi);
    o[0] = a.x;
    o[1] = a.y;
    o[2] = b.x;
    o[3] = b.y;
}

/* 16 activations at p (16-byte aligned) as f32. */
static __device__ __forceinline__ void x16(const float *p, float *o)
{
    const float4 *v = (const float4 *)p;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float4 f = __ldg(v + i);
        o[4 * i] = f.x;
        o[4 * i + 1] = f.y;
        o[4 * i + 2] = f.z;
        o[4 * i + 3] = f.w;
    }
}

static __device__ __forceinline__ void x16(const __nv_bfloat16 *p, float *o)
{
    const uint4 *v = (const uint4 *)p;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        uint4 u = __ldg(v + i);
        uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            o[8 * i + 2 * j] = __uint_as_float(w[j] << 16);
            o[8 * i + 2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
        }
    }
}

static __device__ __forceinline__ float x1(const float *p)
{
    return __ldg(p);
}

static __device__ __forceinline__ float x1(const __nv_bfloat16 *p)
{
    return __bfloat162float(*p);
}

/* ---- GEMV ----------------------------------------------------------------------------- */

/* y[m][n] = scale[n] * sum_k x[m][k] q[n][k] (+ bias[n]) for rows n0 .. n0 + R of block
 * blockIdx.x (n0 = blockIdx.x * R), m < M. VEC: K % 16 == 0 and x, q 16-byte aligned (so
 * every row of both starts on 16 bytes: 16-byte loads); else one code at a time. */
template <typename TX, int M, int R, bool VEC>
static __global__ void __launch_bounds__(FP8_THREADS)
fp8_gemv_kernel(float *y, const TX *x, const uint8_t *q, const float *scale, const float *bias,
                int N, int K)
{
    __shared__ float red[FP8_WARPS][M][R];
    const int n0 = blockIdx.x * R;
    const int tid = threadIdx.x;
    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            acc[m][r] = 0.0f;
        }
    }
    /* rows past N read row N - 1 again (their sums are dropped) */
    const uint8_t *row[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        int n = n0 + r < N ? n0 + r : N - 1;
        row[r] = q + (size_t)n * (size_t)K;
    }
    if (VEC) {
        for (int k = tid * 16; k < K; k += FP8_THREADS * 16) {
            uint4 wv[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                wv[r] = __ldg((const uint4 *)(row[r] + k));
            }
            float wf[R][16];
#pragma unroll
            for (int r = 0; r < R; r++) {
                fp8x4_to_f32(wv[r].x, &wf[r][0]);
                fp8x4_to_f32(wv[r].y, &wf[r][4]);
                fp8x4_to_f32(wv[r].z, &wf[r][8]);
                fp8x4_to_f32(wv[r].w, &wf[r][12]);
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xf[16];
                x16(x + (size_t)m * (size_t)K + k, xf);
#pragma unroll
                for (int r = 0; r < R; r++) {
#pragma unroll
                    for (int j = 0; j < 16; j++) {
                        acc[m][r] = fmaf(xf[j], wf[r][j], acc[m][r]);
                    }
                }
            }
        }
    } else {
        for (int k = tid; k < K; k += FP8_THREADS) {
            float wf[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)row[r][k], __NV_E4M3);
                wf[r] = __half2float(*(const __half *)&h);
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xv = x1(x + (size_t)m * (size_t)K + k);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    acc[m][r] = fmaf(xv, wf[r], acc[m][r]);
                }
            }
        }
    }
    const int lane = tid & 31;
    const int warp = tid >> 5;
#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = acc[m][r];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                v += __shfl_xor_sync(0xffffffffu, v, o);
            }
            if (lane == 0) {
                red[warp][m][r] = v;
            }
        }
    }
    __syncthreads();
    if (tid < M * R) {
        int m = tid / R;
        int r = tid % R;
        int n = n0 + r;
        if (n < N) {
            float s = ((red[0][m][r] + red[1][m][r]) + (red[2][m][r] + red[3][m][r]));
            float v = s * scale[n];
            y[(size_t)m * (size_t)N + n] = bias != NULL ? v + bias[n] : v;
        }
    }
}

template <typename TX, int M, int R>
static cudaError_t gemv_launch(cudaStream_t s, float *y, const TX *x, const uint8_t *q,
                               const float *scale, const float *bias, int N, int K)
{
    unsigned grid = (unsigned)((N + R - 1) / R);
    if (K % 16 == 0 && ((uintptr_t)x | (uintptr_t)q) % 16 == 0) {
        fp8_gemv_kernel<TX, M, R, true><<<grid, FP8_THREADS, 0, s>>>(y, x, q, scale, bias, N, K);
    } else {
        fp8_gemv_kernel<TX, M, R, false><<<grid, FP8_THREADS, 0, s>>>(y, x, q, scale, bias, N,
                                                                      K);
    }
    return cudaGetLastError();
}

/* Rows per block: 2 for one or two rows of x, 4 above (x is read from cache once per R rows). */
template <typename TX>
static cudaError_t gemv_any(cudaStream_t s, float *y, const TX *x, const uint8_t *q,
                            const float *scale, const float *bias, int M, int N, int K)
{
    switch (M) {
    case 1: return gemv_launch<TX, 1, 2>(s, y, x, q, scale, bias, N, K);
    case 2: return gemv_launch<TX, 2, 2>(s, y, x, q, scale, bias, N, K);
    case 3: return gemv_launch<TX, 3, 4>(s, y, x, q, scale, bias, N, K);
    case 4: return gemv_launch<TX, 4, 4>(s, y, x, q, scale, bias, N, K);
    case 5: return gemv_launch<TX, 5, 4>(s, y, x, q, scale, bias, N, K);
    case 6: return gemv_launch<TX, 6, 4>(s, y, x, q, scale, bias, N, K);
    case 7: return gemv_launch<TX, 7, 4>(s, y, x, q, scale, bias, N, K);
    case 8: return gemv_launch<TX, 8, 4>(s, y, x, q, scale, bias, N, K);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t cuda_fp8_gemv_f32(cudaStream_t s, float *y, const float *x, const uint8_t *q,
                              const float *scale, const float *bias, int M, int N, int K)
{
    return gemv_any<float>(s, y, x, q, scale, bias, M, N, K);
}

cudaError_t cuda_fp8_gemv_bf16(cudaStream_t s, float *y, const __nv_bfloat16 *x,
                               const uint8_t *q, const float *scale, const float *bias, int M,
                               int N, int K)
{
    return gemv_any<__nv_bfloat16>(s, y, x, q, scale, bias, M, N, K);
}

/* ---- per-token activation quantization ------------------------------------------------ */

#define FP8_QT 256

/* One block per row m: a_scale[m] = max_k |x[m][k]| / 448 (1 when the row is all zero), then
 * q[m][k] = E4M3(x[m][k] / a_scale[m]) (IEEE division, round to nearest even, saturating). */
static __global__ void __launch_bounds__(FP8_QT)
fp8_quant_rows_kernel(uint8_t *q, float *a_scale, const float *x, int K)
{
    __shared__ float red[FP8_QT / 32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)K;
    uint8_t *qr = q + (size_t)blockIdx.x * (size_t)K;
    float mx = 0.0f;
    for (int k = threadIdx.x; k < K; k += FP8_QT) {
        mx = fmaxf(mx, fabsf(xr[k]));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if ((threadIdx.x & 31) == 0) {
        red[threadIdx.x >> 5] = mx;
    }
    __syncthreads();
    mx = red[0];
#pragma unroll
    for (int w = 1; w < FP8_QT / 32; w++) {
        mx = fmaxf(mx, red[w]);
    }
    const float s = mx > 0.0f ? mx / 448.0f : 1.0f;
    for (int k = threadIdx.x; k < K; k += FP8_QT) {
        qr[k] = (uint8_t)__nv_cvt_float_to_fp8(xr[k] / s, __NV_SATFINITE, __NV_E4M3);
    }
    if (threadIdx.x == 0) {
        a_scale[blockIdx.x] = s;
    }
}

cudaError_t cuda_fp8_quant_rows(cudaStream_t s, uint8_t *q, float *a_scale, const float *x,
                                int M, int K)
{
    if (M <= 0) {
        return cudaSuccess;
    }
    fp8_quant_rows_kernel<<<(unsigned)M, FP8_QT, 0, s>>>(q, a_scale, x, K);
    return cudaGetLastError();
}

/* ---- epilogue and dequantization ------------------------------------------------------ */

/* y[m][n0 + j] = (acc[m][j] * a_scale[m]) * w_scale[n0 + j] (+ bias[n0 + j]) for m < M,
 * j < nc; acc rows nc apart, y rows ldy apart (acc may be y itself when n0 = 0, nc = ldy). */
static __global__ void fp8_epilogue_kernel(float *y, int ldy, int n0, const float *acc, int nc,
                                           const float *a_scale, const float *w_scale,
                                           const float *bias, int M)
{
    size_t total = (size_t)M * (size_t)nc;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t m = t / (size_t)nc;
        int j = (int)(t % (size_t)nc);
        int n = n0 + j;
        float v = acc[t];
        if (a_scale != NULL) {
            v *= a_scale[m];
        }
        v *= w_scale[n];
        if (bias != NULL) {
            v += bias[n];
        }
        y[m * (size_t)ldy + n] = v;
    }
}

cudaError_t cuda_fp8_epilogue(cudaStream_t s, float *y, int ldy, int n0, const float *acc,
                              int nc, const float *a_scale, const float *w_scale,
                              const float *bias, int M)
{
    size_t total = (size_t)M * (size_t)nc;
    if (total == 0) {
        return cudaSuccess;
    }
    fp8_epilogue_kernel<<<cuda_blocks(total, 256), 256, 0, s>>>(y, ldy, n0, acc, nc, a_scale,
                                                                w_scale, bias, M);
    return cudaGetLastError();
}

/* out[i] = bf16(e4m3(q[i])) for i < n (exact: every E4M3 value is a bf16 value). */
static __global__ void fp8_to_bf16_kernel(__nv_bfloat16 *out, const uint8_t *q, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)q[i], __NV_E4M3);
        out[i] = __float2bfloat16_rn(__half2float(*(const __half *)&h));
    }
}

cudaError_t cuda_fp8_to_bf16(cudaStream_t s, __nv_bfloat16 *out, const uint8_t *q, size_t n)
{
    if (n == 0) {
        return cudaSuccess;
    }
    fp8_to_bf16_kernel<<<cuda_blocks(n, 256), 256, 0, s>>>(out, q, n);
    return cudaGetLastError();
}

/* ---- per-exec state: scratch and the cuBLASLt E4M3 x E4M3 GEMM ------------------------ */

typedef struct fp8_lt_entry {
    int M, N, K, used;
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

/* The cached descriptors and algorithm of an E4M3 x E4M3 -> f32 GEMM of this shape, or NULL
 * (no error set) when cuBLASLt offers none. D (N x M, column-major) = A^T B with A = the
 * codes stored K x N (TN: the layout FP8 GEMMs require), B = xq stored K x M. */
static fp8_lt_entry *lt_entry(cuda_fp8 *f, int M, int N, int K)
{
    for (int i = 0; i < FP8_LT_CACHE; i++) {
        fp8_lt_entry *e = &f->cache[i];
        if (e->used && e->M == M && e->N == N && e->K == K) {
            return e;
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
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof ws);
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
    e->used = 1;
    return e;
}

/* The FP8 x FP8 path; *done false (nothing enqueued) when cuBLASLt has no algorithm. */
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
        cudaError_t e = cudaMalloc(&f->ws, FP8_LT_WS);
        if (e != cudaSuccess) {
            cudaGetLastError();
            f->ws = NULL;
            return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY,
                            "out of device memory for the FP8 GEMM workspace");
        }
    }
    fp8_lt_entry *e = lt_entry(f, M, N, K);
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
    if (s != CUBLAS_STATUS_SUCCESS) {
        return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt FP8 matmul M %d N %d K %d: %s (%d)", M,
                        N, K, cublasLtGetStatusName(s), (int)s);
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
    size_t per = FP8_DQ_ELEMS / (size_t)K;
    int nc = per >= (size_t)N ? N : (int)(per < 64 ? 64 : per / 64 * 64);
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
