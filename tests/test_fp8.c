/*
 * test_fp8.c - FP8 E4M3 weights (fp8.h, cpu/matmul_fp8.c, nvlm_model_params.weight_type):
 * the E4M3 rounding (every code, ties to even, saturation, subnormals), the per-channel
 * quantizer, the CPU FP8 GEMM on every SIMD path against a double reference and across thread
 * counts, and the exactness test: the tiny model loaded with NVLM_WEIGHTS_FP8 against an
 * independent numpy model whose weights are q * scale (tests/oracle/fp8_logits.py ->
 * tests/data/fp8/), on a text case, an image case (golden projector rows spliced) and a
 * 300-token prompt, with one rank and with two tensor-parallel ranks.
 */
#include "cpu/matmul_impl.h"
#include "eng_golden.h"
#include "fp8.h"

#include <sys/wait.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define FP8_GOLDEN "tests/data/fp8/fp8_logits.safetensors"

/* ---- scalar rounding -------------------------------------------------------------------- */

static void test_scalar(void)
{
    tu_section("fp8: E4M3 codes and rounding");
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) {
            bad += !isnan(fp8_to_f32((uint8_t)c));
            continue;
        }
        bad += fp8_from_f32(fp8_to_f32((uint8_t)c)) != c;
    }
    CHECK(bad == 0, "every code round-trips (NaN codes decode to NaN): %d bad", bad);
    CHECK(fp8_to_f32(0x7e) == 448.0f && fp8_to_f32(0x01) == ldexpf(1.0f, -9) &&
              fp8_to_f32(0x08) == ldexpf(1.0f, -6) && fp8_to_f32(0x38) == 1.0f,
          "448, 2^-9, 2^-6, 1.0");
    /* ties between neighbouring codes go to the even code; just above a tie goes up */
    int ties = 0;
    for (int c = 0; c < 0x7e; c++) {
        float lo = fp8_to_f32((uint8_t)c), hi = fp8_to_f32((uint8_t)(c + 1));
        float mid = (lo + hi) / 2.0f;
        int want = (c & 1) ? c + 1 : c;
        ties += fp8_from_f32(mid) != want;
        ties += fp8_from_f32(-mid) != (want | 0x80);
        ties += fp8_from_f32(nextafterf(mid, 1e9f)) != c + 1;
        ties += fp8_from_f32(nextafterf(mid, 0.0f)) != c;
    }
    CHECK(ties == 0, "round half to even between every pair of codes: %d bad", ties);
    CHECK(fp8_from_f32(449.0f) == 0x7e && fp8_from_f32(1e30f) == 0x7e &&
              fp8_from_f32(INFINITY) == 0x7e && fp8_from_f32(-INFINITY) == 0xfe &&
              fp8_from_f32(-464.0f) == 0xfe,
          "saturation at +-448 (no infinities)");
    CHECK(fp8_from_f32(NAN) == 0x7f, "NaN -> 0x7F");
    CHECK(fp8_from_f32(ldexpf(1.0f, -10)) == 0 && fp8_from_f32(ldexpf(3.0f, -10)) == 2 &&
              fp8_from_f32(ldexpf(1.0f, -20)) == 0 && fp8_from_f32(-0.0f) == 0x80,
          "subnormals round half to even, underflow to zero keeps the sign");
    CHECK(fp8_find_nan((const uint8_t *)"\x01\x7e\xfe\x80", 4) == -1 &&
              fp8_find_nan((const uint8_t *)"\x01\x7e\xff\x80", 4) == 2,
          "NaN scan");
    CHECK(fp8_is_projection("language_model.model.layers.0.self_attn.q_proj.weight") &&
              fp8_is_projection("language_model.model.layers.17.mlp.down_proj.weight") &&
              !fp8_is_projection("language_model.model.layers.0.self_attn.q_proj.bias") &&
              !fp8_is_projection("language_model.lm_head.weight") &&
              !fp8_is_projection("language_model.model.layers.x.mlp.up_proj.weight") &&
              !fp8_is_projection("vision_model.encoder.layers.0.mlp.fc1.weight"),
          "the seven projections and nothing else");
}

static void test_quantize(void)
{
    tu_section("fp8: per-output-channel quantization");
    /* rows: all zero; max 896 (scale 2); mixed with a value that is a tie after division */
    float w[3][4] = {{0, 0, 0, 0}, {896, -448, 1, 3}, {0.5f, -0.25f, 0.1f, 0.0f}};
    uint8_t q[12];
    float s[3];
    CHECK(fp8_quantize(q, s, w, NV_F32, 3, 4), "finite matrix");
    CHECK(s[0] == 1.0f && q[0] == 0 && q[3] == 0, "all-zero row: scale 1, codes 0");
    CHECK(s[1] == 2.0f && q[4] == 0x7e && q[5] == 0xf6 && q[6] == fp8_from_f32(0.5f) &&
              q[7] == fp8_from_f32(1.5f),
          "scale = max / 448, codes of W / scale");
    float s2 = 0.5f / 448.0f;
    CHECK(s[2] == s2 && q[8] == 0x7e && q[9] == fp8_from_f32(-0.25f / s2) &&
              q[10] == fp8_from_f32(0.1f / s2),
          "f32 division, then one rounding");
    uint16_t b[4] = {nv_f32_to_bf16(1.0f), nv_f32_to_bf16(-2.0f), 0, 0};
    CHECK(fp8_quantize(q, s, b, NV_BF16, 1, 4) && s[0] == 2.0f / 448.0f && q[1] == 0xfe,
          "bf16 input");
    float inf[2] = {1.0f, INFINITY};
    CHECK(!fp8_quantize(q, s, inf, NV_F32, 1, 2), "an infinity is refused");
}

/* ---- the GEMM --------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static float frand(void)
{
    return (float)rnd() / 2147483648.0f - 1.0f;
}

static void gemm_case(nv_pool *pool, int M, int N, int K, bool with_bias)
{
    float *x = malloc((size_t)M * (size_t)K * sizeof(float) + 4);
    uint8_t *q = malloc((size_t)N * (size_t)K + 1);
    float *s = malloc((size_t)N * sizeof(float));
    float *b = malloc((size_t)N * sizeof(float));
    float *ref = malloc((size_t)M * (size_t)N * sizeof(float));
    float *tol = malloc((size_t)M * (size_t)N * sizeof(float));
    float *y[MM_SIMD_COUNT][2];
    for (size_t i = 0; i < (size_t)M * (size_t)K; i++) {
        x[i] = frand();
    }
    for (size_t i = 0; i < (size_t)N * (size_t)K; i++) {
        uint8_t c = (uint8_t)rnd();
        q[i] = (c & 0x7f) == 0x7f ? 0x7e : c;
    }
    for (int n = 0; n < N; n++) {
        s[n] = ldexpf(1.0f + frand() * 0.5f, -(int)(rnd() % 12));
        b[n] = frand();
    }
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double acc = 0.0, mag = 0.0;
            for (int k = 0; k < K; k++) {
                double t = (double)x[(size_t)m * K + k] * fp8_to_f32(q[(size_t)n * K + k]);
                acc += t;
                mag += fabs(t);
            }
            acc *= s[n];
            mag *= s[n];
            if (with_bias) {
                acc += b[n];
            }
            ref[(size_t)m * N + n] = (float)acc;
            tol[(size_t)m * N + n] = (float)(1e-6 * (mag + fabs(acc)) + 1e-30);
        }
    }
    int bad = 0;
    for (int p = 0; p < MM_SIMD_COUNT; p++) {
        for (int t = 0; t < 2; t++) {
            y[p][t] = malloc((size_t)M * (size_t)N * sizeof(float));
            if (!mm_simd_supported((mm_simd)p)) {
                continue;
            }
            mm_matmul_fp8_path(t == 0 ? NULL : pool, y[p][t], x, q, s, with_bias ? b : NULL, M, N,
                               K, (mm_simd)p);
            for (size_t i = 0; i < (size_t)M * (size_t)N; i++) {
                bad += !(fabsf(y[p][t][i] - ref[i]) <= tol[i]);
            }
        }
        if (mm_simd_supported((mm_simd)p)) {
            bad += memcmp(y[p][0], y[p][1], (size_t)M * (size_t)N * sizeof(float)) != 0;
        }
    }
    CHECK(bad == 0, "fp8 GEMM M %d N %d K %d%s: every path matches the reference (1e-6 of the "
          "magnitude), threads do not change the bits: %d bad", M, N, K,
          with_bias ? " + bias" : "", bad);
    for (int p = 0; p < MM_SIMD_COUNT; p++) {
        free(y[p][0]);
        free(y[p][1]);
    }
    free(x);
    free(q);
    free(s);
    free(b);
    free(ref);
    free(tol);
}

/* The AVX-512 decode GEMV turns codes into f32 with integer operations (values times 2^-120,
 * E4M3 subnormals as f32 subnormals), unless the calling thread has MXCSR.DAZ set, which would
 * read those subnormals as zero; then it uses vcvtph2ps, which ignores DAZ. The two routes must
 * give the same bits, and DAZ must not change a result. */
static void test_daz(void)
{
#if defined(__x86_64__)
    if (!mm_simd_supported(MM_AVX512)) {
        printf("SKIP fp8 DAZ: no AVX-512 on this CPU\n");
        return;
    }
    enum { N = 37, K = 300, M = 3 };
    uint8_t *q = malloc((size_t)N * K);
    float *x = malloc((size_t)M * K * sizeof(float));
    float s[N], y[2][M * N];
    int subnormal = 0;
    for (int i = 0; i < N * K; i++) {
        /* every code but NaN; every fourth one subnormal (exponent field 0) */
        uint8_t c = i % 4 == 0 ? (uint8_t)((rnd() & 0x80) | (1 + rnd() % 7)) : (uint8_t)rnd();
        q[i] = (c & 0x7f) == 0x7f ? 0x7e : c;
        subnormal += (q[i] & 0x78) == 0 && (q[i] & 0x07) != 0;
    }
    for (int i = 0; i < M * K; i++) {
        x[i] = frand();
    }
    for (int n = 0; n < N; n++) {
        s[n] = 1.0f + frand() * 0.5f;
    }
    const unsigned csr = _mm_getcsr();
    int bad = 0;
    /* pass 1: ordinary x; pass 2: one |x| of 2^64 and more in the last row, which the integer
     * route cannot scale (x * 2^64 overflows): it must fall back, giving the finite results */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            x[(M - 1) * K + K / 2] = -3e19f;
        }
        for (int m = 1; m <= M; m += 2) {
            for (int d = 0; d < 2; d++) {
                _mm_setcsr(d ? csr | 0x0040u : csr & ~0x0040u);
                mm_matmul_fp8_path(NULL, y[d], x, q, s, NULL, m, N, K, MM_AVX512);
                _mm_setcsr(csr);
            }
            bad += memcmp(y[0], y[1], (size_t)m * N * sizeof(float)) != 0;
            for (int i = 0; i < m * N; i++) {
                bad += !isfinite(y[0][i]);
            }
        }
    }
    CHECK(subnormal > 0 && bad == 0, "fp8 GEMV: the integer route (DAZ off) and the vcvtph2ps "
          "route (DAZ on) give the same finite bits, also with |x| >= 2^64; %d subnormal codes "
          "read right (%d bad)", subnormal, bad);
    free(q);
    free(x);
#endif
}

static void test_gemm(void)
{
    tu_section("fp8: GEMM paths (portable, AVX2, AVX-512 where the CPU has them)");
    nv_pool *pool = NULL;
    CHECK_OK(nv_pool_create(NULL, 3, &pool));
    static const int shapes[][3] = {{1, 1, 1},    {1, 67, 15},   {1, 300, 130}, {1, 64, 1000},
                                    {3, 37, 33},  {7, 130, 64},  {8, 67, 17},   {12, 300, 129},
                                    {37, 600, 250}, {100, 64, 1}, {1, 5, 48},   {2, 9, 31}};
    for (size_t i = 0; i < NV_ARRAY_LEN(shapes); i++) {
        gemm_case(pool, shapes[i][0], shapes[i][1], shapes[i][2], i % 2 == 0);
    }
    nv_pool_free(pool);
}

/* ---- the model against the oracle ------------------------------------------------------- */

typedef struct fp8_env {
    nv_engine *e;
    nv_exec *ex;
} fp8_env;

/* Prefill of ids[0..n_prompt) (img rows spliced over <|vision_pad|>), then teacher-forced steps
 * over ids[n_prompt..n): (n - n_prompt + 1) logits rows into out. */
static nvlm_status run_ids(fp8_env *d, const int32_t *ids, size_t n, size_t n_prompt,
                           const float *img_rows, float *out)
{
    const dec_weights *w = &d->e->dec;
    size_t V = (size_t)w->vocab;
    int image_id = d->e->image_token_id;
    size_t n_img = 0;
    for (size_t i = 0; i < n_prompt; i++) {
        n_img += ids[i] == image_id;
    }
    dec_kv kv;
    nv_arena ar = {.ex = d->ex};
    int32_t *pos = malloc((n_img + 1) * sizeof(int32_t));
    int32_t *row = malloc((n_img + 1) * sizeof(int32_t));
    nvlm_status st = dec_kv_init(d->ex, w, &kv, NV_F32, w->max_pos);
    if (st == NVLM_OK) {
        st = dec_kv_reserve(d->ex, &kv, (int64_t)n);
    }
    size_t img_bytes = nv_arena_size(n_img * (size_t)w->D);
    if (st == NVLM_OK) {
        st = nv_arena_reserve(&ar, img_bytes + dec_arena_bytes(w, (int)n_prompt, 1));
    }
    float *img = NULL;
    if (st == NVLM_OK && n_img > 0) {
        img = nv_arena_floats(&ar, n_img * (size_t)w->D);
        /* through the backend: under tensor parallelism every rank holds its own copy */
        st = d->e->be->ops->upload(d->ex, img, img_rows, n_img * (size_t)w->D * sizeof(float));
        size_t k = 0;
        for (size_t i = 0; i < n_prompt; i++) {
            if (ids[i] == image_id) {
                pos[k] = (int32_t)i;
                row[k] = (int32_t)k;
                k++;
            }
        }
    }
    size_t mark = nv_arena_mark(&ar);
    if (st == NVLM_OK) {
        st = dec_forward(d->ex, &ar, w, &kv, ids, (int)n_prompt, img, pos, row, (int)n_img, 1,
                         out, NULL);
    }
    for (size_t i = n_prompt; i < n && st == NVLM_OK; i++) {
        nv_arena_rewind(&ar, mark);
        st = dec_forward(d->ex, &ar, w, &kv, ids + i, 1, NULL, NULL, NULL, 0, 1,
                         out + (i - n_prompt + 1) * V, NULL);
    }
    free(pos);
    free(row);
    dec_kv_free(d->ex, &kv);
    nv_arena_release(&ar);
    return st;
}

static nvlm_model *load(nvlm_context **ctx, int tp, nvlm_weight_type wt)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.n_threads = 2;
    cp.tp_size = tp;
    cp.backend = NVLM_BACKEND_CPU;
    *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, ctx));
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.weight_type = wt;
    nvlm_model *m = NULL;
    nvlm_status st = *ctx != NULL ? nvlm_model_load(*ctx, EG_MODEL_DIR, &mp, &m) : NVLM_ERR_IO;
    CHECK(st == NVLM_OK, "load (tp %d, weights %d) -> %d: %s", tp, (int)wt, (int)st,
          *ctx != NULL ? nvlm_last_error(*ctx) : "");
    return st == NVLM_OK ? m : NULL;
}

/* Runs every oracle case on model m; with `other` (same cases, V floats per row) also stores
 * the logits there. */
static void oracle_cases(nvlm_context *ctx, nvlm_model *m, const char *label)
{
    static const char *const cases[] = {"case3_text_only", "case1_multitile", "long300"};
    nv_st_file *g = NULL;
    CHECK_OK(nv_st_open(ctx, FP8_GOLDEN, NULL, &g));
    fp8_env d = {m != NULL ? m->engine : NULL, NULL};
    if (g == NULL || d.e == NULL) {
        nv_st_close(g);
        return;
    }
    CHECK_OK(d.e->be->ops->exec_create(d.e->be, 2, m, &d.ex));
    for (size_t c = 0; c < NV_ARRAY_LEN(cases) && d.ex != NULL; c++) {
        char name[96];
        snprintf(name, sizeof name, "%s.ids", cases[c]);
        size_t n = 0;
        int32_t *ids = eg_ids(g, name, &n);
        snprintf(name, sizeof name, "%s.n_prompt", cases[c]);
        const nv_tensor *np = eg_tensor(g, name, NV_I64);
        snprintf(name, sizeof name, "%s.logits", cases[c]);
        const nv_tensor *want = eg_tensor(g, name, NV_F32);
        const float *img = NULL;
        nv_st_file *gold = NULL;
        if (strcmp(cases[c], "case1_multitile") == 0) {
            gold = eg_open(ctx, cases[c]);
            const nv_tensor *po = gold != NULL ? eg_tensor(gold, "proj_out", NV_F32) : NULL;
            img = po != NULL ? po->data : NULL;
        }
        if (ids != NULL && np != NULL && want != NULL) {
            size_t n_prompt = (size_t)((const int64_t *)np->data)[0];
            size_t V = (size_t)d.e->dec.vocab;
            size_t rows = n - n_prompt + 1;
            CHECK((size_t)nv_tensor_nelem(want) == rows * V, "%s: oracle rows", cases[c]);
            float *got = malloc(rows * V * sizeof(float));
            nvlm_status st = run_ids(&d, ids, n, n_prompt, img, got);
            CHECK(st == NVLM_OK, "%s %s: forward -> %d", label, cases[c], (int)st);
            if (st == NVLM_OK) {
                char what[160];
                snprintf(what, sizeof what, "%s %s (%zu tokens): prefill + %zu teacher-forced "
                         "steps vs the q*scale numpy model", label, cases[c], n, rows - 1);
                eg_close(what, got, want->data, rows * V, 2e-4);
            }
            free(got);
        }
        free(ids);
        nv_st_close(gold);
    }
    d.e->be->ops->exec_free(d.ex);
    nv_st_close(g);
}

static void test_model(void)
{
    tu_section("fp8: the tiny model against the independent q*scale model");
    nvlm_context *ctx = NULL;
    nvlm_model *m = load(&ctx, 1, NVLM_WEIGHTS_FP8);
    if (m != NULL) {
        const dec_layer *L = &m->engine->dec.layers[0];
        CHECK(L->q.t.dtype == NV_F8_E4M3 && L->down.t.dtype == NV_F8_E4M3 &&
                  L->q.t.scale != NULL && L->q_b.t.dtype == NV_F32 &&
                  m->engine->dec.lm_head.t.dtype == NV_BF16 &&
                  m->engine->proj.w1.t.dtype == NV_BF16,
              "the seven projections are FP8; biases, lm_head and the projector as stored");
    }
    oracle_cases(ctx, m, "1 rank");
    nvlm_model_free(m);
    nvlm_context_free(ctx);

    tu_section("fp8: two tensor-parallel ranks (scales split with their rows)");
    m = load(&ctx, 2, NVLM_WEIGHTS_FP8);
    oracle_cases(ctx, m, "2 ranks");
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

/* ---- FP8 checkpoints (nvlm_checkpoint_quantize, compressed-tensors) -------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = buf != NULL ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    buf[got] = '\0';
    *len = got;
    return buf;
}

/* Replaces the first `from` in file dir/name by `to` (same length unless it is JSON text
 * outside a safetensors header). Returns whether it was found. */
static bool patch(const char *dir, const char *name, const char *from, const char *to)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t n = 0;
    char *buf = slurp(path, &n);
    char *at = NULL;
    for (size_t i = 0; buf != NULL && i + strlen(from) <= n && at == NULL; i++) {
        if (memcmp(buf + i, from, strlen(from)) == 0) {
            at = buf + i;
        }
    }
    if (at != NULL) {
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, (size_t)(at - buf), f);
        fwrite(to, 1, strlen(to), f);
        fwrite(at + strlen(from), 1, n - (size_t)(at - buf) - strlen(from), f);
        fclose(f);
    }
    free(buf);
    return at != NULL;
}

/* Sets byte `idx` of tensor `tensor` in shard dir/file to `v` (data offsets from the header). */
static bool poke(const char *dir, const char *file, const char *tensor, size_t idx, uint8_t v)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    size_t n = 0;
    char *buf = slurp(path, &n);
    uint64_t hl = 0;
    memcpy(&hl, buf, 8);
    cJSON *h = cJSON_ParseWithLength(buf + 8, (size_t)hl);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(h, tensor);
    cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    bool ok = cJSON_IsArray(off);
    if (ok) {
        size_t at = 8 + (size_t)hl + (size_t)cJSON_GetArrayItem(off, 0)->valuedouble + idx;
        buf[at] = (char)v;
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, n, f);
        fclose(f);
    }
    cJSON_Delete(h);
    free(buf);
    return ok;
}

/* Replaces config.json's quantization_config in dir by the JSON object `qc`. */
static void set_qconfig(const char *dir, const char *qc)
{
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t n = 0;
    char *text = slurp(path, &n);
    cJSON *root = text != NULL ? cJSON_Parse(text) : NULL;
    cJSON_ReplaceItemInObject(root, "quantization_config", cJSON_Parse(qc));
    char *out = cJSON_Print(root);
    FILE *f = fopen(path, "wb");
    CHECK(root != NULL && out != NULL && f != NULL, "rewrite %s", path);
    if (f != NULL && out != NULL) {
        fputs(out, f);
    }
    if (f != NULL) {
        fclose(f);
    }
    free(out);
    cJSON_Delete(root);
    free(text);
}

static nvlm_status load_dir(nvlm_context *ctx, const char *dir, nvlm_weight_type wt,
                            nvlm_model **m)
{
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.weight_type = wt;
    *m = NULL;
    return nvlm_model_load(ctx, dir, &mp, m);
}

/* Logits of an oracle case (prefill + teacher-forced steps), malloc'd; NULL on failure. */
static float *case_logits(nvlm_context *ctx, nvlm_model *m, const char *which, size_t *count)
{
    nv_st_file *g = NULL;
    CHECK_OK(nv_st_open(ctx, FP8_GOLDEN, NULL, &g));
    char name[96];
    snprintf(name, sizeof name, "%s.ids", which);
    size_t n = 0;
    int32_t *ids = g != NULL ? eg_ids(g, name, &n) : NULL;
    snprintf(name, sizeof name, "%s.n_prompt", which);
    const nv_tensor *np = g != NULL ? eg_tensor(g, name, NV_I64) : NULL;
    float *out = NULL;
    fp8_env d = {m->engine, NULL};
    if (ids != NULL && np != NULL && d.e->be->ops->exec_create(d.e->be, 2, m, &d.ex) == 0) {
        size_t n_prompt = (size_t)((const int64_t *)np->data)[0];
        *count = (n - n_prompt + 1) * (size_t)d.e->dec.vocab;
        out = malloc(*count * sizeof(float));
        if (run_ids(&d, ids, n, n_prompt, NULL, out) != NVLM_OK) {
            free(out);
            out = NULL;
        }
        d.e->be->ops->exec_free(d.ex);
    }
    free(ids);
    nv_st_close(g);
    return out;
}

static void test_checkpoint(void)
{
    tu_section("fp8: nvlm_checkpoint_quantize and loading FP8 checkpoints as-is");
    char dir[] = "/tmp/nvlm_fp8_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char out[600];
    snprintf(out, sizeof out, "%s/q", dir);
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    nvlm_status st = nvlm_checkpoint_quantize(ctx, EG_MODEL_DIR, out, NULL, NULL);
    CHECK(st == NVLM_OK, "quantize -> %d: %s", (int)st, nvlm_last_error(ctx));
    CHECK_EQ_INT(nvlm_checkpoint_quantize(ctx, out, out, NULL, NULL), NVLM_ERR_INVALID_ARGUMENT,
                 "the output must be another directory");
    char again[640];
    snprintf(again, sizeof again, "%s/again", dir);
    CHECK_EQ_INT(nvlm_checkpoint_quantize(ctx, out, again, NULL, NULL), NVLM_ERR_UNSUPPORTED,
                 "an FP8 checkpoint is not quantized twice");

    nvlm_model *a = NULL, *b = NULL;
    CHECK_OK(load_dir(ctx, EG_MODEL_DIR, NVLM_WEIGHTS_FP8, &a));
    st = load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b);
    CHECK(st == NVLM_OK, "load the FP8 checkpoint as-is -> %d: %s", (int)st,
          nvlm_last_error(ctx));
    if (a != NULL && b != NULL) {
        CHECK(b->has_fp8 && b->weight_type == NVLM_WEIGHTS_FP8 && !b->quantize_fp8 &&
                  b->engine->dec.layers[1].up.t.dtype == NV_F8_E4M3,
              "auto on an FP8 checkpoint: the stored codes are used");
        static const char *const which[] = {"case3_text_only", "long300"};
        for (size_t i = 0; i < NV_ARRAY_LEN(which); i++) {
            size_t na = 0, nb = 0;
            float *la = case_logits(ctx, a, which[i], &na);
            float *lb = case_logits(ctx, b, which[i], &nb);
            CHECK(la != NULL && lb != NULL && na == nb &&
                      memcmp(la, lb, na * sizeof(float)) == 0,
                  "%s: the quantized checkpoint's logits are bit-identical to quantize-on-load",
                  which[i]);
            free(la);
            free(lb);
        }
    }
    nvlm_model_free(a);
    nvlm_model_free(b);
    CHECK_EQ_INT(load_dir(ctx, out, NVLM_WEIGHTS_BF16, &b), NVLM_ERR_UNSUPPORTED,
                 "FP8 checkpoint as bf16: unsupported");
    CHECK_OK(load_dir(ctx, out, NVLM_WEIGHTS_FP8, &b));
    nvlm_model_free(b);

    /* a NaN code is refused when the tensor is first read */
    static const char up1[] = "language_model.model.layers.1.mlp.up_proj.weight";
    const char *shard = NULL;
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
    size_t len = 0;
    char *ix = slurp(path, &len);
    cJSON *j = ix != NULL ? cJSON_Parse(ix) : NULL;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    const cJSON *sv = cJSON_GetObjectItemCaseSensitive(wm, up1);
    shard = cJSON_IsString(sv) ? sv->valuestring : NULL;
    CHECK(shard != NULL, "the index names the shard of %s", up1);
    if (shard != NULL) {
        CHECK(poke(out, shard, up1, 77, 0xff), "poke a NaN code");
        st = load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b);
        CHECK(st == NVLM_ERR_FORMAT && strstr(nvlm_last_error(ctx), "NaN code") != NULL,
              "NaN code refused -> %d: %s", (int)st, nvlm_last_error(ctx));
        nvlm_model_free(b);
        poke(out, shard, up1, 77, 0x00);
        /* a static activation scale is unsupported (the scale renamed in the header) */
        CHECK(patch(out, shard, "layers.1.mlp.up_proj.weight_scale\"",
                    "layers.1.mlp.up_proj.input_scale\" "),
              "rename a scale");
        CHECK(patch(out, "model.safetensors.index.json", "layers.1.mlp.up_proj.weight_scale\"",
                    "layers.1.mlp.up_proj.input_scale\""),
              "rename it in the index");
        st = load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b);
        CHECK(st == NVLM_ERR_UNSUPPORTED && strstr(nvlm_last_error(ctx), "input_scale") != NULL,
              "static input_scale refused -> %d: %s", (int)st, nvlm_last_error(ctx));
        nvlm_model_free(b);
        patch(out, shard, "layers.1.mlp.up_proj.input_scale\" ",
              "layers.1.mlp.up_proj.weight_scale\"");
        patch(out, "model.safetensors.index.json", "layers.1.mlp.up_proj.input_scale\"",
              "layers.1.mlp.up_proj.weight_scale\"");
        CHECK_OK(load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b));
        nvlm_model_free(b);
    }
    cJSON_Delete(j);
    free(ix);
    /* the ignore list: a module it names must not be stored as FP8 */
    CHECK(patch(out, "config.json", "\"language_model.lm_head\"",
                "\"re:.*layers\\\\.1\\\\.mlp\\\\.up_proj\""),
          "edit the ignore list");
    st = load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b);
    CHECK(st == NVLM_ERR_FORMAT && strstr(nvlm_last_error(ctx), "ignore") != NULL,
          "an ignored module stored as FP8 is refused -> %d: %s", (int)st, nvlm_last_error(ctx));
    nvlm_model_free(b);
    CHECK(patch(out, "config.json", "\"re:.*layers\\\\.1\\\\.mlp\\\\.up_proj\"", "\"up_proj\""),
          "edit the ignore list");
    CHECK_EQ_INT(load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b), NVLM_ERR_FORMAT,
                 "ignore entries match as module-name suffixes");
    nvlm_model_free(b);
    CHECK(patch(out, "config.json", "\"up_proj\"", "\"lm_head\""), "edit the ignore list");
    CHECK(patch(out, "config.json", "compressed-tensors", "gptq"), "edit quant_method");
    st = load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b);
    CHECK(st == NVLM_ERR_UNSUPPORTED && strstr(nvlm_last_error(ctx), "gptq") != NULL,
          "another quant_method -> %d: %s", (int)st, nvlm_last_error(ctx));
    nvlm_model_free(b);
    /* the quant_method "fp8" form: same tensors, ignored_layers, dynamic activations */
    set_qconfig(out, "{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", "
                     "\"ignored_layers\": [\"lm_head\"]}");
    st = load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b);
    CHECK(st == NVLM_OK && b->has_fp8, "quant_method fp8 loads -> %d: %s", (int)st,
          nvlm_last_error(ctx));
    nvlm_model_free(b);
    set_qconfig(out, "{\"quant_method\": \"fp8\", \"activation_scheme\": \"static\"}");
    CHECK_EQ_INT(load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b), NVLM_ERR_UNSUPPORTED,
                 "fp8 with static activations: unsupported");
    set_qconfig(out, "{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", "
                     "\"weight_block_size\": [128, 128]}");
    st = load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b);
    CHECK(st == NVLM_ERR_UNSUPPORTED && strstr(nvlm_last_error(ctx), "block") != NULL,
          "block-wise fp8: unsupported -> %d: %s", (int)st, nvlm_last_error(ctx));
    set_qconfig(out, "{\"quant_method\": \"compressed-tensors\", \"format\": "
                     "\"float-quantized\", \"config_groups\": {\"g\": {\"weights\": "
                     "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"channel\"}, "
                     "\"input_activations\": {\"num_bits\": 8, \"type\": \"float\", "
                     "\"dynamic\": false}}}}");
    CHECK_EQ_INT(load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b), NVLM_ERR_UNSUPPORTED,
                 "compressed-tensors with static input activations: unsupported");
    set_qconfig(out, "{\"quant_method\": \"compressed-tensors\", \"format\": "
                     "\"float-quantized\", \"config_groups\": {\"g\": {\"weights\": "
                     "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"group\"}}}}");
    CHECK_EQ_INT(load_dir(ctx, out, NVLM_WEIGHTS_AUTO, &b), NVLM_ERR_UNSUPPORTED,
                 "int4 weights: unsupported");
    nvlm_context_free(ctx);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "remove the temp dir");
}

static void info_72b(int tp, nvlm_weight_type wt, nvlm_model_info *info)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.tp_size = tp;
    cp.backend = NVLM_BACKEND_CPU;
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.mode = NVLM_LOAD_CONFIG_ONLY;
    mp.weight_type = wt;
    nvlm_model *m = NULL;
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
    CHECK_OK(ctx != NULL ? nvlm_model_load(ctx, "tests/data/nvlm-d-72b", &mp, &m) : 1);
    if (m != NULL) {
        CHECK_OK(nvlm_model_get_info(m, info));
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

static void test_info(void)
{
    tu_section("fp8: memory estimates of NVLM-D-72B (config only)");
    nvlm_model_info b, f, b4, f4;
    info_72b(1, NVLM_WEIGHTS_AUTO, &b);
    info_72b(1, NVLM_WEIGHTS_FP8, &f);
    info_72b(4, NVLM_WEIGHTS_BF16, &b4);
    info_72b(4, NVLM_WEIGHTS_FP8, &f4);
    double gib = 1024.0 * 1024.0 * 1024.0;
    CHECK(b.weight_type == NVLM_WEIGHTS_BF16 && f.weight_type == NVLM_WEIGHTS_FP8,
          "resolved weight types");
    CHECK(f.cuda_bytes < (uint64_t)(90.0 * gib) && b.cuda_bytes > (uint64_t)(140.0 * gib),
          "cuda_bytes: FP8 %.2f GiB (< 90), bf16 %.2f GiB", f.cuda_bytes / gib,
          b.cuda_bytes / gib);
    CHECK(f.cpu_bytes + (uint64_t)(60.0 * gib) < b.cpu_bytes,
          "cpu_bytes: FP8 %.2f GiB, bf16 %.2f GiB", f.cpu_bytes / gib, b.cpu_bytes / gib);
    CHECK(f.per_rank_weight_bytes == f.cuda_bytes, "one rank: per_rank_weight_bytes = cuda_bytes");
    CHECK(f4.per_rank_weight_bytes > f.cuda_bytes / 4 &&
              f4.per_rank_weight_bytes < f.cuda_bytes / 4 + (uint64_t)(2.0 * gib) &&
              f4.per_rank_weight_bytes * 10 < b4.per_rank_weight_bytes * 6,
          "4 ranks: FP8 %.2f GiB per rank, bf16 %.2f GiB", f4.per_rank_weight_bytes / gib,
          b4.per_rank_weight_bytes / gib);
}

/* FP8 vs bf16 on every golden case, teacher-forced over the golden greedy tokens: the quality
 * figure of docs/performance.md (printed; loose bounds checked). */
static void test_quality(void)
{
    tu_section("fp8: quality vs bf16 (golden cases, teacher-forced)");
    nvlm_context *cb = NULL, *cf = NULL;
    nvlm_model *b = load(&cb, 1, NVLM_WEIGHTS_BF16);
    nvlm_model *f = load(&cf, 1, NVLM_WEIGHTS_FP8);
    if (b == NULL || f == NULL) {
        nvlm_model_free(b);
        nvlm_model_free(f);
        nvlm_context_free(cb);
        nvlm_context_free(cf);
        return;
    }
    double tot_d = 0, tot_n = 0;
    size_t rows_all = 0, agree_all = 0;
    for (size_t c = 0; c < NV_ARRAY_LEN(eg_cases); c++) {
        nv_st_file *g = eg_open(cb, eg_cases[c]);
        size_t np = 0, ns = 0;
        int32_t *prompt = g != NULL ? eg_ids(g, "prompt_ids", &np) : NULL;
        int32_t *steps = g != NULL ? eg_ids(g, "step_tokens", &ns) : NULL;
        const nv_weight *po = g != NULL ? nv_st_find(g, "proj_out") : NULL;
        if (prompt == NULL || steps == NULL) {
            free(prompt);
            free(steps);
            nv_st_close(g);
            continue;
        }
        size_t n = np + ns - 1; /* the last step token is never fed */
        int32_t *ids = malloc(n * sizeof(int32_t));
        memcpy(ids, prompt, np * sizeof(int32_t));
        memcpy(ids + np, steps, (ns - 1) * sizeof(int32_t));
        size_t V = (size_t)b->engine->dec.vocab, rows = ns;
        float *lb = malloc(rows * V * sizeof(float)), *lf = malloc(rows * V * sizeof(float));
        fp8_env db = {b->engine, NULL}, df = {f->engine, NULL};
        CHECK_OK(db.e->be->ops->exec_create(db.e->be, 2, b, &db.ex));
        CHECK_OK(df.e->be->ops->exec_create(df.e->be, 2, f, &df.ex));
        const float *img = po != NULL ? po->t.data : NULL;
        if (db.ex != NULL && df.ex != NULL && run_ids(&db, ids, n, np, img, lb) == NVLM_OK &&
            run_ids(&df, ids, n, np, img, lf) == NVLM_OK) {
            double d2 = 0, n2 = 0;
            size_t agree = 0;
            for (size_t r = 0; r < rows; r++) {
                for (size_t k = 0; k < V; k++) {
                    double d = (double)lf[r * V + k] - lb[r * V + k];
                    d2 += d * d;
                    n2 += (double)lb[r * V + k] * lb[r * V + k];
                }
                agree += eg_argmax(lf + r * V, (int)V) == eg_argmax(lb + r * V, (int)V);
            }
            printf("#   %-18s %4zu prompt tokens, %zu positions: logit rel-L2 %.4f, top-1 "
                   "agreement %zu/%zu\n", eg_cases[c], np, rows, sqrt(d2 / n2), agree, rows);
            tot_d += d2;
            tot_n += n2;
            rows_all += rows;
            agree_all += agree;
        }
        db.e->be->ops->exec_free(db.ex);
        df.e->be->ops->exec_free(df.ex);
        free(lb);
        free(lf);
        free(ids);
        free(prompt);
        free(steps);
        nv_st_close(g);
    }
    double rel = tot_n > 0 ? sqrt(tot_d / tot_n) : 1.0;
    CHECK(rows_all > 0 && rel < 0.15 && agree_all * 10 >= rows_all * 6,
          "all cases: logit rel-L2 %.4f, top-1 agreement %zu/%zu", rel, agree_all, rows_all);
    nvlm_model_free(b);
    nvlm_model_free(f);
    nvlm_context_free(cb);
    nvlm_context_free(cf);
}

/* Runs `cmd`, returns its exit status; its stdout (up to cap - 1 bytes) into out. */
static int run_cmd(const char *cmd, char *out, size_t cap)
{
    FILE *pf = popen(cmd, "r");
    if (pf == NULL) {
        return -1;
    }
    size_t got = fread(out, 1, cap - 1, pf);
    out[got] = '\0';
    int rc = pclose(pf);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_cli(void)
{
    tu_section("fp8: the CLI (quantize, --weights)");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP cli: NVLM_CLI not set\n");
        return;
    }
    char dir[] = "/tmp/nvlm_fp8cli_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    static char a[1 << 16], b[1 << 16];
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s quantize " EG_MODEL_DIR " %s/q", cli, dir);
    CHECK_EQ_INT(run_cmd(cmd, a, sizeof a), 0, "nvlm quantize exit status");
    snprintf(cmd, sizeof cmd, "%s generate %s/q -p 'Hello there' -n 6 --json --backend cpu", cli,
             dir);
    CHECK_EQ_INT(run_cmd(cmd, a, sizeof a), 0, "generate on the FP8 checkpoint");
    snprintf(cmd, sizeof cmd, "%s generate " EG_MODEL_DIR " -p 'Hello there' -n 6 --json "
             "--backend cpu --weights fp8", cli);
    CHECK_EQ_INT(run_cmd(cmd, b, sizeof b), 0, "generate --weights fp8");
    CHECK(strcmp(a, b) == 0 && strstr(a, "\"tokens\"") != NULL,
          "same tokens from the quantized checkpoint and from --weights fp8: %.120s", a);
    snprintf(cmd, sizeof cmd, "%s info tests/data/nvlm-d-72b --config-only --json --weights fp8",
             cli);
    CHECK_EQ_INT(run_cmd(cmd, a, sizeof a), 0, "info --weights fp8");
    cJSON *j = cJSON_Parse(a);
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(j, "memory");
    const cJSON *cb = cJSON_GetObjectItemCaseSensitive(mem, "cuda_bytes");
    const cJSON *wt = cJSON_GetObjectItemCaseSensitive(j, "weight_type");
    CHECK(cJSON_IsNumber(cb) && cb->valuedouble < 90.0 * 1024 * 1024 * 1024 &&
              cJSON_IsString(wt) && strcmp(wt->valuestring, "fp8") == 0,
          "info --json: weight_type fp8, cuda_bytes %.0f < 90 GiB",
          cJSON_IsNumber(cb) ? cb->valuedouble : -1.0);
    cJSON_Delete(j);
    snprintf(cmd, sizeof cmd,
             "%s generate " EG_MODEL_DIR " -p x --backend cpu --weights int4 2>/dev/null", cli);
    CHECK_EQ_INT(run_cmd(cmd, a, sizeof a), 2, "--weights int4 is a usage error");
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "remove the temp dir");
}

static void test_params(void)
{
    tu_section("fp8: model params");
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    CHECK_EQ_INT(mp.weight_type, NVLM_WEIGHTS_AUTO, "default weight type");
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    nvlm_model *m = NULL;
    mp.weight_type = (nvlm_weight_type)7;
    CHECK_EQ_INT(nvlm_model_load(ctx, EG_MODEL_DIR, &mp, &m), NVLM_ERR_INVALID_ARGUMENT,
                 "an unknown weight type is refused");
    CHECK(strstr(nvlm_last_error(ctx), "weight_type") != NULL, "named: %s",
          nvlm_last_error(ctx));
    /* a caller built before weight_type existed: struct_size up to use_mmap -> as stored */
    nvlm_model_default_params(&mp);
    mp.weight_type = NVLM_WEIGHTS_FP8;
    mp.struct_size = (uint32_t)offsetof(nvlm_model_params, weight_type);
    CHECK_OK(nvlm_model_load(ctx, EG_MODEL_DIR, &mp, &m));
    if (m != NULL) {
        CHECK(m->engine->dec.layers[0].q.t.dtype == NV_BF16,
              "a short struct never reads weight_type");
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

int main(void)
{
    test_scalar();
    test_quantize();
    test_gemm();
    test_daz();
    test_params();
    test_info();
    test_model();
    test_checkpoint();
    test_quality();
    test_cli();
    return tu_done();
}
