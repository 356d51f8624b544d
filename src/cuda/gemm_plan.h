/*
 * gemm_plan.h - the host-side logic of the CUDA GEMM, apart from any CUDA call: the M buckets
 * of the plan cache, the cache itself (open addressing, LRU eviction without holes in the probe
 * chains, a failed build leaves it untouched), the choice among several heuristic algorithms
 * with fallback when one is rejected.
 * cuBLASLt is reached only through `gp_driver` (gemm_lt.cu implements it; tests/test_gemm_plan.c
 * implements a scripted one), so this file is plain C11 that also compiles as C++17: gemm_lt.cu
 * (nvcc) and the unit test both include it, and every function is static inline.
 */
#ifndef NVLM_CUDA_GEMM_PLAN_H
#define NVLM_CUDA_GEMM_PLAN_H

#ifdef __cplusplus
extern "C" {
#endif
#include "internal.h"
#ifdef __cplusplus
}
#endif

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define GP_MAX_CANDS 8      /* algorithms asked of the heuristic per epilogue */
#define GP_SLOTS 128        /* hash slots of a cache */
#define GP_MAX_LIVE 64      /* plans a cache holds; the least recently used goes beyond */

/* What identifies a plan. M enters only as its bucket (gp_bucket); the alignments are those
 * of w (A), x (B) and y (D) in bytes (1..256), promised to the heuristic. `type`: the operand
 * types, the driver's to define (0: bf16 x bf16 -> f32, the only one gemm_lt.cu has today). */
typedef struct gp_key {
    int32_t type;
    int32_t m_bucket, n, k;
    int32_t bias;           /* a bias was passed */
    int32_t align_a, align_b, align_d;
} gp_key;

/* One algorithm the heuristic offered. */
typedef struct gp_cand {
    uint64_t algo[8];       /* a cublasLtMatmulAlgo_t, opaque here */
    size_t ws;              /* workspace bytes it needs (at the M of the last check) */
    int32_t epi_bias;       /* adds the bias in the epilogue (else the driver adds it after) */
    int32_t bad;            /* rejected at the plan's current M */
    int32_t checked;        /* passed the driver's check at the plan's current M */
} gp_cand;

typedef struct gp_entry {
    gp_key key;
    int32_t used;
    uint64_t stamp;         /* last use (cache clock) */
    void *plan;             /* the driver's descriptors, layouts set for m_cur rows */
    int32_t m_cur;          /* rows the layouts describe; flags in cand[] are for this M */
    int32_t m_heur;         /* rows the candidates were found for */
    int32_t n_cand;
    int32_t cur;            /* the candidate that ran last */
    int32_t last_lib;       /* the library status of the last rejection (for messages) */
    gp_cand cand[2 * GP_MAX_CANDS];
} gp_entry;

typedef struct gp_cache {
    gp_entry slot[GP_SLOTS];
    int32_t n_live;
    uint64_t clock;
} gp_cache;

/* What a driver call returns: GP_REJECT means this algorithm (or this plan) cannot run this
 * GEMM and another one may; GP_FAIL stops (device error, out of memory). `*lib` receives the
 * library's own status for the message. */
typedef enum gp_res { GP_OK = 0, GP_REJECT = 1, GP_FAIL = 2 } gp_res;

typedef struct gp_driver {
    void *self;
    size_t ws_bytes;        /* workspace available to a GEMM */
    /* Descriptors for key k with layouts for M rows (*plan: owned by the cache). */
    gp_res (*plan_create)(void *self, const gp_key *k, int M, void **plan, int *lib);
    void (*plan_destroy)(void *self, void *plan);
    /* Sets the plan's layouts to M rows. */
    gp_res (*plan_set_m)(void *self, void *plan, int M, int *lib);
    /* Up to `max` algorithms for the plan at its current M, best first (*n may be 0). */
    gp_res (*heuristic)(void *self, void *plan, const gp_key *k, int epi_bias, gp_cand *out,
                        int max, int *n, int *lib);
    /* Whether c can run the plan at its current M; *ws: the workspace it needs. */
    gp_res (*check)(void *self, void *plan, const gp_cand *c, size_t *ws, int *lib);
    /* Enqueues y = x . w^T (+ bias) with c (the bias added after when c has no epilogue). */
    gp_res (*run)(void *self, void *plan, const gp_cand *c, void *call, int *lib);
    const char *(*lib_name)(int lib);
} gp_driver;

/* The bucket of M: 1 alone (decode), then powers of two (2, 4, 8, ..., 2^30), then one bucket
 * for everything above 2^30. */
static inline int32_t gp_bucket(int M)
{
    if (M <= 1) {
        return 1;
    }
    if (M > (1 << 30)) {
        return INT32_MAX;
    }
    int32_t b = 1;
    while (b < M) {
        b <<= 1;
    }
    return b;
}

static inline unsigned gp_hash(const gp_key *k)
{
    const int32_t v[8] = {k->type,    k->m_bucket, k->n,       k->k,
                          k->bias,    k->align_a,  k->align_b, k->align_d};
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 8; i++) {
        h = (h ^ (uint32_t)v[i]) * 1099511628211ull;
    }
    return (unsigned)((h ^ (h >> 29)) % GP_SLOTS);
}

static inline int gp_key_eq(const gp_key *a, const gp_key *b)
{
    return a->type == b->type && a->m_bucket == b->m_bucket && a->n == b->n && a->k == b->k &&
           a->bias == b->bias && a->align_a == b->align_a && a->align_b == b->align_b &&
           a->align_d == b->align_d;
}

/* The live entry of key k, or NULL. */
static inline gp_entry *gp_find(gp_cache *c, const gp_key *k)
{
    unsigned h = gp_hash(k);
    for (unsigned i = 0; i < GP_SLOTS; i++) {
        gp_entry *e = &c->slot[(h + i) % GP_SLOTS];
        if (!e->used) {
            return NULL;
        }
        if (gp_key_eq(&e->key, k)) {
            return e;
        }
    }
    return NULL;
}

/* Removes slot i (destroying its plan) and shifts later members of the probe chain back so
 * that no chain has a hole (linear-probing deletion). */
static inline void gp_remove(gp_cache *c, const gp_driver *d, unsigned i)
{
    if (c->slot[i].plan != NULL) {
        d->plan_destroy(d->self, c->slot[i].plan);
    }
    memset(&c->slot[i], 0, sizeof c->slot[i]);
    c->n_live--;
    unsigned hole = i;
    for (unsigned j = (i + 1) % GP_SLOTS; c->slot[j].used; j = (j + 1) % GP_SLOTS) {
        unsigned home = gp_hash(&c->slot[j].key);
        /* j may move into the hole unless its home lies cyclically in (hole, j]. */
        unsigned dist_j = (j + GP_SLOTS - home) % GP_SLOTS;
        unsigned dist_hole = (hole + GP_SLOTS - home) % GP_SLOTS;
        if (dist_hole < dist_j) {
            c->slot[hole] = c->slot[j];
            memset(&c->slot[j], 0, sizeof c->slot[j]);
            hole = j;
        }
    }
}

/* Destroys every plan; the cache is empty afterwards. */
static inline void gp_clear(gp_cache *c, const gp_driver *d)
{
    for (unsigned i = 0; i < GP_SLOTS; i++) {
        if (c->slot[i].used && c->slot[i].plan != NULL) {
            d->plan_destroy(d->self, c->slot[i].plan);
        }
    }
    memset(c, 0, sizeof *c);
}

/* Stores a built entry (evicting the least recently used one when the cache is full). */
static inline gp_entry *gp_insert(gp_cache *c, const gp_driver *d, const gp_entry *built)
{
    if (c->n_live >= GP_MAX_LIVE) {
        unsigned lru = GP_SLOTS;
        for (unsigned i = 0; i < GP_SLOTS; i++) {
            if (c->slot[i].used && (lru == GP_SLOTS || c->slot[i].stamp < c->slot[lru].stamp)) {
                lru = i;
            }
        }
        gp_remove(c, d, lru);
    }
    unsigned h = gp_hash(&built->key);
    for (unsigned i = 0; i < GP_SLOTS; i++) {
        gp_entry *e = &c->slot[(h + i) % GP_SLOTS];
        if (!e->used) {
            *e = *built;
            c->n_live++;
            return e;
        }
    }
    return NULL; /* unreachable: GP_MAX_LIVE < GP_SLOTS */
}

static inline void gp_shape(char *buf, size_t n, const gp_key *k, int M)
{
    if (k->type == 0) {
        snprintf(buf, n, "bf16 GEMM M %d N %d K %d%s", M, (int)k->n, (int)k->k,
                 k->bias ? " +bias" : "");
    } else {
        snprintf(buf, n, "GEMM (operand types %d) M %d N %d K %d%s", (int)k->type, M,
                 (int)k->n, (int)k->k, k->bias ? " +bias" : "");
    }
}

/* Asks the driver for the candidates of e's plan at its current M: the bias epilogue's first
 * (when there is a bias), then the plain GEMM's. */
static inline nvlm_status gp_ask(const gp_driver *d, void *eh, gp_entry *e, int M)
{
    char shape[96];
    gp_cand got[2 * GP_MAX_CANDS];
    int n_all = 0;
    int lib = 0;
    for (int epi = e->key.bias ? 1 : 0; epi >= 0; epi--) {
        int n = 0;
        gp_res r = d->heuristic(d->self, e->plan, &e->key, epi, got + n_all, GP_MAX_CANDS, &n,
                                &lib);
        if (r == GP_FAIL) {
            gp_shape(shape, sizeof shape, &e->key, M);
            return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt heuristic for %s: %s", shape,
                            d->lib_name(lib));
        }
        if (r != GP_OK || n < 0) {
            n = 0;
        }
        n = n < GP_MAX_CANDS ? n : GP_MAX_CANDS;
        for (int i = 0; i < n; i++) {
            got[n_all + i].epi_bias = epi;
            got[n_all + i].bad = 0;
            got[n_all + i].checked = 1; /* found for this very M */
        }
        n_all += n;
    }
    if (n_all == 0) {
        gp_shape(shape, sizeof shape, &e->key, M);
        return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt has no algorithm for %s (%s)", shape,
                        d->lib_name(lib));
    }
    memcpy(e->cand, got, (size_t)n_all * sizeof got[0]);
    e->n_cand = n_all;
    e->cur = 0;
    e->m_heur = M;
    return NVLM_OK;
}

/* Builds a whole entry for key k at M rows, or fails leaving nothing behind. */
static inline nvlm_status gp_build(const gp_driver *d, void *eh, const gp_key *k, int M,
                                   gp_entry *out)
{
    memset(out, 0, sizeof *out);
    out->key = *k;
    out->used = 1;
    out->m_cur = M;
    int lib = 0;
    gp_res r = d->plan_create(d->self, k, M, &out->plan, &lib);
    if (r != GP_OK) {
        char shape[96];
        gp_shape(shape, sizeof shape, k, M);
        out->plan = NULL;
        return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt descriptors for %s: %s", shape,
                        d->lib_name(lib));
    }
    nvlm_status st = gp_ask(d, eh, out, M);
    if (st != NVLM_OK) {
        d->plan_destroy(d->self, out->plan);
        out->plan = NULL;
    }
    return st;
}

/* Runs e at M rows: the candidate that worked last first, then the others in heuristic order;
 * a candidate found for another M is checked first; one the driver rejects is marked and the
 * next is tried. When every candidate found for another M fails, the heuristic is asked again
 * at this M once. */
static inline nvlm_status gp_run_entry(const gp_driver *d, void *eh, gp_entry *e, int M,
                                       void *call)
{
    char shape[96];
    int lib = 0;
    if (e->m_cur != M) {
        gp_res r = d->plan_set_m(d->self, e->plan, M, &lib);
        if (r != GP_OK) {
            e->m_cur = -1; /* the layouts may be half set: set them again next time */
            gp_shape(shape, sizeof shape, &e->key, M);
            return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt layouts for %s: %s", shape,
                            d->lib_name(lib));
        }
        e->m_cur = M;
        for (int i = 0; i < e->n_cand; i++) {
            e->cand[i].bad = 0;
            e->cand[i].checked = M == e->m_heur;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int j = 0; j < e->n_cand; j++) {
            int i = j == 0 ? e->cur : (j <= e->cur ? j - 1 : j);
            gp_cand *c = &e->cand[i];
            if (c->bad) {
                continue;
            }
            if (!c->checked) {
                size_t ws = 0;
                gp_res r = d->check(d->self, e->plan, c, &ws, &lib);
                if (r == GP_FAIL) {
                    gp_shape(shape, sizeof shape, &e->key, M);
                    return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt algorithm check for %s: %s",
                                    shape, d->lib_name(lib));
                }
                if (r != GP_OK || ws > d->ws_bytes) {
                    c->bad = 1;
                    e->last_lib = lib;
                    continue;
                }
                c->ws = ws;
                c->checked = 1;
            }
            gp_res r = d->run(d->self, e->plan, c, call, &lib);
            if (r == GP_OK) {
                e->cur = i;
                return NVLM_OK;
            }
            if (r == GP_FAIL) {
                gp_shape(shape, sizeof shape, &e->key, M);
                return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt matmul %s: %s", shape,
                                d->lib_name(lib));
            }
            c->bad = 1;
            e->last_lib = lib;
        }
        if (pass > 0 || e->m_heur == M) {
            break;
        }
        NVLM_TRY(gp_ask(d, eh, e, M));
    }
    gp_shape(shape, sizeof shape, &e->key, M);
    return nv_error(eh, NVLM_ERR_BACKEND, "cuBLASLt rejected all %d algorithms for %s (last: %s)",
                    e->n_cand, shape, d->lib_name(e->last_lib));
}

/* y (M, n) = x (M, k) . w (n, k)^T (+ bias) through the cache: finds or builds the plan of
 * M's bucket and runs it. A failed build leaves the cache as it was. `call` goes to d->run. */
static inline nvlm_status gp_gemm(gp_cache *c, const gp_driver *d, void *eh, const gp_key *k0,
                                  int M, void *call)
{
    gp_key k = *k0;
    k.m_bucket = gp_bucket(M);
    gp_entry *e = gp_find(c, &k);
    if (e == NULL) {
        gp_entry built;
        NVLM_TRY(gp_build(d, eh, &k, M, &built));
        e = gp_insert(c, d, &built);
        if (e == NULL) {
            d->plan_destroy(d->self, built.plan);
            return nv_error(eh, NVLM_ERR_INTERNAL, "GEMM plan cache full");
        }
    }
    e->stamp = ++c->clock;
    return gp_run_entry(d, eh, e, M, call);
}

#endif /* NVLM_CUDA_GEMM_PLAN_H */
