/*
 * test_step.c - the host-side logic of captured decode steps (src/step.h, src/cuda/attn_plan.h):
 * batch-size buckets and step keys, the device step block's layout and fill, op signatures,
 * the graph cache's decisions (warm-up, capture, replay, what forces a recapture, when a key
 * stays eager, LRU eviction), and the split-KV plan of a step: one grid and one partial
 * scratch sized for the reserved context that covers every live key count.
 */
#include "cuda/attn_plan.h"
#include "step.h"
#include "tensor.h"
#include "testutil.h"

#include <stdio.h>

static void test_buckets(void)
{
    tu_section("batch-size buckets and keys");
    const int n[] = {0, 1, 2, 3, 4, 5, 8, 9, 33, 64, 65};
    const int want[] = {0, 1, 2, 4, 4, 8, 8, 16, 64, 64, 0};
    for (size_t i = 0; i < sizeof n / sizeof n[0]; i++) {
        CHECK_EQ_INT(nv_step_bucket(n[i]), want[i], "bucket");
    }
    nv_step_key a, b;
    CHECK(nv_step_key_make(&a, 3, 1, NV_BF16, 4096), "key of 3 sequences");
    CHECK(nv_step_key_make(&b, 4, 1, NV_BF16, 4096), "key of 4 sequences");
    CHECK(nv_step_key_eq(&a, &b), "3 and 4 sequences share the bucket-4 graph");
    CHECK_EQ_INT(a.batch_bucket, 4, "bucket of 3");
    CHECK(nv_step_key_make(&b, 5, 1, NV_BF16, 4096) && !nv_step_key_eq(&a, &b),
          "5 sequences: another key");
    CHECK(nv_step_key_make(&b, 4, 1, NV_F32, 4096) && !nv_step_key_eq(&a, &b),
          "KV dtype is in the key");
    CHECK(nv_step_key_make(&b, 4, 1, NV_BF16, 8192) && !nv_step_key_eq(&a, &b),
          "reserved KV rows are in the key");
    CHECK(nv_step_key_make(&b, 4, 2, NV_BF16, 4096) && !nv_step_key_eq(&a, &b),
          "tokens per sequence are in the key");
    CHECK(!nv_step_key_make(&b, 65, 1, NV_BF16, 4096), "65 sequences: no key");
    CHECK(!nv_step_key_make(&b, 64, 2, NV_BF16, 4096), "128 tokens: no key");
    CHECK(!nv_step_key_make(&b, 1, 1, NV_BF16, 0), "no KV rows: no key");
    CHECK(!nv_step_key_make(&b, 1, 0, NV_BF16, 16), "no tokens: no key");
}

static void test_block(void)
{
    tu_section("step block layout and fill");
    CHECK_EQ_INT(sizeof(nv_step_block), 8 * 64 + 4 * 64 + 16, "block bytes");
    CHECK_EQ_INT(offsetof(nv_step_block, tokens), 512, "tokens offset");
    CHECK_EQ_INT(offsetof(nv_step_block, n_seq), 768, "n_seq offset");
    int32_t tok[3] = {7, 11, 13};
    int64_t pos[3] = {100, 0, 4094};
    nv_step s;
    memset(&s, 0, sizeof s);
    CHECK(nv_step_key_make(&s.key, 3, 1, NV_BF16, 4096), "key");
    s.n_seq = 3;
    s.tokens = tok;
    s.pos0 = pos;
    nv_step_block b;
    CHECK(nv_step_block_fill(&s, &b), "fill");
    CHECK(b.pos0[0] == 100 && b.pos0[1] == 0 && b.pos0[2] == 4094, "positions copied");
    CHECK(b.pos0[3] == -1 && b.pos0[63] == -1, "padding slots have position -1");
    CHECK(b.tokens[0] == 7 && b.tokens[1] == 11 && b.tokens[2] == 13 && b.tokens[3] == 0,
          "token ids copied, padding 0");
    CHECK(b.n_seq == 3 && b.n_tokens == 1, "counts");
    pos[2] = 4095;
    CHECK(nv_step_block_fill(&s, &b), "the last KV row is a position");
    pos[2] = 4096;
    CHECK(!nv_step_block_fill(&s, &b), "a position with no KV row left is refused");
    pos[2] = -1;
    CHECK(!nv_step_block_fill(&s, &b), "a negative position is refused");
    pos[2] = 5;
    s.n_seq = 5;
    CHECK(!nv_step_block_fill(&s, &b), "more sequences than the bucket is refused");
    s.n_seq = 3;
    s.tokens = NULL;
    CHECK(!nv_step_block_fill(&s, &b), "no token ids is refused");
}

static void test_signature(void)
{
    tu_section("op signatures");
    uint64_t v1[] = {1, 0x7f0000001000ull, 4096, 1};
    uint64_t v2[] = {1, 0x7f0000002000ull, 4096, 1};
    uint64_t v3[] = {1, 4096, 0x7f0000001000ull, 1};
    uint64_t h1 = nv_sig_words(NV_SIG_SEED, v1, 4);
    CHECK(h1 == nv_sig_words(NV_SIG_SEED, v1, 4), "deterministic");
    CHECK(h1 != nv_sig_words(NV_SIG_SEED, v2, 4), "a moved buffer changes it");
    CHECK(h1 != nv_sig_words(NV_SIG_SEED, v3, 4), "the order of the words counts");
    CHECK(nv_sig_words(h1, v2, 4) != nv_sig_words(nv_sig_words(NV_SIG_SEED, v2, 4), v1, 4),
          "the order of the ops counts");
}

static void test_cache(void)
{
    tu_section("graph cache: warm-up, capture, replay, recapture");
    nv_graph_cache c;
    memset(&c, 0, sizeof c);
    nv_step_key k;
    nv_step_key_make(&k, 1, 1, NV_BF16, 4096);
    void *drop = (void *)1;
    int graph_a = 0, graph_b = 0;
    nv_graph_slot *s = nv_graph_find(&c, &k, &drop);
    CHECK(s != NULL && drop == NULL, "new key: a free slot");
    CHECK_EQ_INT(nv_graph_mode(s, 1, &drop), NV_STEP_EAGER, "first step of a key: eager");
    nv_graph_ran_eager(s);
    CHECK(nv_graph_find(&c, &k, &drop) == s, "same key, same slot");
    CHECK_EQ_INT(nv_graph_mode(s, 1, &drop), NV_STEP_CAPTURE, "second step: capture");
    nv_graph_captured(s, &graph_a, 200, 0xabc, 1);
    CHECK_EQ_INT(nv_graph_mode(s, 1, &drop), NV_STEP_REPLAY, "third step: replay");
    CHECK(nv_graph_replay_check(s, 200, 0xabc, &drop) && drop == NULL, "same ops: launch");
    CHECK_EQ_INT(nv_graph_mode(s, 1, &drop), NV_STEP_REPLAY, "still replaying");

    CHECK(!nv_graph_replay_check(s, 200, 0xabd, &drop) && drop == &graph_a,
          "a moved buffer: not launched, graph handed back");
    CHECK_EQ_INT(nv_graph_mode(s, 1, &drop), NV_STEP_CAPTURE, "then captured again");
    nv_graph_captured(s, &graph_b, 200, 0xabd, 1);
    CHECK(!nv_graph_replay_check(s, 199, 0xabd, &drop) && drop == &graph_b,
          "another op count: not launched");
    nv_graph_captured(s, &graph_a, 200, 0xabd, 1);
    CHECK_EQ_INT(nv_graph_mode(s, 2, &drop), NV_STEP_CAPTURE,
                 "scratch replaced (generation 2): capture again");
    CHECK(drop == &graph_a, "the stale graph is handed back");
    nv_graph_captured(s, &graph_b, 200, 0xabd, 2);
    CHECK_EQ_INT(nv_graph_mode(s, 2, &drop), NV_STEP_REPLAY, "replay at generation 2");
    /* three recaptures so far; two more mismatches exceed NV_STEP_MAX_RECAPTURE */
    CHECK(!nv_graph_replay_check(s, 1, 1, &drop), "4th mismatch");
    CHECK_EQ_INT(s->state, NV_GRAPH_WARM, "still recapturing after 4");
    nv_graph_captured(s, &graph_a, 200, 0xabd, 2);
    CHECK(!nv_graph_replay_check(s, 1, 1, &drop), "5th mismatch");
    CHECK_EQ_INT(s->state, NV_GRAPH_OFF, "a key that keeps diverging stays eager");
    CHECK_EQ_INT(nv_graph_mode(s, 2, &drop), NV_STEP_EAGER, "eager for good");

    tu_section("graph cache: stale between turns vs stale within a few tokens");
    /* A long conversation: each turn's longer prefill replaces a scratch buffer (a new
     * generation), then the turn's tokens replay. Many such turns keep the graph. */
    memset(&c, 0, sizeof c);
    s = nv_graph_find(&c, &k, &drop);
    nv_graph_ran_eager(s);
    uint64_t gen = 1;
    bool kept = true;
    for (int turn = 0; turn < 3 * NV_STEP_MAX_RECAPTURE && kept; turn++) {
        kept = nv_graph_mode(s, gen, &drop) == NV_STEP_CAPTURE;
        nv_graph_captured(s, &graph_a, 200, 0xabc, gen);
        for (int t = 0; t < NV_STEP_STABLE_REPLAYS && kept; t++) {
            kept = nv_graph_mode(s, gen, &drop) == NV_STEP_REPLAY &&
                   nv_graph_replay_check(s, 200, 0xabc, &drop);
        }
        gen++;
    }
    CHECK(kept, "a graph replayed between growths is recaptured after every turn");
    /* A graph that goes stale after a few replays every time stays eager after the limit. */
    memset(&c, 0, sizeof c);
    s = nv_graph_find(&c, &k, &drop);
    nv_graph_ran_eager(s);
    int captures = 0;
    for (gen = 1; gen < 100 && nv_graph_mode(s, gen, &drop) == NV_STEP_CAPTURE; gen++) {
        captures++;
        nv_graph_captured(s, &graph_a, 200, 0xabc, gen);
        for (int t = 0; t < NV_STEP_STABLE_REPLAYS - 1; t++) {
            nv_graph_replay_check(s, 200, 0xabc, &drop);
        }
    }
    CHECK_EQ_INT(captures, NV_STEP_MAX_RECAPTURE + 1, "a key stale within a few tokens");
    CHECK_EQ_INT(s->state, NV_GRAPH_OFF, "then runs eagerly");

    tu_section("graph cache: failed capture, eviction");
    nv_step_key k2;
    nv_step_key_make(&k2, 2, 1, NV_BF16, 4096);
    nv_graph_slot *s2 = nv_graph_find(&c, &k2, &drop);
    CHECK(s2 != s, "another key, another slot");
    nv_graph_ran_eager(s2);
    CHECK_EQ_INT(nv_graph_mode(s2, 2, &drop), NV_STEP_CAPTURE, "capture");
    nv_graph_capture_failed(s2);
    CHECK_EQ_INT(nv_graph_mode(s2, 2, &drop), NV_STEP_EAGER, "failed capture: eager for good");
    /* fill every slot with READY graphs, then one more key evicts the least recently used */
    static int graphs[NV_STEP_GRAPHS + 1];
    memset(&c, 0, sizeof c);
    for (int i = 0; i < NV_STEP_GRAPHS; i++) {
        nv_step_key_make(&k, 1, 1, NV_BF16, 1000 + i);
        s = nv_graph_find(&c, &k, &drop);
        nv_graph_ran_eager(s);
        nv_graph_captured(s, &graphs[i], 1, 1, 0);
    }
    nv_step_key_make(&k, 1, 1, NV_BF16, 1000);
    nv_graph_find(&c, &k, &drop); /* key 0 used again: key 1 is the oldest now */
    nv_step_key_make(&k, 1, 1, NV_BF16, 999);
    s = nv_graph_find(&c, &k, &drop);
    CHECK(drop == &graphs[1], "the least recently used key's graph is handed back");
    CHECK(s->state == NV_GRAPH_NEW && s->graph == NULL, "the slot restarts as new");
    nv_step_key_make(&k, 1, 1, NV_BF16, 1000);
    s = nv_graph_find(&c, &k, &drop);
    CHECK(drop == NULL && s->graph == &graphs[0], "the recently used key kept its graph");
}

/* Whether the live chunk of a grid of ns splits covers [0, n_live) exactly: ceil(n_live /
 * chunk) <= ns busy splits, chunk a whole number of tiles, no split beyond the grid. */
static bool covers(long long n_live, int ns)
{
    int c = cuda_attn_live_chunk(n_live, ns);
    long long busy = (n_live + c - 1) / c;
    return c % ATTN_BK == 0 && c > 0 && busy <= ns && busy * c >= n_live &&
           (busy - 1) * (long long)c < n_live;
}

static void test_plan(void)
{
    tu_section("split-KV plan of a step: sized once for the reserved context");
    int ns = 0, chunk = 0;
    /* NVLM-D decode on an H200: 132 SMs, 64 query heads over 8 KV heads, one token */
    cuda_attn_plan(132, 1, 1, 32768, 64, 8, &ns, &chunk);
    CHECK_EQ_INT(ns, 32, "splits for a 32k context");
    CHECK_EQ_INT(chunk, 1024, "chunk for a 32k context");
    CHECK_EQ_INT(cuda_attn_part_floats_of(ns, 1, 1, 64, 128), 32 * 64 * 130,
                 "partial floats for a 32k context");
    cuda_attn_plan(132, 1, 1, 4096, 64, 8, &ns, &chunk);
    CHECK_EQ_INT(ns, 32, "splits for a 4k context (33 wanted, 32 of 128 keys)");
    cuda_attn_plan(132, 1, 1, 255, 64, 8, &ns, &chunk);
    CHECK_EQ_INT(ns, 1, "a short context is not split");
    CHECK_EQ_INT(cuda_attn_part_floats_of(ns, 1, 1, 64, 128), 0, "no partials unsplit");
    const long long ctx[] = {256, 4096, 32768};
    for (size_t i = 0; i < 3; i++) {
        cuda_attn_plan(132, 1, 1, (int)ctx[i], 64, 8, &ns, &chunk);
        bool all = true;
        long long bad = -1;
        for (long long n = 1; n <= ctx[i] && all; n++) {
            all = covers(n, ns);
            bad = all ? bad : n;
        }
        char what[96];
        snprintf(what, sizeof what, "context %lld (%d splits): every live key count is covered",
                 ctx[i], ns);
        CHECK(all, "%s (first bad %lld)", what, bad);
        /* the same grid at the full context needs no more than the planned partials */
        CHECK(cuda_attn_live_chunk(ctx[i], ns) <= chunk + ATTN_BK, "full context chunk");
    }
    cuda_attn_plan(132, 1, 1, 32768, 64, 8, &ns, &chunk);
    CHECK_EQ_INT(cuda_attn_live_chunk(1, ns), 32, "one live key: one tile in split 0");
    CHECK_EQ_INT(cuda_attn_live_chunk(1000, ns), 32, "1000 live keys: 32 busy splits of 32");
    CHECK_EQ_INT(cuda_attn_live_chunk(20000, ns), 640, "20000 live keys: 32 splits of 640");
}

int main(void)
{
    test_buckets();
    test_block();
    test_signature();
    test_cache();
    test_plan();
    return tu_done();
}
