/*
 * test_dec_step.c - decode passes as backend steps (dec_step.c, backend.h step_begin /
 * step_end) on the tiny model, through a mock backend: the CPU ops plus step ops that record
 * what the pipeline does. Checks that every decode token is one step with the right key,
 * token and position; that inside a step the per-token arguments of rows_copy, rope,
 * store_rows and attention are the step's values (what the CUDA backend reads from its device
 * block instead); that nothing is allocated, freed or uploaded inside a step and the KV
 * cache is reserved once for n_ctx (kv_reserve_all) and never moves; that a step the backend
 * refuses or asks to redo gives the same logits; that the logits and generated tokens
 * are bit-identical to the plain CPU backend; and that nvlm_session_logits copies logits a
 * device sampler left on the device inside thread_enter / thread_leave, in and outside the
 * token callback.
 */
#include "eng_golden.h"

#define N_CTX 1024 /* more than the on-demand growth first reserves (256) */
#define N_STEPS 8

static const nv_backend_ops *cpu;
static nv_backend_ops mock;

static struct {
    bool in_step;
    int begins, ends;
    int redo_at;           /* step_end of this step (0-based) asks for a redo; -1 never */
    bool unsupported;      /* step_begin answers NVLM_ERR_UNSUPPORTED */
    int bad_steps;         /* step descriptions that were not the expected key */
    int64_t want_rows;     /* the key's expected kv_rows */
    int64_t pos;
    int32_t tok;
    int step_alloc, step_free, step_upload, step_download, step_sync;
    int alloc_kv;          /* alloc_kv calls in all */
    int mismatch;          /* per-token arguments that differ from the step */
    int per_token_ops;     /* per-token ops seen inside steps */
    void *dl_host;         /* the last download inside a step */
    size_t dl_bytes;
    int depth;             /* thread_enter calls not yet left */
    int unentered_dl;      /* downloads outside any thread_enter (the app's device unsaved) */
    int bad_leave;         /* thread_leave given another value than thread_enter returned */
} M;

#define M_SAVED 7 /* what the mock's thread_enter returns */

static nvlm_status m_alloc(nv_exec *ex, size_t bytes, void **out)
{
    M.step_alloc += M.in_step;
    return cpu->alloc(ex, bytes, out);
}

static nvlm_status m_alloc_kv(nv_exec *ex, int64_t rows, int kv_heads, int head_dim,
                              nv_dtype dtype, void **out)
{
    M.step_alloc += M.in_step;
    M.alloc_kv++;
    return cpu->alloc_kv(ex, rows, kv_heads, head_dim, dtype, out);
}

static void m_free(nv_exec *ex, void *ptr)
{
    M.step_free += M.in_step;
    cpu->free(ex, ptr);
}

static nvlm_status m_upload(nv_exec *ex, void *dst, const void *host, size_t bytes)
{
    M.step_upload += M.in_step;
    return cpu->upload(ex, dst, host, bytes);
}

static int m_thread_enter(nv_backend *be)
{
    (void)be;
    M.depth++;
    return M_SAVED;
}

static void m_thread_leave(nv_backend *be, int saved)
{
    (void)be;
    M.depth--;
    M.bad_leave += saved != M_SAVED;
}

/* Greedy over the usable rows (the session's device sampling; logits are host memory here). */
static nvlm_status m_sample(nv_exec *ex, const nv_sample_args *a, int32_t *token, int *outcome)
{
    (void)ex;
    int b = -1;
    for (int i = 0; i < a->n; i++) {
        b = a->usable[i] && (b < 0 || a->logits[i] > a->logits[b]) ? i : b;
    }
    *token = b < 0 ? 0 : b;
    *outcome = b < 0 ? NV_SAMPLE_NONFINITE : NV_SAMPLE_OK;
    return NVLM_OK;
}

static nvlm_status m_download(nv_exec *ex, void *host, const void *src, size_t bytes)
{
    M.unentered_dl += M.depth == 0;
    M.step_download += M.in_step;
    if (M.in_step) {
        M.dl_host = host;
        M.dl_bytes = bytes;
    }
    return cpu->download(ex, host, src, bytes);
}

static nvlm_status m_sync(nv_exec *ex)
{
    M.step_sync += M.in_step;
    return cpu->sync(ex);
}

static nvlm_status m_rope(nv_exec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
                          int64_t pos0, double theta)
{
    if (M.in_step) {
        M.per_token_ops++;
        M.mismatch += !(rows == 1 && pos0 == M.pos);
    }
    return cpu->rope(ex, x, ld, rows, n_heads, head_dim, pos0, theta);
}

static nvlm_status m_store_rows(nv_exec *ex, void *dst, nv_dtype type, int64_t row0,
                                const float *src, int lds, size_t n, int cols)
{
    if (M.in_step) {
        M.per_token_ops++;
        M.mismatch += !(n == 1 && row0 == M.pos);
    }
    return cpu->store_rows(ex, dst, type, row0, src, lds, n, cols);
}

/* The fused RoPE + KV append: a rotation and an append, both at the step's position. */
static nvlm_status m_rope_store(nv_exec *ex, void *dst, nv_dtype type, int64_t row0, float *src,
                                int lds, int rows, int n_heads, int head_dim, double theta)
{
    if (M.in_step) {
        M.per_token_ops += 2;
        M.mismatch += !(rows == 1 && row0 == M.pos);
    }
    return cpu->rope_store(ex, dst, type, row0, src, lds, rows, n_heads, head_dim, theta);
}

static nvlm_status m_attention(nv_exec *ex, float *out, int ldo, const float *q, int ldq,
                               const void *k, const void *v, int ldkv, nv_dtype kv_type,
                               int batch, int n_q, int n_kv, int n_heads, int n_kv_heads,
                               int head_dim, float scale, int64_t causal_pos0, nv_tp_part heads)
{
    if (M.in_step) {
        M.per_token_ops++;
        M.mismatch += !(batch == 1 && n_q == 1 && causal_pos0 == M.pos && n_kv == M.pos + 1);
    }
    return cpu->attention(ex, out, ldo, q, ldq, k, v, ldkv, kv_type, batch, n_q, n_kv, n_heads,
                          n_kv_heads, head_dim, scale, causal_pos0, heads);
}

static nvlm_status m_rows_copy(nv_exec *ex, float *dst, const int32_t *dst_idx, const void *src,
                               nv_dtype src_type, const int32_t *src_idx, size_t n, int cols)
{
    if (M.in_step && src_idx != NULL) {
        M.per_token_ops++;
        M.mismatch += !(dst_idx == NULL && n == 1 && src_idx[0] == M.tok);
    }
    return cpu->rows_copy(ex, dst, dst_idx, src, src_type, src_idx, n, cols);
}

static nvlm_status m_step_begin(nv_exec *ex, const nv_step *s)
{
    (void)ex;
    M.begins++;
    nv_step_block b;
    bool ok = s->key.batch_bucket == 1 && s->key.n_tokens == 1 && s->key.paged == 0 &&
              s->key.kv_rows == M.want_rows && s->n_seq == 1 && nv_step_block_fill(s, &b);
    M.bad_steps += !ok;
    if (M.unsupported) {
        return NVLM_ERR_UNSUPPORTED;
    }
    M.pos = s->pos0[0];
    M.tok = s->tokens[0];
    M.in_step = true;
    return NVLM_OK;
}

static nvlm_status m_step_end(nv_exec *ex, bool ok, bool *redo)
{
    (void)ex;
    (void)ok;
    M.in_step = false;
    *redo = M.ends == M.redo_at;
    M.ends++;
    if (*redo && M.dl_host != NULL) {
        /* a backend asking for a redo has not run the pass: its downloads hold nothing */
        memset(M.dl_host, 0xff, M.dl_bytes);
    }
    return NVLM_OK;
}

static void mock_init(void)
{
    mock = *cpu;
    mock.name = "mock-steps";
    mock.alloc = m_alloc;
    mock.alloc_kv = m_alloc_kv;
    mock.free = m_free;
    mock.upload = m_upload;
    mock.download = m_download;
    mock.sync = m_sync;
    mock.rope = m_rope;
    mock.store_rows = m_store_rows;
    mock.rope_store = cpu->rope_store != NULL ? m_rope_store : NULL;
    mock.attention = m_attention;
    mock.rows_copy = m_rows_copy;
    mock.step_begin = m_step_begin;
    mock.step_end = m_step_end;
    mock.thread_enter = m_thread_enter;
    mock.thread_leave = m_thread_leave;
}

static void mock_reset(void)
{
    memset(&M, 0, sizeof M);
    M.redo_at = -1;
    M.want_rows = N_CTX;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++) {
        b = x[i] > x[b] ? i : b;
    }
    return b;
}

/* Prefill ids then N_STEPS greedy decode passes through dec_decode on be; logits of the
 * prefill and of every step into out ((N_STEPS + 1) x vocab), tokens into toks. When forced
 * is given the decode feeds those tokens instead (teacher forcing). */
static nvlm_status run(nv_backend *be, nv_engine *e, void *eh, const int32_t *ids, size_t n,
                       const int32_t *forced, float *out, int32_t *toks)
{
    const dec_weights *w = &e->dec;
    nv_exec *ex = NULL;
    NVLM_TRY(be->ops->exec_create(be, 2, eh, &ex));
    dec_kv kv;
    nv_arena ar = {.ex = ex};
    nvlm_status st = dec_kv_init(ex, w, &kv, NV_F32, N_CTX);
    if (st == NVLM_OK) {
        CHECK_EQ_INT(kv.cap, be->kv_reserve_all ? N_CTX : 0, "KV rows after init");
    }
    if (st == NVLM_OK) {
        st = dec_kv_reserve(ex, &kv, (int64_t)n);
    }
    if (st == NVLM_OK) {
        st = nv_arena_reserve(&ar, dec_arena_bytes(w, (int)n, 1));
    }
    if (st == NVLM_OK) {
        st = dec_decode(ex, &ar, w, &kv, ids, (int)n, NULL, NULL, NULL, 0, 1, out, NULL);
    }
    void *k0 = st == NVLM_OK ? kv.k[0] : NULL;
    for (int i = 0; i < N_STEPS && st == NVLM_OK; i++) {
        int32_t t = forced != NULL ? forced[i] : argmax(out + (size_t)i * w->vocab, w->vocab);
        toks[i] = t;
        st = dec_kv_reserve(ex, &kv, kv.n + 1);
        nv_arena_rewind(&ar, 0);
        if (st == NVLM_OK) {
            st = dec_decode(ex, &ar, w, &kv, &t, 1, NULL, NULL, NULL, 0, 1,
                            out + (size_t)(i + 1) * w->vocab, NULL);
        }
    }
    if (st == NVLM_OK) {
        CHECK_EQ_INT(kv.n, (int64_t)n + N_STEPS, "KV rows filled");
        CHECK(kv.k[0] == k0, "the KV cache did not move during the decode");
    }
    nv_arena_release(&ar);
    dec_kv_free(ex, &kv);
    be->ops->exec_free(ex);
    return st;
}

static void test_decoder(nvlm_model *m, nv_engine *e)
{
    nv_st_file *f = eg_open(m->h.ctx, "case3_text_only");
    size_t n = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n);
    if (ids == NULL) {
        nv_st_close(f);
        return;
    }
    size_t vocab = (size_t)e->dec.vocab;
    size_t total = (N_STEPS + 1) * vocab;
    float *want = calloc(total, sizeof(float));
    float *got = calloc(total, sizeof(float));
    int32_t toks[N_STEPS], toks2[N_STEPS];

    tu_section("plain CPU backend (no step ops): the reference");
    CHECK_OK(run(e->be, e, m, ids, n, NULL, want, toks));

    nv_backend mb = *e->be;
    mb.ops = &mock;
    mb.kv_reserve_all = true;

    tu_section("steps through a mock backend: one step per token, nothing allocated");
    mock_reset();
    CHECK_OK(run(&mb, e, m, ids, n, NULL, got, toks2));
    CHECK(memcmp(got, want, total * sizeof(float)) == 0, "logits bit-identical to the CPU");
    CHECK(memcmp(toks, toks2, sizeof toks) == 0, "same greedy tokens");
    CHECK_EQ_INT(M.begins, N_STEPS, "step_begin per decode token (none for the prefill)");
    CHECK_EQ_INT(M.ends, N_STEPS, "step_end per step");
    CHECK_EQ_INT(M.bad_steps, 0, "steps describe key (1 sequence, 1 token, n_ctx rows)");
    CHECK_EQ_INT(M.alloc_kv, 2 * e->dec.n_layers, "KV allocated once, at init, for n_ctx");
    CHECK_EQ_INT(M.step_alloc + M.step_free + M.step_upload, 0,
                 "no alloc, free or upload inside a step");
    CHECK_EQ_INT(M.step_download, N_STEPS, "one download (the logits) per step, deferrable");
    CHECK(M.step_sync >= N_STEPS, "the pass's sync is inside its step (deferrable)");
    CHECK_EQ_INT(M.per_token_ops, N_STEPS * (1 + 5 * e->dec.n_layers),
                 "per-token ops: gather + per layer 2 rope, 2 KV appends, attention");
    CHECK_EQ_INT(M.mismatch, 0, "their per-token arguments are the step's values");

    tu_section("a step the backend asks to redo, a step it refuses");
    mock_reset();
    M.redo_at = 3;
    CHECK_OK(run(&mb, e, m, ids, n, toks, got, toks2));
    CHECK(memcmp(got, want, total * sizeof(float)) == 0, "redo: logits bit-identical");
    CHECK_EQ_INT(M.begins, N_STEPS, "redo: the rerun is not a step");
    mock_reset();
    M.unsupported = true;
    CHECK_OK(run(&mb, e, m, ids, n, toks, got, toks2));
    CHECK(memcmp(got, want, total * sizeof(float)) == 0, "refused: logits bit-identical");
    CHECK_EQ_INT(M.ends, 0, "refused: no step_end");
    CHECK_EQ_INT(M.per_token_ops, 0, "refused: the passes ran outside steps");

    tu_section("without kv_reserve_all the cache grows on demand (the CPU's way)");
    mock_reset();
    mb.kv_reserve_all = false;
    CHECK_OK(run(&mb, e, m, ids, n, toks, got, toks2));
    CHECK_EQ_INT(M.alloc_kv, 2 * e->dec.n_layers, "one allocation at the prefill's reserve");
    CHECK(memcmp(got, want, total * sizeof(float)) == 0, "same logits");
    free(want);
    free(got);
    free(ids);
    nv_st_close(f);
}

static int on_token(void *user, int32_t token, const char *text, size_t len)
{
    (void)text;
    (void)len;
    int32_t **p = user;
    *(*p)++ = token;
    return 0;
}

/* Greedy generation of a session with the engine's backend as it is now. */
static void generate(nvlm_model *m, const int32_t *ids, size_t n, int32_t *out, int *n_out)
{
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.n_ctx = N_CTX;
    nvlm_session *s = NULL;
    CHECK_OK(nvlm_session_create(m, &sp, &s));
    if (s == NULL) {
        return;
    }
    CHECK_OK(nvlm_session_feed(s, ids, n, NULL, 0));
    nvlm_sampler_params p;
    nvlm_sampler_default_params(&p);
    p.max_new_tokens = N_STEPS;
    p.stop_ids = NULL;
    int32_t *at = out;
    nvlm_generate_result r;
    r.struct_size = sizeof r;
    CHECK_OK(nvlm_session_generate(s, &p, on_token, &at, &r));
    *n_out = r.n_tokens;
    nvlm_session_free(s);
}

static void test_session(nvlm_model *m, nv_engine *e)
{
    tu_section("session: generate through steps = plain CPU");
    nv_st_file *f = eg_open(m->h.ctx, "case3_text_only");
    size_t n = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n);
    if (ids == NULL) {
        nv_st_close(f);
        return;
    }
    int32_t want[N_STEPS], got[N_STEPS];
    int n_want = 0, n_got = 0;
    generate(m, ids, n, want, &n_want);
    const nv_backend_ops *saved = e->be->ops;
    e->be->ops = &mock;
    e->be->kv_reserve_all = true;
    mock_reset();
    generate(m, ids, n, got, &n_got);
    e->be->ops = saved;
    e->be->kv_reserve_all = false;
    CHECK(n_want > 0 && n_got == n_want, "tokens generated: %d and %d", n_want, n_got);
    CHECK(memcmp(want, got, (size_t)n_want * sizeof(int32_t)) == 0, "same tokens");
    CHECK_EQ_INT(M.begins, n_got, "one step per generated token fed back");
    CHECK_EQ_INT(M.alloc_kv, 2 * e->dec.n_layers, "KV allocated once at session creation");
    CHECK_EQ_INT(M.step_alloc + M.step_free + M.step_upload, 0, "nothing allocated in steps");
    CHECK_EQ_INT(M.mismatch, 0, "per-token arguments are the step's");
    free(ids);
    nv_st_close(f);
}

/* A backend that samples on the device keeps the logits there; nvlm_session_logits copies
 * them when asked, like every public call inside thread_enter / thread_leave (CUDA: the
 * application's current device is put back), also from inside the token callback. */
static int on_token_logits(void *user, int32_t token, const char *text, size_t len)
{
    (void)token;
    (void)text;
    (void)len;
    nvlm_session *s = user;
    int depth = M.depth;
    size_t V = 0;
    M.mismatch += nvlm_session_logits(s, &V) == NULL || V == 0;
    M.mismatch += M.depth != depth;
    return 0;
}

static void test_session_logits(nvlm_model *m, nv_engine *e)
{
    tu_section("session: device logits copied on demand inside thread_enter / thread_leave");
    nv_st_file *f = eg_open(m->h.ctx, "case3_text_only");
    size_t n = 0;
    int32_t *ids = eg_ids(f, "prompt_ids", &n);
    nvlm_session_params sp;
    nvlm_session_default_params(&sp);
    sp.n_ctx = N_CTX;
    nvlm_session *s = NULL;
    float *want = NULL;
    if (ids != NULL) {
        CHECK_OK(nvlm_session_create(m, &sp, &s));
    }
    if (s != NULL) {
        CHECK_OK(nvlm_session_feed(s, ids, n, NULL, 0));
        size_t V = 0;
        const float *l = nvlm_session_logits(s, &V);
        want = l != NULL ? malloc(V * sizeof(float)) : NULL;
        if (want != NULL) {
            memcpy(want, l, V * sizeof(float));
        }
        nvlm_session_free(s);
        s = NULL;
    }
    const nv_backend_ops *saved = e->be->ops;
    mock.sample = m_sample;
    e->be->ops = &mock;
    e->be->kv_reserve_all = true;
    mock_reset();
    if (want != NULL) {
        CHECK_OK(nvlm_session_create(m, &sp, &s));
    }
    if (s != NULL) {
        CHECK_OK(nvlm_session_feed(s, ids, n, NULL, 0));
        int dl = M.step_download + M.unentered_dl;
        size_t V = 0;
        const float *l = nvlm_session_logits(s, &V);
        CHECK(l != NULL && memcmp(l, want, V * sizeof(float)) == 0,
              "the device logits, copied when asked");
        CHECK_EQ_INT(M.unentered_dl, 0, "the copy runs inside thread_enter / thread_leave");
        CHECK_EQ_INT(M.depth, 0, "every thread_enter left");
        CHECK_EQ_INT(M.bad_leave, 0, "thread_leave gets what thread_enter returned");
        CHECK(dl == 0, "feeding downloaded no logits (%d)", dl);
        nvlm_sampler_params p;
        nvlm_sampler_default_params(&p);
        p.max_new_tokens = 3;
        CHECK_OK(nvlm_session_generate(s, &p, on_token_logits, s, NULL));
        CHECK_EQ_INT(M.mismatch, 0, "logits inside the callback, device handed back");
        CHECK_EQ_INT(M.unentered_dl + M.depth + M.bad_leave, 0, "balanced inside the callback");
        nvlm_session_free(s);
    }
    e->be->ops = saved;
    e->be->kv_reserve_all = false;
    mock.sample = NULL;
    free(want);
    free(ids);
    nv_st_close(f);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    nvlm_model *m = eg_load_model(&ctx, 2);
    nv_engine *e = m != NULL ? m->engine : NULL;
    if (e != NULL) {
        cpu = e->be->ops;
        CHECK(cpu->step_begin == NULL && cpu->step_end == NULL, "the CPU has no step ops");
        CHECK(!e->be->kv_reserve_all, "the CPU grows its KV cache on demand");
        mock_init();
        test_decoder(m, e);
        test_session(m, e);
        test_session_logits(m, e);
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return tu_done();
}
