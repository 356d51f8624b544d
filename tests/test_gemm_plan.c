/*
 * test_gemm_plan.c - the CUDA GEMM's host-side logic (src/cuda/gemm_plan.h) against a scripted
 * cuBLASLt driver, no device needed: fallback to the 2nd/3rd algorithm when the 1st is
 * rejected (at run time or by the algorithm check), every algorithm rejected -> a clean
 * NVLM_ERR_BACKEND naming the GEMM shape, a device failure is not retried, M buckets (the
 * cache does not grow per M; a bucket's algorithm is checked at a new M and the heuristic asked
 * again when none passes), a failed build leaves the cache byte for byte as it was, LRU
 * eviction bounded by GP_MAX_LIVE with every live entry still found (no probe-chain holes),
 * and the CUDA storage of convolution weights (memory_plan.h: K = 588 -> 592, zero columns).
 */
#include "cuda/gemm_plan.h"
#include "memory_plan.h"
#include "testutil.h"

#include "nvlm/nvlm.h"

#include <stdlib.h>
#include <string.h>

/* ---- the scripted driver ---------------------------------------------------------------- */

#define LIB_OK 0
#define LIB_NOT_SUPPORTED 15
#define LIB_INVALID_VALUE 7
#define LIB_EXEC_FAILED 13

typedef struct mock {
    /* script */
    int heur_ids[2][16];        /* per epilogue (0 plain, 1 bias): algorithm ids, 0-ended */
    int run_reject[64];         /* ids cublasLtMatmul rejects (NOT_SUPPORTED), 0-ended */
    int run_fail_id;            /* id whose run is a device failure */
    int check_max_m[64];        /* id -> largest M its check accepts (0: any) */
    size_t check_ws[64];        /* id -> workspace it needs */
    int create_fail;            /* plan_create fails */
    int heur_fail;              /* heuristic fails */
    int set_m_fail;             /* plan_set_m fails after changing the plan (half set) */
    int per_m_ids;              /* heuristic at M returns ids M*10+1.. (distinct per M) */
    /* record */
    int n_create, n_destroy, n_set_m, n_heur, n_check, n_run;
    int live;                   /* plans created and not destroyed */
    int last_id, last_epi, last_m;
} mock;

typedef struct mplan {
    int m;
    int id;
} mplan;

static int in_list(const int *l, int id)
{
    for (int i = 0; l[i] != 0; i++) {
        if (l[i] == id) {
            return 1;
        }
    }
    return 0;
}

static gp_res m_create(void *self, const gp_key *k, int M, void **plan, int *lib)
{
    mock *m = self;
    (void)k;
    m->n_create++;
    if (m->create_fail) {
        *lib = LIB_INVALID_VALUE;
        return GP_FAIL;
    }
    mplan *p = calloc(1, sizeof *p);
    p->m = M;
    *plan = p;
    m->live++;
    return GP_OK;
}

static void m_destroy(void *self, void *plan)
{
    mock *m = self;
    m->n_destroy++;
    m->live--;
    free(plan);
}

static gp_res m_set_m(void *self, void *plan, int M, int *lib)
{
    mock *m = self;
    (void)lib;
    m->n_set_m++;
    ((mplan *)plan)->m = M;
    if (m->set_m_fail) {
        *lib = LIB_INVALID_VALUE;
        return GP_FAIL;
    }
    return GP_OK;
}

static gp_res m_heur(void *self, void *plan, const gp_key *k, int epi_bias, gp_cand *out,
                     int max, int *n, int *lib)
{
    mock *m = self;
    (void)k;
    m->n_heur++;
    *n = 0;
    if (m->heur_fail) {
        *lib = LIB_NOT_SUPPORTED;
        return GP_REJECT;
    }
    int pm = ((mplan *)plan)->m;
    for (int i = 0; i < max; i++) {
        int id = m->per_m_ids ? (i < 2 ? pm * 10 + i + 1 : 0) : m->heur_ids[epi_bias][i];
        if (id == 0) {
            break;
        }
        memset(&out[i], 0, sizeof out[i]);
        out[i].algo[0] = (uint64_t)id;
        (*n)++;
    }
    return GP_OK;
}

static gp_res m_check(void *self, void *plan, const gp_cand *c, size_t *ws, int *lib)
{
    mock *m = self;
    m->n_check++;
    int id = (int)c->algo[0];
    int pm = ((mplan *)plan)->m;
    *ws = id < 64 ? m->check_ws[id] : 0;
    if (id < 64 && m->check_max_m[id] > 0 && pm > m->check_max_m[id]) {
        *lib = LIB_NOT_SUPPORTED;
        return GP_REJECT;
    }
    return GP_OK;
}

static gp_res m_run(void *self, void *plan, const gp_cand *c, void *call, int *lib)
{
    mock *m = self;
    (void)call;
    m->n_run++;
    int id = (int)c->algo[0];
    if (id == m->run_fail_id) {
        *lib = LIB_EXEC_FAILED;
        return GP_FAIL;
    }
    if (in_list(m->run_reject, id)) {
        *lib = LIB_NOT_SUPPORTED;
        return GP_REJECT;
    }
    m->last_id = id;
    m->last_epi = c->epi_bias;
    m->last_m = ((mplan *)plan)->m;
    return GP_OK;
}

static const char *m_name(int lib)
{
    switch (lib) {
    case LIB_OK:
        return "CUBLAS_STATUS_SUCCESS";
    case LIB_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    case LIB_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case LIB_EXEC_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    default:
        return "?";
    }
}

static gp_driver driver(mock *m)
{
    gp_driver d;
    memset(&d, 0, sizeof d);
    d.self = m;
    d.ws_bytes = 1 << 20;
    d.plan_create = m_create;
    d.plan_destroy = m_destroy;
    d.plan_set_m = m_set_m;
    d.heuristic = m_heur;
    d.check = m_check;
    d.run = m_run;
    d.lib_name = m_name;
    return d;
}

static void mock_init(mock *m)
{
    memset(m, 0, sizeof *m);
    for (int i = 0; i < 3; i++) {
        m->heur_ids[0][i] = 11 + i;   /* plain: 11, 12, 13 */
        m->heur_ids[1][i] = 21 + i;   /* bias epilogue: 21, 22, 23 */
    }
}

/* A new script for the same cache: the count of live plans carries over. */
static void rescript(mock *m)
{
    int live = m->live;
    mock_init(m);
    m->live = live;
}

static gp_key key(int n, int k, int bias)
{
    gp_key x;
    memset(&x, 0, sizeof x);
    x.n = n;
    x.k = k;
    x.bias = bias;
    x.align_a = x.align_b = x.align_d = 256;
    return x;
}

static nvlm_context *g_ctx;

/* Every live slot is found by a lookup of its own key (no hole in any probe chain), and the
 * live count matches. */
static int cache_consistent(gp_cache *c)
{
    int live = 0;
    for (unsigned i = 0; i < GP_SLOTS; i++) {
        if (c->slot[i].used) {
            live++;
            if (gp_find(c, &c->slot[i].key) != &c->slot[i]) {
                return 0;
            }
        }
    }
    return live == c->n_live;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_fallback(void)
{
    tu_section("gemm plan: the 1st and 2nd algorithms rejected at run time -> the 3rd runs");
    mock m;
    mock_init(&m);
    m.run_reject[0] = 11;
    m.run_reject[1] = 12;
    gp_driver d = driver(&m);
    gp_cache *c = calloc(1, sizeof *c);
    gp_key k = key(64, 592, 0);
    CHECK_OK(gp_gemm(c, &d, g_ctx, &k, 5, NULL));
    CHECK_EQ_INT(m.last_id, 13, "algorithm that ran");
    CHECK_EQ_INT(m.n_run, 3, "runs tried");
    /* Remembered: the next call runs the 3rd at once. */
    CHECK_OK(gp_gemm(c, &d, g_ctx, &k, 5, NULL));
    CHECK_EQ_INT(m.n_run, 4, "one run on the second call");
    CHECK_EQ_INT(m.last_id, 13, "remembered algorithm");
    CHECK_EQ_INT(m.n_heur, 1, "heuristic asked once");
    /* Another M of the bucket starts from the remembered algorithm (checked, then run). */
    CHECK_OK(gp_gemm(c, &d, g_ctx, &k, 6, NULL));
    CHECK_EQ_INT(m.n_run, 5, "one run at M 6");
    CHECK_EQ_INT(m.last_id, 13, "remembered algorithm at M 6");
    CHECK_EQ_INT(m.n_check, 1, "checked once at M 6");
    CHECK_EQ_INT(m.n_create, 1, "M 5 and M 6 share a plan");

    tu_section("gemm plan: bias epilogue rejected -> its next algorithm, then the plain GEMM");
    rescript(&m);
    m.run_reject[0] = 21;
    gp_key kb = key(64, 592, 1);
    CHECK_OK(gp_gemm(c, &d, g_ctx, &kb, 5, NULL));
    CHECK_EQ_INT(m.last_id, 22, "2nd bias-epilogue algorithm");
    CHECK_EQ_INT(m.last_epi, 1, "bias in the epilogue");
    CHECK_EQ_INT(m.n_heur, 2, "asked for both epilogues");
    rescript(&m);
    m.run_reject[0] = 21;
    m.run_reject[1] = 22;
    m.run_reject[2] = 23;
    gp_key kb2 = key(128, 592, 1);
    CHECK_OK(gp_gemm(c, &d, g_ctx, &kb2, 5, NULL));
    CHECK_EQ_INT(m.last_id, 11, "plain GEMM after every epilogue algorithm");
    CHECK_EQ_INT(m.last_epi, 0, "bias added after");

    tu_section("gemm plan: check rejects / too much workspace -> the next algorithm");
    rescript(&m);
    gp_key kc = key(96, 592, 0);
    CHECK_OK(gp_gemm(c, &d, g_ctx, &kc, 100, NULL)); /* found at M 100: 11 */
    CHECK_EQ_INT(m.last_id, 11, "first algorithm at the heuristic's M");
    CHECK_EQ_INT(m.n_check, 0, "no check at the heuristic's own M");
    m.check_max_m[11] = 100;        /* 11 cannot run above M 100 */
    m.check_ws[12] = (size_t)2 << 20; /* 12 needs more workspace than there is */
    CHECK_OK(gp_gemm(c, &d, g_ctx, &kc, 120, NULL)); /* same bucket (128) */
    CHECK_EQ_INT(m.last_id, 13, "3rd algorithm at M 120");
    CHECK_EQ_INT(m.last_m, 120, "layouts set to the real M");
    CHECK_EQ_INT(m.n_heur, 1, "no new heuristic while a candidate passes");

    tu_section("gemm plan: layouts that failed to change are set again at the next call");
    m.set_m_fail = 1;
    CHECK_EQ_INT(gp_gemm(c, &d, g_ctx, &kc, 110, NULL), NVLM_ERR_BACKEND, "set_m failure");
    CHECK(strstr(nvlm_last_error(g_ctx), "layouts for bf16 GEMM M 110 N 96 K 592") != NULL,
          "message: %s", nvlm_last_error(g_ctx));
    m.set_m_fail = 0;
    CHECK_OK(gp_gemm(c, &d, g_ctx, &kc, 120, NULL));
    CHECK_EQ_INT(m.last_m, 120, "the GEMM ran with layouts for its own M");

    tu_section("gemm plan: operand types are part of the key");
    gp_key kt = kc;
    kt.type = 1;
    int created = m.n_create;
    CHECK_OK(gp_gemm(c, &d, g_ctx, &kt, 120, NULL));
    CHECK_EQ_INT(m.n_create, created + 1, "another plan for other operand types");
    gp_clear(c, &d);
    CHECK_EQ_INT(m.live, 0, "gp_clear destroys every plan");
    free(c);
}

static void test_all_rejected(void)
{
    tu_section("gemm plan: every algorithm rejected -> NVLM_ERR_BACKEND naming the shape");
    mock m;
    mock_init(&m);
    int ids[] = {11, 12, 13, 0};
    memcpy(m.run_reject, ids, sizeof ids);
    gp_driver d = driver(&m);
    gp_cache *c = calloc(1, sizeof *c);
    gp_key k = key(3200, 592, 0);
    CHECK_EQ_INT(gp_gemm(c, &d, g_ctx, &k, 1025, NULL), NVLM_ERR_BACKEND, "status");
    const char *msg = nvlm_last_error(g_ctx);
    CHECK(strstr(msg, "M 1025 N 3200 K 592") != NULL, "message names the shape: %s", msg);
    CHECK(strstr(msg, "rejected all 3") != NULL, "message says all were rejected: %s", msg);
    CHECK(strstr(msg, "NOT_SUPPORTED") != NULL, "message has the last status: %s", msg);
    CHECK_EQ_INT(m.n_run, 3, "each algorithm tried once");
    /* The same call again fails at once with the same text (the rejections are remembered). */
    CHECK_EQ_INT(gp_gemm(c, &d, g_ctx, &k, 1025, NULL), NVLM_ERR_BACKEND, "status again");
    CHECK_EQ_INT(m.n_run, 3, "no retry of known rejections");
    CHECK(strstr(nvlm_last_error(g_ctx), "M 1025 N 3200 K 592") != NULL, "message again");

    tu_section("gemm plan: no algorithm at all -> NVLM_ERR_BACKEND naming the shape");
    rescript(&m);
    m.heur_fail = 1;
    gp_key k2 = key(48, 20, 1);
    CHECK_EQ_INT(gp_gemm(c, &d, g_ctx, &k2, 7, NULL), NVLM_ERR_BACKEND, "status");
    msg = nvlm_last_error(g_ctx);
    CHECK(strstr(msg, "no algorithm for bf16 GEMM M 7 N 48 K 20 +bias") != NULL, "message: %s",
          msg);

    tu_section("gemm plan: a device failure in the run is not retried with another algorithm");
    rescript(&m);
    m.run_fail_id = 11;
    gp_key k3 = key(64, 64, 0);
    CHECK_EQ_INT(gp_gemm(c, &d, g_ctx, &k3, 2, NULL), NVLM_ERR_BACKEND, "status");
    CHECK_EQ_INT(m.n_run, 1, "one run");
    msg = nvlm_last_error(g_ctx);
    CHECK(strstr(msg, "EXECUTION_FAILED") != NULL && strstr(msg, "M 2 N 64 K 64") != NULL,
          "message: %s", msg);
    gp_clear(c, &d);
    free(c);
}

static void test_buckets(void)
{
    tu_section("gemm plan: M buckets");
    const int ms[] = {0, 1, 2, 3, 7, 8, 9, 16, 17, 2048, 2049, 4096, 13325, 1 << 30,
                      (1 << 30) + 1, INT32_MAX};
    const int want[] = {1, 1, 2, 4, 8, 8, 16, 16, 32, 2048, 4096, 4096, 16384, 1 << 30,
                        INT32_MAX, INT32_MAX};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        CHECK(gp_bucket(ms[i]) == want[i], "bucket(%d) = %d, want %d", ms[i], gp_bucket(ms[i]),
              want[i]);
    }

    tu_section("gemm plan: every prompt length 1..2048 builds one plan per bucket, not per M");
    mock m;
    mock_init(&m);
    gp_driver d = driver(&m);
    gp_cache *c = calloc(1, sizeof *c);
    gp_key k = key(8192, 8192, 0);
    for (int M = 1; M <= 2048; M++) {
        nvlm_status st = gp_gemm(c, &d, g_ctx, &k, M, NULL);
        if (st != NVLM_OK) {
            CHECK_OK(st);
            break;
        }
        if (m.last_m != M) {
            CHECK_EQ_INT(m.last_m, M, "GEMM ran with the real M");
            break;
        }
    }
    CHECK_EQ_INT(c->n_live, 12, "plans (buckets 1, 2, 4, ..., 2048)");
    CHECK_EQ_INT(m.n_create, 12, "plans created");
    CHECK_EQ_INT(m.n_heur, 12, "heuristic calls");
    /* Decode (M = 1) after prefill: its own plan, no layout change, no check. */
    int sets = m.n_set_m;
    int checks = m.n_check;
    for (int i = 0; i < 10; i++) {
        CHECK_OK(gp_gemm(c, &d, g_ctx, &k, 1, NULL));
    }
    CHECK_EQ_INT(m.n_set_m, sets, "decode steps change no layout");
    CHECK_EQ_INT(m.n_check, checks, "decode steps check nothing");
    CHECK_EQ_INT(c->n_live, 12, "no plan added by decode");
    CHECK(cache_consistent(c), "every entry found");

    tu_section("gemm plan: no candidate passes at a new M of the bucket -> heuristic again");
    rescript(&m);
    m.per_m_ids = 1;                 /* at M: ids M*10+1, M*10+2 */
    gp_key k2 = key(4096, 4096, 0);
    CHECK_OK(gp_gemm(c, &d, g_ctx, &k2, 5, NULL));
    CHECK_EQ_INT(m.last_id, 51, "found at M 5");
    m.check_max_m[51] = 5;
    m.check_max_m[52] = 5;
    CHECK_OK(gp_gemm(c, &d, g_ctx, &k2, 6, NULL));
    CHECK_EQ_INT(m.n_heur, 2, "heuristic asked again at M 6");
    CHECK_EQ_INT(m.last_id, 61, "an algorithm found at M 6");
    CHECK_EQ_INT(m.n_create, 1, "still one plan for the bucket");
    gp_clear(c, &d);
    CHECK_EQ_INT(m.live, 0, "no plan leaked");
    free(c);
}

static void test_failed_build(void)
{
    tu_section("gemm plan: a failed build leaves the cache exactly as it was (full cache too)");
    mock m;
    mock_init(&m);
    gp_driver d = driver(&m);
    gp_cache *c = calloc(1, sizeof *c);
    gp_cache *before = malloc(sizeof *before);
    for (int i = 0; i < GP_MAX_LIVE; i++) {
        gp_key k = key(64 + i, 128, 0);
        CHECK_OK(gp_gemm(c, &d, g_ctx, &k, 3, NULL));
    }
    CHECK_EQ_INT(c->n_live, GP_MAX_LIVE, "cache full");
    memcpy(before, c, sizeof *c);
    int live = m.live;

    m.create_fail = 1;
    gp_key k = key(5000, 128, 0);
    CHECK_EQ_INT(gp_gemm(c, &d, g_ctx, &k, 3, NULL), NVLM_ERR_BACKEND, "descriptor failure");
    CHECK(strstr(nvlm_last_error(g_ctx), "M 3 N 5000 K 128") != NULL, "message: %s",
          nvlm_last_error(g_ctx));
    CHECK(memcmp(before, c, sizeof *c) == 0, "cache unchanged after a descriptor failure");
    CHECK_EQ_INT(m.live, live, "no plan leaked");

    m.create_fail = 0;
    m.heur_fail = 1;
    CHECK_EQ_INT(gp_gemm(c, &d, g_ctx, &k, 3, NULL), NVLM_ERR_BACKEND, "heuristic failure");
    CHECK(memcmp(before, c, sizeof *c) == 0, "cache unchanged after a heuristic failure");
    CHECK_EQ_INT(m.live, live, "the half-built plan destroyed");

    /* Every old entry still answers without a rebuild. */
    m.heur_fail = 0;
    int created = m.n_create;
    for (int i = 0; i < GP_MAX_LIVE; i++) {
        gp_key kk = key(64 + i, 128, 0);
        CHECK_OK(gp_gemm(c, &d, g_ctx, &kk, 3, NULL));
    }
    CHECK_EQ_INT(m.n_create, created, "no entry lost");
    gp_clear(c, &d);
    free(before);
    free(c);
}

static void test_eviction(void)
{
    tu_section("gemm plan: eviction keeps at most GP_MAX_LIVE plans, LRU first, no chain hole");
    mock m;
    mock_init(&m);
    gp_driver d = driver(&m);
    gp_cache *c = calloc(1, sizeof *c);
    gp_key hot = key(7, 7, 0);
    uint64_t r = 0x9e3779b97f4a7c15ull;
    int max_live = 0;
    int consistent = 1;
    for (int i = 0; i < 2000; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        gp_key k = key(16 + (int)(r % 300), 64 + (int)((r >> 20) % 3) * 8, (int)((r >> 30) & 1));
        nvlm_status st = gp_gemm(c, &d, g_ctx, &k, 1 + (int)((r >> 40) % 4096), NULL);
        if (st != NVLM_OK) {
            CHECK_OK(st);
            break;
        }
        st = gp_gemm(c, &d, g_ctx, &hot, 1, NULL);
        if (st != NVLM_OK) {
            CHECK_OK(st);
            break;
        }
        max_live = c->n_live > max_live ? c->n_live : max_live;
        if (!cache_consistent(c)) {
            consistent = 0;
        }
    }
    CHECK_EQ_INT(max_live, GP_MAX_LIVE, "live plans bounded by GP_MAX_LIVE");
    CHECK(consistent, "after every eviction each live entry is found by its key");
    CHECK_EQ_INT(m.live, c->n_live, "evicted plans destroyed");
    int created = m.n_create;
    CHECK_OK(gp_gemm(c, &d, g_ctx, &hot, 1, NULL));
    CHECK_EQ_INT(m.n_create, created, "the entry used every time was never evicted");
    gp_clear(c, &d);
    CHECK_EQ_INT(m.live, 0, "no plan leaked");
    free(c);
}

static void test_pad(void)
{
    tu_section("weight storage: convolution rows padded to NV_MEM_K_ALIGN, other matrices not");
    CHECK_EQ_INT(nv_mem_weight_ld(4, 588), 592, "patch embedding 3 x 14 x 14");
    CHECK_EQ_INT(nv_mem_weight_ld(4, 592), 592, "aligned K kept");
    CHECK_EQ_INT(nv_mem_weight_ld(4, 1), 8, "K 1");
    CHECK_EQ_INT(nv_mem_weight_ld(2, 588), 588, "2-D matrix kept (rows read by gathers)");
    CHECK_EQ_INT(nv_mem_weight_ld(3, 20), 20, "3-D table kept");
    /* the estimator counts the padded rows (the slab piece the upload takes) */
    const int64_t conv[4] = {3200, 3, 14, 14};
    const int64_t pos[3] = {1, 1025, 3200};
    nv_dtype dt;
    size_t bytes = 0;
    CHECK(nv_mem_weight_store(4, conv, NV_BF16, &dt, &bytes) && dt == NV_BF16 &&
              bytes == (size_t)3200 * 592 * 2,
          "patch embedding stored as 3200 x 592 bf16: %zu bytes", bytes);
    CHECK(nv_mem_weight_store(3, pos, NV_F32, &dt, &bytes) && dt == NV_BF16 &&
              bytes == (size_t)1025 * 3200 * 2,
          "position table dense: %zu bytes", bytes);
    uint16_t src[2 * 3] = {1, 2, 3, 4, 5, 6};
    uint16_t dst[2 * 8];
    memset(dst, 0xff, sizeof dst);
    nv_pad_rows(dst, src, 2, 3, 8, sizeof(uint16_t));
    const uint16_t want[16] = {1, 2, 3, 0, 0, 0, 0, 0, 4, 5, 6, 0, 0, 0, 0, 0};
    CHECK(memcmp(dst, want, sizeof want) == 0, "rows copied, padding zeroed");
}

int main(void)
{
    CHECK_OK(nvlm_context_create(NULL, &g_ctx));
    test_fallback();
    test_all_rejected();
    test_buckets();
    test_failed_build();
    test_eviction();
    test_pad();
    nvlm_context_free(g_ctx);
    return tu_done();
}
