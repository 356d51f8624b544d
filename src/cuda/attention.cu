/*
 * attention.cu - scaled dot-product attention, flash style: K/V stream through shared memory
 * in tiles of 32 keys with an online softmax (running max m, sum l, unnormalised output), so
 * nothing of size n_q x n_kv is ever stored. GQA-aware: a block owns ATTN_ROWS (position, head)
 * rows that share one KV head, so each K/V tile is read once for all the heads of its group.
 * Causal (decoder, query i sees keys <= causal_pos0 + i) or full (ViT, 1025 tokens).
 * Decode (few rows per KV head) splits the keys over blocks (split-KV) and merges the partial
 * (m, l, acc) in a second kernel. f32 math on CUDA cores; K/V stored f32, bf16 or f16.
 */
#include "cuda/cuda_internal.h"
#include "cuda/attn_plan.h" /* ATTN_ROWS, ATTN_BK, the split plan */

#include <math.h>

#define ATTN_WARP_ROWS 4
#define ATTN_THREADS 128
#define ATTN_DPL (CUDA_ATTN_MAX_HD / 32) /* output dims per lane */

typedef struct attn_args {
    float *out;
    const float *q;
    const void *k;
    const void *v;
    float *part;
    int ldo, ldq, ldkv;
    nv_dtype kvt;
    int n_q, n_kv, n_heads, n_kv_heads, hd, group, n_split, chunk;
    float scale;
    long long cpos0;
    /* A decode step: per sequence its first position (device step block); the key count
     * pos0 + n_q and causal offset pos0 are read here, n_kv is the grid's (the reserved
     * rows) and chunk is recomputed for the live keys. NULL: host values. */
    const long long *dpos;
} attn_args;

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

static __global__ void __launch_bounds__(ATTN_THREADS) attn_kernel(attn_args a)
{
    extern __shared__ float smem[];
    const int hd = a.hd;
    float *qs = smem;                              /* [ATTN_ROWS][hd] */
    float *ks = qs + ATTN_ROWS * hd;               /* [ATTN_BK][hd + 1] */
    float *vs = ks + ATTN_BK * (hd + 1);           /* [ATTN_BK][hd] */
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int npairs = a.n_q * a.group;
    const int t0 = blockIdx.x * ATTN_ROWS;
    const int b = blockIdx.y / a.n_kv_heads;
    const int kvh = blockIdx.y % a.n_kv_heads;
    const int split = blockIdx.z;
    long long cpos0 = a.cpos0;
    long long n_live = a.n_kv;
    int chunk = a.chunk;
    if (a.dpos != NULL) {
        cpos0 = a.dpos[b];
        if (cpos0 < 0) {
            return; /* a padding slot of the batch bucket: the whole block leaves */
        }
        n_live = min(cpos0 + a.n_q, (long long)a.n_kv);
        chunk = cuda_attn_live_chunk(n_live, a.n_split);
    }

    /* Keys this block covers: the causal extent of its last row, then this split's share. */
    int t_last = min(t0 + ATTN_ROWS, npairs) - 1;
    long long ext = n_live;
    if (cpos0 >= 0) {
        ext = min(n_live, cpos0 + t_last / a.group + 1);
    }
    int k_begin = split * chunk;
    int k_end = (int)min(ext, (long long)k_begin + chunk);
    const size_t rtot = (size_t)gridDim.y / a.n_kv_heads * a.n_heads * a.n_q;
    if (a.n_split > 1 && k_begin >= k_end) {
        /* A split past the keys this block's rows see (a step's grid covers the reserved
         * context): only the empty partial, which the merge skips. Block-uniform. */
        for (int j = 0; j < ATTN_WARP_ROWS; j++) {
            int t = t0 + warp * ATTN_WARP_ROWS + j;
            if (t < npairs && lane == 0) {
                size_t r = ((size_t)b * a.n_heads + kvh * a.group + t % a.group) * a.n_q +
                           t / a.group;
                a.part[((size_t)split * rtot + r) * 2] = -INFINITY;
                a.part[((size_t)split * rtot + r) * 2 + 1] = 0.0f;
            }
        }
        return;
    }

    for (int i = tid; i < ATTN_ROWS * hd; i += ATTN_THREADS) {
        int t = t0 + i / hd;
        int d = i % hd;
        float v = 0.0f;
        if (t < npairs) {
            int p = t / a.group;
            int h = kvh * a.group + t % a.group;
            v = a.q[((size_t)b * a.n_q + p) * (size_t)a.ldq + (size_t)h * hd + d];
        }
        qs[i] = v;
    }


    float m[ATTN_WARP_ROWS], l[ATTN_WARP_ROWS], acc[ATTN_WARP_ROWS][ATTN_DPL];
    int lim[ATTN_WARP_ROWS];
    for (int j = 0; j < ATTN_WARP_ROWS; j++) {
        int t = t0 + warp * ATTN_WARP_ROWS + j;
        m[j] = -INFINITY;
        l[j] = 0.0f;
        lim[j] = 0;
        if (t < npairs) {
            long long lj = cpos0 >= 0 ? cpos0 + t / a.group + 1 : n_live;
            lim[j] = (int)min(lj, (long long)k_end);
        }
        for (int c = 0; c < ATTN_DPL; c++) {
            acc[j][c] = 0.0f;
        }
    }
    __syncthreads(); /* nvemu: redundant (the tile barrier below also orders qs) */

    const size_t kv_base = (size_t)b * a.n_kv * (size_t)a.ldkv + (size_t)kvh * hd;
    for (int kb = k_begin; kb < k_end; kb += ATTN_BK) {
        for (int i = tid; i < ATTN_BK * hd; i += ATTN_THREADS) {
            int j = i / hd;
            int d = i % hd;
            int key = kb + j;
            float kv = 0.0f;
            float vv = 0.0f;
            if (key < k_end) {
                size_t o = kv_base + (size_t)key * a.ldkv + d;
                kv = cuda_load(a.k, a.kvt, o);
                vv = cuda_load(a.v, a.kvt, o);
            }
            ks[j * (hd + 1) + d] = kv;
            vs[j * hd + d] = vv;
        }
        __syncthreads();

        float s[ATTN_WARP_ROWS];
        for (int j = 0; j < ATTN_WARP_ROWS; j++) {
            s[j] = 0.0f;
        }
        const float *kr = ks + lane * (hd + 1);
        const float *q0 = qs + warp * ATTN_WARP_ROWS * hd;
        for (int d = 0; d < hd; d++) {
            float kd = kr[d];
            for (int j = 0; j < ATTN_WARP_ROWS; j++) {
                s[j] += q0[j * hd + d] * kd;
            }
        }
        float p[ATTN_WARP_ROWS];
        for (int j = 0; j < ATTN_WARP_ROWS; j++) {
            float sj = kb + lane < lim[j] ? s[j] * a.scale : -INFINITY;
            float mn = fmaxf(m[j], warp_max(sj));
            float alpha = 1.0f;
            p[j] = 0.0f;
            if (mn != -INFINITY) {
                alpha = expf(m[j] - mn);
                p[j] = sj == -INFINITY ? 0.0f : expf(sj - mn);
                m[j] = mn;
            }
            l[j] = l[j] * alpha + cuda_warp_sum(p[j]);
            for (int c = 0; c < ATTN_DPL; c++) {
                acc[j][c] *= alpha;
            }
        }
        for (int jj = 0; jj < ATTN_BK; jj++) {
            float pj[ATTN_WARP_ROWS];
            for (int j = 0; j < ATTN_WARP_ROWS; j++) {
                pj[j] = __shfl_sync(0xffffffffu, p[j], jj);
            }
            const float *vr = vs + jj * hd;
            for (int c = 0; c < ATTN_DPL; c++) {
                int d = lane + 32 * c;
                if (d < hd) {
                    float vd = vr[d];
                    for (int j = 0; j < ATTN_WARP_ROWS; j++) {
                        acc[j][c] += pj[j] * vd;
                    }
                }
            }
        }
        __syncthreads();
    }

    for (int j = 0; j < ATTN_WARP_ROWS; j++) {
        int t = t0 + warp * ATTN_WARP_ROWS + j;
        if (t >= npairs) {
            continue;
        }
        int pos = t / a.group;
        int h = kvh * a.group + t % a.group;
        if (a.n_split == 1) {
            float inv = 1.0f / l[j];
            float *o = a.out + ((size_t)b * a.n_q + pos) * (size_t)a.ldo + (size_t)h * hd;
            for (int c = 0; c < ATTN_DPL; c++) {
                int d = lane + 32 * c;
                if (d < hd) {
                    o[d] = acc[j][c] * inv;
                }
            }
        } else {
            size_t r = ((size_t)b * a.n_heads + h) * a.n_q + pos;
            size_t slot = (size_t)split * rtot + r;
            if (lane == 0) {
                a.part[slot * 2] = m[j];
                a.part[slot * 2 + 1] = l[j];
            }
            float *o = a.part + 2 * (size_t)a.n_split * rtot + slot * hd;
            for (int c = 0; c < ATTN_DPL; c++) {
                int d = lane + 32 * c;
                if (d < hd) {
                    o[d] = acc[j][c];
                }
            }
        }
    }
}

/* One warp per (b, h, pos) row: merges the splits' (m, l, acc) into the output. */
static __global__ void attn_combine_kernel(attn_args a, int batch)
{
    size_t rtot = (size_t)batch * a.n_heads * a.n_q;
    size_t r = blockIdx.x * (size_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (r >= rtot) {
        return;
    }
    int pos = (int)(r % (size_t)a.n_q);
    int h = (int)((r / (size_t)a.n_q) % (size_t)a.n_heads);
    size_t b = r / ((size_t)a.n_q * a.n_heads);
    if (a.dpos != NULL && a.dpos[b] < 0) {
        return; /* a padding slot of the batch bucket */
    }
    float mx = -INFINITY;
    for (int s = 0; s < a.n_split; s++) {
        mx = fmaxf(mx, a.part[((size_t)s * rtot + r) * 2]);
    }
    float L = 0.0f;
    for (int s = 0; s < a.n_split; s++) {
        float ms = a.part[((size_t)s * rtot + r) * 2];
        if (ms != -INFINITY) {
            L += a.part[((size_t)s * rtot + r) * 2 + 1] * expf(ms - mx);
        }
    }
    float inv = L > 0.0f ? 1.0f / L : 0.0f;
    const float *accs = a.part + 2 * (size_t)a.n_split * rtot;
    float *o = a.out + (b * a.n_q + pos) * (size_t)a.ldo + (size_t)h * a.hd;
    for (int d = lane; d < a.hd; d += 32) {
        float v = 0.0f;
        for (int s = 0; s < a.n_split; s++) {
            float ms = a.part[((size_t)s * rtot + r) * 2];
            if (ms != -INFINITY) {
                v += accs[((size_t)s * rtot + r) * a.hd + d] * expf(ms - mx);
            }
        }
        o[d] = v * inv;
    }
}

static void plan(const cuda_backend *cb, int batch, int n_q, int n_kv, int n_heads,
                 int n_kv_heads, int *n_split, int *chunk)
{
    cuda_attn_plan(cb->sm_count, batch, n_q, n_kv, n_heads, n_kv_heads, n_split, chunk);
}

size_t cuda_attention_part_floats(const cuda_backend *cb, int batch, int n_q, int n_kv,
                                  int n_heads, int n_kv_heads, int head_dim, int64_t cpos0)
{
    (void)cpos0;
    int ns, chunk;
    plan(cb, batch, n_q, n_kv, n_heads, n_kv_heads, &ns, &chunk);
    return cuda_attn_part_floats_of(ns, batch, n_q, n_heads, head_dim);
}

/* Both launchers: dpos NULL (host key count n_kv and causal offset cpos0) or a step's device
 * positions (n_kv: the rows the grid is planned for). */
static cudaError_t launch(cudaStream_t s, const cuda_backend *cb, float *part, float *out,
                          int ldo, const float *q, int ldq, const void *k, const void *v,
                          int ldkv, nv_dtype kv_type, int batch, int n_q, int n_kv, int n_heads,
                          int n_kv_heads, int head_dim, float scale, int64_t cpos0,
                          const int64_t *dpos)
{
    if (head_dim <= 0 || head_dim > CUDA_ATTN_MAX_HD || (long long)batch * n_kv_heads > 65535) {
        return cudaErrorInvalidValue;
    }
    attn_args a;
    a.out = out;
    a.q = q;
    a.k = k;
    a.v = v;
    a.part = part;
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
    a.dpos = (const long long *)dpos;
    plan(cb, batch, n_q, n_kv, n_heads, n_kv_heads, &a.n_split, &a.chunk);
    if (a.n_split > 1 && part == NULL) {
        return cudaErrorInvalidValue;
    }
    long long npairs = (long long)n_q * a.group;
    long long gx = (npairs + ATTN_ROWS - 1) / ATTN_ROWS;
    if (gx > 0x7fffffffLL) {
        return cudaErrorInvalidValue;
    }
    dim3 grid((unsigned)gx, (unsigned)(batch * n_kv_heads), (unsigned)a.n_split);
    size_t smem = sizeof(float) * ((size_t)ATTN_ROWS * head_dim + (size_t)ATTN_BK *
                                   (head_dim + 1) + (size_t)ATTN_BK * head_dim);
    NV_LAUNCH(attn_kernel, grid, ATTN_THREADS, smem, s)(a);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || a.n_split == 1) {
        return e;
    }
    size_t rows = (size_t)batch * n_heads * n_q;
    unsigned warps = 8;
    NV_LAUNCH(attn_combine_kernel, (unsigned)((rows + warps - 1) / warps), warps * 32, 0, s)(a,
                                                                                           batch);
    return cudaGetLastError();
}

cudaError_t cuda_attention(cudaStream_t s, const cuda_backend *cb, float *part, float *out,
                           int ldo, const float *q, int ldq, const void *k, const void *v,
                           int ldkv, nv_dtype kv_type, int batch, int n_q, int n_kv, int n_heads,
                           int n_kv_heads, int head_dim, float scale, int64_t cpos0)
{
    return launch(s, cb, part, out, ldo, q, ldq, k, v, ldkv, kv_type, batch, n_q, n_kv, n_heads,
                  n_kv_heads, head_dim, scale, cpos0, NULL);
}

cudaError_t cuda_attention_step(cudaStream_t s, const cuda_backend *cb, float *part, float *out,
                                int ldo, const float *q, int ldq, const void *k, const void *v,
                                int ldkv, nv_dtype kv_type, int batch, int n_q, int kv_rows,
                                int n_heads, int n_kv_heads, int head_dim, float scale,
                                const int64_t *dpos)
{
    if (dpos == NULL) {
        return cudaErrorInvalidValue;
    }
    return launch(s, cb, part, out, ldo, q, ldq, k, v, ldkv, kv_type, batch, n_q, kv_rows,
                  n_heads, n_kv_heads, head_dim, scale, 0, dpos);
}
