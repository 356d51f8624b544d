/*
 * test_cuda_emu.cpp - the CUDA backend's custom kernels (the .cu files of src/cuda/, the same
 * source nvcc compiles) run on the CPU through the host emulation (src/cuda/emu/cuda_host.h)
 * and compared with the CPU backend's ops through the backend seam, at the model's real
 * shapes: decode attention over 4,224 past keys with 64/8 heads in 33 key splits (split +
 * merge, causal mask), a chunk of 16 new tokens over that past, a tensor-parallel prefill
 * whose rows see no key of a split, the ViT's 1,025 tokens with 25 of 32 padded heads, batched
 * decode; norms (the padded-head QK-norm with stat_cols < cols, the two-part RMSNorm,
 * LayerNorm), RoPE, the KV append to bf16 and f32, activations, row gather/scatter (embedding,
 * pixel shuffle), im2col, bf16 conversion.
 *
 * Every case is a line of the registry CASES below; a case fills an emu_res with its error,
 * tolerance and launch status (add one: write a function like case_gelu and a line in CASES).
 * Outputs are poisoned with NaN first, so an element the kernel never writes fails. The cases
 * run again (small shapes) with other thread and block orders: a race-free kernel gives the
 * same result.
 *
 * The mutation check turns off, one at a time, each barrier and shuffle site the cases
 * executed (nvemu_mutate) and requires some case to fail under one of the three orders: every
 * __syncthreads and __shfl_*_sync in the kernels is needed by some comparison, except those
 * whose source line says "nvemu: redundant".
 *
 * --small (and the sanitizer builds, NVLM_EMU_SMALL) runs reduced shapes only;
 * NVLM_EMU_FULL=1 emulates all 25 ViT heads (about 40 s more).
 */
#include "cuda/cuda_internal.h"
#include "cuda/attn_plan.h"

extern "C" {
#include "testutil.h"
}

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <string>
#include <vector>

/* ---- helpers ------------------------------------------------------------------------------ */

struct emu_ctx {
    nvlm_context *ctx;
    nv_backend *be;
    nv_exec *ex;
    cuda_backend cb;  /* what the launchers read: sm_count (132, an H100/H200) */
    bool small;
};

/* One comparison's outcome: the error measure, its bound and the launch status. */
struct emu_res {
    double err;
    double tol;
    cudaError_t launch;
    std::string what;
};

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static std::vector<float> rnd(size_t n, float amp)
{
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) {
        v[i] = amp * frand();
    }
    return v;
}

static std::vector<float> nan_vec(size_t n)
{
    return std::vector<float>(n, NAN);
}

static double rel_l2(const float *got, const float *want, size_t n)
{
    double num = 0.0;
    double den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    if (num != num) {
        return INFINITY; /* NaN: an element never written, or computed wrongly */
    }
    return sqrt(num) / (den > 0.0 ? sqrt(den) : 1.0);
}

/* Largest |got - want| over elements (NaN counts as infinite). */
static double max_abs(const float *got, const float *want, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= m)) {
            m = d == d ? d : INFINITY;
        }
    }
    return m;
}

static nv_bweight bw(const void *data, nv_dtype dt, int64_t n)
{
    nv_bweight w;
    memset(&w, 0, sizeof w);
    w.t.dtype = dt;
    w.t.ndim = 1;
    w.t.shape[0] = n;
    w.t.data = (void *)data;
    w.t.device = -1;
    return w;
}

static std::vector<uint16_t> to_bf16_host(const std::vector<float> &x)
{
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        h[i] = nv_f32_to_bf16(x[i]);
    }
    return h;
}

static void set_res(emu_res *r, double err, double tol, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_res(emu_res *r, double err, double tol, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    r->err = err;
    r->tol = tol;
    r->what = buf;
}

static bool cpu_ok(emu_ctx *c, nvlm_status st)
{
    if (st != NVLM_OK) {
        fprintf(stderr, "cpu op failed: %s\n", nvlm_last_error(c->ctx));
    }
    return st == NVLM_OK;
}

/* ---- attention ---------------------------------------------------------------------------- */

/* Tolerance: both sides compute in f32 and agree on every product; they differ in order of the
 * sums (the kernel's online softmax rescales partial sums per tile of 32 keys, lane-parallel
 * reductions; the CPU sums whole rows) and in exp (the CPU's vectorised exp is within ~2 ulp),
 * which bounds the relative L2 difference by a few 1e-7 per reduction level; 1e-5 leaves
 * room for 4k-key rows (the GPU op comparison of tests/test_cuda.c uses the same bound). */
#define TOL_ATTN 1e-5

struct attn_shape {
    int batch, n_q, n_kv, n_heads, n_kv_heads, hd, ld_heads;
    nv_dtype kvt;
    int64_t cpos0;
    int want_splits; /* 0: do not check */
    bool sample;     /* emulate only kv heads 0, n/2 and n-1 (the blocks are independent) */
};

/* Block filter of a sampled attention: kv head (blockIdx.y mod n_kv_heads) first, middle or
 * last. */
static bool keep_sampled_head(uint3 block, dim3 grid, void *arg)
{
    (void)grid;
    int n_kv = *(const int *)arg;
    int h = (int)(block.y % (unsigned)n_kv);
    return h == 0 || h == n_kv / 2 || h == n_kv - 1;
}

static void run_attention(emu_ctx *c, emu_res *r, const attn_shape &s, const char *name)
{
    int HQ = s.ld_heads * s.hd;          /* q/out row: padded heads */
    int ldq = HQ;
    int ldkv = s.n_kv_heads * s.hd;
    if (s.ld_heads > s.n_heads && s.n_heads == s.n_kv_heads) {
        ldq = 3 * HQ; /* the ViT reads q, k, v out of one qkv row of padded heads */
        ldkv = 3 * HQ;
    }
    size_t nq = (size_t)s.batch * s.n_q * ldq;
    size_t nkv = (size_t)s.batch * s.n_kv * ldkv;
    std::vector<float> q = rnd(nq, 1.0f);
    std::vector<float> k = rnd(nkv, 1.0f);
    std::vector<float> v = rnd(nkv, 1.0f);
    std::vector<uint16_t> kb, vb;
    const void *kp = k.data();
    const void *vp = v.data();
    if (s.kvt == NV_BF16) {
        kb = to_bf16_host(k);
        vb = to_bf16_host(v);
        kp = kb.data();
        vp = vb.data();
    } else if (s.kvt == NV_F16) {
        kb.resize(nkv);
        vb.resize(nkv);
        for (size_t i = 0; i < nkv; i++) {
            kb[i] = nv_f32_to_f16(k[i]);
            vb[i] = nv_f32_to_f16(v[i]);
        }
        kp = kb.data();
        vp = vb.data();
    }
    size_t nout = (size_t)s.batch * s.n_q * HQ;
    std::vector<float> want = nan_vec(nout);
    std::vector<float> got = nan_vec(nout);
    if (s.ld_heads > s.n_heads) { /* the padding heads are not written: zero on both sides */
        for (size_t i = 0; i < nout; i++) {
            if ((int)(i % (size_t)HQ) >= s.n_heads * s.hd) {
                want[i] = 0.0f;
                got[i] = 0.0f;
            }
        }
    }
    float scale = 1.0f / sqrtf((float)s.hd);
    if (!cpu_ok(c, c->be->ops->attention(c->ex, want.data(), HQ, q.data(), ldq, kp, vp, ldkv,
                                         s.kvt, s.batch, s.n_q, s.n_kv, s.n_heads, s.n_kv_heads,
                                         s.hd, scale, s.cpos0, NV_TP_LLM_HEADS))) {
        set_res(r, INFINITY, TOL_ATTN, "%s: cpu op failed", name);
        return;
    }
    size_t part_n = cuda_attention_part_floats(&c->cb, s.batch, s.n_q, s.n_kv, s.n_heads,
                                               s.n_kv_heads, s.hd, s.cpos0);
    int splits = part_n == 0 ? 1
                             : (int)(part_n / ((size_t)s.batch * s.n_heads * s.n_q *
                                               (size_t)(s.hd + 2)));
    std::vector<float> part = nan_vec(part_n > 0 ? part_n : 1);
    int n_kv_heads = s.n_kv_heads;
    if (s.sample) {
        nvemu_block_filter(keep_sampled_head, &n_kv_heads);
    }
    r->launch = cuda_attention(NULL, &c->cb, part_n > 0 ? part.data() : NULL, got.data(), HQ,
                               q.data(), ldq, kp, vp, ldkv, s.kvt, s.batch, s.n_q, s.n_kv,
                               s.n_heads, s.n_kv_heads, s.hd, scale, s.cpos0);
    nvemu_block_filter(NULL, NULL);
    if (s.sample) { /* compare the sampled heads (and the padding) only */
        int group = s.n_heads / s.n_kv_heads;
        size_t m = 0;
        for (size_t i = 0; i < nout; i++) {
            int h = (int)(i % (size_t)HQ) / s.hd;
            if (h >= s.n_heads || keep_sampled_head(uint3{0, (unsigned)(h / group), 0}, dim3(),
                                                    &n_kv_heads)) {
                got[m] = got[i];
                want[m] = want[i];
                m++;
            }
        }
        nout = m;
    }
    double e = rel_l2(got.data(), want.data(), nout);
    if (s.want_splits > 0 && splits != s.want_splits) {
        e = INFINITY;
    }
    set_res(r, e, TOL_ATTN, "%s: %d seq x %d q x %d keys, %d/%d heads (ld %d), hd %d, %s KV, "
            "causal %lld, %d split%s%s", name, s.batch, s.n_q, s.n_kv, s.n_heads, s.n_kv_heads,
            s.ld_heads, s.hd, nv_dtype_name(s.kvt), (long long)s.cpos0, splits,
            splits == 1 ? "" : "s", s.sample ? " (kv heads first/middle/last emulated)" : "");
}

/* One decode step: 1 query at position 4223 over 4,224 cached keys, 64 q / 8 kv heads:
 * 8 blocks on 132 SMs, so the keys are split 33 ways and merged. */
static void case_attn_decode(emu_ctx *c, emu_res *r)
{
    attn_shape s = {1, 1, 4224, 64, 8, 128, 64, NV_BF16, 4223, 33, false};
    if (c->small) {
        s = {1, 1, 300, 8, 2, 128, 8, NV_BF16, 299, 2, false};
    }
    run_attention(c, r, s, "attention decode");
}

/* A prefill chunk of 16 tokens after 4,208 cached ones (causal within the chunk, 5 splits of
 * 864 keys). */
static void case_attn_chunk(emu_ctx *c, emu_res *r)
{
    attn_shape s = {1, 16, 4224, 64, 8, 128, 64, NV_F32, 4208, 5, false};
    if (c->small) {
        s = {1, 5, 290, 8, 2, 64, 8, NV_F32, 285, 0, false};
    }
    run_attention(c, r, s, "attention chunk");
}

/* One tensor-parallel rank's share of a 72B prefill (8 q heads / 1 kv head), 512 tokens from
 * position 0: 256 blocks leave SMs idle, so the keys split in two, and the rows before
 * position 256 see no key of the second split (an empty partial, m = -inf, in the merge). */
static void case_attn_tp_prefill(emu_ctx *c, emu_res *r)
{
    attn_shape s = {1, 512, 512, 8, 1, 128, 8, NV_BF16, 0, 2, false};
    if (c->small) {
        s = {1, 256, 256, 8, 1, 64, 8, NV_BF16, 0, 2, false};
    }
    run_attention(c, r, s, "attention tp prefill");
}

/* The ViT: 1,025 tokens, full attention, 25 real heads of the 32 padded ones. The full grid
 * is 65 x 25 blocks of 128 threads (1.3e9 context switches, ~40 s here): heads 0, 12 and 24
 * run, every one of their blocks, and the comparison covers those heads and the padding
 * (NVLM_EMU_FULL=1: all 25). */
static void case_attn_vit(emu_ctx *c, emu_res *r)
{
    attn_shape s = {1, 1025, 1025, 25, 25, 128, 32, NV_F32, -1, 1, true};
    if (c->small) {
        s = {1, 37, 37, 3, 3, 128, 4, NV_F32, -1, 1, false};
    }
    if (tu_env_flag("NVLM_EMU_FULL")) {
        s.sample = false; /* every head */
    }
    run_attention(c, r, s, "attention vit");
}

/* Two sequences, causal prefill from position 0, bf16 KV, group of 4, head_dim 80 (< 128:
 * the lanes past head_dim idle). */
static void case_attn_batch(emu_ctx *c, emu_res *r)
{
    attn_shape s = {2, 45, 45, 8, 2, 80, 8, NV_BF16, 0, 0, false};
    if (c->small) {
        s = {2, 9, 9, 4, 1, 80, 4, NV_BF16, 0, 0, false};
    }
    run_attention(c, r, s, "attention batch");
}

/* A decode step's attention (graph.cu): the grid and partials are planned once for the
 * session's reserved KV rows, the live key count and causal offset come from the device step
 * block, each split takes an equal share of the live keys and the splits past them leave
 * with an empty partial. The rows past the live keys hold NaN: a kernel that read one would
 * fail the comparison. Real: 8,192 reserved rows (32 splits), 700 live keys (22 busy splits,
 * 10 empty); small: 600 rows (4 splits), 150 live (3 busy). */
static void case_attn_step(emu_ctx *c, emu_res *r)
{
    int n_heads = c->small ? 8 : 64;
    int n_kv_heads = c->small ? 2 : 8;
    int hd = 128;
    int rows = c->small ? 600 : 8192;
    int64_t p0 = c->small ? 149 : 699;
    int HQ = n_heads * hd;
    int ldkv = n_kv_heads * hd;
    std::vector<float> q = rnd((size_t)HQ, 1.0f);
    std::vector<float> k = nan_vec((size_t)rows * ldkv);
    std::vector<float> v = nan_vec((size_t)rows * ldkv);
    std::vector<float> kl = rnd((size_t)(p0 + 1) * ldkv, 1.0f);
    std::vector<float> vl = rnd((size_t)(p0 + 1) * ldkv, 1.0f);
    std::copy(kl.begin(), kl.end(), k.begin());
    std::copy(vl.begin(), vl.end(), v.begin());
    std::vector<uint16_t> kb = to_bf16_host(k);
    std::vector<uint16_t> vb = to_bf16_host(v);
    std::vector<float> want = nan_vec((size_t)HQ);
    std::vector<float> got = nan_vec((size_t)HQ);
    float scale = 1.0f / sqrtf((float)hd);
    if (!cpu_ok(c, c->be->ops->attention(c->ex, want.data(), HQ, q.data(), HQ, kb.data(),
                                         vb.data(), ldkv, NV_BF16, 1, 1, (int)(p0 + 1), n_heads,
                                         n_kv_heads, hd, scale, p0, NV_TP_LLM_HEADS))) {
        set_res(r, INFINITY, TOL_ATTN, "attention step: cpu op failed");
        return;
    }
    size_t part_n = cuda_attention_part_floats(&c->cb, 1, 1, rows, n_heads, n_kv_heads, hd, 0);
    int splits = part_n == 0 ? 1 : (int)(part_n / ((size_t)n_heads * (size_t)(hd + 2)));
    std::vector<float> part = nan_vec(part_n > 0 ? part_n : 1);
    std::vector<int64_t> dpos(1, p0);
    r->launch = cuda_attention_step(NULL, &c->cb, part_n > 0 ? part.data() : NULL, got.data(),
                                    HQ, q.data(), HQ, kb.data(), vb.data(), ldkv, NV_BF16, 1, 1,
                                    rows, n_heads, n_kv_heads, hd, scale, dpos.data());
    double e = rel_l2(got.data(), want.data(), (size_t)HQ);
    int busy = (int)((p0 + 1 + cuda_attn_live_chunk(p0 + 1, splits) - 1) /
                     cuda_attn_live_chunk(p0 + 1, splits));
    if (splits != (c->small ? 4 : 32) || busy >= splits) {
        e = INFINITY; /* the case must cover empty splits */
    }
    set_res(r, e, TOL_ATTN, "attention step: %d of %d reserved keys live (device position "
            "%lld), %d/%d heads, bf16 KV, %d splits (%d busy)", (int)(p0 + 1), rows,
            (long long)p0, n_heads, n_kv_heads, splits, busy);
}

/* Decode of two sequences at once (batch 2, f16 KV): 4 key splits per sequence, the merge
 * indexing partials by sequence. */
static void case_attn_batch_decode(emu_ctx *c, emu_res *r)
{
    attn_shape s = {2, 1, 600, 8, 2, 128, 8, NV_F16, 599, 4, false};
    if (c->small) {
        s = {2, 1, 260, 4, 2, 64, 4, NV_F16, 259, 2, false};
    }
    run_attention(c, r, s, "attention batch decode");
}

/* ---- norms -------------------------------------------------------------------------------- */

/* Norms: one f32 statistic per row summed in a different order (a block tree of 256 partial
 * sums vs the CPU's SIMD lanes in double), then the same per-element formula: the relative
 * difference is a few ulp; 1e-6 relative L2. */
#define TOL_NORM 1e-6

static void case_rmsnorm(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 3 : 7;
    int cols = c->small ? 300 : 8192;
    std::vector<float> x = rnd((size_t)rows * cols, 2.0f);
    std::vector<float> w = rnd((size_t)cols, 1.0f);
    std::vector<float> want = nan_vec(x.size());
    std::vector<float> got = nan_vec(x.size());
    nv_bweight wb = bw(w.data(), NV_F32, cols);
    cpu_ok(c, c->be->ops->rmsnorm(c->ex, want.data(), cols, x.data(), cols, &wb, rows, cols, cols,
                                  1e-6f));
    r->launch = cuda_rmsnorm(NULL, got.data(), cols, x.data(), cols, w.data(), rows, cols, cols,
                             1e-6f);
    set_res(r, rel_l2(got.data(), want.data(), x.size()), TOL_NORM, "rmsnorm %d x %d", rows,
            cols);
}

/* The ViT QK-norm: in place on the q block of qkv rows (ld 3 x 4096), statistic over the 3,200
 * channels of the 25 real heads, applied to all 4,096. */
static void case_qk_norm(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 5 : 1025;
    int cols = c->small ? 512 : 4096;
    int stat = c->small ? 384 : 3200;
    int ld = 3 * cols;
    std::vector<float> x = rnd((size_t)rows * ld, 3.0f);
    std::vector<float> w = rnd((size_t)cols, 1.0f);
    std::vector<float> want = x;
    std::vector<float> got = x;
    for (int i = 0; i < rows; i++) { /* the part the op writes: poisoned */
        for (int j = 0; j < cols; j++) {
            got[(size_t)i * ld + j] = NAN;
        }
    }
    nv_bweight wb = bw(w.data(), NV_F32, cols);
    cpu_ok(c, c->be->ops->rmsnorm(c->ex, want.data(), ld, want.data(), ld, &wb, rows, cols, stat,
                                  1e-6f));
    std::vector<float> xin = x;
    r->launch = cuda_rmsnorm(NULL, got.data(), ld, xin.data(), ld, w.data(), rows, cols, stat,
                             1e-6f);
    set_res(r, rel_l2(got.data(), want.data(), x.size()), TOL_NORM,
            "qk-norm %d rows x %d cols (stat over %d), ld %d", rows, cols, stat, ld);
}

/* The two-part RMSNorm of tensor parallelism: per-row sums of squares, then the scaling with
 * a statistic over n channels (here 2 x cols: as if another rank held as many). */
static void case_rms_parts(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 3 : 33;
    int cols = c->small ? 200 : 4096;
    std::vector<float> x = rnd((size_t)rows * cols, 2.0f);
    std::vector<float> w = rnd((size_t)cols, 1.0f);
    std::vector<float> ss_want = nan_vec(rows);
    std::vector<float> ss_got = nan_vec(rows);
    cpu_ok(c, c->be->ops->rows_sumsq(c->ex, ss_want.data(), x.data(), cols, rows, cols));
    r->launch = cuda_rows_sumsq(NULL, ss_got.data(), x.data(), cols, rows, cols);
    std::vector<float> want = nan_vec(x.size());
    std::vector<float> got = nan_vec(x.size());
    nv_bweight wb = bw(w.data(), NV_F32, cols);
    cpu_ok(c, c->be->ops->rmsnorm_scale(c->ex, want.data(), cols, x.data(), cols, &wb, rows, cols,
                                        ss_want.data(), 2 * cols, 1e-6f));
    cudaError_t e2 = cuda_rmsnorm_scale(NULL, got.data(), cols, x.data(), cols, w.data(), rows,
                                        cols, ss_got.data(), 2 * cols, 1e-6f);
    if (r->launch == cudaSuccess) {
        r->launch = e2;
    }
    double e = rel_l2(ss_got.data(), ss_want.data(), (size_t)rows);
    double e_y = rel_l2(got.data(), want.data(), x.size());
    set_res(r, e > e_y ? e : e_y, TOL_NORM, "rows_sumsq + rmsnorm_scale %d x %d", rows, cols);
}

static void case_layernorm(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 3 : 256;
    int cols = c->small ? 700 : 12800;
    std::vector<float> x = rnd((size_t)rows * cols, 2.0f);
    for (size_t i = 0; i < x.size(); i++) {
        x[i] += 0.5f; /* a mean away from 0: the two-pass variance matters */
    }
    std::vector<float> w = rnd((size_t)cols, 1.0f);
    std::vector<float> b = rnd((size_t)cols, 1.0f);
    std::vector<float> want = nan_vec(x.size());
    std::vector<float> got = nan_vec(x.size());
    nv_bweight wb = bw(w.data(), NV_F32, cols);
    nv_bweight bb = bw(b.data(), NV_F32, cols);
    cpu_ok(c, c->be->ops->layernorm(c->ex, want.data(), x.data(), &wb, &bb, rows, cols, 1e-5f));
    r->launch = cuda_layernorm(NULL, got.data(), x.data(), w.data(), b.data(), rows, cols, 1e-5f);
    set_res(r, rel_l2(got.data(), want.data(), x.size()), TOL_NORM, "layernorm %d x %d", rows,
            cols);
}

/* ---- RoPE, KV append, rows ---------------------------------------------------------------- */

/* Exact: the same inverse-frequency table (computed here as both backends do), the same angle
 * in f32, cos/sin in double rounded to f32, the same two products per element. */
static void case_rope(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 3 : 16;
    int heads = c->small ? 4 : 64;
    int hd = 128;
    int64_t pos0 = 4208;
    double theta = 1000000.0;
    int ld = heads * hd;
    std::vector<float> x = rnd((size_t)rows * ld, 1.0f);
    std::vector<float> want = x;
    std::vector<float> got = x;
    float inv_freq[CUDA_ROPE_MAX_HALF];
    float base = (float)theta;
    for (int i = 0; i < hd / 2; i++) {
        float e = (float)(2 * i) / (float)hd;
        float p = (float)pow((double)base, (double)e);
        inv_freq[i] = 1.0f / p;
    }
    cpu_ok(c, c->be->ops->rope(c->ex, want.data(), ld, rows, heads, hd, pos0, theta));
    r->launch = cuda_rope(NULL, got.data(), ld, rows, heads, hd, pos0, inv_freq);
    set_res(r, max_abs(got.data(), want.data(), x.size()), 0.0, "rope %d rows x %d heads x %d, "
            "pos %lld", rows, heads, hd, (long long)pos0);
}

/* RoPE of a step: the positions come from the device block (two sequences of 3 tokens at
 * different positions) and equal the CPU op run per sequence at its host position: exact. */
static void case_rope_step(emu_ctx *c, emu_res *r)
{
    int per_seq = 3;
    int heads = c->small ? 4 : 64;
    int hd = 128;
    int ld = heads * hd;
    double theta = 1000000.0;
    std::vector<int64_t> dpos = {4208, 17};
    std::vector<float> x = rnd((size_t)2 * per_seq * ld, 1.0f);
    std::vector<float> want = x;
    std::vector<float> got = x;
    float inv_freq[CUDA_ROPE_MAX_HALF];
    cuda_rope_inv_freq(theta, hd, inv_freq);
    for (int sq = 0; sq < 2; sq++) {
        cpu_ok(c, c->be->ops->rope(c->ex, want.data() + (size_t)sq * per_seq * ld, ld, per_seq,
                                   heads, hd, dpos[sq], theta));
    }
    r->launch = cuda_rope_step(NULL, got.data(), ld, 2 * per_seq, heads, hd, dpos.data(),
                               per_seq, inv_freq);
    set_res(r, max_abs(got.data(), want.data(), x.size()), 0.0,
            "rope step: 2 sequences x %d rows x %d heads, device positions 4208 and 17",
            per_seq, heads);
}

/* The KV append of a step at the row the device block holds: the CPU op's bytes exactly, the
 * rows around untouched. */
static void case_store_step(emu_ctx *c, emu_res *r)
{
    int cols = c->small ? 256 : 1024;
    int lds = 3 * cols;
    std::vector<int64_t> drow(1, c->small ? 7 : 4208);
    int64_t cap = drow[0] + 4;
    std::vector<float> src = rnd((size_t)lds, 4.0f);
    std::vector<unsigned char> want((size_t)cap * cols * 2, 0x5a);
    std::vector<unsigned char> got = want;
    cpu_ok(c, c->be->ops->store_rows(c->ex, want.data(), NV_BF16, drow[0], src.data(), lds, 1,
                                     cols));
    r->launch = cuda_store_rows_step(NULL, got.data(), NV_BF16, drow.data(), src.data(), lds, 1,
                                     cols);
    size_t diff = 0;
    for (size_t i = 0; i < want.size(); i++) {
        diff += want[i] != got[i];
    }
    set_res(r, (double)diff, 0.0, "store_rows step: bf16 row of %d at device row %lld (bytes "
            "differing)", cols, (long long)drow[0]);
}

/* The KV append: rows of k (ld = the q/k/v row) into the cache at row0; bf16 rounding is round
 * to nearest even on both sides: exact. The cache rows around the new ones must stay. */
static void store_case(emu_ctx *c, emu_res *r, nv_dtype t)
{
    int n = c->small ? 3 : 16;
    int cols = c->small ? 256 : 1024;
    int lds = cols + 64;
    int64_t row0 = c->small ? 5 : 4208;
    int64_t cap = row0 + n + 3;
    std::vector<float> src = rnd((size_t)n * lds, 4.0f);
    size_t es = nv_dtype_size(t);
    std::vector<unsigned char> want((size_t)cap * cols * es, 0x5a);
    std::vector<unsigned char> got = want;
    cpu_ok(c, c->be->ops->store_rows(c->ex, want.data(), t, row0, src.data(), lds, (size_t)n,
                                     cols));
    r->launch = cuda_store_rows(NULL, got.data(), t, row0, src.data(), lds, (size_t)n, cols);
    size_t diff = 0;
    for (size_t i = 0; i < want.size(); i++) {
        diff += want[i] != got[i];
    }
    set_res(r, (double)diff, 0.0, "store_rows %s: %d rows x %d at row %lld (bytes differing)",
            t == NV_BF16 ? "bf16" : "f32", n, cols, (long long)row0);
}

static void case_store_bf16(emu_ctx *c, emu_res *r)
{
    store_case(c, r, NV_BF16);
}

static void case_store_f32(emu_ctx *c, emu_res *r)
{
    store_case(c, r, NV_F32);
}

/* Embedding lookup (bf16 table rows by token id) scattered to given destination rows: exact. */
static void case_rows_copy(emu_ctx *c, emu_res *r)
{
    int vocab = c->small ? 50 : 4096;
    int cols = c->small ? 96 : 8192;
    int n = c->small ? 7 : 40;
    int dst_rows = n + 11; /* 51 and 18: prime to 7, so the destinations are distinct */
    std::vector<uint16_t> table = to_bf16_host(rnd((size_t)vocab * cols, 1.0f));
    std::vector<int32_t> si(n), di(n);
    for (int i = 0; i < n; i++) {
        si[i] = (int32_t)((i * 2654435761u) % (unsigned)vocab);
        di[i] = (i * 7) % dst_rows;
    }
    std::vector<float> want((size_t)dst_rows * cols, 1.5f);
    std::vector<float> got = want;
    cpu_ok(c, c->be->ops->rows_copy(c->ex, want.data(), di.data(), table.data(), NV_BF16,
                                    si.data(), (size_t)n, cols));
    r->launch = cuda_rows_copy(NULL, got.data(), di.data(), table.data(), NV_BF16, si.data(),
                               (size_t)n, cols);
    set_res(r, max_abs(got.data(), want.data(), want.size()), 0.0,
            "rows_copy bf16 gather %d of %d rows x %d, scattered", n, vocab, cols);
}

/* The projector's pixel shuffle (v2, factor 2) as projector.c runs it: a gather of f32 ViT
 * rows, output token (R, C) taking as its q-th block of D channels (q = dy * 2 + dx) the row of
 * patch (2R + dy, 2C + dx); 2 tiles of 32 x 32 patches x 3,200. Exact. */
static void case_pixel_shuffle(emu_ctx *c, emu_res *r)
{
    int tiles = 2;
    int g = c->small ? 8 : 32;
    int D = c->small ? 40 : 3200;
    int f = 2;
    int np = g * g;
    std::vector<float> vit = rnd((size_t)tiles * np * D, 1.0f);
    std::vector<int32_t> idx;
    for (int t = 0; t < tiles; t++) {
        for (int R = 0; R < g / f; R++) {
            for (int C = 0; C < g / f; C++) {
                for (int dy = 0; dy < f; dy++) {
                    for (int dx = 0; dx < f; dx++) {
                        idx.push_back(t * np + (f * R + dy) * g + f * C + dx);
                    }
                }
            }
        }
    }
    size_t n = idx.size();
    std::vector<float> want = nan_vec(n * D);
    std::vector<float> got = nan_vec(n * D);
    cpu_ok(c, c->be->ops->rows_copy(c->ex, want.data(), NULL, vit.data(), NV_F32, idx.data(), n,
                                    D));
    r->launch = cuda_rows_copy(NULL, got.data(), NULL, vit.data(), NV_F32, idx.data(), n, D);
    set_res(r, max_abs(got.data(), want.data(), n * D), 0.0,
            "pixel shuffle %d tiles of %d x %d patches x %d -> %zu x %d", tiles, g, g, D,
            n / (size_t)(f * f), D * f * f);
}

static void case_im2col(emu_ctx *c, emu_res *r)
{
    int batch = c->small ? 2 : 1;
    int img = c->small ? 28 : 448;
    int patch = 14;
    size_t npix = (size_t)batch * 3 * img * img;
    std::vector<float> pix = rnd(npix, 1.0f);
    size_t nout = npix; /* (batch * (img/p)^2) x (3 p p) */
    std::vector<float> want = nan_vec(nout);
    std::vector<float> got = nan_vec(nout);
    cpu_ok(c, c->be->ops->im2col(c->ex, want.data(), pix.data(), batch, 3, img, img, patch));
    r->launch = cuda_im2col(NULL, got.data(), pix.data(), batch, 3, img, img, patch);
    set_res(r, max_abs(got.data(), want.data(), nout), 0.0, "im2col %d x 3 x %d x %d, patch %d",
            batch, img, img, patch);
}

/* f32 -> bf16 (the GEMM input), checked against the CPU's rounding, ties and signs included. */
static void case_to_bf16(emu_ctx *c, emu_res *r)
{
    size_t n = c->small ? 1000 : 1025 * 3200;
    std::vector<float> x = rnd(n, 3.0f);
    x[0] = 1.00390625f;          /* exactly halfway between two bf16: rounds to even (1.0) */
    x[1] = 1.01171875f;          /* halfway, rounds up to even */
    x[2] = -0.0f;
    x[3] = 3.0e38f;
    std::vector<uint16_t> want(n);
    std::vector<__nv_bfloat16> got(n);
    for (size_t i = 0; i < n; i++) {
        want[i] = nv_f32_to_bf16(x[i]);
        got[i] = __ushort_as_bfloat16(0xffff);
    }
    r->launch = cuda_to_bf16(NULL, got.data(), x.data(), n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) {
        diff += __bfloat16_as_ushort(got[i]) != want[i];
    }
    set_res(r, (double)diff, 0.0, "to_bf16 %zu values (values differing)", n);
}

/* f32 -> bf16 into rows padded with zero columns (the GEMM input of the ViT patch embedding,
 * K 588 stored as 592): every value rounded as the CPU rounds it, every pad element +0. */
static void case_to_bf16_pad(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 7 : 1025;
    int cols = 588;
    int ld = 592;
    size_t n = (size_t)rows * (size_t)ld;
    std::vector<float> x = rnd((size_t)rows * (size_t)cols, 3.0f);
    std::vector<__nv_bfloat16> got(n);
    for (size_t i = 0; i < n; i++) {
        got[i] = __ushort_as_bfloat16(0xffff);
    }
    r->launch = cuda_to_bf16_pad(NULL, got.data(), ld, x.data(), (size_t)rows, cols);
    size_t diff = 0;
    for (int i = 0; i < rows; i++) {
        for (int j = 0; j < ld; j++) {
            uint16_t want = j < cols ? nv_f32_to_bf16(x[(size_t)i * cols + j]) : 0;
            diff += __bfloat16_as_ushort(got[(size_t)i * ld + j]) != want;
        }
    }
    set_res(r, (double)diff, 0.0, "to_bf16_pad %d x %d -> rows of %d (values differing)", rows,
            cols, ld);
}

/* ---- activations -------------------------------------------------------------------------- */

/* GELU and SiLU: the kernel calls libm's erff/expf here, the CPU op its vectorised versions
 * (within a few ulp): 1e-6 relative L2. Residual and bias adds: the same single f32 operation
 * per element, exact. */
#define TOL_ACT 1e-6

static void case_gelu(emu_ctx *c, emu_res *r)
{
    size_t n = c->small ? 999 : (size_t)1025 * 12800;
    std::vector<float> x = rnd(n, 6.0f);
    std::vector<float> want = nan_vec(n);
    std::vector<float> got = nan_vec(n);
    cpu_ok(c, c->be->ops->gelu(c->ex, want.data(), x.data(), n));
    r->launch = cuda_gelu(NULL, got.data(), x.data(), n);
    set_res(r, rel_l2(got.data(), want.data(), n), TOL_ACT, "gelu %zu", n);
}

static void case_silu_mul(emu_ctx *c, emu_res *r)
{
    size_t n = c->small ? 777 : (size_t)16 * 29568;
    std::vector<float> g = rnd(n, 8.0f);
    std::vector<float> u = rnd(n, 2.0f);
    std::vector<float> want = nan_vec(n);
    std::vector<float> got = nan_vec(n);
    cpu_ok(c, c->be->ops->silu_mul(c->ex, want.data(), g.data(), u.data(), n));
    r->launch = cuda_silu_mul(NULL, got.data(), g.data(), u.data(), n);
    set_res(r, rel_l2(got.data(), want.data(), n), TOL_ACT, "silu_mul %zu", n);
}

static void case_add_scaled(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 5 : 1025;
    int cols = c->small ? 64 : 3200;
    size_t n = (size_t)rows * cols;
    std::vector<float> x = rnd(n, 1.0f);
    std::vector<float> s = rnd((size_t)cols, 1.0f);
    std::vector<float> y0 = rnd(n, 1.0f);
    std::vector<float> want = y0;
    std::vector<float> got = y0;
    std::vector<float> want2 = y0;
    std::vector<float> got2 = y0;
    nv_bweight sb = bw(s.data(), NV_F32, cols);
    cpu_ok(c, c->be->ops->add_scaled(c->ex, want.data(), x.data(), &sb, rows, cols));
    cpu_ok(c, c->be->ops->add_scaled(c->ex, want2.data(), x.data(), NULL, rows, cols));
    r->launch = cuda_add_scaled(NULL, got.data(), x.data(), s.data(), rows, cols);
    cudaError_t e2 = cuda_add_scaled(NULL, got2.data(), x.data(), NULL, rows, cols);
    if (r->launch == cudaSuccess) {
        r->launch = e2;
    }
    double e = max_abs(got.data(), want.data(), n);
    double f = max_abs(got2.data(), want2.data(), n);
    set_res(r, e > f ? e : f, 0.0, "add_scaled %d x %d (with and without scale)", rows, cols);
}

/* The position embedding (bf16, 1,025 rows) broadcast over 2 tiles. */
static void case_add_rows(emu_ctx *c, emu_res *r)
{
    int b_rows = c->small ? 5 : 1025;
    int rows = 2 * b_rows;
    int cols = c->small ? 48 : 3200;
    size_t n = (size_t)rows * cols;
    std::vector<uint16_t> b = to_bf16_host(rnd((size_t)b_rows * cols, 1.0f));
    std::vector<float> y0 = rnd(n, 1.0f);
    std::vector<float> want = y0;
    std::vector<float> got = y0;
    nv_bweight bb = bw(b.data(), NV_BF16, (int64_t)b_rows * cols);
    bb.t.ndim = 2;
    bb.t.shape[0] = b_rows;
    bb.t.shape[1] = cols;
    cpu_ok(c, c->be->ops->add_rows(c->ex, want.data(), &bb, b_rows, rows, cols));
    r->launch = cuda_add_rows(NULL, got.data(), b.data(), NV_BF16, b_rows, rows, cols);
    set_res(r, max_abs(got.data(), want.data(), n), 0.0, "add_rows bf16 %d rows over %d x %d",
            b_rows, rows, cols);
}

/* ---- fused ops and the tensor-core attention (fused.cu, flash_attn.cu) --------------------- */

/* add_rmsnorm against the CPU backend's (add_scaled then rmsnorm): h and x as the norms
 * (TOL_NORM); the bf16 copy for the next GEMM must be x rounded to nearest even, exactly. */
static void case_add_rmsnorm(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 3 : 16;
    int cols = c->small ? 300 : 8192;
    size_t n = (size_t)rows * cols;
    std::vector<float> h = rnd(n, 2.0f);
    std::vector<float> a = rnd(n, 2.0f);
    std::vector<float> w = rnd((size_t)cols, 1.0f);
    std::vector<float> s = rnd((size_t)cols, 0.5f);
    std::vector<float> hw = h;
    std::vector<float> hg = h;
    std::vector<float> want = nan_vec(n);
    std::vector<float> got = nan_vec(n);
    std::vector<__nv_bfloat16> xbf(n, __float2bfloat16_rn(NAN));
    nv_bweight wb = bw(w.data(), NV_F32, cols);
    nv_bweight sb = bw(s.data(), NV_F32, cols);
    cpu_ok(c, c->be->ops->add_rmsnorm(c->ex, hw.data(), a.data(), &sb, want.data(), &wb, rows,
                                      cols, 1e-6f));
    r->launch = cuda_add_rmsnorm(NULL, hg.data(), a.data(), s.data(), got.data(), xbf.data(),
                                 w.data(), rows, cols, 1e-6f);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        bad += __bfloat16_as_ushort(xbf[i]) != __bfloat16_as_ushort(__float2bfloat16_rn(got[i]));
    }
    double e = NV_MAX(rel_l2(got.data(), want.data(), n), rel_l2(hg.data(), hw.data(), n));
    set_res(r, bad > 0 ? INFINITY : e, TOL_NORM,
            "add_rmsnorm %d x %d (layer scale; h, x and x in bf16)", rows, cols);
}

/* silu_mul_cat over gate|up rows against the CPU backend's: the same formula (TOL_ACT). */
static void case_silu_mul_cat(emu_ctx *c, emu_res *r)
{
    int rows = c->small ? 3 : 16;
    int cols = c->small ? 259 : 29568;
    size_t n = (size_t)rows * cols;
    std::vector<float> gu = rnd(2 * n, 8.0f);
    std::vector<float> want = nan_vec(n);
    std::vector<float> got = nan_vec(n);
    cpu_ok(c, c->be->ops->silu_mul_cat(c->ex, want.data(), gu.data(), rows, cols));
    r->launch = cuda_silu_mul_cat(NULL, got.data(), gu.data(), rows, cols);
    set_res(r, rel_l2(got.data(), want.data(), n), TOL_ACT, "silu_mul_cat %d x %d", rows, cols);
}

/* RoPE fused into the KV append against the CPU's rope + store_rows: K columns of a grouped
 * q|k|v row (stride (64 + 16) x 128) rotated into a bf16 cache at row 4208: exact, and the
 * cache rows around stay. */
static void case_rope_store(emu_ctx *c, emu_res *r)
{
    int n = c->small ? 3 : 16;
    int heads = c->small ? 2 : 8;
    int hd = 128;
    int lds = c->small ? 6 * hd : 80 * hd;
    int64_t row0 = c->small ? 5 : 4208;
    int64_t cap = row0 + n + 3;
    int cols = heads * hd;
    double theta = 1000000.0;
    std::vector<float> src = rnd((size_t)n * lds, 3.0f);
    std::vector<float> src_cpu = src;
    std::vector<unsigned char> want((size_t)cap * cols * 2, 0x5a);
    std::vector<unsigned char> got = want;
    float inv_freq[CUDA_ROPE_MAX_HALF];
    float base = (float)theta;
    for (int i = 0; i < hd / 2; i++) {
        float e = (float)(2 * i) / (float)hd;
        float p = (float)pow((double)base, (double)e);
        inv_freq[i] = 1.0f / p;
    }
    cpu_ok(c, c->be->ops->rope_store(c->ex, want.data(), NV_BF16, row0, src_cpu.data(), lds, n,
                                     heads, hd, theta));
    r->launch = cuda_rope_store(NULL, got.data(), NV_BF16, row0, src.data(), lds, n, heads, hd,
                                inv_freq);
    size_t diff = 0;
    for (size_t i = 0; i < want.size(); i++) {
        diff += want[i] != got[i];
    }
    set_res(r, (double)diff, 0.0, "rope_store bf16: %d rows x %d heads at row %lld, lds %d "
            "(bytes differing)", n, heads, (long long)row0, lds);
}

/* The tensor-core attention, fragment products through fa_mma's reference form (warp
 * shuffles over the PTX fragment layout), against the CPU backend fed the same bf16 Q, K and
 * V: what remains is P rounded to bf16 before P V (the kernel) and the order of the sums,
 * ~1e-3 relative L2 at these shapes; TOL_FLASH is 3x what was measured. A wrong mask, GQA row
 * or tile bound moves whole keys and fails it. */
#define TOL_FLASH 5e-3

static void run_flash(emu_ctx *c, emu_res *r, const attn_shape &s, const char *name)
{
    int HQ = s.ld_heads * s.hd;
    int ldq = HQ;
    int ldkv = s.n_kv_heads * s.hd;
    if (s.ld_heads > s.n_heads && s.n_heads == s.n_kv_heads) {
        ldq = 3 * HQ;
        ldkv = 3 * HQ;
    }
    size_t nq = (size_t)s.batch * s.n_q * ldq;
    size_t nkv = (size_t)s.batch * s.n_kv * ldkv;
    std::vector<float> q = rnd(nq, 1.5f);
    std::vector<float> k = rnd(nkv, 1.5f);
    std::vector<float> v = rnd(nkv, 1.0f);
    /* bf16 values on both sides: the kernel rounds Q, K, V to bf16 itself */
    for (size_t i = 0; i < nq; i++) {
        q[i] = nv_bf16_to_f32(nv_f32_to_bf16(q[i]));
    }
    for (size_t i = 0; i < nkv; i++) {
        k[i] = nv_bf16_to_f32(nv_f32_to_bf16(k[i]));
        v[i] = nv_bf16_to_f32(nv_f32_to_bf16(v[i]));
    }
    std::vector<uint16_t> kb, vb;
    const void *kp = k.data();
    const void *vp = v.data();
    if (s.kvt == NV_BF16) {
        kb = to_bf16_host(k);
        vb = to_bf16_host(v);
        kp = kb.data();
        vp = vb.data();
    }
    size_t nout = (size_t)s.batch * s.n_q * HQ;
    std::vector<float> want = nan_vec(nout);
    std::vector<float> got = nan_vec(nout);
    if (s.ld_heads > s.n_heads) {
        for (size_t i = 0; i < nout; i++) {
            if ((int)(i % (size_t)HQ) >= s.n_heads * s.hd) {
                want[i] = 0.0f;
                got[i] = 0.0f;
            }
        }
    }
    float scale = 1.0f / sqrtf((float)s.hd);
    if (!cpu_ok(c, c->be->ops->attention(c->ex, want.data(), HQ, q.data(), ldq, kp, vp, ldkv,
                                         s.kvt, s.batch, s.n_q, s.n_kv, s.n_heads, s.n_kv_heads,
                                         s.hd, scale, s.cpos0, NV_TP_LLM_HEADS))) {
        set_res(r, INFINITY, TOL_FLASH, "%s: cpu op failed", name);
        return;
    }
    int n_kv_heads = s.n_kv_heads;
    if (s.sample) {
        nvemu_block_filter(keep_sampled_head, &n_kv_heads);
    }
    r->launch = cuda_flash_attention(NULL, got.data(), HQ, q.data(), ldq, kp, vp, ldkv, s.kvt,
                                     s.batch, s.n_q, s.n_kv, s.n_heads, s.n_kv_heads, s.hd,
                                     scale, s.cpos0);
    nvemu_block_filter(NULL, NULL);
    if (s.sample) { /* compare the sampled heads (and the padding) only */
        int group = s.n_heads / s.n_kv_heads;
        size_t m = 0;
        for (size_t i = 0; i < nout; i++) {
            int h = (int)(i % (size_t)HQ) / s.hd;
            if (h >= s.n_heads || keep_sampled_head(uint3{0, (unsigned)(h / group), 0}, dim3(),
                                                    &n_kv_heads)) {
                got[m] = got[i];
                want[m] = want[i];
                m++;
            }
        }
        nout = m;
    }
    set_res(r, rel_l2(got.data(), want.data(), nout), TOL_FLASH,
            "%s: %d seq x %d q x %d keys, %d/%d heads (ld %d), hd %d, %s KV, causal %lld%s",
            name, s.batch, s.n_q, s.n_kv, s.n_heads, s.n_kv_heads, s.ld_heads, s.hd,
            s.kvt == NV_BF16 ? "bf16" : "f32", (long long)s.cpos0,
            s.sample ? " (kv heads first/middle/last emulated)" : "");
}

/* Decoder prefill: 64 q / 8 kv heads (GQA 8: each block's 64 rows are 8 positions x 8 heads),
 * causal after 100 cached keys, bf16 cache, head_dim 128. */
static void case_flash_prefill(emu_ctx *c, emu_res *r)
{
    attn_shape s = {1, 200, 300, 64, 8, 128, 64, NV_BF16, 100, 0, false};
    if (c->small) {
        s = {1, 20, 27, 16, 2, 128, 16, NV_BF16, 7, 0, false};
    }
    run_flash(c, r, s, "flash prefill");
}

/* The ViT: 1,025 tokens, full attention, 25 real of 32 padded heads with q/k/v packed in one
 * row of 3 x 4,096; kv heads 0, 12 and 24 emulated (NVLM_EMU_FULL=1: all 25). */
static void case_flash_vit(emu_ctx *c, emu_res *r)
{
    attn_shape s = {1, 1025, 1025, 25, 25, 128, 32, NV_F32, -1, 0, true};
    if (c->small) {
        s = {1, 130, 130, 2, 2, 128, 4, NV_F32, -1, 0, false};
    }
    if (tu_env_flag("NVLM_EMU_FULL")) {
        s.sample = false;
    }
    run_flash(c, r, s, "flash vit");
}

/* head_dim 80 (zero-padded to 128) and 64, causal from 0, two sequences, GQA 2 and 1. */
static void case_flash_pad(emu_ctx *c, emu_res *r)
{
    attn_shape s = {2, 150, 150, 4, 2, 80, 4, NV_F32, 0, 0, false};
    if (c->small) {
        s = {2, 70, 70, 4, 2, 80, 4, NV_F32, 0, 0, false};
    }
    run_flash(c, r, s, "flash hd 80");
}

static void case_flash_hd64(emu_ctx *c, emu_res *r)
{
    attn_shape s = {1, 300, 300, 2, 2, 64, 2, NV_BF16, 0, 0, false};
    if (c->small) {
        s = {1, 130, 130, 1, 1, 64, 1, NV_BF16, 0, 0, false};
    }
    run_flash(c, r, s, "flash hd 64");
}

/* ---- the registry ------------------------------------------------------------------------- */

typedef void (*emu_case_fn)(emu_ctx *c, emu_res *r);
struct emu_case {
    const char *name;
    emu_case_fn fn;
};

static const emu_case CASES[] = {
    {"attn_decode", case_attn_decode},
    {"attn_chunk", case_attn_chunk},
    {"attn_tp_prefill", case_attn_tp_prefill},
    {"attn_vit", case_attn_vit},
    {"attn_batch", case_attn_batch},
    {"attn_step", case_attn_step},
    {"attn_batch_decode", case_attn_batch_decode},
    {"rmsnorm", case_rmsnorm},
    {"qk_norm", case_qk_norm},
    {"rms_parts", case_rms_parts},
    {"layernorm", case_layernorm},
    {"rope", case_rope},
    {"rope_step", case_rope_step},
    {"store_step", case_store_step},
    {"store_bf16", case_store_bf16},
    {"store_f32", case_store_f32},
    {"rows_copy", case_rows_copy},
    {"pixel_shuffle", case_pixel_shuffle},
    {"im2col", case_im2col},
    {"to_bf16", case_to_bf16},
    {"to_bf16_pad", case_to_bf16_pad},
    {"gelu", case_gelu},
    {"silu_mul", case_silu_mul},
    {"add_scaled", case_add_scaled},
    {"add_rows", case_add_rows},
    {"add_rmsnorm", case_add_rmsnorm},
    {"silu_mul_cat", case_silu_mul_cat},
    {"rope_store", case_rope_store},
    {"flash_prefill", case_flash_prefill},
    {"flash_vit", case_flash_vit},
    {"flash_pad", case_flash_pad},
    {"flash_hd64", case_flash_hd64},
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

/* Runs a case; true when it agrees (launch succeeded, error within tolerance). */
static bool run_case(emu_ctx *c, const emu_case &k, emu_res *r)
{
    r->err = INFINITY;
    r->tol = 0.0;
    r->launch = cudaSuccess;
    r->what = k.name;
    cudaGetLastError();
    k.fn(c, r);
    return r->launch == cudaSuccess && r->err <= r->tol;
}

/* ---- the mutation check ------------------------------------------------------------------- */

struct site_rec {
    const nvemu::site *s;
    unsigned long long hits;
};

static void collect(const nvemu::site *s, void *arg)
{
    std::vector<site_rec> *v = (std::vector<site_rec> *)arg;
    v->push_back(site_rec{s, s->hits});
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s != NULL ? s + 1 : p;
}

/* Whether the source line of a site carries the marker "nvemu: redundant" (a barrier the
 * comparisons cannot need, with the reason next to it in the kernel source). */
static bool marked_redundant(const nvemu::site *s)
{
    FILE *f = fopen(s->file, "r");
    if (f == NULL) {
        return false;
    }
    char line[512];
    bool found = false;
    for (int n = 1; fgets(line, sizeof line, f) != NULL; n++) {
        if (n == s->line) {
            found = strstr(line, "nvemu: redundant") != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

static void mutation_check(emu_ctx *c)
{
    tu_section("mutations: each barrier and shuffle site is needed");
    bool was_small = c->small;
    c->small = true;
    /* Which cases reach which site (hit counts before and after each case). */
    std::vector<std::vector<int>> users;
    std::vector<const nvemu::site *> sites;
    for (int i = 0; i < N_CASES; i++) {
        std::vector<site_rec> before, after;
        nvemu_sites(collect, &before);
        emu_res r;
        run_case(c, CASES[i], &r);
        nvemu_sites(collect, &after);
        for (const site_rec &a : after) {
            unsigned long long h0 = 0;
            for (const site_rec &b : before) {
                if (b.s == a.s) {
                    h0 = b.hits;
                }
            }
            if (a.hits == h0) {
                continue;
            }
            /* one site per source line: a device function in a header has a copy of its
             * sites in every kernel file that includes it, and a mutation turns off all */
            size_t j = 0;
            while (j < sites.size() && !(sites[j]->line == a.s->line &&
                                         strcmp(base_name(sites[j]->file),
                                                base_name(a.s->file)) == 0)) {
                j++;
            }
            if (j == sites.size()) {
                sites.push_back(a.s);
                users.push_back(std::vector<int>());
            }
            users[j].push_back(i);
        }
    }
    CHECK(sites.size() >= 6, "the kernels' barrier and shuffle sites were reached (%zu)",
          sites.size());
    int n_caught = 0;
    static const int orders[] = {NVEMU_SCHED_IN_ORDER, NVEMU_SCHED_WARP_FIRST,
                                 NVEMU_SCHED_REVERSE};
    for (size_t j = 0; j < sites.size(); j++) {
        const nvemu::site *s = sites[j];
        const char *file = base_name(s->file);
        CHECK(nvemu_mutate(file, s->line, false) >= 1, "site %s:%d turned off", file, s->line);
        const char *caught = NULL;
        const char *how = "";
        for (int o : orders) {
            nvemu_schedule(o);
            for (int i : users[j]) {
                emu_res r;
                if (!run_case(c, CASES[i], &r)) {
                    caught = CASES[i].name;
                    how = r.launch != cudaSuccess ? "launch failure" : "comparison";
                    break;
                }
            }
            if (caught != NULL) {
                break;
            }
        }
        nvemu_schedule(NVEMU_SCHED_IN_ORDER);
        nvemu_mutate(file, s->line, true);
        const char *kind = s->kind == nvemu::SITE_BARRIER ? "__syncthreads" : "warp collective";
        if (caught == NULL && marked_redundant(s)) {
            printf("# %s %s:%d removed: no case fails (marked redundant in the source)\n", kind,
                   file, s->line);
            continue;
        }
        CHECK(caught != NULL, "%s %s:%d removed: detected by %s (%s)", kind, file, s->line,
              caught != NULL ? caught : "NO CASE", how);
        n_caught += caught != NULL;
    }
    CHECK(n_caught >= 6, "%d removed barriers / shuffles detected", n_caught);
    /* And with every site back on, the cases agree again. */
    for (int i = 0; i < N_CASES; i++) {
        emu_res r;
        CHECK(run_case(c, CASES[i], &r), "%s agrees again after the mutations (err %.3g)",
              CASES[i].name, r.err);
    }
    c->small = was_small;
}

/* ---- emulator self-checks ----------------------------------------------------------------- */

/* Lanes 0-15 wait at the block barrier, lanes 16-31 of the same warp at a shuffle that needs
 * lanes 0-15: neither can finish. */
static __global__ void deadlock_kernel(int *out)
{
    int v = (int)threadIdx.x;
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    out[threadIdx.x] = v;
}

static __global__ void shuffle_kernel(int *out)
{
    int lane = threadIdx.x & 31;
    int v = (int)threadIdx.x * 10;
    int a = __shfl_xor_sync(0xffffffffu, v, 1);
    int b = __shfl_down_sync(0xffffffffu, v, 3);
    int d = __shfl_up_sync(0xffffffffu, v, 2, 16);
    int e = __shfl_sync(0xffffffffu, v, 5);
    unsigned bal = __ballot_sync(0xffffffffu, lane % 3 == 0);
    out[threadIdx.x * 5 + 0] = a;
    out[threadIdx.x * 5 + 1] = b;
    out[threadIdx.x * 5 + 2] = d;
    out[threadIdx.x * 5 + 3] = e;
    out[threadIdx.x * 5 + 4] = (int)bal;
}

/* Atomics across blocks, votes and __syncwarp. */
static __global__ void atomic_vote_kernel(int *cnt, float *sum, int *mx, int *votes)
{
    int t = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(cnt, 1);
    atomicAdd(sum, 0.5f);
    atomicMax(mx, t);
    __syncwarp();
    int any = __any_sync(0xffffffffu, t == 37);
    int all = __all_sync(0xffffffffu, t >= 0);
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(votes, any + 2 * all);
    }
}

/* Writes one float past the dynamic shared memory it was launched with. (The Makefile
 * generates the storage line for the kernel files; in this file it is written out.) */
NVEMU_DYN_SHARED(overrun_smem, float)
static __global__ void smem_overrun_kernel(int n)
{
    extern __shared__ float overrun_smem[];
    if (threadIdx.x == 0) {
        overrun_smem[n] = 1.0f;
    }
}

static void emulator_checks(void)
{
    tu_section("emulator");
    std::vector<int> out(64 * 5, -1);
    NV_LAUNCH(shuffle_kernel, 1, 64, 0, (cudaStream_t)NULL)(out.data());
    CHECK(cudaGetLastError() == cudaSuccess, "shuffle kernel runs");
    bool ok = true;
    unsigned want_bal = 0;
    for (int l = 0; l < 32; l++) {
        want_bal |= (l % 3 == 0 ? 1u : 0u) << l;
    }
    for (int t = 0; t < 64; t++) {
        int lane = t & 31;
        int w0 = t - lane;
        int b = lane + 3 < 32 ? t + 3 : t;
        int seg = lane & ~15;
        int d = lane - 2 >= seg ? t - 2 : t;
        ok = ok && out[t * 5] == (w0 + (lane ^ 1)) * 10 && out[t * 5 + 1] == b * 10 &&
             out[t * 5 + 2] == d * 10 && out[t * 5 + 3] == (w0 + 5) * 10 &&
             (unsigned)out[t * 5 + 4] == want_bal;
    }
    CHECK(ok, "xor / down / up (width 16) / idx shuffles and ballot give CUDA's lanes");
    int cnt = 0, mx = -1, votes = 0;
    float sum = 0.0f;
    NV_LAUNCH(atomic_vote_kernel, 3, 64, 0, (cudaStream_t)NULL)(&cnt, &sum, &mx, &votes);
    CHECK(cudaGetLastError() == cudaSuccess && cnt == 192 && sum == 96.0f && mx == 191 &&
              votes == 6 * 2 + 1,
          "atomics over 3 blocks and warp votes (count %d, sum %g, max %d, votes %d)", cnt,
          (double)sum, mx, votes);
    NV_LAUNCH(deadlock_kernel, 1, 64, 0, (cudaStream_t)NULL)(out.data());
    cudaError_t e = cudaGetLastError();
    CHECK(e == cudaErrorLaunchFailure && strstr(nvemu_message(), "deadlock") != NULL,
          "a barrier in divergent code is reported (%s)", nvemu_message());
    NV_LAUNCH(shuffle_kernel, 1, 2048, 0, (cudaStream_t)NULL)(out.data());
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads per block refused");
    NV_LAUNCH(shuffle_kernel, 1, 32, 64 * 1024, (cudaStream_t)NULL)(out.data());
    CHECK(cudaGetLastError() == cudaErrorInvalidValue,
          "64 KiB of dynamic shared memory refused without cudaFuncSetAttribute");
#ifndef NVLM_EMU_SMALL /* the sanitizer build reports the write itself */
    NV_LAUNCH(smem_overrun_kernel, 2, 32, 64 * sizeof(float), (cudaStream_t)NULL)(64);
    e = cudaGetLastError();
    CHECK(e == cudaErrorLaunchFailure && strstr(nvemu_message(), "past") != NULL,
          "a write past the dynamic shared memory fails the launch (%s)", nvemu_message());
#endif
    NV_LAUNCH(smem_overrun_kernel, 2, 32, 64 * sizeof(float), (cudaStream_t)NULL)(63);
    CHECK(cudaGetLastError() == cudaSuccess, "the last float of the dynamic shared memory is in");
    CHECK(__bfloat16_as_ushort(__float2bfloat16_rn(1.00390625f)) == 0x3f80 &&
              __bfloat16_as_ushort(__float2bfloat16_rn(1.01171875f)) == 0x3f82 &&
              __half_as_ushort(__float2half_rn(65520.0f)) == 0x7c00 &&
              __half_as_ushort(__float2half_rn(5.9604645e-8f)) == 0x0001 &&
              __half2float(__ushort_as_half(0x3555)) == nv_f16_to_f32(0x3555),
          "bf16 / f16 conversions round to nearest even");
}

/* ---- main --------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    emu_ctx c;
    memset(&c.cb, 0, sizeof c.cb);
    c.cb.sm_count = 132;
    c.small = false;
#ifdef NVLM_EMU_SMALL
    c.small = true;
#endif
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0) {
            c.small = true;
        }
    }
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = 2;
    CHECK_OK(nvlm_context_create(&cp, &c.ctx));
    CHECK_OK(nv_backend_cpu_create(c.ctx, &c.be));
    CHECK_OK(c.be->ops->exec_create(c.be, 2, c.ctx, &c.ex));

    emulator_checks();

    tu_section(c.small ? "kernels vs the CPU backend (small shapes)"
                       : "kernels vs the CPU backend (real shapes)");
    for (int i = 0; i < N_CASES; i++) {
        emu_res r;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        bool ok = run_case(&c, CASES[i], &r);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        CHECK(ok, "%s: err %.3g (tol %.0e)%s%s [%.1f s]", r.what.c_str(), r.err, r.tol,
              r.launch != cudaSuccess ? ", launch: " : "",
              r.launch != cudaSuccess ? nvemu_message() : "", secs);
    }

    /* A kernel without races gives the same result whatever order its threads take turns in
     * (and its blocks run in): every case again, small shapes, under the two other orders. */
    tu_section("the same cases under other thread and block orders (small shapes)");
    bool was_small = c.small;
    c.small = true;
    static const int other[] = {NVEMU_SCHED_WARP_FIRST, NVEMU_SCHED_REVERSE};
    for (int o : other) {
        nvemu_schedule(o);
        for (int i = 0; i < N_CASES; i++) {
            emu_res r;
            bool ok = run_case(&c, CASES[i], &r);
            CHECK(ok, "%s, %s: err %.3g (tol %.0e)%s%s", r.what.c_str(),
                  o == NVEMU_SCHED_WARP_FIRST ? "one warp ahead" : "reverse order", r.err, r.tol,
                  r.launch != cudaSuccess ? ", launch: " : "",
                  r.launch != cudaSuccess ? nvemu_message() : "");
        }
    }
    nvemu_schedule(NVEMU_SCHED_IN_ORDER);
    c.small = was_small;

    mutation_check(&c);

    unsigned long long sw, blocks;
    nvemu_stats(&sw, &blocks);
    printf("# emulation: %llu blocks, %llu context switches\n", blocks, sw);
    c.be->ops->exec_free(c.ex);
    c.be->ops->destroy(c.be);
    nvlm_context_free(c.ctx);
    return tu_done();
}
