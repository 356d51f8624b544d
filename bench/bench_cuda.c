/*
 * bench_cuda.c - CUDA backend speed at the real NVLM-D-72B layer shapes (`make bench-cuda`).
 * A synthetic model built on the device (random bf16 weights): a few Qwen2-72B decoder layers
 * (hidden 8192, 64 heads / 8 KV heads of 128, FFN 29568) and InternViT-6B layers (hidden 3200,
 * 32 padded heads of 128, MLP 12800), run through the same backend ops the pipeline calls.
 * Per layer: decode at batch 1 over a 2048-token bf16 cache, prefill of 2048 tokens, ViT over
 * 7 tiles (7 x 1025 tokens); next to the in-run ceilings: a read-only bandwidth probe and a
 * plain cuBLASLt bf16 GEMM. Then the decoder layers again with the seven projections in FP8
 * (random codes): decode through the FP8 GEMV (bytes/s vs the probe, speed-up over bf16) and
 * prefill with precision EXACT and FAST. Not a test: prints a table, exits 0 (also when there is
 * no device).
 *
 *   bench_cuda [--layers N] [--ctx N] [--prefill N] [--tiles N] [--reps N] [--quick]
 *              [--breakdown CTX[,CTX...]]
 *
 * --breakdown 8192,32768: after the ceilings, only batch-1 decode at each context (up to 4),
 * per layer: the step, its seven GEMMs alone and the rest, the host's enqueue time, and the
 * bytes read (weights + K/V) against the read probe.
 */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef NVLM_WITH_CUDA
#include "cuda/cuda_api.h"

typedef struct opts {
    int layers, ctx, prefill, tiles, reps;
    int D, H, KVH, hd, I;           /* decoder */
    int vD, vH, vhd, vI, vtok;      /* ViT (padded heads) */
    int n_bd, bd[4];                /* --breakdown: decode contexts */
} opts;

typedef struct llm_layer {
    nv_bweight in_norm, post_norm, q, q_b, k, k_b, v, v_b, o, gate, up, down;
} llm_layer;

typedef struct vit_layer_w {
    nv_bweight norm1, norm2, qkv, q_norm, k_norm, proj, proj_b, ls1, ls2, fc1, fc1_b, fc2, fc2_b;
} vit_layer_w;

typedef struct run {
    const opts *o;
    llm_layer *L;
    vit_layer_w *V;
    void **kc, **vc;                /* per layer KV cache (bf16) */
    int n;                          /* tokens this pass */
    int64_t pos0;                   /* cache rows before this pass */
    float *h, *x, *q, *k, *v, *ctxo, *a, *g, *u;   /* activations */
} run;

#define TRY(expr)                                                                        \
    do {                                                                                 \
        nvlm_status st_ = (expr);                                                        \
        if (st_ != NVLM_OK) {                                                            \
            return st_;                                                                  \
        }                                                                                \
    } while (0)

static uint64_t g_seed = 1;

static nvlm_status rw(nv_exec *ex, nv_bweight *w, int64_t rows, int64_t cols, float amp)
{
    int64_t shape[2] = {rows, cols};
    if (rows <= 1) {
        return nv_cuda_random_weight(ex, 1, &shape[1], g_seed++, amp, w);
    }
    return nv_cuda_random_weight(ex, 2, shape, g_seed++, amp, w);
}

static float *act(nv_exec *ex, size_t n)
{
    void *p = NULL;
    if (ex->be->ops->alloc(ex, n * sizeof(float), &p) != NVLM_OK) {
        return NULL;
    }
    if (nv_cuda_random_f32(ex, p, n, g_seed++, 1.0f) != NVLM_OK) {
        return NULL;
    }
    return p;
}

/* One decoder layer over r->n tokens at cache position r->pos0 (decoder.c's op sequence). */
static nvlm_status llm_layer_fwd(nv_exec *ex, run *r, int l)
{
    const nv_backend_ops *op = ex->be->ops;
    const opts *o = r->o;
    const llm_layer *L = &r->L[l];
    int n = r->n;
    int HQ = o->H * o->hd;
    int KV = o->KVH * o->hd;
    TRY(op->rmsnorm(ex, r->x, o->D, r->h, o->D, &L->in_norm, n, o->D, o->D, 1e-6f));
    TRY(op->matmul(ex, r->q, r->x, &L->q, &L->q_b, n));
    TRY(op->matmul(ex, r->k, r->x, &L->k, &L->k_b, n));
    TRY(op->matmul(ex, r->v, r->x, &L->v, &L->v_b, n));
    TRY(op->rope(ex, r->q, HQ, n, o->H, o->hd, r->pos0, 1e6));
    TRY(op->rope(ex, r->k, KV, n, o->KVH, o->hd, r->pos0, 1e6));
    TRY(op->store_rows(ex, r->kc[l], NV_BF16, r->pos0, r->k, KV, (size_t)n, KV));
    TRY(op->store_rows(ex, r->vc[l], NV_BF16, r->pos0, r->v, KV, (size_t)n, KV));
    TRY(op->attention(ex, r->ctxo, HQ, r->q, HQ, r->kc[l], r->vc[l], KV, NV_BF16, 1, n,
                      (int)(r->pos0 + n), o->H, o->KVH, o->hd, 0.08838834764831845f, r->pos0,
                      NV_TP_LLM_HEADS));
    TRY(op->matmul(ex, r->a, r->ctxo, &L->o, NULL, n));
    TRY(op->add_scaled(ex, r->h, r->a, NULL, n, o->D));
    TRY(op->rmsnorm(ex, r->x, o->D, r->h, o->D, &L->post_norm, n, o->D, o->D, 1e-6f));
    TRY(op->matmul(ex, r->g, r->x, &L->gate, NULL, n));
    TRY(op->matmul(ex, r->u, r->x, &L->up, NULL, n));
    TRY(op->silu_mul(ex, r->g, r->g, r->u, (size_t)n * o->I));
    TRY(op->matmul(ex, r->a, r->g, &L->down, NULL, n));
    return op->add_scaled(ex, r->h, r->a, NULL, n, o->D);
}

static nvlm_status llm_all(nv_exec *ex, void *arg)
{
    run *r = arg;
    for (int l = 0; l < r->o->layers; l++) {
        TRY(llm_layer_fwd(ex, r, l));
    }
    return NVLM_OK;
}

/* One InternViT layer over tiles x vtok tokens (vision.c's op sequence). */
static nvlm_status vit_layer_fwd(nv_exec *ex, run *r, int l)
{
    const nv_backend_ops *op = ex->be->ops;
    const opts *o = r->o;
    const vit_layer_w *L = &r->V[l];
    int N = o->tiles * o->vtok;
    int HP = o->vH * o->vhd;
    float *qkv = r->q;
    TRY(op->rmsnorm(ex, r->x, o->vD, r->h, o->vD, &L->norm1, N, o->vD, o->vD, 1e-6f));
    TRY(op->matmul(ex, qkv, r->x, &L->qkv, NULL, N));
    TRY(op->rmsnorm(ex, qkv, 3 * HP, qkv, 3 * HP, &L->q_norm, N, HP, o->vD, 1e-6f));
    TRY(op->rmsnorm(ex, qkv + HP, 3 * HP, qkv + HP, 3 * HP, &L->k_norm, N, HP, o->vD, 1e-6f));
    TRY(op->attention(ex, r->ctxo, HP, qkv, 3 * HP, qkv + HP, qkv + 2 * HP, 3 * HP, NV_F32,
                      o->tiles, o->vtok, o->vtok, o->vH, o->vH, o->vhd, 0.08838834764831845f,
                      -1, NV_TP_VIT_HEADS));
    TRY(op->matmul(ex, r->a, r->ctxo, &L->proj, &L->proj_b, N));
    TRY(op->add_scaled(ex, r->h, r->a, &L->ls1, N, o->vD));
    TRY(op->rmsnorm(ex, r->x, o->vD, r->h, o->vD, &L->norm2, N, o->vD, o->vD, 1e-6f));
    TRY(op->matmul(ex, r->g, r->x, &L->fc1, &L->fc1_b, N));
    TRY(op->gelu(ex, r->g, r->g, (size_t)N * o->vI));
    TRY(op->matmul(ex, r->a, r->g, &L->fc2, &L->fc2_b, N));
    return op->add_scaled(ex, r->h, r->a, &L->ls2, N, o->vD);
}

static nvlm_status vit_all(nv_exec *ex, void *arg)
{
    run *r = arg;
    for (int l = 0; l < r->o->layers; l++) {
        TRY(vit_layer_fwd(ex, r, l));
    }
    return NVLM_OK;
}

/* Best of reps (after one warm-up pass) of fn, in ms per layer. */
static nvlm_status best_ms(nv_exec *ex, nvlm_status (*fn)(nv_exec *, void *), run *r,
                           int reset_pos, double *ms)
{
    double best = 1e30;
    int64_t pos = r->pos0;
    for (int i = 0; i < r->o->reps + 1; i++) {
        double t = 0.0;
        if (reset_pos) {
            r->pos0 = pos;
        }
        TRY(nv_cuda_time(ex, fn, r, &t));
        if (i > 0 && t < best) {
            best = t;
        }
    }
    *ms = best / r->o->layers;
    return NVLM_OK;
}

/* An FP8 E4M3 weight (rows, cols) through weight_load: random codes of magnitude below 1
 * (exponent fields 0..6, no NaN), every row scale 0.02. */
static nvlm_status rw_fp8(nv_exec *ex, nv_bweight *w, int64_t rows, int64_t cols)
{
    size_t n = (size_t)rows * (size_t)cols;
    uint8_t *q = malloc(n);
    float *sc = malloc((size_t)rows * sizeof(float));
    if (q == NULL || sc == NULL) {
        free(q);
        free(sc);
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    uint64_t x = 0x9e3779b97f4a7c15ull ^ g_seed++;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        q[i] = (uint8_t)((x & 0x80) | ((x >> 8) % 0x38));
    }
    for (int64_t r = 0; r < rows; r++) {
        sc[r] = 0.02f;
    }
    nv_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = NV_F8_E4M3;
    t.ndim = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.data = q;
    t.device = -1;
    t.scale = sc;
    nvlm_status st = ex->be->ops->weight_load(ex->be, &t, NULL, w, ex->err_handle);
    free(q);
    free(sc);
    return st;
}

static void free_w(nv_exec *ex, nv_bweight *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (w[i].t.data != NULL) {
            ex->be->ops->free(ex, w[i].t.data);
        }
    }
}

static double layer_params_llm(const opts *o)
{
    double HQ = (double)o->H * o->hd;
    double KV = (double)o->KVH * o->hd;
    return o->D * HQ * 2 + o->D * KV * 2 + 3.0 * o->D * o->I;
}

static double layer_params_vit(const opts *o)
{
    double HP = (double)o->vH * o->vhd;
    return o->vD * HP * 4 + 2.0 * o->vD * o->vI;
}

/* The decoder side of a run: o->layers layers of random weights, bf16 KV caches of cap rows
 * (zeroed: finite keys and values) and activations for nmax tokens. */
static nvlm_status llm_setup(const opts *o, nv_exec *ex, run *rp, int64_t cap, size_t nmax)
{
    const nv_backend_ops *op = ex->be->ops;
    run r;
    memset(&r, 0, sizeof r);
    r.o = o;
    r.L = calloc((size_t)o->layers, sizeof *r.L);
    r.kc = calloc((size_t)o->layers, sizeof *r.kc);
    r.vc = calloc((size_t)o->layers, sizeof *r.vc);
    int HQ = o->H * o->hd;
    int KV = o->KVH * o->hd;
    nvlm_status st = r.L == NULL || r.kc == NULL || r.vc == NULL ? NVLM_ERR_OUT_OF_MEMORY
                                                                 : NVLM_OK;
    for (int l = 0; l < o->layers && st == NVLM_OK; l++) {
        llm_layer *L = &r.L[l];
        st = rw(ex, &L->in_norm, 1, o->D, 1.0f);
        if (st == NVLM_OK) { st = rw(ex, &L->post_norm, 1, o->D, 1.0f); }
        if (st == NVLM_OK) { st = rw(ex, &L->q, HQ, o->D, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->q_b, 1, HQ, 0.1f); }
        if (st == NVLM_OK) { st = rw(ex, &L->k, KV, o->D, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->k_b, 1, KV, 0.1f); }
        if (st == NVLM_OK) { st = rw(ex, &L->v, KV, o->D, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->v_b, 1, KV, 0.1f); }
        if (st == NVLM_OK) { st = rw(ex, &L->o, o->D, HQ, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->gate, o->I, o->D, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->up, o->I, o->D, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->down, o->D, o->I, 0.02f); }
        if (st == NVLM_OK) { st = op->alloc(ex, (size_t)cap * KV * 2, &r.kc[l]); }
        if (st == NVLM_OK) { st = op->alloc(ex, (size_t)cap * KV * 2, &r.vc[l]); }
    }
    if (st == NVLM_OK) {
        r.h = act(ex, nmax * o->D);
        r.x = act(ex, nmax * o->D);
        r.q = act(ex, nmax * HQ);
        r.k = act(ex, nmax * KV);
        r.v = act(ex, nmax * KV);
        r.ctxo = act(ex, nmax * HQ);
        r.a = act(ex, nmax * o->D);
        r.g = act(ex, nmax * o->I);
        r.u = act(ex, nmax * o->I);
        if (r.h == NULL || r.x == NULL || r.q == NULL || r.k == NULL || r.v == NULL ||
            r.ctxo == NULL || r.a == NULL || r.g == NULL || r.u == NULL) {
            st = NVLM_ERR_OUT_OF_MEMORY;
        }
    }
    for (int l = 0; l < o->layers && st == NVLM_OK; l++) {
        st = op->zero(ex, r.kc[l], (size_t)cap * KV * 2);
        if (st == NVLM_OK) {
            st = op->zero(ex, r.vc[l], (size_t)cap * KV * 2);
        }
    }
    *rp = r;
    return st;
}

static void llm_teardown(nv_exec *ex, run *r)
{
    const nv_backend_ops *op = ex->be->ops;
    for (int l = 0; l < r->o->layers && r->L != NULL; l++) {
        free_w(ex, (nv_bweight *)&r->L[l], sizeof(llm_layer) / sizeof(nv_bweight));
        if (r->kc != NULL && r->kc[l] != NULL) { op->free(ex, r->kc[l]); }
        if (r->vc != NULL && r->vc[l] != NULL) { op->free(ex, r->vc[l]); }
    }
    float *acts[9] = {r->h, r->x, r->q, r->k, r->v, r->ctxo, r->a, r->g, r->u};
    for (int i = 0; i < 9; i++) {
        if (acts[i] != NULL) {
            op->free(ex, acts[i]);
        }
    }
    free(r->L);
    free(r->kc);
    free(r->vc);
    memset(r, 0, sizeof *r);
}

/* The seven GEMMs of one decoder layer (q, k, v, o, gate, up, down) and nothing else. */
static nvlm_status llm_gemms_all(nv_exec *ex, void *arg)
{
    run *r = arg;
    const nv_backend_ops *op = ex->be->ops;
    for (int l = 0; l < r->o->layers; l++) {
        const llm_layer *L = &r->L[l];
        TRY(op->matmul(ex, r->q, r->x, &L->q, &L->q_b, r->n));
        TRY(op->matmul(ex, r->k, r->x, &L->k, &L->k_b, r->n));
        TRY(op->matmul(ex, r->v, r->x, &L->v, &L->v_b, r->n));
        TRY(op->matmul(ex, r->a, r->ctxo, &L->o, NULL, r->n));
        TRY(op->matmul(ex, r->g, r->x, &L->gate, NULL, r->n));
        TRY(op->matmul(ex, r->u, r->x, &L->up, NULL, r->n));
        TRY(op->matmul(ex, r->a, r->g, &L->down, NULL, r->n));
    }
    return NVLM_OK;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* Decode at batch 1 at each context of ctxs[]: per layer the whole step, its GEMMs alone (the
 * rest is the difference), the host's enqueue time (the op calls returning, before the device
 * is waited for) and the bytes a layer must read (weights + the K/V rows) against the read
 * probe. One line per context, "breakdown ctx N: ..." (tools/gpu_check.sh reads them). */
static int breakdown(const opts *o, nv_exec *ex, double read_tbs, const int *ctxs, int n_ctx)
{
    int maxc = 0;
    for (int i = 0; i < n_ctx; i++) {
        maxc = ctxs[i] > maxc ? ctxs[i] : maxc;
    }
    run r;
    nvlm_status st = llm_setup(o, ex, &r, (int64_t)maxc + 8, 1);
    int KV = o->KVH * o->hd;
    double wbytes = layer_params_llm(o) * 2.0;
    for (int i = 0; i < n_ctx && st == NVLM_OK; i++) {
        r.n = 1;
        r.pos0 = ctxs[i];
        double layer_ms = 0.0;
        double gemm_ms = 0.0;
        st = best_ms(ex, llm_all, &r, 1, &layer_ms);
        if (st == NVLM_OK) {
            st = best_ms(ex, llm_gemms_all, &r, 1, &gemm_ms);
        }
        double enq_us = 1e30;
        for (int k = 0; k < o->reps && st == NVLM_OK; k++) {
            double t0 = now_us();
            st = llm_all(ex, &r);
            double t1 = now_us();
            if (st == NVLM_OK) {
                st = ex->be->ops->sync(ex);
            }
            enq_us = t1 - t0 < enq_us ? t1 - t0 : enq_us;
        }
        if (st != NVLM_OK) {
            break;
        }
        enq_us /= o->layers;
        double kvbytes = 2.0 * (double)(ctxs[i] + 1) * KV * 2.0; /* bf16 K and V rows */
        double tbs = (wbytes + kvbytes) / (layer_ms * 1e-3) / 1e12;
        printf("breakdown ctx %d: layer %.3f ms = gemm %.3f + rest %.3f ms; enqueue %.1f us/layer; "
               "reads %.0f MiB/layer (%.0f weights + %.0f KV) = %.2f TB/s = %.0f%% of the read "
               "probe (goal 95%%: %.3f ms)\n",
               ctxs[i], layer_ms, gemm_ms, layer_ms - gemm_ms, enq_us,
               (wbytes + kvbytes) / (1 << 20), wbytes / (1 << 20), kvbytes / (1 << 20), tbs,
               100.0 * tbs / read_tbs, (wbytes + kvbytes) / (0.95 * read_tbs * 1e12) * 1e3);
        fflush(stdout);
    }
    if (st != NVLM_OK) {
        fprintf(stderr, "decode breakdown failed: %s\n", nvlm_last_error(ex->be->ctx));
    }
    llm_teardown(ex, &r);
    return st == NVLM_OK ? 0 : 1;
}

static int bench(const opts *o, nv_exec *ex)
{
    const nv_backend_ops *op = ex->be->ops;
    char name[256];
    size_t mem = 0;
    int sms = 0;
    if (nv_cuda_device_info(ex, name, sizeof name, &mem, &sms) != NVLM_OK) {
        return 1;
    }
    printf("device: %s, %.1f GiB, %d SMs\n", name, (double)mem / (1 << 30), sms);

    /* Ceilings. */
    double read_ms = 0.0;
    double gemm_ms = 0.0;
    size_t probe = (size_t)2 << 30;
    if (nv_cuda_read_probe(ex, probe, o->reps, &read_ms) != NVLM_OK ||
        nv_cuda_gemm_probe(ex, 8192, 8192, 8192, o->reps, &gemm_ms) != NVLM_OK) {
        fprintf(stderr, "probe failed: %s\n", nvlm_last_error(ex->be->ctx));
        return 1;
    }
    double read_tbs = (double)probe / (read_ms * 1e-3) / 1e12;
    double gemm_tf = 2.0 * 8192.0 * 8192.0 * 8192.0 / (gemm_ms * 1e-3) / 1e12;
    printf("ceiling: read-only probe %.2f TB/s (%.0f MiB, best of %d)\n", read_tbs,
           (double)probe / (1 << 20), o->reps);
    printf("ceiling: cuBLASLt bf16 GEMM 8192^3 %.1f TFLOP/s\n", gemm_tf);
    if (o->n_bd > 0) {
        return breakdown(o, ex, read_tbs, o->bd, o->n_bd);
    }

    /* Decoder layers. */
    int KV = o->KVH * o->hd;
    int HQ = o->H * o->hd;
    run r;
    int64_t cap = (int64_t)o->ctx + o->prefill + 8;
    nvlm_status st = llm_setup(o, ex, &r, cap, (size_t)o->prefill);
    double pre_ms = 0.0;
    double dec_ms = 0.0;
    if (st == NVLM_OK) {
        r.n = o->prefill;
        r.pos0 = 0;
        if (st == NVLM_OK) {
            st = best_ms(ex, llm_all, &r, 1, &pre_ms);
        }
        r.n = 1;
        r.pos0 = o->ctx;
        if (st == NVLM_OK) {
            st = best_ms(ex, llm_all, &r, 1, &dec_ms);
        }
    }
    if (st != NVLM_OK) {
        fprintf(stderr, "decoder bench failed: %s\n", nvlm_last_error(ex->be->ctx));
    }
    double p = layer_params_llm(o);
    double wbytes = p * 2.0;
    double pre_flop = 2.0 * p * o->prefill +
                      2.0 * 2.0 * (double)o->prefill * o->prefill / 2.0 * HQ; /* causal */
    printf("\n%-34s %10s  %s\n", "stage (per layer)", "ms", "rate");
    if (st == NVLM_OK) {
        printf("%-34s %10.3f  %.2f TB/s weights = %.0f%% of read probe\n",
               "llm decode b1, cache 2048", dec_ms, wbytes / (dec_ms * 1e-3) / 1e12,
               100.0 * wbytes / (dec_ms * 1e-3) / 1e12 / read_tbs);
        printf("%-34s %10.3f  %.1f TFLOP/s = %.0f%% of GEMM ceiling\n", "llm prefill 2048",
               pre_ms, pre_flop / (pre_ms * 1e-3) / 1e12,
               100.0 * pre_flop / (pre_ms * 1e-3) / 1e12 / gemm_tf);
    }
    /* The same layers with the seven projections in FP8 (one byte per weight + a row scale):
     * decode through the FP8 GEMV, prefill in both precisions. */
    for (int l = 0; l < o->layers && st == NVLM_OK; l++) {
        llm_layer *L = &r.L[l];
        nv_bweight *pw[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        const int64_t pr[7] = {HQ, KV, KV, o->D, o->I, o->I, o->D};
        const int64_t pc[7] = {o->D, o->D, o->D, HQ, o->D, o->D, o->I};
        for (int i = 0; i < 7 && st == NVLM_OK; i++) {
            free_w(ex, pw[i], 1);
            memset(pw[i], 0, sizeof *pw[i]);
            st = rw_fp8(ex, pw[i], pr[i], pc[i]);
        }
    }
    double f8_dec_ms = 0.0;
    double f8_pre_ms[2] = {0.0, 0.0};
    if (st == NVLM_OK) {
        r.n = 1;
        r.pos0 = o->ctx;
        st = best_ms(ex, llm_all, &r, 1, &f8_dec_ms);
    }
    for (int fast = 0; fast < 2 && st == NVLM_OK; fast++) {
        ex->be->precision = fast ? NVLM_PRECISION_FAST : NVLM_PRECISION_EXACT;
        r.n = o->prefill;
        r.pos0 = 0;
        st = best_ms(ex, llm_all, &r, 1, &f8_pre_ms[fast]);
    }
    ex->be->precision = NVLM_PRECISION_EXACT;
    if (st == NVLM_OK) {
        double f8bytes = p + 4.0 * (2.0 * HQ + 2.0 * KV + o->D * 2.0 + o->I * 2.0);
        printf("%-34s %10.3f  %.2f TB/s weights = %.0f%% of read probe; %.2fx bf16\n",
               "llm decode b1 FP8", f8_dec_ms, f8bytes / (f8_dec_ms * 1e-3) / 1e12,
               100.0 * f8bytes / (f8_dec_ms * 1e-3) / 1e12 / read_tbs, dec_ms / f8_dec_ms);
        for (int fast = 0; fast < 2; fast++) {
            printf("%-34s %10.3f  %.1f TFLOP/s; %.2fx bf16\n",
                   fast ? "llm prefill 2048 FP8 (fast)" : "llm prefill 2048 FP8 (exact)",
                   f8_pre_ms[fast], pre_flop / (f8_pre_ms[fast] * 1e-3) / 1e12,
                   pre_ms / f8_pre_ms[fast]);
        }
    } else {
        fprintf(stderr, "FP8 decoder bench failed: %s\n", nvlm_last_error(ex->be->ctx));
    }
    llm_teardown(ex, &r);
    if (st != NVLM_OK) {
        return 1;
    }

    /* ViT layers. */
    memset(&r, 0, sizeof r);
    r.o = o;
    r.V = calloc((size_t)o->layers, sizeof *r.V);
    int HP = o->vH * o->vhd;
    size_t N = (size_t)o->tiles * o->vtok;
    for (int l = 0; l < o->layers && st == NVLM_OK; l++) {
        vit_layer_w *L = &r.V[l];
        st = rw(ex, &L->norm1, 1, o->vD, 1.0f);
        if (st == NVLM_OK) { st = rw(ex, &L->norm2, 1, o->vD, 1.0f); }
        if (st == NVLM_OK) { st = rw(ex, &L->qkv, 3 * HP, o->vD, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->q_norm, 1, HP, 1.0f); }
        if (st == NVLM_OK) { st = rw(ex, &L->k_norm, 1, HP, 1.0f); }
        if (st == NVLM_OK) { st = rw(ex, &L->proj, o->vD, HP, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->proj_b, 1, o->vD, 0.1f); }
        if (st == NVLM_OK) { st = rw(ex, &L->ls1, 1, o->vD, 0.1f); }
        if (st == NVLM_OK) { st = rw(ex, &L->ls2, 1, o->vD, 0.1f); }
        if (st == NVLM_OK) { st = rw(ex, &L->fc1, o->vI, o->vD, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->fc1_b, 1, o->vI, 0.1f); }
        if (st == NVLM_OK) { st = rw(ex, &L->fc2, o->vD, o->vI, 0.02f); }
        if (st == NVLM_OK) { st = rw(ex, &L->fc2_b, 1, o->vD, 0.1f); }
    }
    if (st == NVLM_OK) {
        r.h = act(ex, N * o->vD);
        r.x = act(ex, N * o->vD);
        r.q = act(ex, N * 3 * HP);
        r.ctxo = act(ex, N * HP);
        r.a = act(ex, N * o->vD);
        r.g = act(ex, N * o->vI);
        if (r.h == NULL || r.x == NULL || r.q == NULL || r.ctxo == NULL || r.a == NULL ||
            r.g == NULL) {
            st = NVLM_ERR_OUT_OF_MEMORY;
        }
    }
    double vit_ms = 0.0;
    if (st == NVLM_OK) {
        st = best_ms(ex, vit_all, &r, 0, &vit_ms);
    }
    if (st == NVLM_OK) {
        double vflop = 2.0 * layer_params_vit(o) * (double)N +
                       4.0 * (double)o->tiles * o->vtok * o->vtok * HP;
        printf("%-34s %10.3f  %.1f TFLOP/s = %.0f%% of GEMM ceiling\n", "vit 7 tiles x 1025",
               vit_ms, vflop / (vit_ms * 1e-3) / 1e12,
               100.0 * vflop / (vit_ms * 1e-3) / 1e12 / gemm_tf);
    } else {
        fprintf(stderr, "vit bench failed: %s\n", nvlm_last_error(ex->be->ctx));
    }
    for (int l = 0; l < o->layers; l++) {
        free_w(ex, (nv_bweight *)&r.V[l], sizeof(vit_layer_w) / sizeof(nv_bweight));
    }
    float *vacts[6] = {r.h, r.x, r.q, r.ctxo, r.a, r.g};
    for (int i = 0; i < 6; i++) {
        if (vacts[i] != NULL) {
            op->free(ex, vacts[i]);
        }
    }
    free(r.V);
    printf("\n(%d layers each, best of %d after a warm-up; goals: decode >= 95%% of the read "
           "probe, prefill >= 80%% and ViT >= 65%% of the GEMM ceiling)\n", o->layers, o->reps);
    return st == NVLM_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    opts o = {.layers = 2, .ctx = 2048, .prefill = 2048, .tiles = 7, .reps = 5,
              .D = 8192, .H = 64, .KVH = 8, .hd = 128, .I = 29568,
              .vD = 3200, .vH = 32, .vhd = 128, .vI = 12800, .vtok = 1025};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            o.layers = 1;
            o.reps = 2;
            o.prefill = 256;
            o.ctx = 512;
            o.tiles = 1;
        } else if (i + 1 < argc && strcmp(argv[i], "--layers") == 0) {
            o.layers = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--ctx") == 0) {
            o.ctx = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--prefill") == 0) {
            o.prefill = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--tiles") == 0) {
            o.tiles = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--reps") == 0) {
            o.reps = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--breakdown") == 0) {
            char *p = argv[++i];
            o.n_bd = 0;
            while (*p != '\0' && o.n_bd < 4) {
                o.bd[o.n_bd++] = (int)strtol(p, &p, 10);
                p += *p == ',';
            }
        } else {
            fprintf(stderr, "usage: %s [--layers N] [--ctx N] [--prefill N] [--tiles N] "
                    "[--reps N] [--quick] [--breakdown CTX[,CTX...]]\n", argv[0]);
            return 2;
        }
    }
    int bd_bad = 0;
    for (int i = 0; i < o.n_bd; i++) {
        bd_bad |= o.bd[i] < 1 || o.bd[i] > 1 << 20;
    }
    if (o.layers < 1 || o.reps < 1 || o.ctx < 1 || o.prefill < 1 || o.tiles < 1 || bd_bad) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    char why[256];
    if (!nv_cuda_probe_reason(0, why, sizeof why)) {
        printf("SKIP bench_cuda: no CUDA device (%s)\n", why);
        return 0;
    }
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CUDA;
    nvlm_context *ctx = NULL;
    nv_backend *be = NULL;
    nv_exec *ex = NULL;
    int rc = 1;
    if (nvlm_context_create(&cp, &ctx) == NVLM_OK &&
        nv_backend_cuda_create(ctx, 0, &be) == NVLM_OK &&
        be->ops->exec_create(be, 1, ctx, &ex) == NVLM_OK) {
        rc = bench(&o, ex);
    } else {
        fprintf(stderr, "cannot start the CUDA backend: %s\n",
                ctx != NULL ? nvlm_last_error(ctx) : "no context");
    }
    if (ex != NULL) {
        be->ops->exec_free(ex);
    }
    if (be != NULL) {
        be->ops->destroy(be);
    }
    nvlm_context_free(ctx);
    return rc;
}

#else

int main(void)
{
    printf("SKIP bench_cuda: built without CUDA\n");
    return 0;
}

#endif
