/*
 * nvlm_bench.c - CPU engine benchmark (`make bench` -> bin/nvlm-bench). Everything in memory:
 * kernel-level GEMMs at the layer shapes of a Qwen2-1.5B-like decoder and an InternViT-300M-like
 * encoder with random bf16 weights, next to in-run reference probes (memory copy bandwidth,
 * OpenBLAS sgemm on an f32 copy of the same weights), then the end-to-end engine on a synthetic
 * model (src/synthetic.c): prefill, decode tokens/s and ViT milliseconds per tile.
 *
 *   nvlm-bench [-t 1,2] [--layers N] [--prompt N] [--gen N] [--no-e2e] [--quick]
 */
#include "cpu/kernels.h"
#include "engine.h"
#include "model.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t next64(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_bf16(uint16_t *w, size_t n, float scale)
{
    for (size_t i = 0; i < n; i += 4) {
        uint64_t r = next64();
        for (size_t j = 0; j < 4 && i + j < n; j++) {
            float u = (float)((r >> (16 * j)) & 0xffff) / 32768.0f - 1.0f;
            w[i + j] = nv_f32_to_bf16(u * scale);
        }
    }
}

static void fill_f32(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)(next64() >> 40) / 8388608.0f - 1.0f;
    }
}

static void *xmalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (p == NULL) {
        fprintf(stderr, "nvlm-bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static const char *cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL) {
        return buf;
    }
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c != NULL) {
                snprintf(buf, cap, "%s", c + 2);
                buf[strcspn(buf, "\n")] = '\0';
            }
            break;
        }
    }
    fclose(f);
    return buf;
}

/* ---- bandwidth probes ------------------------------------------------------------------- */

typedef struct bw_job {
    char *dst;
    const char *src;
    size_t n;
    uint64_t sink[64];
} bw_job;

static void copy_fn(void *arg, int i, int n)
{
    bw_job *j = arg;
    size_t lo = j->n * (size_t)i / (size_t)n, hi = j->n * (size_t)(i + 1) / (size_t)n;
    lo &= ~(size_t)63;
    hi = i == n - 1 ? j->n : hi & ~(size_t)63;
    memcpy(j->dst + lo, j->src + lo, hi - lo);
}

static void read_fn(void *arg, int i, int n)
{
    bw_job *j = arg;
    size_t words = j->n / 8;
    size_t lo = words * (size_t)i / (size_t)n, hi = words * (size_t)(i + 1) / (size_t)n;
    const uint64_t *p = (const uint64_t *)j->src;
    uint64_t acc[8] = {0};
    size_t k = lo;
    for (; k + 8 <= hi; k += 8) {
        for (int t = 0; t < 8; t++) {
            acc[t] ^= p[k + (size_t)t];
        }
    }
    for (; k < hi; k++) {
        acc[0] ^= p[k];
    }
    uint64_t s = 0;
    for (int t = 0; t < 8; t++) {
        s ^= acc[t];
    }
    j->sink[i % 64] = s;
}

typedef struct probes {
    double copy_gbs;  /* (bytes read + bytes written) / s, STREAM convention */
    double read_gbs;  /* bytes read / s */
} probes;

static probes run_probes(nv_pool *pool, int reps)
{
    const size_t n = (size_t)512 << 20;
    bw_job j;
    memset(&j, 0, sizeof j);
    j.src = xmalloc(n);
    j.dst = xmalloc(n);
    j.n = n;
    memset((char *)j.src, 1, n);
    memset(j.dst, 2, n);
    probes p = {0, 0};
    for (int r = 0; r < reps; r++) {
        double t0 = nv_time_ms();
        nv_pool_run(pool, copy_fn, &j);
        double t1 = nv_time_ms();
        nv_pool_run(pool, read_fn, &j);
        double t2 = nv_time_ms();
        p.copy_gbs = NV_MAX(p.copy_gbs, 2.0 * (double)n / ((t1 - t0) * 1e6));
        p.read_gbs = NV_MAX(p.read_gbs, (double)n / ((t2 - t1) * 1e6));
    }
    free((void *)j.src);
    free(j.dst);
    return p;
}

/* ---- kernel-level GEMMs ----------------------------------------------------------------- */

typedef struct shape {
    const char *name;
    int N, K;
} shape;

static const shape dec_shapes[] = {
    {"q_proj", 1536, 1536}, {"k_proj", 256, 1536},   {"v_proj", 256, 1536},
    {"o_proj", 1536, 1536}, {"gate_proj", 8960, 1536}, {"up_proj", 8960, 1536},
    {"down_proj", 1536, 8960},
};
static const shape vit_shapes[] = {
    {"attn.qkv", 3072, 1024}, {"attn.proj", 1024, 1024}, {"mlp.fc1", 4096, 1024},
    {"mlp.fc2", 1024, 4096},
};

/* Decode: M = 1 over `layers` distinct copies of the decoder layer weights (so the stream is
 * far bigger than the caches), as a decode step does; returns GB/s of weights read. */
static double bench_decode_gemv(nv_pool *pool, int layers, int reps, double *ms_per_layer)
{
    size_t per_layer = 0;
    for (size_t s = 0; s < NV_ARRAY_LEN(dec_shapes); s++) {
        per_layer += (size_t)dec_shapes[s].N * (size_t)dec_shapes[s].K;
    }
    uint16_t *w = xmalloc(per_layer * 2 * (size_t)layers);
    fill_bf16(w, per_layer * (size_t)layers, 0.025f);
    float *x = xmalloc(8960 * 4);
    float *y = xmalloc(8960 * 4);
    fill_f32(x, 8960);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = nv_time_ms();
        const uint16_t *p = w;
        for (int l = 0; l < layers; l++) {
            for (size_t s = 0; s < NV_ARRAY_LEN(dec_shapes); s++) {
                cpu_matmul(pool, y, x, p, NV_BF16, NULL, 1, dec_shapes[s].N, dec_shapes[s].K);
                p += (size_t)dec_shapes[s].N * (size_t)dec_shapes[s].K;
            }
        }
        best = NV_MIN(best, nv_time_ms() - t0);
    }
    free(w);
    free(x);
    free(y);
    *ms_per_layer = best / layers;
    return (double)per_layer * 2.0 * layers / (best * 1e6);
}

typedef struct gemm_result {
    double ours_ms, sgemm_ms, conv_sgemm_ms;
} gemm_result;

/* y = x W^T at (M, N, K): our bf16 kernel vs OpenBLAS sgemm on an f32 copy of W (and the
 * same with the bf16 -> f32 conversion of W timed in). Best of reps. */
static gemm_result bench_gemm(nv_pool *pool, int M, int N, int K, int reps)
{
    size_t nw = (size_t)N * (size_t)K;
    uint16_t *w = xmalloc(nw * 2);
    float *wf = xmalloc(nw * 4);
    float *x = xmalloc((size_t)M * (size_t)K * 4);
    float *y = xmalloc((size_t)M * (size_t)N * 4);
    fill_bf16(w, nw, 1.0f / 32.0f);
    fill_f32(x, (size_t)M * (size_t)K);
    gemm_result r = {1e30, 1e30, 1e30};
    for (int i = 0; i < reps; i++) {
        double t0 = nv_time_ms();
        cpu_matmul(pool, y, x, w, NV_BF16, NULL, M, N, K);
        double t1 = nv_time_ms();
        nv_to_f32(wf, w, NV_BF16, nw);
        double t2 = nv_time_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, wf, K, 0.0f, y,
                    N);
        double t3 = nv_time_ms();
        r.ours_ms = NV_MIN(r.ours_ms, t1 - t0);
        r.sgemm_ms = NV_MIN(r.sgemm_ms, t3 - t2);
        r.conv_sgemm_ms = NV_MIN(r.conv_sgemm_ms, t3 - t1);
    }
    free(w);
    free(wf);
    free(x);
    free(y);
    return r;
}

static void gemm_table(nv_pool *pool, const char *title, const shape *sh, size_t n_sh, int M,
                       int reps)
{
    printf("\n%s, M = %d (GFLOP/s; sgemm = OpenBLAS on an f32 copy of the weights)\n", title, M);
    printf("  %-10s %6s %6s  %8s %8s %12s  %6s\n", "layer", "N", "K", "ours", "sgemm",
           "cvt+sgemm", "ours/sgemm");
    double tot_ours = 0, tot_sg = 0, tot_cv = 0, flops = 0;
    for (size_t s = 0; s < n_sh; s++) {
        gemm_result r = bench_gemm(pool, M, sh[s].N, sh[s].K, reps);
        double f = 2.0 * M * (double)sh[s].N * sh[s].K;
        printf("  %-10s %6d %6d  %8.1f %8.1f %12.1f  %5.0f%%\n", sh[s].name, sh[s].N, sh[s].K,
               f / (r.ours_ms * 1e6), f / (r.sgemm_ms * 1e6), f / (r.conv_sgemm_ms * 1e6),
               100.0 * r.sgemm_ms / r.ours_ms);
        tot_ours += r.ours_ms;
        tot_sg += r.sgemm_ms;
        tot_cv += r.conv_sgemm_ms;
        flops += f;
    }
    printf("  %-10s %6s %6s  %8.1f %8.1f %12.1f  %5.0f%%\n", "all", "", "", flops / (tot_ours * 1e6),
           flops / (tot_sg * 1e6), flops / (tot_cv * 1e6), 100.0 * tot_sg / tot_ours);
}

/* ---- main ------------------------------------------------------------------------------- */

typedef struct opts {
    int threads[8];
    int n_threads;
    int layers;
    int prompt;
    int gen;
    int e2e;
    int quick;
} opts;

static int parse(opts *o, int argc, char **argv)
{
    o->threads[0] = 1;
    o->threads[1] = 2;
    o->n_threads = 2;
    o->layers = 28;
    o->prompt = 256;
    o->gen = 32;
    o->e2e = 1;
    o->quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
            o->n_threads = 0;
            for (char *s = argv[++i]; *s != '\0' && o->n_threads < 8;) {
                o->threads[o->n_threads++] = (int)strtol(s, &s, 10);
                if (*s == ',') {
                    s++;
                }
            }
        } else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc) {
            o->layers = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--prompt") == 0 && i + 1 < argc) {
            o->prompt = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--gen") == 0 && i + 1 < argc) {
            o->gen = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--no-e2e") == 0) {
            o->e2e = 0;
        } else if (strcmp(argv[i], "--quick") == 0) {
            o->quick = 1;
        } else {
            fprintf(stderr, "usage: nvlm-bench [-t 1,2] [--layers N] [--prompt N] [--gen N] "
                            "[--no-e2e] [--quick]\n");
            return 1;
        }
    }
    return 0;
}

/* ---- end to end on a synthetic model ----------------------------------------------------- */

static nvlm_status make_model(nvlm_context *ctx, const opts *o, nvlm_model **out)
{
    char json[2048];
    int n = snprintf(json, sizeof json,
        "{\"downsample_ratio\": 0.5, \"force_image_size\": 448, \"ps_version\": \"v2\","
        " \"select_layer\": -1, \"template\": \"chatml\", \"dynamic_image_size\": true,"
        " \"use_thumbnail\": true, \"min_dynamic_patch\": 1, \"max_dynamic_patch\": 6,"
        " \"vision_config\": {\"hidden_size\": 1024, \"intermediate_size\": 4096,"
        " \"num_hidden_layers\": 24, \"num_attention_heads\": 16, \"image_size\": 448,"
        " \"patch_size\": 14, \"num_channels\": 3, \"layer_norm_eps\": 1e-6,"
        " \"qk_normalization\": true, \"qkv_bias\": false, \"hidden_act\": \"gelu\","
        " \"norm_type\": \"rms_norm\"},"
        " \"llm_config\": {\"hidden_size\": 1536, \"intermediate_size\": 8960,"
        " \"num_hidden_layers\": %d, \"num_attention_heads\": 12, \"num_key_value_heads\": 2,"
        " \"vocab_size\": 151936, \"max_position_embeddings\": 32768, \"rope_theta\": 1000000.0,"
        " \"rms_norm_eps\": 1e-6, \"bos_token_id\": 151643, \"eos_token_id\": 151645,"
        " \"pad_token_id\": null, \"tie_word_embeddings\": false, \"hidden_act\": \"silu\"}}",
        o->layers);
    nv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    NVLM_TRY(nv_config_parse(&cfg, json, (size_t)n, ctx));
    cfg.vision.num_dummy_heads = 0; /* InternViT-300M has 16 real heads and no padding */
    return nv_model_synthetic(ctx, &cfg, 42, out);
}

static double layer_linear_params(const nv_config *c)
{
    const nv_llm_config *l = &c->llm;
    double E = l->hidden_size, Q = (double)l->num_heads * l->head_dim;
    double K = (double)l->num_kv_heads * l->head_dim, F = l->intermediate_size;
    return Q * E + 2 * K * E + E * Q + 3 * F * E;
}

static int bench_vit(nvlm_model *m, int threads, int n_tiles, int reps, double *ms_tile,
                     double *ms_proj)
{
    nv_engine *e = m->engine;
    nv_exec *ex = NULL;
    if (e->be->ops->exec_create(e->be, threads, m, &ex) != NVLM_OK) {
        return -1;
    }
    nv_arena ar = {ex, NULL, 0, 0};
    size_t bytes = vit_arena_bytes(&e->vit, n_tiles) + proj_arena_bytes(&e->proj, &e->vit,
                                                                         n_tiles);
    int rc = -1;
    if (nv_arena_reserve(&ar, bytes) == NVLM_OK) {
        double best = 1e30, best_p = 1e30;
        rc = 0;
        for (int r = 0; r < reps && rc == 0; r++) {
            ar.used = 0;
            size_t np = (size_t)n_tiles * 3 * (size_t)e->vit.image * (size_t)e->vit.image;
            float *pix = nv_arena_floats(&ar, np);
            float *host = xmalloc(np * sizeof(float));
            fill_f32(host, np);
            float *out = NULL, *proj = NULL;
            rc = pix == NULL ||
                 e->be->ops->upload(ex, pix, host, np * sizeof(float)) != NVLM_OK;
            free(host);
            double t0 = nv_time_ms();
            rc = rc || vit_forward(ex, &ar, &e->vit, pix, n_tiles, &out, NULL) != NVLM_OK;
            e->be->ops->sync(ex);
            double t1 = nv_time_ms();
            rc = rc || proj_forward(ex, &ar, &e->proj, &e->vit, out, n_tiles, &proj, NULL) !=
                           NVLM_OK;
            e->be->ops->sync(ex);
            double t2 = nv_time_ms();
            best = NV_MIN(best, t1 - t0);
            best_p = NV_MIN(best_p, t2 - t1);
        }
        *ms_tile = best / n_tiles;
        *ms_proj = best_p / n_tiles;
        if (rc != 0) {
            fprintf(stderr, "nvlm-bench: vision forward failed: %s\n", nvlm_last_error(m));
        }
    }
    nv_arena_release(&ar);
    e->be->ops->exec_free(ex);
    return rc;
}

static int bench_e2e(nvlm_context *ctx, nvlm_model *m, nv_pool *pool, const opts *o,
                     int threads, probes pr)
{
    const nv_config *c = &m->cfg;
    printf("\nEnd to end (synthetic model: decoder %d layers hidden %d, ViT %d layers hidden %d; "
           "%.2f G params, %.2f GB bf16)\n", c->llm.num_layers, c->llm.hidden_size,
           c->vision.num_layers, c->vision.hidden_size, (double)m->n_params / 1e9,
           (double)m->weight_bytes / 1e9);
    /* A session's executor takes the thread count of the model's context. */
    (void)ctx;
    m->h.ctx->n_threads = threads;
    nvlm_session *s = NULL;
    if (nvlm_session_create(m, NULL, &s) != NVLM_OK) {
        fprintf(stderr, "nvlm-bench: session: %s\n", nvlm_last_error(m));
        return -1;
    }
    int P = o->prompt;
    int32_t *ids = xmalloc((size_t)P * sizeof(int32_t));
    for (int i = 0; i < P; i++) {
        ids[i] = (int32_t)(next64() % 150000u);
    }
    double t0 = nv_time_ms();
    nvlm_status st = nvlm_session_feed(s, ids, (size_t)P, NULL, 0);
    double t_prefill = nv_time_ms() - t0;
    if (st != NVLM_OK) {
        fprintf(stderr, "nvlm-bench: prefill: %s\n", nvlm_last_error(s));
        nvlm_session_free(s);
        free(ids);
        return -1;
    }
    double lin = layer_linear_params(c) * c->llm.num_layers;
    double flops = 2.0 * P * lin + 2.0 * c->llm.vocab_size * (double)c->llm.hidden_size;
    double attn = 2.0 * 2.0 * (double)P * (P + 1) / 2.0 * c->llm.num_heads * c->llm.head_dim *
                  c->llm.num_layers;
    /* Reference: OpenBLAS sgemm (f32 weights) on the same layer GEMMs at M = P. */
    double sg_ms = 0, ours_ms = 0, sg_flops = 0;
    for (size_t i = 0; i < NV_ARRAY_LEN(dec_shapes); i++) {
        gemm_result r = bench_gemm(pool, P, dec_shapes[i].N, dec_shapes[i].K, 1);
        sg_ms += r.sgemm_ms;
        ours_ms += r.ours_ms;
        sg_flops += 2.0 * P * dec_shapes[i].N * (double)dec_shapes[i].K;
    }
    printf("prefill %d tokens: %.0f ms = %.1f tokens/s, %.1f GFLOP/s (linear layers; %.1f with "
           "attention)\n", P, t_prefill, P * 1000.0 / t_prefill, flops / (t_prefill * 1e6),
           (flops + attn) / (t_prefill * 1e6));
    printf("  reference: OpenBLAS sgemm on the same layer GEMMs at M = %d: %.1f GFLOP/s "
           "(engine = %.0f%% of it); our GEMM alone %.1f GFLOP/s\n", P,
           sg_flops / (sg_ms * 1e6), 100.0 * (flops / t_prefill) / (sg_flops / sg_ms),
           sg_flops / (ours_ms * 1e6));

    nvlm_sampler_params sp;
    nvlm_sampler_default_params(&sp);
    double bytes_tok = (lin + (double)c->llm.vocab_size * c->llm.hidden_size) * 2.0;
    /* The bandwidth probe again, right before decode: on a shared machine the load can change
     * between the start of the run and here; the decode figure is compared with the larger. */
    probes pd = run_probes(pool, 3);
    pr.copy_gbs = NV_MAX(pr.copy_gbs, pd.copy_gbs);
    pr.read_gbs = NV_MAX(pr.read_gbs, pd.read_gbs);
    int G = o->gen;
    double t_dec = 0;
    int done = 0;
    for (int i = 0; i < G; i++) {
        int32_t tok = 0;
        double a = nv_time_ms();
        if (nvlm_session_sample(s, &sp, &tok) != NVLM_OK ||
            nvlm_session_feed(s, &tok, 1, NULL, 0) != NVLM_OK) {
            fprintf(stderr, "nvlm-bench: decode: %s\n", nvlm_last_error(s));
            break;
        }
        t_dec += nv_time_ms() - a;
        done++;
    }
    if (done > 0) {
        double ms = t_dec / done;
        double gbs = bytes_tok / (ms * 1e6);
        printf("decode (after %d tokens, greedy, %d steps): %.2f ms/token = %.2f tokens/s; "
               "weights %.2f GB/token -> %.2f GB/s = %.0f%% of copy probe (%.2f GB/s r+w), %.0f%% "
               "of read-only probe (%.2f GB/s)\n", P, done, ms, 1000.0 / ms, bytes_tok / 1e9, gbs,
               100.0 * gbs / pr.copy_gbs, pr.copy_gbs, 100.0 * gbs / pr.read_gbs, pr.read_gbs);
    }
    nvlm_session_free(s);
    free(ids);

    double ms_tile = 0, ms_proj = 0;
    if (bench_vit(m, threads, 2, 1, &ms_tile, &ms_proj) == 0) {
        /* ViT GEMM flops per tile: 1025 tokens through 4 linears per layer, plus attention. */
        const nv_vision_config *v = &c->vision;
        double T = 1025, D = v->hidden_size, Iv = v->intermediate_size;
        double vf = v->num_layers * (2 * T * (3 * D * D + D * D + 2 * D * Iv) + 4 * T * T * D);
        printf("ViT (2 tiles in one batch): %.0f ms per tile (%.1f GFLOP/s); projector %.0f ms "
               "per tile\n", ms_tile, vf / (ms_tile * 1e6), ms_proj);
    }
    return 0;
}

int main(int argc, char **argv)
{
    opts o;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (parse(&o, argc, argv) != 0) {
        return 2;
    }
    char cpu[256];
    printf("nvlm-bench: %s, %ld online cores, SIMD path %s, OpenBLAS %s (%s)\n",
           cpu_model(cpu, sizeof cpu), sysconf(_SC_NPROCESSORS_ONLN), cpu_simd_name(),
           openblas_get_corename(), openblas_get_config());
    nvlm_model *model = NULL;
    nvlm_context *model_ctx = NULL; /* the context the model was built in: freed last */
    for (int ti = 0; ti < o.n_threads; ti++) {
        int t = o.threads[ti];
        nvlm_context_params cp;
        nvlm_context_default_params(&cp);
        cp.n_threads = t;
        nvlm_context *ctx = NULL;
        nv_pool *pool = NULL;
        if (nvlm_context_create(&cp, &ctx) != NVLM_OK || nv_pool_create(ctx, t, &pool) != NVLM_OK) {
            fprintf(stderr, "nvlm-bench: cannot create a context/pool of %d threads\n", t);
            return 1;
        }
        openblas_set_num_threads(t);
        printf("\n======== %d thread%s ========\n", t, t == 1 ? "" : "s");
        probes pr = run_probes(pool, o.quick ? 2 : 5);
        printf("probe: memory copy %.2f GB/s (read + write), read-only stream %.2f GB/s\n",
               pr.copy_gbs, pr.read_gbs);
        double ms_layer = 0;
        double gbs = bench_decode_gemv(pool, o.quick ? 2 : 4, o.quick ? 3 : 10, &ms_layer);
        printf("decode GEMV (M = 1, the 7 bf16 matrices of a layer, 4 layers cycled): "
               "%.2f GB/s of weights = %.0f%% of copy, %.0f%% of read-only; %.3f ms/layer\n",
               gbs, 100.0 * gbs / pr.copy_gbs, 100.0 * gbs / pr.read_gbs, ms_layer);
        int reps = o.quick ? 1 : 3;
        gemm_table(pool, "Decoder prefill GEMMs", dec_shapes, NV_ARRAY_LEN(dec_shapes), 1024,
                   reps);
        if (!o.quick) {
            gemm_table(pool, "Decoder prefill GEMMs", dec_shapes, NV_ARRAY_LEN(dec_shapes), 2048,
                       reps);
        }
        gemm_table(pool, "ViT GEMMs (one tile)", vit_shapes, NV_ARRAY_LEN(vit_shapes), 1025, reps);
        if (o.e2e) {
            if (model == NULL) {
                double t0 = nv_time_ms();
                if (make_model(ctx, &o, &model) != NVLM_OK) {
                    fprintf(stderr, "nvlm-bench: synthetic model: %s\n", nvlm_last_error(ctx));
                    o.e2e = 0;
                } else {
                    model_ctx = ctx;
                    printf("\n(synthetic model built in %.1f s)\n", (nv_time_ms() - t0) / 1000);
                }
            }
            if (model != NULL) {
                bench_e2e(ctx, model, pool, &o, t, pr);
            }
        }
        nv_pool_free(pool);
        if (ctx != model_ctx) {
            nvlm_context_free(ctx);
        }
    }
    nvlm_model_free(model);
    nvlm_context_free(model_ctx);
    return 0;
}

