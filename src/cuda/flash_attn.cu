/*
 * flash_attn.cu - tensor-core flash attention for prefill and the ViT: bf16 mma.sync
 * m16n8k16 with f32 accumulation. A block of 4 warps owns 64 (position, head) rows that share
 * one KV head (GQA: the heads of a group ride together, as in attention.cu); each warp holds 16
 * rows' Q as A fragments in registers. K tiles of 64 keys (row-major) and V tiles (transposed,
 * so B fragments are two consecutive bf16) go through shared memory as bf16; S = Q K^T and
 * O += P V are mma tiles, with an online softmax (running max and sum per row) in between and P
 * re-packed from S's accumulator layout straight into A fragments. Causal (query i sees keys
 * <= causal_pos0 + i) or full; head_dim <= 128 (zero-padded to 64 or 128). The split-KV kernel
 * of attention.cu keeps decode (few rows per KV head).
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4 g + t. A (16 x 16, row):
 * a0 = (g, 2t..2t+1), a1 = (g + 8, 2t..), a2 = (g, 8 + 2t..), a3 = (g + 8, 8 + 2t..). B (16 x 8,
 * col): b0 = (k 2t..2t+1, n g), b1 = (k 8 + 2t.., n g). C/D (16 x 8): c0, c1 = (g, 2t..2t+1),
 * c2, c3 = (g + 8, 2t..). Lower element in the lower 16 bits. fa_mma below has a reference
 * form written from exactly this table (the lanes exchange fragments through shared memory),
 * compiled where the PTX instruction does not exist (the host emulation) or with
 * -DNVLM_FA_MMA_REF on the device, to compare the two on a card.
 */
#include "cuda/cuda_internal.h"

/* NV_LAUNCH(kernel, grid, block, shmem, stream)(args...): the <<<>>> launch under nvcc; the
 * host emulation of the kernels defines it as a call that runs the grid on the CPU. */
#ifndef NV_LAUNCH
#define NV_LAUNCH(k, grid, block, shmem, stream) k<<<(grid), (block), (shmem), (stream)>>>
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#define FA_ROWS 64        /* (position, head) rows per block: 4 warps x 16 */
#define FA_THREADS 128
#define FA_BK 64          /* keys per tile */
#define FA_PAD 8          /* bf16 padding per shared row */

typedef struct fa_args {
    float *out;
    const float *q;
    const void *k;
    const void *v;
    int ldo, ldq, ldkv;
    nv_dtype kvt;
    int n_q, n_kv, n_heads, n_kv_heads, hd, group;
    float scale;
    long long cpos0;
} fa_args;

/* Two floats as a bf16 pair (lo in the lower 16 bits), round to nearest even. */
static __device__ __forceinline__ uint32_t fa_pack(float lo, float hi)
{
    __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &p, sizeof u);
    return u;
}

static __device__ __forceinline__ uint32_t fa_ld32(const __nv_bfloat16 *p)
{
    return *(const uint32_t *)p;
}

#if !defined(__CUDA_ARCH__) || defined(NVLM_FA_MMA_REF)
static __device__ __forceinline__ float fa_lo(uint32_t v)
{
    return __uint_as_float(v << 16);
}

static __device__ __forceinline__ float fa_hi(uint32_t v)
{
    return __uint_as_float(v & 0xffff0000u);
}
#endif

/* d += A . B for one warp: A 16 x 16 (a), B 16 x 8 (b), d 16 x 8, layouts above. */
static __device__ __forceinline__ void fa_mma(float d[4], const uint32_t a[4],
                                              const uint32_t b[2])
{
#if defined(__CUDA_ARCH__) && !defined(NVLM_FA_MMA_REF)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    /* Each lane parks its fragments in the warp's slice of shared memory; then every lane
     * reads the A rows (g, g + 8) and B columns (2t, 2t + 1) its accumulators need. */
    __shared__ uint32_t fa_frag[FA_THREADS / 32][32][6];
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    uint32_t(*f)[6] = fa_frag[threadIdx.x >> 5];
    for (int i = 0; i < 4; i++) {
        f[lane][i] = a[i];
    }
    f[lane][4] = b[0];
    f[lane][5] = b[1];
    __syncwarp(0xffffffffu);
    for (int kp = 0; kp < 8; kp++) {
        /* k pair (2 kp, 2 kp + 1) sits with thread kp mod 4 of a group: in a0 (row g), a1
         * (row g + 8) and b0 for k < 8, in a2, a3 and b1 above. */
        int src = kp & 3;
        int hi = kp >= 4 ? 1 : 0;
        uint32_t r0 = f[g * 4 + src][2 * hi];
        uint32_t r1 = f[g * 4 + src][2 * hi + 1];
        uint32_t c0 = f[(2 * t) * 4 + src][4 + hi];
        uint32_t c1 = f[(2 * t + 1) * 4 + src][4 + hi];
        d[0] += fa_lo(r0) * fa_lo(c0) + fa_hi(r0) * fa_hi(c0);
        d[1] += fa_lo(r0) * fa_lo(c1) + fa_hi(r0) * fa_hi(c1);
        d[2] += fa_lo(r1) * fa_lo(c0) + fa_hi(r1) * fa_hi(c0);
        d[3] += fa_lo(r1) * fa_lo(c1) + fa_hi(r1) * fa_hi(c1);
    }
    __syncwarp(0xffffffffu); /* every lane has read before the next product overwrites */
#endif
}

static __device__ __forceinline__ float fa_row_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

static __device__ __forceinline__ float fa_row_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <int HDP>
static __global__ void __launch_bounds__(FA_THREADS) flash_kernel(fa_args a)
{
    __shared__ __align__(16) __nv_bfloat16 ks[FA_BK][HDP + FA_PAD];
    __shared__ __align__(16) __nv_bfloat16 vt[HDP][FA_BK + FA_PAD];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int g = lane >> 2;
    const int t4 = lane & 3;
    const int hd = a.hd;
    const int npairs = a.n_q * a.group;
    const int t0 = blockIdx.x * FA_ROWS;
    const int b = blockIdx.y / a.n_kv_heads;
    const int kvh = blockIdx.y % a.n_kv_heads;

    /* This lane's two rows (g and g + 8 of its warp's 16): query, output and key limit. */
    const float *qrow[2];
    float *orow[2];
    int lim[2];
    for (int j = 0; j < 2; j++) {
        int t = t0 + warp * 16 + g + 8 * j;
        qrow[j] = NULL;
        orow[j] = NULL;
        lim[j] = 0;
        if (t < npairs) {
            int p = t / a.group;
            int h = kvh * a.group + t % a.group;
            qrow[j] = a.q + ((size_t)b * a.n_q + p) * (size_t)a.ldq + (size_t)h * hd;
            orow[j] = a.out + ((size_t)b * a.n_q + p) * (size_t)a.ldo + (size_t)h * hd;
            long long lj = a.cpos0 >= 0 ? a.cpos0 + p + 1 : (long long)a.n_kv;
            lim[j] = (int)min(lj, (long long)a.n_kv);
        }
    }
    /* Q as A fragments, unscaled (the scale multiplies S in f32, as the CPU does). */
    uint32_t qf[HDP / 16][4];
    for (int kq = 0; kq < HDP / 16; kq++) {
        float e[2][4];
        for (int j = 0; j < 2; j++) {
            int cols[4] = {kq * 16 + 2 * t4, kq * 16 + 2 * t4 + 1, kq * 16 + 8 + 2 * t4,
                           kq * 16 + 9 + 2 * t4};
            for (int c = 0; c < 4; c++) {
                e[j][c] = qrow[j] != NULL && cols[c] < hd ? qrow[j][cols[c]] : 0.0f;
            }
        }
        qf[kq][0] = fa_pack(e[0][0], e[0][1]);
        qf[kq][1] = fa_pack(e[1][0], e[1][1]);
        qf[kq][2] = fa_pack(e[0][2], e[0][3]);
        qf[kq][3] = fa_pack(e[1][2], e[1][3]);
    }

    float o[HDP / 8][4];
    for (int n = 0; n < HDP / 8; n++) {
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    }
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.0f, 0.0f};

    /* Keys the block needs: the causal extent of its last row. */
    int t_last = min(t0 + FA_ROWS, npairs) - 1;
    int ext = a.n_kv;
    if (a.cpos0 >= 0) {
        ext = (int)min((long long)a.n_kv, a.cpos0 + t_last / a.group + 1);
    }
    const size_t kv_base = (size_t)b * a.n_kv * (size_t)a.ldkv + (size_t)kvh * hd;
    for (int kb = 0; kb < ext; kb += FA_BK) {
        __syncthreads(); /* every warp is done with the previous tile */
        for (int i = tid; i < FA_BK * HDP; i += FA_THREADS) {
            int j = i / HDP;
            int d = i % HDP;
            int key = kb + j;
            float kv = 0.0f;
            float vv = 0.0f;
            if (key < ext && d < hd) {
                size_t off = kv_base + (size_t)key * a.ldkv + d;
                kv = cuda_load(a.k, a.kvt, off);
                vv = cuda_load(a.v, a.kvt, off);
            }
            ks[j][d] = __float2bfloat16_rn(kv);
            vt[d][j] = __float2bfloat16_rn(vv);
        }
        __syncthreads();

        /* S = Q K^T: this warp's 16 rows x 64 keys, 8 tiles of 8 keys. */
        float s[FA_BK / 8][4];
        for (int n = 0; n < FA_BK / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            for (int kq = 0; kq < HDP / 16; kq++) {
                uint32_t bf[2];
                bf[0] = fa_ld32(&ks[n * 8 + g][kq * 16 + 2 * t4]);
                bf[1] = fa_ld32(&ks[n * 8 + g][kq * 16 + 8 + 2 * t4]);
                fa_mma(s[n], qf[kq], bf);
            }
        }
        /* Scale, mask, online softmax: element e of a tile is row e / 2 (g or g + 8), key
         * 2 t4 + e % 2 of the tile. */
        float mx[2] = {-INFINITY, -INFINITY};
        for (int n = 0; n < FA_BK / 8; n++) {
            for (int e = 0; e < 4; e++) {
                int key = kb + n * 8 + 2 * t4 + (e & 1);
                float v = key < lim[e >> 1] ? s[n][e] * a.scale : -INFINITY;
                s[n][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        }
        float alpha[2];
        for (int j = 0; j < 2; j++) {
            float mn = fmaxf(m[j], fa_row_max(mx[j]));
            alpha[j] = 1.0f;
            if (mn != -INFINITY) {
                alpha[j] = expf(m[j] - mn);
                m[j] = mn;
            }
        }
        float ls[2] = {0.0f, 0.0f};
        for (int n = 0; n < FA_BK / 8; n++) {
            for (int e = 0; e < 4; e++) {
                int j = e >> 1;
                float p = s[n][e] == -INFINITY ? 0.0f : expf(s[n][e] - m[j]);
                s[n][e] = p;
                ls[j] += p;
            }
        }
        /* l stays a per-lane partial sum (alpha is the same on the row's 4 lanes). */
        l[0] = l[0] * alpha[0] + ls[0];
        l[1] = l[1] * alpha[1] + ls[1];
        for (int n = 0; n < HDP / 8; n++) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }
        /* O += P V: P's accumulator tiles 2 kk and 2 kk + 1 are the A fragment of keys
         * 16 kk .. 16 kk + 15. */
        for (int kk = 0; kk < FA_BK / 16; kk++) {
            uint32_t pa[4];
            pa[0] = fa_pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = fa_pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = fa_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = fa_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            for (int n = 0; n < HDP / 8; n++) {
                uint32_t bf[2];
                bf[0] = fa_ld32(&vt[n * 8 + g][kk * 16 + 2 * t4]);
                bf[1] = fa_ld32(&vt[n * 8 + g][kk * 16 + 8 + 2 * t4]);
                fa_mma(o[n], pa, bf);
            }
        }
    }

    for (int j = 0; j < 2; j++) {
        float lt = fa_row_sum(l[j]);
        if (orow[j] == NULL) {
            continue;
        }
        float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        for (int n = 0; n < HDP / 8; n++) {
            int c = n * 8 + 2 * t4;
            if (c < hd) {
                orow[j][c] = o[n][2 * j] * inv;
            }
            if (c + 1 < hd) {
                orow[j][c + 1] = o[n][2 * j + 1] * inv;
            }
        }
    }
}

bool cuda_flash_ok(int n_q, int n_heads, int n_kv_heads, int head_dim)
{
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || head_dim <= 0 ||
        head_dim > CUDA_ATTN_MAX_HD || n_q <= 0) {
        return false;
    }
    return (long long)n_q * (n_heads / n_kv_heads) >= CUDA_FLASH_MIN_ROWS;
}

cudaError_t cuda_flash_attention(cudaStream_t s, float *out, int ldo, const float *q, int ldq,
                                 const void *k, const void *v, int ldkv, nv_dtype kv_type,
                                 int batch, int n_q, int n_kv, int n_heads, int n_kv_heads,
                                 int head_dim, float scale, int64_t cpos0)
{
    if (!cuda_flash_ok(n_q, n_heads, n_kv_heads, head_dim) || n_kv <= 0 || batch <= 0 ||
        (long long)batch * n_kv_heads > 65535) {
        return cudaErrorInvalidValue;
    }
    fa_args a;
    a.out = out;
    a.q = q;
    a.k = k;
    a.v = v;
    a.ldo = ldo;
    a.ldq = ldq;
    a.ldkv = ldkv;
    a.kvt = kv_type;
    a.n_q = n_q;
    a.n_kv = n_kv;
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv_heads;
    a.hd = head_dim;
    a.group = n_heads / n_kv_heads;
    a.scale = scale;
    a.cpos0 = (long long)cpos0;
    long long npairs = (long long)n_q * a.group;
    long long gx = (npairs + FA_ROWS - 1) / FA_ROWS;
    if (gx > 0x7fffffffLL) {
        return cudaErrorInvalidValue;
    }
    dim3 grid((unsigned)gx, (unsigned)(batch * n_kv_heads));
    if (head_dim <= 64) {
        NV_LAUNCH(flash_kernel<64>, grid, FA_THREADS, 0, s)(a);
    } else {
        NV_LAUNCH(flash_kernel<128>, grid, FA_THREADS, 0, s)(a);
    }
    return cudaGetLastError();
}
