/*
 * test_memory_plan.c - the device memory estimator and the fit checks (memory_plan.h) without
 * a GPU: the device's free memory comes from a test probe installed on the context. The real
 * NVLM-D-72B config (bf16 ~148 GiB of weights, FP8 under 90 GiB) at 1, 2 and 4 ranks; the
 * tiny model loaded, refused before any weight is laid out, and its sessions; nvlm info
 * --json against the check's message; the host-side parts of the upload (slab, thread split,
 * conversion, progress by bytes) and the load progress and cancellation.
 */
#include "engine.h"
#include "memory_plan.h"
#include "testutil.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TINY "tests/data/tiny-nvlm-d"
#define BIG "tests/data/nvlm-d-72b"
#define GIB (1024.0 * 1024.0 * 1024.0)

/* ---- the probe -------------------------------------------------------------------------- */

typedef struct probe {
    uint64_t free_b[8];          /* per device */
    uint64_t total_b;
    int calls;
    int last_device;
} probe;

static nvlm_status fake_probe(void *user, int device, size_t *free_b, size_t *total_b, void *eh)
{
    (void)eh;
    probe *p = user;
    p->calls++;
    p->last_device = device;
    *free_b = (size_t)p->free_b[device & 7];
    *total_b = (size_t)p->total_b;
    return NVLM_OK;
}

static void probe_all(probe *p, uint64_t free_b)
{
    memset(p, 0, sizeof *p);
    for (int d = 0; d < 8; d++) {
        p->free_b[d] = free_b;
    }
    p->total_b = (uint64_t)(141.0 * GIB);
}

static nvlm_context *ctx_of(int tp, const int32_t *devices, nvlm_backend backend)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = backend;
    cp.n_threads = 2;
    cp.tp_size = tp;
    if (devices != NULL) {
        cp.n_devices = tp;
        cp.devices = devices;
    }
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    return ctx;
}

/* The CPU backend: the probe stands in for the devices of the ranks. */
static nvlm_context *ctx_tp(int tp, const int32_t *devices)
{
    return ctx_of(tp, devices, NVLM_BACKEND_CPU);
}

static nvlm_model *load(nvlm_context *ctx, const char *dir, nvlm_load_mode mode,
                        nvlm_weight_type wt)
{
    nvlm_model_params p;
    nvlm_model_default_params(&p);
    p.mode = mode;
    p.weight_type = wt;
    nvlm_model *m = NULL;
    nvlm_status st = nvlm_model_load(ctx, dir, &p, &m);
    CHECK(st == NVLM_OK, "load %s: %s", dir, nvlm_last_error(ctx));
    return m;
}

static nvlm_model_info info_of(const nvlm_model *m)
{
    nvlm_model_info i;
    memset(&i, 0, sizeof i);
    i.struct_size = sizeof i;
    CHECK_OK(nvlm_model_get_info(m, &i));
    return i;
}

/* ---- the estimator on the real 72B config ----------------------------------------------- */

/* An oracle written out here from the layout's shapes: every tensor's bytes in the CUDA
 * storage (2-D and larger bf16, vectors f32, FP8 projections one byte + a 4-byte row scale,
 * 4-D convolution kernels with rows padded to a multiple of 8), each rounded up to 256. */
typedef struct oracle {
    bool fp8;
    uint64_t bytes;
    uint64_t vec_elems;
} oracle;

static nvlm_status oracle_add(void *u, const nv_layout_tensor *t)
{
    oracle *o = u;
    if (t->optional) {
        return NVLM_OK;
    }
    uint64_t n = 1;
    int big = 0;
    for (int d = 0; d < t->ndim; d++) {
        n *= (uint64_t)t->shape[d];
        big += t->shape[d] > 1;
    }
    bool proj = o->fp8 && t->ndim == 2 && strstr(t->name, "language_model.model.layers.") &&
                (strstr(t->name, "_proj.weight") != NULL);
    uint64_t b;
    if (proj) {
        b = (n + 255) / 256 * 256 + 4 * (uint64_t)t->shape[0];
    } else if (t->ndim == 4 && big > 1) {
        /* a convolution kernel (the patch embedding): rows padded to a multiple of 8 */
        uint64_t k = n / (uint64_t)t->shape[0];
        b = (uint64_t)t->shape[0] * ((k + 7) / 8 * 8) * 2;
    } else {
        b = n * (big > 1 ? 2 : 4);
        o->vec_elems += big > 1 ? 0 : n;
    }
    o->bytes += (b + 255) / 256 * 256;
    return NVLM_OK;
}

static void test_big_estimate(void)
{
    tu_section("estimator: NVLM-D-72B config");
    nvlm_context *ctx = ctx_tp(1, NULL);
    nvlm_model *m = load(ctx, BIG, NVLM_LOAD_CONFIG_ONLY, NVLM_WEIGHTS_AUTO);
    if (m == NULL) {
        nvlm_context_free(ctx);
        return;
    }
    const nv_config *c = &m->cfg;
    nv_mem_plan b1, f1;
    uint64_t rank[4];
    CHECK_OK(nv_mem_estimate(c, 1, false, NV_BF16, 0, true, rank, &b1, NULL));
    CHECK_OK(nv_mem_estimate(c, 1, true, NV_BF16, 0, true, NULL, &f1, NULL));
    oracle ob = {false, 0, 0};
    oracle of = {true, 0, 0};
    nv_layout_tensors(c, oracle_add, &ob);
    nv_layout_tensors(c, oracle_add, &of);
    CHECK(b1.weights == ob.bytes && rank[0] == b1.weights,
          "bf16 weights %llu = the oracle's %llu", (unsigned long long)b1.weights,
          (unsigned long long)ob.bytes);
    CHECK(f1.weights == of.bytes, "fp8 weights %llu = the oracle's %llu",
          (unsigned long long)f1.weights, (unsigned long long)of.bytes);
    CHECK(b1.weights / GIB > 147.5 && b1.weights / GIB < 148.5,
          "72B bf16 weights %.2f GiB (~148)", b1.weights / GIB);
    CHECK(f1.weights / GIB < 90.0 && f1.weights / GIB > 70.0, "72B FP8 weights %.2f GiB (< 90)",
          f1.weights / GIB);
    /* vectors are f32 on the device: 2 bytes more than bf16 per element, plus alignment */
    CHECK(b1.weights >= 2 * 79379593344ull + 2 * ob.vec_elems &&
              b1.weights < 2 * 79379593344ull + 2 * ob.vec_elems + 256ull * 2000,
          "bf16 weights = 2 x params + 2 x %llu vector elements + alignment",
          (unsigned long long)ob.vec_elems);
    /* KV: 80 layers x 8 kv heads x 128 x k,v x bf16; default context 32768 */
    CHECK_EQ_INT(b1.kv_per_token, 2 * 80 * 8 * 128 * 2, "kv bytes per token, bf16");
    CHECK(b1.n_ctx == 32768 && b1.kv == b1.kv_per_token * 32768, "kv for the default context");
    CHECK(b1.total == b1.weights + b1.workspace + b1.activations + b1.kv + NV_MEM_HEADROOM,
          "total = the sum of its parts");
    /* the decoder chunk: h, x, a (2048 x 8192), q, ctx (2048 x 8192), k, v (2048 x 1024),
     * gate, up (2048 x 29568), one row of logits; f32 */
    uint64_t dec = 4ull * (3 * 2048 * 8192ull + 2 * 2048 * 8192ull + 2 * 2048 * 1024ull +
                           2 * 2048 * 29568ull + 152064ull);
    CHECK(b1.activations >= dec && b1.activations < dec + (uint64_t)(1.5 * GIB),
          "activations %.2f GiB: at least a 2048-token decoder chunk (%.2f GiB)",
          b1.activations / GIB, dec / GIB);
    /* workspace: cuBLASLt 32 MiB + attention 64 MiB + the widest bf16 GEMM input (the ViT's
     * fc2 over 6 tiles + thumbnail: 7 x 1025 rows x 12800) grown by a quarter as the session's
     * scratch is + the device logits and sampler (33 bytes per vocabulary entry) */
    uint64_t gin = 2ull * 7 * 1025 * 12800;
    CHECK_EQ_INT(b1.workspace, (96ull << 20) + gin + gin / 4 + 152064ull * 33, "bf16 workspace");
    /* FP8 weights add the FP8 matmul's 8 MiB workspace, the E4M3 input of the widest
     * projection (2048 x 29568 bytes) and its 2048 row scales, the bf16 block of a widened
     * weight (4096 rows x 8192 of q/o/gate/up, 2 bytes) and its f32 output (2048 x 4096),
     * each grown by a quarter */
    uint64_t xq = 2048ull * 29568;
    uint64_t blk = 4096ull * 8192;
    uint64_t acc = 2048ull * 4096;
    CHECK_EQ_INT(f1.workspace - b1.workspace,
                 (8ull << 20) + xq + xq / 4 + 4 * (2048 + 512) + 2 * (blk + blk / 4) +
                     4 * (acc + acc / 4),
                 "FP8 matmul scratch");
    CHECK_EQ_INT(nv_mem_fp8_block_rows(8192, 8192), 4096, "FP8 block: q_proj");
    CHECK_EQ_INT(nv_mem_fp8_block_rows(8192, 29568), 1088, "FP8 block: down_proj");
    CHECK_EQ_INT(nv_mem_fp8_block_rows(1024, 8192), 1024, "FP8 block: k_proj whole");
    CHECK_EQ_INT(nv_mem_fp8_block_rows(100, 1 << 20), 64, "FP8 block: 64 rows at least");

    for (int tp = 2; tp <= 4; tp *= 2) {
        nv_mem_plan bt, ft;
        CHECK_OK(nv_mem_estimate(c, tp, false, NV_BF16, 0, true, rank, &bt, NULL));
        CHECK_OK(nv_mem_estimate(c, tp, true, NV_BF16, 0, true, NULL, &ft, NULL));
        uint64_t sum = 0;
        uint64_t mx = 0;
        for (int r = 0; r < tp; r++) {
            sum += rank[r];
            mx = rank[r] > mx ? rank[r] : mx;
        }
        CHECK(bt.weights == mx && bt.weights_all == sum, "tp %d: largest rank and the sum", tp);
        /* replicated: embeddings, norms, position embeddings; the rest is cut */
        CHECK(bt.weights > b1.weights / (uint64_t)tp &&
                  bt.weights < b1.weights / (uint64_t)tp + (uint64_t)(3.0 * GIB),
              "tp %d bf16: %.2f GiB per rank (~%.2f)", tp, bt.weights / GIB,
              b1.weights / GIB / tp);
        CHECK(ft.weights < bt.weights * 6 / 10, "tp %d: FP8 %.2f GiB per rank", tp,
              ft.weights / GIB);
        CHECK_EQ_INT(bt.kv_per_token, b1.kv_per_token / (uint64_t)tp, "tp kv per token");
        CHECK(bt.activations == b1.activations && bt.workspace == b1.workspace,
              "tp %d: a rank's session arena and workspace as one device's", tp);
    }
    nv_mem_plan t64;
    CHECK_OK(nv_mem_estimate(c, 64, false, NV_BF16, 0, true, NULL, &t64, NULL));
    CHECK_EQ_INT(t64.kv_per_token, 2 * 80 * 1 * 128 * 2, "tp 64: one kv head per rank");
    CHECK(nv_mem_estimate(c, 65, false, NV_BF16, 0, true, NULL, &t64, NULL) ==
              NVLM_ERR_INVALID_ARGUMENT,
          "tp 65 > 64 query heads is refused");
    /* a tied lm_head is a second copy of the embeddings (the engine loads it so) */
    nv_mem_plan tied;
    CHECK_OK(nv_mem_estimate(c, 1, false, NV_BF16, 0, false, NULL, &tied, NULL));
    CHECK(tied.weights == b1.weights, "untied config: lm_head_stored makes no difference");
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

/* ---- the fit check on the 72B config ---------------------------------------------------- */

static nvlm_status fit_big(int tp, const int32_t *devs, nvlm_weight_type wt, uint64_t free_b,
                           char *msg, size_t cap, nvlm_model_info *info, probe *pr)
{
    nvlm_context *ctx = ctx_tp(tp, devs);
    nvlm_model *m = load(ctx, BIG, NVLM_LOAD_CONFIG_ONLY, wt);
    if (m == NULL) {
        nvlm_context_free(ctx);
        return NVLM_ERR_INTERNAL;
    }
    probe_all(pr, free_b);
    nv_mem_set_probe(ctx, fake_probe, pr);
    nvlm_status st = nv_mem_fit_model(m);
    snprintf(msg, cap, "%s", nvlm_last_error(m));
    *info = info_of(m);
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return st;
}

static bool has_gib(const char *msg, uint64_t bytes)
{
    char g[32];
    nv_mem_gib(g, sizeof g, bytes);
    return strstr(msg, g) != NULL;
}

static void test_big_fit(void)
{
    tu_section("fit check: NVLM-D-72B on 141 GiB devices");
    char msg[1024];
    nvlm_model_info i;
    probe pr;
    uint64_t h200 = (uint64_t)(139.5 * GIB);
    nvlm_status st = fit_big(1, NULL, NVLM_WEIGHTS_AUTO, h200, msg, sizeof msg, &i, &pr);
    CHECK(st == NVLM_ERR_OUT_OF_MEMORY, "bf16 on one device: refused (%d)", st);
    CHECK(strstr(msg, "needs ") != NULL && strstr(msg, "device 0 has 139.50 GiB free") != NULL &&
              has_gib(msg, i.cuda_load_bytes),
          "the message: needs X GiB (= info's cuda_load_bytes), device 0 has Y GiB free: %s",
          msg);
    CHECK(strstr(msg, "`--tp 2`") != NULL && strstr(msg, "`--weights fp8`") != NULL,
          "the remedies: --tp 2 and --weights fp8: %s", msg);
    CHECK(pr.calls == 1 && pr.last_device == 0, "one probe of device 0 (%d)", pr.calls);
    char msg1[1024];
    snprintf(msg1, sizeof msg1, "%s", msg);

    /* the remedies' figures are what the check needs with them */
    nvlm_model_info i2, f1;
    st = fit_big(2, NULL, NVLM_WEIGHTS_AUTO, h200, msg, sizeof msg, &i2, &pr);
    CHECK(st == NVLM_OK && pr.calls == 2, "bf16 over 2 devices fits (%d, %d probes): %s", st,
          pr.calls, msg);
    CHECK(has_gib(msg1, i2.cuda_load_bytes), "the --tp 2 remedy quotes the tp 2 figure");
    st = fit_big(1, NULL, NVLM_WEIGHTS_FP8, h200, msg, sizeof msg, &f1, &pr);
    CHECK(st == NVLM_OK, "FP8 on one device fits: %s", msg);
    CHECK(has_gib(msg1, f1.cuda_load_bytes), "the --weights fp8 remedy quotes the FP8 figure");
    CHECK(f1.cuda_load_bytes < (uint64_t)(95.0 * GIB), "FP8 load needs %.2f GiB",
          f1.cuda_load_bytes / GIB);

    /* the boundary: exactly cuda_load_bytes free fits, one byte less does not */
    nvlm_model_info i4;
    st = fit_big(4, NULL, NVLM_WEIGHTS_AUTO, 0, msg, sizeof msg, &i4, &pr);
    CHECK(st == NVLM_ERR_OUT_OF_MEMORY, "nothing free: refused");
    st = fit_big(4, NULL, NVLM_WEIGHTS_AUTO, i4.cuda_load_bytes, msg, sizeof msg, &i4, &pr);
    CHECK(st == NVLM_OK && pr.calls == 4, "tp 4: cuda_load_bytes free on each device fits (%s)",
          msg);
    st = fit_big(4, NULL, NVLM_WEIGHTS_AUTO, i4.cuda_load_bytes - 1, msg, sizeof msg, &i4, &pr);
    CHECK(st == NVLM_ERR_OUT_OF_MEMORY && pr.calls == 1,
          "tp 4: one byte less is refused at the first device: %s", msg);
    CHECK(i4.cuda_load_bytes < (uint64_t)(45.0 * GIB) && has_gib(msg, i4.cuda_load_bytes),
          "tp 4 per device %.2f GiB, quoted", i4.cuda_load_bytes / GIB);
    CHECK(strstr(msg, "`--tp 8`") != NULL, "at tp 4 the next remedy is --tp 8: %s", msg);

    /* the auto backend (CUDA when a device exists) also offers the CPU backend */
    nvlm_context *actx = ctx_of(1, NULL, NVLM_BACKEND_AUTO);
    nvlm_model *am = load(actx, BIG, NVLM_LOAD_CONFIG_ONLY, NVLM_WEIGHTS_AUTO);
    if (am != NULL) {
        probe_all(&pr, h200);
        nv_mem_set_probe(actx, fake_probe, &pr);
        st = nv_mem_fit_model(am);
        CHECK(st == NVLM_ERR_OUT_OF_MEMORY &&
                  strstr(nvlm_last_error(am), "`--backend cpu`") != NULL,
              "auto: refused before loading, the CPU backend among the remedies: %s",
              nvlm_last_error(am));
        nvlm_model_free(am);
    }
    nvlm_context_free(actx);
    CHECK(strstr(msg1, "`--backend cpu`") == NULL, "a context that chose its backend: no CPU "
          "remedy");

    /* two ranks on one device add up */
    int32_t same[2] = {0, 0};
    st = fit_big(2, same, NVLM_WEIGHTS_AUTO, h200, msg, sizeof msg, &i2, &pr);
    CHECK(st == NVLM_ERR_OUT_OF_MEMORY && pr.calls == 1,
          "tp 2 on one device: both ranks' needs against its memory: %s", msg);
    /* a second device with less room is named */
    int32_t devs[2] = {0, 1};
    nvlm_context *ctx = ctx_tp(2, devs);
    nvlm_model *m = load(ctx, BIG, NVLM_LOAD_CONFIG_ONLY, NVLM_WEIGHTS_AUTO);
    if (m != NULL) {
        probe_all(&pr, h200);
        pr.free_b[1] = (uint64_t)(20.0 * GIB);
        nv_mem_set_probe(ctx, fake_probe, &pr);
        st = nv_mem_fit_model(m);
        CHECK(st == NVLM_ERR_OUT_OF_MEMORY &&
                  strstr(nvlm_last_error(m), "device 1 has 20.00 GiB free") != NULL,
              "the device without room is named: %s", nvlm_last_error(m));
        nvlm_model_free(m);
    }
    nvlm_context_free(ctx);
}

/* nvlm info --json (the public figures through the CLI) agrees with the check. */
static void test_cli_agrees(void)
{
    tu_section("nvlm info --json and the check agree");
    const char *cli = getenv("NVLM_CLI");
    if (cli == NULL || cli[0] == '\0') {
        printf("SKIP cli: NVLM_CLI not set\n");
        return;
    }
    for (int tp = 1; tp <= 4; tp *= 2) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "%s info " BIG " --json --tp %d 2>/dev/null", cli, tp);
        static char out[1 << 16];
        FILE *pf = popen(cmd, "r");
        size_t n = pf != NULL ? fread(out, 1, sizeof out - 1, pf) : 0;
        out[n] = '\0';
        int rc = pf != NULL ? pclose(pf) : -1;
        cJSON *j = cJSON_Parse(out);
        const cJSON *mem = cJSON_GetObjectItemCaseSensitive(j, "memory");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(mem, "cuda");
        const cJSON *lb = cJSON_GetObjectItemCaseSensitive(c, "load_bytes");
        const cJSON *wb = cJSON_GetObjectItemCaseSensitive(c, "weights_bytes");
        const cJSON *kv = cJSON_GetObjectItemCaseSensitive(c, "kv_bytes_default_ctx");
        const cJSON *cb = cJSON_GetObjectItemCaseSensitive(mem, "cuda_bytes");
        char msg[1024];
        nvlm_model_info i;
        probe pr;
        nvlm_status st = fit_big(tp, NULL, NVLM_WEIGHTS_AUTO, (uint64_t)(10.0 * GIB), msg,
                                 sizeof msg, &i, &pr);
        CHECK(rc == 0 && cJSON_IsNumber(lb) && cJSON_IsNumber(wb) && cJSON_IsNumber(kv) &&
                  cJSON_IsNumber(cb),
              "tp %d: info --json has memory.cuda.{load_bytes, weights_bytes, "
              "kv_bytes_default_ctx}", tp);
        if (cJSON_IsNumber(lb) && cJSON_IsNumber(wb) && cJSON_IsNumber(cb)) {
            CHECK(st == NVLM_ERR_OUT_OF_MEMORY && has_gib(msg, (uint64_t)lb->valuedouble) &&
                      (uint64_t)lb->valuedouble == i.cuda_load_bytes &&
                      (uint64_t)wb->valuedouble == i.per_rank_weight_bytes,
                  "tp %d: the check needs what info says (%.0f): %s", tp, lb->valuedouble, msg);
            CHECK(tp > 1 || cb->valuedouble == wb->valuedouble,
                  "tp 1: cuda_bytes = memory.cuda.weights_bytes");
        }
        cJSON_Delete(j);
    }
}

/* ---- the tiny model: load, refusal before upload, sessions ------------------------------ */

typedef struct prog {
    float seen[4096];
    int n;
    int cancel_at;               /* call index, -1 none */
    float cancel_from;           /* cancel at the first fraction >= this (when > 0) */
} prog;

static int on_progress(void *user, float f)
{
    prog *p = user;
    if (p->n < 4096) {
        p->seen[p->n] = f;
    }
    int i = p->n++;
    return i == p->cancel_at || (p->cancel_from > 0.0f && f >= p->cancel_from);
}

static void test_tiny(void)
{
    tu_section("fit check: tiny model load and sessions");
    nvlm_context *ctx = ctx_tp(1, NULL);
    nvlm_model *cfg = load(ctx, TINY, NVLM_LOAD_CONFIG_ONLY, NVLM_WEIGHTS_AUTO);
    if (cfg == NULL) {
        nvlm_context_free(ctx);
        return;
    }
    nvlm_model_info ci = info_of(cfg);
    nvlm_model_free(cfg);
    CHECK(ci.cuda_load_bytes > ci.cuda_bytes + NV_MEM_HEADROOM &&
              ci.cuda_default_ctx_bytes > ci.cuda_load_bytes,
          "tiny: load %llu, default context %llu", (unsigned long long)ci.cuda_load_bytes,
          (unsigned long long)ci.cuda_default_ctx_bytes);

    probe pr;
    probe_all(&pr, ci.cuda_load_bytes - 1);
    nv_mem_set_probe(ctx, fake_probe, &pr);
    prog pg = {.cancel_at = -1};
    nvlm_model_params p;
    nvlm_model_default_params(&p);
    p.progress = on_progress;
    p.progress_user = &pg;
    nvlm_model *m = NULL;
    nvlm_status st = nvlm_model_load(ctx, TINY, &p, &m);
    float top = 0.0f;
    for (int k = 0; k < pg.n; k++) {
        top = pg.seen[k] > top ? pg.seen[k] : top;
    }
    CHECK(st == NVLM_ERR_OUT_OF_MEMORY && m == NULL && pr.calls == 1,
          "one byte short: NVLM_ERR_OUT_OF_MEMORY (%d): %s", st, nvlm_last_error(ctx));
    CHECK(top <= NV_LOAD_WEIGHTS_F0,
          "refused before any weight was laid out (progress stopped at %.3f)", top);
    CHECK(strstr(nvlm_last_error(ctx), "CPU backend") == NULL,
          "no CPU-backend remedy for a context that chose its backend: %s",
          nvlm_last_error(ctx));

    /* enough: loads, with progress by bytes */
    probe_all(&pr, ci.cuda_load_bytes);
    pg = (prog){.cancel_at = -1};
    st = nvlm_model_load(ctx, TINY, &p, &m);
    CHECK(st == NVLM_OK && m != NULL, "cuda_load_bytes free: loads (%s)", nvlm_last_error(ctx));
    int above = 0;
    bool mono = pg.n > 0 && pg.seen[pg.n - 1] == 1.0f;
    for (int k = 0; k < pg.n && k < 4096; k++) {
        above += pg.seen[k] > NV_LOAD_WEIGHTS_F0 && pg.seen[k] < 1.0f;
        mono = mono && (k == 0 || pg.seen[k] >= pg.seen[k - 1]);
    }
    CHECK(mono && above >= 20, "progress 0.35 -> 1 by bytes: %d steps in between, monotonic",
          above);
    if (m == NULL) {
        nvlm_context_free(ctx);
        return;
    }
    nvlm_model_info i = info_of(m);
    CHECK(i.cuda_load_bytes == ci.cuda_load_bytes, "full and config-only info agree");

    /* the activation estimate is the session's arena of the largest pass, from the engine's
     * own stage structs */
    nv_engine *e = m->engine;
    int tiles = m->cfg.max_dynamic_patch + (m->cfg.use_thumbnail ? 1 : 0);
    size_t rows = (size_t)tiles * (size_t)m->cfg.num_image_token * (size_t)e->dec.D;
    size_t img = nv_arena_size(rows) + vit_arena_bytes(&e->vit, tiles) +
                 proj_arena_bytes(&e->proj, &e->vit, tiles);
    int batch = e->dec.max_pos < DEC_MAX_BATCH ? e->dec.max_pos : DEC_MAX_BATCH;
    size_t dec = dec_arena_bytes(&e->dec, batch, 1);
    CHECK_EQ_INT(i.cuda_activation_bytes, img > dec ? img : dec,
                 "activations = the arena of the largest pass (engine structs)");

    /* sessions: the KV cache for the whole context must fit now */
    uint64_t per_tok = i.cuda_kv_bytes_per_token;
    uint64_t fixed = i.cuda_workspace_bytes + i.cuda_activation_bytes + i.cuda_headroom_bytes;
    probe_all(&pr, fixed + 100 * per_tok);
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.kv_type = NVLM_KV_BF16;
    sp.n_ctx = 101;
    nvlm_session *s = NULL;
    st = nvlm_session_create(m, &sp, &s);
    CHECK(st == NVLM_ERR_OUT_OF_MEMORY && s == NULL &&
              strstr(nvlm_last_error(m), "at most 100 fits") != NULL &&
              strstr(nvlm_last_error(m), "n_ctx 101") != NULL,
          "a session of 101 tokens where 100 fit: refused, saying so: %s", nvlm_last_error(m));
    sp.n_ctx = 100;
    st = nvlm_session_create(m, &sp, &s);
    CHECK(st == NVLM_OK && s != NULL, "100 tokens: created (%s)", nvlm_last_error(m));
    nvlm_session_free(s);
    s = NULL;
    sp.kv_type = NVLM_KV_F32;
    st = nvlm_session_create(m, &sp, &s);
    CHECK(st == NVLM_ERR_OUT_OF_MEMORY, "an f32 cache of 100 tokens takes twice the bytes");
    nvlm_session_free(s);
    nvlm_model_free(m);

    /* cancel in the middle of the weights: stops, frees, NVLM_ERR_CANCELLED */
    probe_all(&pr, (uint64_t)(100.0 * GIB));
    pg = (prog){.cancel_at = -1, .cancel_from = 0.5f};
    m = NULL;
    st = nvlm_model_load(ctx, TINY, &p, &m);
    CHECK(st == NVLM_ERR_CANCELLED && m == NULL &&
              strstr(nvlm_last_error(ctx), "cancelled") != NULL && pg.seen[pg.n - 1] >= 0.5f &&
              pg.seen[pg.n - 1] < 1.0f,
          "cancelled at %.3f mid-upload: %s", pg.n > 0 ? pg.seen[pg.n - 1] : -1.0f,
          nvlm_last_error(ctx));
    nvlm_context_free(ctx);
}

/* ---- upload helpers --------------------------------------------------------------------- */

static void test_upload_parts(void)
{
    tu_section("upload: slab, thread split, conversion, progress");
    nv_slab s = {1024, 0};
    size_t off[4];
    CHECK(nv_slab_take(&s, 1, &off[0]) && off[0] == 0 && s.used == 256, "first piece at 0");
    CHECK(nv_slab_take(&s, 257, &off[1]) && off[1] == 256 && s.used == 768,
          "257 bytes take two units");
    CHECK(!nv_slab_take(&s, 300, &off[2]) && s.used == 768, "300 more do not fit 1024");
    CHECK(nv_slab_take(&s, 0, &off[2]) && off[2] == 768 && s.used == 1024,
          "an empty weight still takes a unit of its own");
    CHECK(!nv_slab_take(&s, 1, &off[3]) && s.used == 1024, "a full slab takes nothing");
    CHECK(nv_slab_piece(SIZE_MAX - 10) == SIZE_MAX, "overflow saturates");
    nv_dtype dt;
    size_t bytes;
    CHECK(nv_mem_weight_store(2, (int64_t[]){3, 5}, NV_BF16, &dt, &bytes) && dt == NV_BF16 &&
              bytes == 30, "a matrix is bf16");
    CHECK(nv_mem_weight_store(3, (int64_t[]){1, 1, 7}, NV_BF16, &dt, &bytes) && dt == NV_F32 &&
              bytes == 28, "(1, 1, D) is a vector: f32");
    CHECK(nv_mem_weight_store(2, (int64_t[]){3, 100}, NV_F8_E4M3, &dt, &bytes) &&
              dt == NV_F8_E4M3 && bytes == 512 + 12, "FP8: codes padded, then row scales");

    size_t b[4], c[4];
    CHECK_EQ_INT(nv_upload_split(0, 16, 16, 4, b, c), 0, "nothing to split");
    CHECK(nv_upload_split(100, 16, 1000, 4, b, c) == 1 && b[0] == 0 && c[0] == 100,
          "a small tensor goes to one thread");
    int n = nv_upload_split(1000003, 4096, 100000, 4, b, c);
    bool cover = n == 4;
    size_t at = 0;
    for (int k = 0; k < n; k++) {
        cover = cover && b[k] == at && (k == n - 1 || c[k] % 4096 == 0) && c[k] >= 100000;
        at += c[k];
    }
    CHECK(cover && at == 1000003, "4 parts, contiguous, quantum-aligned, covering");
    n = nv_upload_split(300000, 4096, 100000, 4, b, c);
    CHECK(n == 2 && c[0] >= 100000 && c[1] >= 100000 && c[0] + c[1] == 300000,
          "parts of at least min_elems: %d", n);

    float f[4] = {1.0f, 1.00390625f, 1.01171875f, -3.5f}; /* ties: down to even, up to even */
    uint16_t h[4];
    nv_convert_weight(h, NV_BF16, f, NV_F32, 4);
    CHECK(h[0] == 0x3f80 && h[1] == 0x3f80 && h[2] == 0x3f82 && h[3] == 0xc060,
          "f32 -> bf16 rounds to nearest even: %04x %04x %04x %04x", h[0], h[1], h[2], h[3]);
    float back[4];
    nv_convert_weight(back, NV_F32, h, NV_BF16, 4);
    CHECK(back[0] == 1.0f && back[3] == -3.5f, "bf16 -> f32");

    prog pg = {.cancel_at = -1};
    nv_progress pr = {on_progress, &pg, 0.15f, 1.0f, 1000000, 0, 0.15f};
    bool ok = true;
    for (int k = 0; k < 1000; k++) {
        ok = ok && nv_progress_add(&pr, 1000, NULL) == NVLM_OK;
    }
    bool steps = pg.n > 100 && pg.n <= 512 && pg.seen[pg.n - 1] == 1.0f;
    for (int k = 1; k < pg.n - 1; k++) {
        steps = steps && pg.seen[k] - pg.seen[k - 1] >= 1.0f / 512.0f - 1e-6f;
    }
    CHECK(ok && steps, "1000 adds: %d reports, each at least 1/512 on, ending at 1", pg.n);
    pg = (prog){.cancel_at = 3};
    pr = (nv_progress){on_progress, &pg, 0.0f, 1.0f, 100, 0, 0.0f};
    nvlm_status st = NVLM_OK;
    int k = 0;
    for (; k < 100 && st == NVLM_OK; k++) {
        st = nv_progress_add(&pr, 1, NULL);
    }
    CHECK(st == NVLM_ERR_CANCELLED && pg.n == 4, "the 4th report cancels (%d reports)", pg.n);
}

/* ---- the slab estimate against what the tensor-parallel backend hands its ranks ---------- */

/* A rank backend that only records the slab pieces its weights would take on a CUDA device
 * (the sizing the CUDA backend's weight_load uses). */
typedef struct rec_rank {
    uint64_t bytes;
    int loads;
} rec_rank;

static nvlm_status rec_load(nv_backend *be, const nv_tensor *src, const nv_tp_cut *cut,
                            nv_bweight *out, void *eh)
{
    (void)cut;
    rec_rank *r = be->impl;
    nv_dtype dt;
    size_t bytes;
    if (!nv_mem_weight_store(src->ndim, src->shape, src->dtype, &dt, &bytes)) {
        return nv_error(eh, NVLM_ERR_LIMIT, "overflow");
    }
    r->bytes += nv_slab_piece(bytes);
    r->loads++;
    memset(out, 0, sizeof *out);
    out->t = *src;
    out->t.dtype = dt;
    return NVLM_OK;
}

static void rec_free(nv_backend *be, nv_bweight *w)
{
    (void)be;
    memset(w, 0, sizeof *w);
}

static void rec_destroy(nv_backend *be)
{
    (void)be;
}

typedef struct rec_walk {
    const nvlm_model *m;
    nv_backend *tp;
    bool fp8;
    int missing;
    nvlm_status st;
} rec_walk;

static nvlm_status rec_tensor(void *u, const nv_layout_tensor *t)
{
    rec_walk *w = u;
    const nv_weight *cw = nv_model_weight(w->m, t->name);
    if (cw == NULL) {
        w->missing += !t->optional;
        return NVLM_OK;
    }
    nv_tensor src = cw->t;
    static float scales[1 << 16];
    if (w->fp8 && src.ndim == 2 && strstr(t->name, "_proj.weight") != NULL &&
        strncmp(t->name, "language_model.model.layers.", 28) == 0) {
        src.dtype = NV_F8_E4M3; /* sizes only: codes + row scales, as quantize-on-load */
        src.scale = scales;
    }
    nv_bweight bw;
    w->st = w->tp->ops->weight_load(w->tp, &src, &t->tp, &bw, NULL);
    if (w->st == NVLM_OK) {
        w->tp->ops->weight_free(w->tp, &bw);
    }
    return w->st;
}

static void test_slab_vs_ranks(void)
{
    tu_section("estimator: each rank's slab = the pieces the tensor-parallel backend hands it");
    nvlm_context *ctx = ctx_tp(1, NULL);
    nvlm_model *m = load(ctx, TINY, NVLM_LOAD_FULL, NVLM_WEIGHTS_AUTO);
    if (m == NULL) {
        nvlm_context_free(ctx);
        return;
    }
    static const nv_backend_ops rec_ops = {
        .name = "rec", .weight_load = rec_load, .weight_free = rec_free,
        .destroy = rec_destroy,
    };
    for (int fp8 = 0; fp8 <= 1; fp8++) {
        for (int tp = 2; tp <= 4; tp++) {
            rec_rank rr[4];
            nv_backend rb[4];
            nv_backend *ranks[4];
            memset(rr, 0, sizeof rr);
            memset(rb, 0, sizeof rb);
            for (int r = 0; r < tp; r++) {
                rb[r].ops = &rec_ops;
                rb[r].ctx = ctx;
                rb[r].impl = &rr[r];
                ranks[r] = &rb[r];
            }
            nv_backend *be = NULL;
            CHECK_OK(nv_backend_tp_create(ctx, &m->cfg, ranks, tp, NULL, NULL, &be));
            if (be == NULL) {
                continue;
            }
            rec_walk w = {m, be, fp8 != 0, 0, NVLM_OK};
            nv_layout_tensors(&m->cfg, rec_tensor, &w);
            be->ops->destroy(be);
            uint64_t want[4];
            nv_mem_plan p;
            CHECK_OK(nv_mem_estimate(&m->cfg, tp, fp8 != 0, NV_BF16, 0, true, want, &p, NULL));
            bool same = w.st == NVLM_OK && w.missing == 0;
            for (int r = 0; r < tp; r++) {
                same = same && rr[r].bytes == want[r] && rr[r].loads > 0;
            }
            CHECK(same, "tp %d%s: ranks %llu %llu .. = the estimate %llu %llu ..", tp,
                  fp8 ? " fp8" : "", (unsigned long long)rr[0].bytes,
                  (unsigned long long)rr[1].bytes, (unsigned long long)want[0],
                  (unsigned long long)want[1]);
        }
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
}

int main(void)
{
    test_upload_parts();
    test_slab_vs_ranks();
    test_big_estimate();
    test_big_fit();
    test_cli_agrees();
    test_tiny();
    return tu_done();
}
