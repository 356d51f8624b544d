/*
 * fp8.cu - the kernels of FP8 E4M3 weights on the device (fp8.h's scheme: N x K codes, one f32
 * scale per output row n; y[m][n] = scale[n] * sum_k x[m][k] * e4m3(q[n][k]) (+ bias[n])) and
 * their launchers; fp8_gemm.cu picks the path and owns the cuBLASLt part. This file has no
 * host-side dependency beyond cuda_internal.h, so the host emulation (src/cuda/emu) runs it.
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
 * a_scale), round to nearest even, saturating), cuBLASLt multiplies codes by codes (E4M3 x
 * E4M3, f32 accumulation, unit scales) into y, and an epilogue kernel applies y[m][n] =
 * y[m][n] * a_scale[m] * w_scale[n] + bias[n]. cuBLASLt's per-row (outer vector) scale mode is
 * not used: its availability on sm_89/sm_90 is unverified here, and the epilogue is one pass
 * over y. Rounding x to E4M3 moves each output by about 2.5 % (relative L2), which is why this
 * is not the default. On sm_80, for K not a multiple of 16 and when cuBLASLt offers no FP8
 * algorithm, FAST takes the bf16 path above.
 */
#include "cuda/cuda_internal.h"

#ifdef NVEMU
/* Host emulation (src/cuda/emu): the conversions of the CPU path (src/fp8.c), bit-exact with
 * the device's (round to nearest even, saturating at +-448; the device's E4M3 -> f16 -> f32
 * widening is exact). */
extern "C" {
#include "fp8.h"
}
#else
#include <cuda_fp8.h>
#endif

/* Full unrolling of the constant-count loops (the register arrays need it); nothing under the
 * host emulation. */
#ifdef NVEMU
#define FP8_UNROLL
#else
#define FP8_UNROLL _Pragma("unroll")
#endif

#define FP8_THREADS 128           /* GEMV block: four warps on the same rows */
#define FP8_WARPS (FP8_THREADS / 32)

/* ---- conversions ---------------------------------------------------------------------- */

/* Four codes (one 32-bit word, code 0 in the low byte) as f32. */
static __device__ __forceinline__ void fp8x4_to_f32(uint32_t w, float *o)
{
#ifdef NVEMU
    for (int i = 0; i < 4; i++) {
        o[i] = fp8_to_f32((uint8_t)(w >> (8 * i)));
    }
#else
    __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3);
    __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> 16), __NV_E4M3);
    float2 a = __half22float2(*(const __half2 *)&lo);
    float2 b = __half22float2(*(const __half2 *)&hi);
    o[0] = a.x;
    o[1] = a.y;
    o[2] = b.x;
    o[3] = b.y;
#endif
}

static __device__ __forceinline__ float fp8_dec(uint8_t c)
{
#ifdef NVEMU
    return fp8_to_f32(c);
#else
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3);
    return __half2float(*(const __half *)&h);
#endif
}

/* f32 -> E4M3, round to nearest even, saturating at +-448. */
static __device__ __forceinline__ uint8_t fp8_enc(float v)
{
#ifdef NVEMU
    return fp8_from_f32(v);
#else
    return (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
#endif
}

/* 16 activations at p (16-byte aligned) as f32. */
static __device__ __forceinline__ void x16(const float *p, float *o)
{
    const float4 *v = (const float4 *)p;
FP8_UNROLL
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
FP8_UNROLL
    for (int i = 0; i < 2; i++) {
        uint4 u = __ldg(v + i);
        uint32_t w[4] = {u.x, u.y, u.z, u.w};
FP8_UNROLL
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
FP8_UNROLL
    for (int m = 0; m < M; m++) {
FP8_UNROLL
        for (int r = 0; r < R; r++) {
            acc[m][r] = 0.0f;
        }
    }
    /* rows past N read row N - 1 again (their sums are dropped) */
    const uint8_t *row[R];
FP8_UNROLL
    for (int r = 0; r < R; r++) {
        int n = n0 + r < N ? n0 + r : N - 1;
        row[r] = q + (size_t)n * (size_t)K;
    }
    if (VEC) {
        for (int k = tid * 16; k < K; k += FP8_THREADS * 16) {
            uint4 wv[R];
FP8_UNROLL
            for (int r = 0; r < R; r++) {
                wv[r] = __ldg((const uint4 *)(row[r] + k));
            }
            float wf[R][16];
FP8_UNROLL
            for (int r = 0; r < R; r++) {
                fp8x4_to_f32(wv[r].x, &wf[r][0]);
                fp8x4_to_f32(wv[r].y, &wf[r][4]);
                fp8x4_to_f32(wv[r].z, &wf[r][8]);
                fp8x4_to_f32(wv[r].w, &wf[r][12]);
            }
FP8_UNROLL
            for (int m = 0; m < M; m++) {
                float xf[16];
                x16(x + (size_t)m * (size_t)K + k, xf);
FP8_UNROLL
                for (int r = 0; r < R; r++) {
FP8_UNROLL
                    for (int j = 0; j < 16; j++) {
                        acc[m][r] = fmaf(xf[j], wf[r][j], acc[m][r]);
                    }
                }
            }
        }
    } else {
        for (int k = tid; k < K; k += FP8_THREADS) {
            float wf[R];
FP8_UNROLL
            for (int r = 0; r < R; r++) {
                wf[r] = fp8_dec(row[r][k]);
            }
FP8_UNROLL
            for (int m = 0; m < M; m++) {
                float xv = x1(x + (size_t)m * (size_t)K + k);
FP8_UNROLL
                for (int r = 0; r < R; r++) {
                    acc[m][r] = fmaf(xv, wf[r], acc[m][r]);
                }
            }
        }
    }
    const int lane = tid & 31;
    const int warp = tid >> 5;
FP8_UNROLL
    for (int m = 0; m < M; m++) {
FP8_UNROLL
        for (int r = 0; r < R; r++) {
            float v = acc[m][r];
FP8_UNROLL
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
    auto kern = K % 16 == 0 && ((uintptr_t)x | (uintptr_t)q) % 16 == 0
                    ? fp8_gemv_kernel<TX, M, R, true>
                    : fp8_gemv_kernel<TX, M, R, false>;
    NV_LAUNCH(kern, grid, FP8_THREADS, 0, s)(y, x, q, scale, bias, N, K);
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
FP8_UNROLL
    for (int o = 16; o > 0; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if ((threadIdx.x & 31) == 0) {
        red[threadIdx.x >> 5] = mx;
    }
    __syncthreads();
    mx = red[0];
FP8_UNROLL
    for (int w = 1; w < FP8_QT / 32; w++) {
        mx = fmaxf(mx, red[w]);
    }
    const float s = mx > 0.0f ? mx / 448.0f : 1.0f;
    for (int k = threadIdx.x; k < K; k += FP8_QT) {
        qr[k] = fp8_enc(xr[k] / s);
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
    NV_LAUNCH(fp8_quant_rows_kernel, (unsigned)M, FP8_QT, 0, s)(q, a_scale, x, K);
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
    NV_LAUNCH(fp8_epilogue_kernel, cuda_blocks(total, 256), 256, 0, s)(y, ldy, n0, acc, nc,
                                                                       a_scale, w_scale, bias,
                                                                       M);
    return cudaGetLastError();
}

/* out[i] = bf16(e4m3(q[i])) for i < n (exact: every E4M3 value is a bf16 value). */
static __global__ void fp8_to_bf16_kernel(__nv_bfloat16 *out, const uint8_t *q, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        out[i] = __float2bfloat16_rn(fp8_dec(q[i]));
    }
}

cudaError_t cuda_fp8_to_bf16(cudaStream_t s, __nv_bfloat16 *out, const uint8_t *q, size_t n)
{
    if (n == 0) {
        return cudaSuccess;
    }
    NV_LAUNCH(fp8_to_bf16_kernel, cuda_blocks(n, 256), 256, 0, s)(out, q, n);
    return cudaGetLastError();
}
