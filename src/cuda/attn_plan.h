/*
 * attn_plan.h - how attention.cu divides the keys over blocks (split-KV), as plain C shared by
 * the kernels (host and device) and the host tests. A decode step sizes its grid and partial
 * scratch once for the largest key count of its key (the KV rows reserved) and lets each
 * split take an equal share of the keys live at this token, read from the device step block;
 * splits past the live keys do no key work and the merge skips them.
 */
#ifndef NVLM_CUDA_ATTN_PLAN_H
#define NVLM_CUDA_ATTN_PLAN_H

#include <stddef.h>

#ifdef __CUDACC__
#define ATTN_HD __host__ __device__
#else
#define ATTN_HD
#endif

#define ATTN_ROWS 16      /* (position, head) rows per block: 4 warps x 4 rows */
#define ATTN_BK 32        /* keys per tile: one per lane */
#define ATTN_MIN_CHUNK 128
#define ATTN_MAX_SPLIT 64

/* Splits and chunk length for n_kv keys: split only when the unsplit grid leaves SMs idle
 * (about 2 blocks per SM wanted), chunks of >= ATTN_MIN_CHUNK keys, at most ATTN_MAX_SPLIT. */
static inline ATTN_HD void cuda_attn_plan(int sm_count, int batch, int n_q, int n_kv,
                                          int n_heads, int n_kv_heads, int *n_split, int *chunk)
{
    long long npairs = (long long)n_q * (n_heads / n_kv_heads);
    long long base = (npairs + ATTN_ROWS - 1) / ATTN_ROWS * batch * n_kv_heads;
    long long want = 2LL * (sm_count > 0 ? sm_count : 1);
    int ns = 1;
    if (base < want && n_kv >= 2 * ATTN_MIN_CHUNK) {
        long long s = (want + base - 1) / base;
        s = s < n_kv / ATTN_MIN_CHUNK ? s : n_kv / ATTN_MIN_CHUNK;
        ns = (int)(s < ATTN_MAX_SPLIT ? s : ATTN_MAX_SPLIT);
    }
    int c = (n_kv + ns - 1) / ns;
    c = (c + ATTN_BK - 1) / ATTN_BK * ATTN_BK;
    *chunk = c;
    *n_split = (n_kv + c - 1) / c;
}

/* Keys per split when a grid of n_split splits covers n_live keys (a step: the grid was
 * planned for more): an equal share rounded up to whole tiles, so splits
 * [0, ceil(n_live / chunk)) hold keys and the rest none. */
static inline ATTN_HD int cuda_attn_live_chunk(long long n_live, int n_split)
{
    long long ns = n_split > 0 ? n_split : 1;
    long long c = (n_live + ns - 1) / ns;
    c = (c + ATTN_BK - 1) / ATTN_BK * ATTN_BK;
    return (int)(c > 0 ? c : ATTN_BK);
}

/* Floats of split partials (m, l, acc per row and split); 0 when the plan is unsplit. */
static inline size_t cuda_attn_part_floats_of(int n_split, int batch, int n_q, int n_heads,
                                              int head_dim)
{
    if (n_split <= 1) {
        return 0;
    }
    return (size_t)n_split * (size_t)batch * (size_t)n_heads * (size_t)n_q *
           (size_t)(head_dim + 2);
}

#endif /* NVLM_CUDA_ATTN_PLAN_H */
