/*
 * step.h - the decode step as a unit a backend can capture once and replay per token (header
 * only: the core, the CUDA backend and the tests share it without a link-time dependency).
 * A step is the decoder's pass over one new token per sequence: what changes from token to
 * token (token ids, positions = KV append rows, key counts) travels in a small device block
 * the kernels read, so a captured graph stays valid for every token; what the graph depends
 * on is the step's key. The graph cache here decides per step whether to run eagerly,
 * capture or replay; the backend (src/cuda/graph.cu) does the CUDA calls. docs/cuda.md.
 */
#ifndef NVLM_STEP_H
#define NVLM_STEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NV_STEP_MAX_SEQ 64         /* sequences one step carries (largest batch bucket) */
#define NV_STEP_MAX_TOKENS 64      /* token ids one step carries (sequences x new tokens) */
#define NV_STEP_GRAPHS 8           /* graphs kept per exec (least recently used replaced) */
#define NV_STEP_MAX_RECAPTURE 4    /* recaptures of one key before it stays eager */
#define NV_STEP_STABLE_REPLAYS 16  /* replays of one capture that clear its recapture count */

/* What a captured step depends on besides the buffers' addresses (those are checked op by op
 * through the signature). Two steps with equal keys launch the same kernels with the same
 * grids. Today's decode (one session, contiguous KV cache): batch_bucket 1, n_tokens 1,
 * paged 0, kv_rows = the rows the session's KV buffers hold (its n_ctx, reserved up front).
 * A paged, batched step keys on (batch_bucket, n_tokens, kv_type, paged 1, block_rows,
 * kv_rows = block-table width x block_rows): its block tables are device buffers whose
 * contents change per step like the token ids, never part of the key. */
typedef struct nv_step_key {
    int32_t batch_bucket;   /* sequences, rounded up by nv_step_bucket */
    int32_t n_tokens;       /* new tokens per sequence (1: plain decode) */
    int32_t kv_type;        /* nv_dtype of the KV cache */
    int32_t paged;          /* 0: one contiguous KV buffer per layer; 1: block tables */
    int64_t kv_rows;        /* key rows per sequence the grids are sized for */
    int32_t block_rows;     /* paged: rows per KV block; 0 when contiguous */
    int32_t reserved;       /* zero (keys compare as bytes) */
} nv_step_key;

/* One step as the pipeline describes it to step_begin (backend.h). Borrowed for the call. */
typedef struct nv_step {
    nv_step_key key;
    int32_t n_seq;          /* live sequences, 1 .. key.batch_bucket */
    const int32_t *tokens;  /* n_seq x key.n_tokens token ids */
    const int64_t *pos0;    /* n_seq: position of each sequence's first new token, which is
                               also its KV append row; its key count is pos0 + n_tokens */
    size_t out_bytes;       /* the most bytes the step downloads (its logits) */
} nv_step;

/* The device step block: one host -> device copy before each step, from pinned memory. Read
 * by the kernels of a step: RoPE and the KV append take pos0, attention its key count and
 * causal offset, the embedding gather the token ids. Slots past n_seq hold pos0 -1 and token
 * 0. Fixed layout (asserted below), 8-byte aligned fields. */
typedef struct nv_step_block {
    int64_t pos0[NV_STEP_MAX_SEQ];
    int32_t tokens[NV_STEP_MAX_TOKENS];
    int32_t n_seq;
    int32_t n_tokens;
    int32_t reserved[2];
} nv_step_block;

#ifdef __cplusplus
#define NV_STEP_ASSERT static_assert
#else
#define NV_STEP_ASSERT _Static_assert
#endif
#define NV_STEP_BLOCK_POS0 0
#define NV_STEP_BLOCK_TOKENS (8 * NV_STEP_MAX_SEQ)
#define NV_STEP_BLOCK_BYTES (8 * NV_STEP_MAX_SEQ + 4 * NV_STEP_MAX_TOKENS + 16)
NV_STEP_ASSERT(offsetof(nv_step_block, pos0) == NV_STEP_BLOCK_POS0, "step block layout");
NV_STEP_ASSERT(offsetof(nv_step_block, tokens) == NV_STEP_BLOCK_TOKENS, "step block layout");
NV_STEP_ASSERT(sizeof(nv_step_block) == NV_STEP_BLOCK_BYTES, "step block layout");

/* The batch-size bucket of n sequences: the next power of two (1, 2, 4, ... 64), so a batch
 * that grows by one sequence reuses its graph until it crosses a power of two; 0 when n is
 * out of 1 .. NV_STEP_MAX_SEQ. */
static inline int32_t nv_step_bucket(int n)
{
    if (n < 1 || n > NV_STEP_MAX_SEQ) {
        return 0;
    }
    int32_t b = 1;
    while (b < n) {
        b *= 2;
    }
    return b;
}

/* The key of a contiguous-cache step of n_seq sequences x n_tokens over kv_rows rows; false
 * (key zeroed) when out of range. */
static inline bool nv_step_key_make(nv_step_key *k, int n_seq, int n_tokens, int kv_type,
                                    int64_t kv_rows)
{
    memset(k, 0, sizeof *k);
    int32_t b = nv_step_bucket(n_seq);
    if (b == 0 || n_tokens < 1 || (int64_t)b * n_tokens > NV_STEP_MAX_TOKENS || kv_rows < 1) {
        return false;
    }
    k->batch_bucket = b;
    k->n_tokens = n_tokens;
    k->kv_type = kv_type;
    k->kv_rows = kv_rows;
    return true;
}

static inline bool nv_step_key_eq(const nv_step_key *a, const nv_step_key *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

/* Checks s and fills the device block's host image; false when the step does not fit its key
 * (too many sequences, a position that leaves no room for its tokens in kv_rows). */
static inline bool nv_step_block_fill(const nv_step *s, nv_step_block *b)
{
    memset(b, 0, sizeof *b);
    const nv_step_key *k = &s->key;
    if (k->batch_bucket < 1 || k->batch_bucket > NV_STEP_MAX_SEQ || k->n_tokens < 1 ||
        (int64_t)k->batch_bucket * k->n_tokens > NV_STEP_MAX_TOKENS || s->n_seq < 1 ||
        s->n_seq > k->batch_bucket || s->tokens == NULL || s->pos0 == NULL) {
        return false;
    }
    for (int i = 0; i < NV_STEP_MAX_SEQ; i++) {
        b->pos0[i] = -1;
    }
    for (int i = 0; i < s->n_seq; i++) {
        if (s->pos0[i] < 0 || s->pos0[i] > k->kv_rows - k->n_tokens) {
            return false;
        }
        b->pos0[i] = s->pos0[i];
    }
    memcpy(b->tokens, s->tokens, (size_t)s->n_seq * (size_t)k->n_tokens * sizeof(int32_t));
    b->n_seq = s->n_seq;
    b->n_tokens = k->n_tokens;
    return true;
}

/* ---- op signatures ---------------------------------------------------------------------- */

/* A step's ops fold what a graph bakes in (op kind, buffer addresses, shapes, scalars; never
 * the per-token values, which come from the block) into one running hash. A replay whose
 * ops hash differently from its capture (a buffer moved, a shape changed) is not launched:
 * the step runs again eagerly and the key is captured anew. FNV-1a over 64-bit words. */
#define NV_SIG_SEED 1469598103934665603ull

static inline uint64_t nv_sig_mix(uint64_t h, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        h = (h ^ ((v >> (8 * i)) & 0xffu)) * 1099511628211ull;
    }
    return h;
}

static inline uint64_t nv_sig_words(uint64_t h, const uint64_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h = nv_sig_mix(h, v[i]);
    }
    return h;
}

/* ---- the graph cache -------------------------------------------------------------------- */

enum {
    NV_STEP_EAGER = 0,     /* ops launch as they come (reading the block) */
    NV_STEP_CAPTURE = 1,   /* ops are recorded into a graph, launched at step_end */
    NV_STEP_REPLAY = 2     /* ops only fold their signature; step_end launches the graph */
};

enum {
    NV_GRAPH_NEW = 0,      /* key never run: its first step is eager (scratch grows there,
                              cuBLASLt picks its algorithms), outside any capture */
    NV_GRAPH_WARM = 1,     /* ran eagerly once: the next step captures */
    NV_GRAPH_READY = 2,    /* captured: steps replay while the signature and gen hold */
    NV_GRAPH_OFF = 3       /* capture failed or kept diverging: eager for good */
};

typedef struct nv_graph_slot {
    nv_step_key key;
    bool used;
    int state;             /* NV_GRAPH_* */
    uint64_t gen;          /* the exec's buffer generation at capture */
    uint32_t n_ops;        /* ops captured */
    uint64_t sig;          /* their signature */
    int recaptures;        /* since the key last replayed NV_STEP_STABLE_REPLAYS times */
    uint32_t replays;      /* launches of the current graph */
    uint64_t last_use;
    void *graph;           /* the backend's instantiated graph; NULL unless READY */
} nv_graph_slot;

typedef struct nv_graph_cache {
    nv_graph_slot slot[NV_STEP_GRAPHS];
    uint64_t clock;
} nv_graph_cache;

/* The slot of key k: its own, a free one, or the least recently used (whose graph, if any, is
 * handed back in *drop for the caller to destroy; the slot restarts as NEW). */
static inline nv_graph_slot *nv_graph_find(nv_graph_cache *c, const nv_step_key *k, void **drop)
{
    *drop = NULL;
    nv_graph_slot *lru = &c->slot[0];
    c->clock++;
    for (int i = 0; i < NV_STEP_GRAPHS; i++) {
        nv_graph_slot *s = &c->slot[i];
        if (s->used && nv_step_key_eq(&s->key, k)) {
            s->last_use = c->clock;
            return s;
        }
        if (!s->used || (lru->used && s->last_use < lru->last_use)) {
            lru = s;
        }
    }
    *drop = lru->used ? lru->graph : NULL;
    memset(lru, 0, sizeof *lru);
    lru->key = *k;
    lru->used = true;
    lru->last_use = c->clock;
    return lru;
}

/* How the step of slot s runs given the exec's current buffer generation. A READY slot whose
 * generation is stale (a scratch buffer the graph points into was replaced) gives its graph
 * back in *drop and captures again. */
static inline int nv_graph_mode(nv_graph_slot *s, uint64_t gen, void **drop)
{
    *drop = NULL;
    switch (s->state) {
    case NV_GRAPH_NEW:
        return NV_STEP_EAGER;
    case NV_GRAPH_WARM:
        return NV_STEP_CAPTURE;
    case NV_GRAPH_READY:
        if (s->gen == gen) {
            return NV_STEP_REPLAY;
        }
        *drop = s->graph;
        s->graph = NULL;
        s->state = NV_GRAPH_WARM;
        s->recaptures++;
        if (s->recaptures > NV_STEP_MAX_RECAPTURE) {
            s->state = NV_GRAPH_OFF;
            return NV_STEP_EAGER;
        }
        return NV_STEP_CAPTURE;
    default:
        return NV_STEP_EAGER;
    }
}

/* After an eager step of slot s ran to the end: a NEW slot is warm now. */
static inline void nv_graph_ran_eager(nv_graph_slot *s)
{
    if (s->state == NV_GRAPH_NEW) {
        s->state = NV_GRAPH_WARM;
    }
}

/* A capture of slot s succeeded: graph (instantiated), its ops and signature, at gen. */
static inline void nv_graph_captured(nv_graph_slot *s, void *graph, uint32_t n_ops, uint64_t sig,
                                     uint64_t gen)
{
    s->graph = graph;
    s->n_ops = n_ops;
    s->sig = sig;
    s->gen = gen;
    s->replays = 0;
    s->state = NV_GRAPH_READY;
}

/* A capture of slot s failed: the key runs eagerly from now on. */
static inline void nv_graph_capture_failed(nv_graph_slot *s)
{
    s->graph = NULL;
    s->state = NV_GRAPH_OFF;
}

/* At the end of a replay: whether the step's ops match the capture. When they do not, the
 * graph is handed back in *drop (not launched: the caller reruns the step eagerly) and the
 * key captures again at its next step, or stays eager after NV_STEP_MAX_RECAPTURE. A graph
 * that replayed NV_STEP_STABLE_REPLAYS times clears the count: buffers that grow between
 * turns of a long conversation (a new generation each time) never turn a key eager, a key
 * whose graph keeps going stale within a few tokens does. */
static inline bool nv_graph_replay_check(nv_graph_slot *s, uint32_t n_ops, uint64_t sig,
                                         void **drop)
{
    *drop = NULL;
    if (n_ops == s->n_ops && sig == s->sig) {
        if (s->replays < UINT32_MAX) {
            s->replays++;
        }
        if (s->replays >= NV_STEP_STABLE_REPLAYS) {
            s->recaptures = 0;
        }
        return true;
    }
    *drop = s->graph;
    s->graph = NULL;
    s->recaptures++;
    s->state = s->recaptures > NV_STEP_MAX_RECAPTURE ? NV_GRAPH_OFF : NV_GRAPH_WARM;
    return false;
}

#endif /* NVLM_STEP_H */
