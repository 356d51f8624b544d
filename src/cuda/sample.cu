/*
 * sample.cu - the sampler on the device (the backend's optional `sample` op): logits stay in
 * device memory and only the chosen token id (and an outcome code) comes back to the host.
 *
 * One block of CUDA_SAMPLE_THREADS threads runs the whole pipeline of smp_sample (sampler.c)
 * in its order: mask unusable rows and non-finite logits (NaN), logit bias (in list order), the
 * repetition / frequency / presence penalties (a host list of the distinct tokens of the
 * window with their counts), then greedy or top-k -> softmax(v / T) -> top-p -> min-p -> the
 * draw with the host's uniform number. Every candidate gets a unique 64-bit key, the float's
 * order-preserving bits above (0xffffffff - index), so "key descending" is exactly the CPU's
 * sort order (higher value first, lower index among equals; -0 counts as +0, +inf as
 * FLT_MAX). Nothing is sorted: top-k, the top-p cut and the draw are radix searches over the
 * keys (8 bits a pass, from the highest bit where candidates differ) that find the first key
 * whose running count or probability mass passes a target. Masses are exact sums in 70-bit
 * fixed point (a pair: units of 2^-35 and 2^-70; every probability is <= 1), so the result is
 * the same whatever the order threads add in: the device is deterministic, and it matches the
 * CPU's double sums except where a draw or the top-p target falls within ~1e-16 (relative) of
 * a cumulative boundary. Probabilities are exp((v - vmax) / T) in double as on the CPU.
 *
 * This file holds the kernel and its launcher (the host emulation of the kernels compiles it
 * too); the exec's workspace and the op are in sample_op.cu.
 */
#include "cuda/cuda_internal.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define SMP_FX_BITS 35
#define SMP_FX_MASK ((1ull << SMP_FX_BITS) - 1)
#define SMP_FX_ONE 34359738368.0 /* 2^35 */

typedef unsigned long long smp_u64;
typedef cuda_sample_kargs smp_kargs;

/* A probability mass: h * 2^-35 + l * 2^-70 (normalised: l < 2^35). */
typedef struct smp_fx {
    smp_u64 h;
    smp_u64 l;
} smp_fx;

/* Rounded float operations that nvcc never contracts into an FMA (the CPU build does not
 * contract either), and bit casts. */
static __device__ __forceinline__ float smp_fmul(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

static __device__ __forceinline__ float smp_fadd(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

static __device__ __forceinline__ float smp_fsub(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

static __device__ __forceinline__ float smp_fdiv(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

static __device__ __forceinline__ uint32_t smp_f2u(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

static __device__ __forceinline__ float smp_u2f(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* Order-preserving bits of a (non-NaN) float: a < b <=> ord(a) < ord(b) (-0 < +0). */
static __device__ __forceinline__ uint32_t smp_ord(float v)
{
    uint32_t u = smp_f2u(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ __forceinline__ float smp_key_val(smp_u64 key)
{
    uint32_t o = (uint32_t)(key >> 32);
    return smp_u2f((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

static __device__ __forceinline__ int32_t smp_key_id(smp_u64 key)
{
    return (int32_t)(0xffffffffu - (uint32_t)key);
}

/* p >= 0 (a probability, or a target up to the number of candidates) in fixed point,
 * truncated at 2^-70. Every step is exact in double. */
static __device__ __forceinline__ smp_fx smp_to_fx(double p)
{
    smp_fx r;
    double q = p * SMP_FX_ONE;
    double h = floor(q);
    r.h = (smp_u64)h;
    r.l = (smp_u64)floor((q - h) * SMP_FX_ONE);
    return r;
}

static __device__ __forceinline__ smp_fx smp_fx_add(smp_fx a, smp_u64 h, smp_u64 l)
{
    smp_u64 t = a.l + l;
    a.h += h + (t >> SMP_FX_BITS);
    a.l = t & SMP_FX_MASK;
    return a;
}

static __device__ __forceinline__ bool smp_fx_gt(smp_fx a, smp_fx b)
{
    return a.h > b.h || (a.h == b.h && a.l > b.l);
}

static __device__ __forceinline__ double smp_fx_double(smp_fx a)
{
    return (double)a.h / SMP_FX_ONE + (double)a.l / (SMP_FX_ONE * SMP_FX_ONE);
}

#define SMP_SUM 0
#define SMP_MAX 1
#define SMP_MIN 2
#define SMP_OR 3

/* Block-wide reduction of one value per thread (a fixed tree: deterministic). */
static __device__ smp_u64 smp_reduce(smp_u64 *red, smp_u64 v, int op)
{
    int tid = (int)threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (int s = (int)blockDim.x / 2; s > 0; s >>= 1) {
        if (tid < s) {
            smp_u64 a = red[tid];
            smp_u64 b = red[tid + s];
            if (op == SMP_SUM) {
                a += b;
            } else if (op == SMP_MAX) {
                a = b > a ? b : a;
            } else if (op == SMP_MIN) {
                a = b < a ? b : a;
            } else {
                a |= b;
            }
            red[tid] = a;
        }
        __syncthreads();
    }
    smp_u64 r = red[0];
    __syncthreads();
    return r;
}

/* Block-wide exact sum of fixed-point masses. */
static __device__ smp_fx smp_reduce_fx(smp_u64 *red, smp_fx v)
{
    smp_fx r;
    r.h = smp_reduce(red, v.h, SMP_SUM);
    r.l = 0;
    return smp_fx_add(r, 0, smp_reduce(red, v.l, SMP_SUM));
}

/* Shared state of one radix search. */
typedef struct smp_search {
    smp_u64 hh[256];     /* mass per digit, units of 2^-35 */
    smp_u64 hl[256];     /* mass per digit, units of 2^-70 */
    unsigned int hc[256]; /* keys per digit */
    smp_u64 prefix;
    smp_u64 mask;
    smp_u64 res;
    smp_fx pre;          /* mass (or count) of the keys above the current prefix's range */
    int shift;
    int done;            /* 0 searching, 1 found (prefix/mask name one key), 2 not found */
} smp_search;

/* Adds one thread's run of keys of digit d to the shared histogram. */
static __device__ __forceinline__ void smp_flush(smp_search *sh, int d, bool mass, smp_u64 h,
                                                 smp_u64 l, unsigned int c)
{
    if (mass) {
        atomicAdd(&sh->hh[d], h);
        atomicAdd(&sh->hl[d], l);
    }
    atomicAdd(&sh->hc[d], c);
}

/* Among the candidates with key >= lo, in key-descending order: the key of the first one whose
 * running total (of its probability mass when `mass`, else of 1 per key) including itself
 * exceeds `target`; 0 when the total never does. top: the largest key; spread: the OR of
 * (key ^ top) over all candidates (bits above its highest set bit are common to all). Each
 * pass histograms the next 8 bits of the keys under the prefix found so far (integer sums: the
 * same whatever the order of the atomics); a thread adds a run of keys of one digit at once. */
static __device__ smp_u64 smp_find(const smp_kargs *a, smp_search *sh, smp_u64 lo, bool mass,
                                   smp_fx target, smp_u64 top, smp_u64 spread)
{
    int tid = (int)threadIdx.x;
    int nt = (int)blockDim.x;
    if (tid == 0) {
        int hb = -1;
        for (int b = 63; b >= 0; b--) {
            if ((spread >> b) & 1ull) {
                hb = b;
                break;
            }
        }
        sh->mask = hb >= 63 ? 0ull : ~0ull << (hb + 1);
        sh->prefix = top & sh->mask;
        sh->shift = hb > 7 ? hb - 7 : 0;
        sh->pre.h = 0;
        sh->pre.l = 0;
        sh->res = 0;
        sh->done = 0;
    }
    for (;;) {
        for (int d = tid; d < 256; d += nt) {
            sh->hh[d] = 0;
            sh->hl[d] = 0;
            sh->hc[d] = 0;
        }
        __syncthreads();
        smp_u64 mask = sh->mask;
        smp_u64 prefix = sh->prefix;
        int shift = sh->shift;
        int cur = -1;
        smp_u64 rh = 0;
        smp_u64 rl = 0;
        unsigned int rc = 0;
        for (int i = tid; i < a->n; i += nt) {
            smp_u64 k = a->key[i];
            if (k < lo || (k & mask) != prefix) {
                continue;
            }
            int d = (int)((k >> shift) & 255u);
            if (d != cur) {
                if (cur >= 0) {
                    smp_flush(sh, cur, mass, rh, rl, rc);
                }
                cur = d;
                rh = 0;
                rl = 0;
                rc = 0;
            }
            if (mass) {
                smp_fx w = smp_to_fx(a->prob[i]);
                rh += w.h;
                rl += w.l;
            }
            rc++;
        }
        if (cur >= 0) {
            smp_flush(sh, cur, mass, rh, rl, rc);
        }
        __syncthreads(); /* the histogram is complete */
        if (tid == 0) {
            smp_fx pre = sh->pre;
            int pick = -1;
            for (int d = 255; d >= 0; d--) {
                if (sh->hc[d] == 0) {
                    continue;
                }
                smp_fx c = mass ? smp_fx_add(pre, sh->hh[d], sh->hl[d])
                                : smp_fx_add(pre, 0, sh->hc[d]);
                if (smp_fx_gt(c, target)) {
                    pick = d;
                    break;
                }
                pre = c;
            }
            if (pick < 0) {
                sh->done = 2;
            } else {
                sh->pre = pre;
                sh->prefix = prefix | ((smp_u64)pick << shift);
                sh->mask = mask | (255ull << shift);
                if (sh->hc[pick] == 1 || shift == 0) {
                    sh->done = 1;
                } else {
                    sh->shift = shift > 8 ? shift - 8 : 0;
                }
            }
        }
        __syncthreads();
        if (sh->done != 0) {
            break;
        }
    }
    if (sh->done == 1) {
        /* one key matches the prefix: find it */
        smp_u64 mask = sh->mask;
        smp_u64 prefix = sh->prefix;
        for (int i = tid; i < a->n; i += nt) {
            smp_u64 k = a->key[i];
            if (k >= lo && (k & mask) == prefix) {
                sh->res = k;
            }
        }
        __syncthreads();
    }
    smp_u64 r = sh->res;
    /* sh is free for the next search; callers also reduce in between, so: */
    __syncthreads(); /* nvemu: redundant */
    return r;
}

static __device__ void smp_finish(const smp_kargs *a, int32_t token, int outcome)
{
    if (threadIdx.x == 0) {
        a->out[0] = token;
        a->out[1] = outcome;
    }
}

static __global__ void __launch_bounds__(CUDA_SAMPLE_THREADS) smp_kernel(smp_kargs a)
{
    __shared__ smp_u64 red[CUDA_SAMPLE_THREADS];
    __shared__ smp_search sh;
    int tid = (int)threadIdx.x;
    int nt = (int)blockDim.x;
    int n = a.n;
    const float nan_f = smp_u2f(0x7fc00000u);

    /* 1. rows the tokenizer lacks and non-finite logits leave the race (NaN) */
    smp_u64 n_fin = 0;
    for (int i = tid; i < n; i += nt) {
        float v = a.logits[i];
        bool ok = a.usable[i] != 0 && isfinite(v);
        a.val[i] = ok ? v : nan_f;
        n_fin += ok ? 1u : 0u;
    }
    if (smp_reduce(red, n_fin, SMP_SUM) == 0) {
        smp_finish(&a, -1, NV_SAMPLE_NONFINITE);
        return;
    }
    /* 2. logit bias, in list order (one thread when a token is named twice) */
    if (a.bias_serial) {
        if (tid == 0) {
            for (int e = 0; e < a.n_bias; e++) {
                int32_t t = a.list[2 * e];
                a.val[t] += smp_u2f((uint32_t)a.list[2 * e + 1]);
            }
        }
    } else {
        for (int e = tid; e < a.n_bias; e += nt) {
            int32_t t = a.list[2 * e];
            a.val[t] += smp_u2f((uint32_t)a.list[2 * e + 1]);
        }
    }
    __syncthreads();
    /* 3. penalties: each distinct token of the window once, with its count */
    const int32_t *pen = a.list + 2 * (size_t)a.n_bias;
    for (int e = tid; e < a.n_pen; e += nt) {
        int32_t t = pen[2 * e];
        float v = a.val[t];
        if (a.rep != 1.0f) {
            v = v > 0.0f ? smp_fdiv(v, a.rep) : smp_fmul(v, a.rep);
        }
        v = smp_fsub(v, smp_fadd(smp_fmul((float)pen[2 * e + 1], a.freq), a.presence));
        a.val[t] = v;
    }
    __syncthreads();
    /* 4. candidates: not NaN and not -inf; +inf counts as FLT_MAX */
    smp_u64 m = 0;
    smp_u64 top = 0;
    for (int i = tid; i < n; i += nt) {
        float v = a.val[i];
        smp_u64 k = 0;
        if (!isnan(v) && v != -INFINITY) {
            if (v == INFINITY) {
                v = FLT_MAX;
            }
            if (v == 0.0f) {
                v = 0.0f;
            }
            k = ((smp_u64)smp_ord(v) << 32) | (smp_u64)(0xffffffffu - (uint32_t)i);
            m++;
            top = k > top ? k : top;
        }
        a.key[i] = k;
    }
    m = smp_reduce(red, m, SMP_SUM);
    if (m == 0) {
        smp_finish(&a, -1, NV_SAMPLE_BANNED);
        return;
    }
    top = smp_reduce(red, top, SMP_MAX);
    if (a.temperature <= 0.0f) {
        /* greedy: the largest key is the largest value at the lowest index */
        smp_finish(&a, smp_key_id(top), NV_SAMPLE_OK);
        return;
    }
    smp_u64 spread = 0;
    for (int i = tid; i < n; i += nt) {
        smp_u64 k = a.key[i];
        if (k != 0) {
            spread |= k ^ top;
        }
    }
    spread = smp_reduce(red, spread, SMP_OR);
    /* 5. top-k: the k-th key bounds the set */
    smp_u64 lo = 1;
    if (a.top_k > 0 && (smp_u64)a.top_k < m) {
        smp_fx t;
        t.h = 0;
        t.l = (smp_u64)a.top_k - 1;
        lo = smp_find(&a, &sh, 1, false, t, top, spread);
    }
    /* 6. softmax(v / T) over the set as weights relative to the best (<= 1) */
    double vmax = (double)smp_key_val(top);
    double temp = (double)a.temperature;
    smp_fx acc;
    acc.h = 0;
    acc.l = 0;
    for (int i = tid; i < n; i += nt) {
        smp_u64 k = a.key[i];
        double p = 0.0;
        if (k >= lo) {
            p = exp(((double)smp_key_val(k) - vmax) / temp);
            smp_fx w = smp_to_fx(p);
            acc = smp_fx_add(acc, w.h, w.l);
        }
        a.prob[i] = p;
    }
    smp_fx sum = smp_reduce_fx(red, acc);
    /* 7. top-p: the first key where the running mass reaches top_p of the sum */
    smp_u64 keep = lo;
    if (a.top_p < 1.0f) {
        smp_fx t = smp_to_fx((double)a.top_p * smp_fx_double(sum));
        smp_u64 r;
        if (t.h == 0 && t.l == 0) {
            r = top;
        } else {
            /* mass >= t  <=>  mass > t - 2^-70 */
            if (t.l == 0) {
                t.h--;
                t.l = SMP_FX_MASK;
            } else {
                t.l--;
            }
            r = smp_find(&a, &sh, lo, true, t, top, spread);
        }
        if (r != 0) {
            keep = r;
        }
    }
    /* 8. min-p: cut before the first key whose weight is below min_p (the best's is 1) */
    if (a.min_p > 0.0f) {
        smp_u64 cut = 0;
        for (int i = tid; i < n; i += nt) {
            smp_u64 k = a.key[i];
            if (k >= keep && a.prob[i] < (double)a.min_p) {
                cut = k > cut ? k : cut;
            }
        }
        cut = smp_reduce(red, cut, SMP_MAX);
        if (cut != 0) {
            keep = cut + 1;
        }
    }
    /* 9. the draw: the first key whose running mass exceeds uniform * total */
    acc.h = 0;
    acc.l = 0;
    smp_u64 last = ~0ull;
    for (int i = tid; i < n; i += nt) {
        smp_u64 k = a.key[i];
        if (k >= keep) {
            smp_fx w = smp_to_fx(a.prob[i]);
            acc = smp_fx_add(acc, w.h, w.l);
            last = k < last ? k : last;
        }
    }
    smp_fx total = smp_reduce_fx(red, acc);
    last = smp_reduce(red, last, SMP_MIN);
    smp_fx t = smp_to_fx(a.uniform * smp_fx_double(total));
    smp_u64 r = smp_find(&a, &sh, keep, true, t, top, spread);
    /* rounding left the draw past the total: the last kept token, as on the CPU */
    smp_finish(&a, smp_key_id(r != 0 ? r : last), NV_SAMPLE_OK);
}

cudaError_t cuda_sample_launch(cudaStream_t s, int threads, const cuda_sample_kargs *k)
{
    if (threads < 256 || threads > CUDA_SAMPLE_THREADS || (threads & (threads - 1)) != 0) {
        return cudaErrorInvalidValue;
    }
    NV_LAUNCH(smp_kernel, 1, threads, 0, s)(*k);
    return cudaGetLastError();
}
