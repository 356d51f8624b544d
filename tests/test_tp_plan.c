/*
 * test_tp_plan.c - the tensor-parallel sharding plan (src/tp/plan.c) as pure geometry: range
 * splitting, kv heads per rank, and every layout tensor's per-rank slices checked element by
 * element (each element of a divided tensor held by exactly one rank, or by at least one for the
 * kv projections) on the tiny fixture's config and on variants with other head counts; the real
 * NVLM-D-72B config's per-rank weight bytes.
 */
#include "testutil.h"
#include "tp/plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool load_cfg(const char *path, nv_config *cfg, nvlm_context *ctx)
{
    size_t len = 0;
    char *json = tu_read_file(path, &len);
    memset(cfg, 0, sizeof *cfg);
    bool ok = json != NULL && nv_config_parse(cfg, json, len, ctx) == NVLM_OK;
    free(json);
    CHECK(ok, "%s parses", path);
    return ok;
}

static void test_split(void)
{
    tu_section("tp_split");
    int bad = 0;
    for (int64_t n = 0; n <= 300; n++) {
        for (int parts = 1; parts <= 17; parts++) {
            int64_t next = 0;
            int64_t prev_count = INT64_MAX;
            int64_t lo = n / parts;
            for (int r = 0; r < parts; r++) {
                tp_range g = tp_split(n, parts, r);
                /* contiguous, in order, sizes n/parts or n/parts + 1, larger ones first */
                bad += g.begin != next || g.count < lo || g.count > lo + 1 ||
                       g.count > prev_count;
                next = g.begin + g.count;
                prev_count = g.count;
            }
            bad += next != n;
        }
    }
    CHECK(bad == 0, "0..300 units over 1..17 parts: contiguous, near-equal, first ranks larger "
                    "(%d bad)", bad);
    tp_range r = tp_split(11, 3, 2);
    CHECK(r.begin == 8 && r.count == 3, "11 over 3, rank 2 = [8, 11) (got %lld + %lld)",
          (long long)r.begin, (long long)r.count);
    r = tp_split(11, 4, 3);
    CHECK(r.begin == 9 && r.count == 2, "11 over 4, rank 3 = [9, 11)");
}

/* kv heads of each rank: exactly the set its query heads use, found head by head */
static int check_kv(const tp_plan *p, int n_heads, int n_kv)
{
    int bad = 0;
    int g = n_heads / n_kv;
    for (int r = 0; r < p->size; r++) {
        tp_range q = tp_plan_range(p, r, NV_TP_LLM_HEADS);
        tp_range kv = tp_plan_range(p, r, NV_TP_LLM_KV_HEADS);
        for (int k = 0; k < n_kv; k++) {
            bool used = false;
            for (int64_t h = q.begin; h < q.begin + q.count; h++) {
                used = used || h / g == k;
            }
            bool held = k >= kv.begin && k < kv.begin + kv.count;
            bad += used != held;
        }
    }
    return bad;
}

/* Marks every element each rank's slice holds; divided tensors must be covered exactly once
 * (kv projections at least once), whole ones once per rank. Returns the number of bad tensors. */
typedef struct cover {
    const tp_plan *p;
    int bad;
    int n;
} cover;

static nvlm_status cover_fn(void *u, const nv_layout_tensor *t)
{
    cover *c = u;
    int64_t ne = 1;
    for (int d = 0; d < t->ndim; d++) {
        ne *= t->shape[d];
    }
    int64_t rows = t->shape[0];
    int64_t cols = ne / rows;
    unsigned char *hit = calloc((size_t)ne, 1);
    if (hit == NULL) {
        c->bad++;
        return NVLM_OK;
    }
    int64_t sum = 0;
    for (int r = 0; r < c->p->size; r++) {
        tp_slice s = tp_plan_slice(c->p, r, &t->tp, t->ndim, t->shape);
        int64_t got = 0;
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t j = 0; j < cols; j++) {
                bool in;
                if (s.whole) {
                    in = true;
                } else if (s.cols) {
                    in = j >= s.begin && j < s.begin + s.count;
                } else {
                    int64_t within = i % s.block_rows;
                    in = within >= s.begin && within < s.begin + s.count;
                }
                if (in) {
                    hit[i * cols + j]++;
                    got++;
                }
            }
        }
        c->bad += got != s.nelem;
        sum += got;
    }
    for (int64_t i = 0; i < ne; i++) {
        bool ok;
        if (t->tp.part == NV_TP_WHOLE) {
            ok = hit[i] == c->p->size;
        } else if (t->tp.part == NV_TP_LLM_KV_HEADS) {
            ok = hit[i] >= 1;
        } else {
            ok = hit[i] == 1;
        }
        if (!ok) {
            c->bad++;
            break;
        }
    }
    free(hit);
    c->n++;
    return NVLM_OK;
}

static void check_config(nv_config *cfg, const char *name, const int *sizes, int n_sizes)
{
    for (int i = 0; i < n_sizes; i++) {
        tp_plan p;
        nvlm_status st = tp_plan_init(&p, cfg, sizes[i], NULL);
        CHECK_EQ_INT(st, NVLM_OK, "plan");
        if (st != NVLM_OK) {
            continue;
        }
        int bad = check_kv(&p, cfg->llm.num_heads, cfg->llm.num_kv_heads);
        CHECK(bad == 0, "%s TP %d: each rank holds exactly the kv heads of its query heads",
              name, sizes[i]);
        cover c = {&p, 0, 0};
        CHECK_OK(nv_layout_tensors(cfg, cover_fn, &c));
        CHECK(c.bad == 0 && c.n > 0,
              "%s TP %d: %d tensors' slices cover each element once (%d bad)", name, sizes[i],
              c.n, c.bad);
    }
}

static void test_tiny(nvlm_context *ctx)
{
    tu_section("slices: tiny fixture and variants");
    nv_config cfg;
    if (!load_cfg("tests/data/tiny-nvlm-d/config.json", &cfg, ctx)) {
        return;
    }
    /* 4 query / 2 kv heads; ViT 4 real + 7 dummy = 11 padded heads split unevenly */
    check_config(&cfg, "tiny", (const int[]){1, 2, 3, 4}, 4);
    tp_plan p;
    CHECK_OK(tp_plan_init(&p, &cfg, 4, NULL));
    tp_range v = tp_plan_range(&p, 3, NV_TP_VIT_HEADS);
    CHECK(v.begin == 9 && v.count == 2, "tiny TP 4: rank 3 owns padded ViT heads 9, 10");
    CHECK_EQ_INT(tp_plan_max_count(&p, NV_TP_VIT_HEADS), 3, "tiny TP 4: largest ViT share");
    tp_range kv = tp_plan_range(&p, 1, NV_TP_LLM_KV_HEADS);
    CHECK(kv.begin == 0 && kv.count == 1, "tiny TP 4: rank 1 (query head 1) holds kv head 0");
    CHECK_OK(tp_plan_init(&p, &cfg, 3, NULL));
    kv = tp_plan_range(&p, 1, NV_TP_LLM_KV_HEADS);
    CHECK(kv.begin == 1 && kv.count == 1, "tiny TP 3: rank 1 (query head 2) holds kv head 1");
    kv = tp_plan_range(&p, 0, NV_TP_LLM_KV_HEADS);
    CHECK(kv.begin == 0 && kv.count == 1, "tiny TP 3: rank 0 (query heads 0, 1) holds kv 0");

    /* 16 query / 8 kv heads, ViT 6 real + 2 dummy heads, at TP 2/4/8 (and the odd sizes) */
    nv_config c2 = cfg;
    c2.llm.num_heads = 16;
    c2.llm.num_kv_heads = 8;
    c2.vision.num_heads = 6;
    c2.vision.num_dummy_heads = 2;
    check_config(&c2, "16q/8kv", (const int[]){2, 3, 4, 5, 8, 16}, 6);
    /* 12 query heads over 3 kv heads at TP 5: ranks straddle groups and hold two kv heads */
    nv_config c3 = cfg;
    c3.llm.num_heads = 12;
    c3.llm.num_kv_heads = 3;
    check_config(&c3, "12q/3kv", (const int[]){5, 7, 12}, 3);
    CHECK_OK(tp_plan_init(&p, &c3, 5, NULL));
    kv = tp_plan_range(&p, 1, NV_TP_LLM_KV_HEADS);
    CHECK(kv.begin == 0 && kv.count == 2, "12q/3kv TP 5: rank 1 (heads 3..5) holds kv 0 and 1");

    tu_section("bad sizes");
    CHECK_EQ_INT(tp_plan_init(&p, &cfg, 0, NULL), NVLM_ERR_INVALID_ARGUMENT, "TP 0");
    CHECK_EQ_INT(tp_plan_init(&p, &cfg, 5, NULL), NVLM_ERR_INVALID_ARGUMENT,
                 "TP 5 > 4 query heads");
    nv_config c4 = cfg;
    c4.llm.num_kv_heads = 3;
    CHECK_EQ_INT(tp_plan_init(&p, &c4, 2, NULL), NVLM_ERR_UNSUPPORTED, "4 heads over 3 kv");
}

static void test_real(nvlm_context *ctx)
{
    tu_section("NVLM-D-72B: per-rank weight bytes (bf16)");
    nv_config cfg;
    if (!load_cfg("tests/data/nvlm-d-72b/config.json", &cfg, ctx)) {
        return;
    }
    uint64_t total = nv_layout_params(&cfg) * 2;
    uint64_t prev = UINT64_MAX;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    for (int tp = 1; tp <= 64; tp *= 2) {
        tp_plan p;
        CHECK_OK(tp_plan_init(&p, &cfg, tp, NULL));
        uint64_t b = 0;
        CHECK_OK(tp_plan_max_rank_bytes(&p, &cfg, 2, false, &b));
        printf("# TP %d: %.2f GiB per rank\n", tp, (double)b / gib);
        CHECK(b >= total / (uint64_t)tp && b < prev, "TP %d: at least 1/%d of the weights, "
              "fewer than at TP %d", tp, tp, tp / 2);
        if (tp == 1) {
            CHECK(b == total, "TP 1 holds every weight (%llu bytes)", (unsigned long long)b);
        }
        if (tp == 4) {
            CHECK((double)b < 50.0 * gib, "TP 4 under 50 GiB per rank");
        }
        if (tp == 8) {
            tp_range kv = tp_plan_range(&p, 7, NV_TP_LLM_KV_HEADS);
            CHECK(kv.begin == 7 && kv.count == 1, "TP 8: one kv head per rank");
        }
        prev = b;
    }
    tp_plan p;
    CHECK_EQ_INT(tp_plan_init(&p, &cfg, 65, NULL), NVLM_ERR_INVALID_ARGUMENT, "TP 65 > 64");
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    test_split();
    test_tiny(ctx);
    test_real(ctx);
    nvlm_context_free(ctx);
    return tu_done();
}
