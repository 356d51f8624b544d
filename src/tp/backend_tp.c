/*
 * backend_tp.c - the tensor-parallel backend: the ops table of backend.h over N rank backends
 * of one kind (CPU ranks, or CUDA ranks one per GPU), sharded by the plan (plan.h). Every weight
 * is loaded as one slice per rank (row slices in place, column and q/k/v-block slices as strided
 * copies: no rank holds a whole sharded tensor). Activations keep global addressing: each rank
 * has its own copy of every buffer the pipeline allocates (and of every replicated weight), and
 * a pipeline pointer is translated to the same offset in the rank's copy. Column-parallel
 * matmuls fill the rank's columns of the output; row-parallel ones multiply the rank's input
 * columns, all-reduce, then add the bias once; the vocab-parallel lm_head all-gathers its
 * columns; attention runs on the rank's heads; the ViT QK-norm all-reduces its per-row sums of
 * squares; KV caches hold the rank's kv heads only. Other ops run whole on every rank.
 * Each session exec runs rank 0 on the calling thread and one worker thread for each other
 * rank, with its own local communicator (device ranks over it stage collectives through host
 * memory), or the model's NCCL communicator between GPUs; each op is handed to every rank and
 * returns when all have finished. A failing rank aborts the
 * communicator, so no rank waits forever in a collective.
 */
#include "backend.h"
#include "tp/comm.h"
#include "tp/plan.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- the backend and its weights -------------------------------------------------------- */

/* A buffer or weight known by rank 0's address: rank 0's copy is the address the pipeline
 * holds. A KV cache (kv_heads > 0) keeps on each rank only the kv heads its query heads use:
 * rows of (that rank's kv heads) x head_dim elements. */
typedef struct region {
    char *base;                  /* rank 0's copy */
    size_t bytes;
    void **at;                   /* size: every rank's copy */
    int kv_heads, head_dim;      /* KV caches: the whole row's heads; 0 otherwise */
} region;

/* A set of regions sorted by base. */
typedef struct region_set {
    region *v;
    size_t n, cap;
} region_set;

typedef struct tp_backend {
    int size;
    tp_plan plan;
    nv_backend **rank;           /* size rank backends, owned */
    struct tp_comm *shared;      /* the model's communicator, or NULL: one per session */
    pthread_mutex_t turn;        /* with `shared`: one session's op at a time */
    bool staged;                 /* collectives through host memory (device ranks, local) */
    region_set weights;          /* replicated weights, whose data the pipeline may read */
} tp_backend;

/* One weight: a slice per rank. */
typedef struct tp_weight {
    nv_tp_cut cut;
    tp_slice *slice;             /* size */
    nv_bweight *rank;            /* size; rank[r].t.data NULL when the slice is empty */
    void **copy;                 /* size: repacked host slices the rank weights point into */
} tp_weight;

static tp_backend *tb_of(const nv_backend *be)
{
    return be->impl;
}

/* Adds g (its `at` array now owned by the set), keeping the set sorted by base. */
static bool set_add(nvlm_context *ctx, region_set *rs, region g)
{
    if (rs->n == rs->cap) {
        size_t cap = NV_MAX((size_t)16, rs->cap * 2);
        region *v = nv_realloc(ctx, rs->v, cap * sizeof *v);
        if (v == NULL) {
            return false;
        }
        rs->v = v;
        rs->cap = cap;
    }
    size_t i = rs->n;
    while (i > 0 && rs->v[i - 1].base > g.base) {
        rs->v[i] = rs->v[i - 1];
        i--;
    }
    rs->v[i] = g;
    rs->n++;
    return true;
}

/* The region whose base is `base` removed from the set (its `at` array handed back), or a
 * zeroed region when there is none. */
static region set_take(region_set *rs, const void *base)
{
    region g;
    memset(&g, 0, sizeof g);
    for (size_t i = 0; i < rs->n; i++) {
        if (rs->v[i].base == base) {
            g = rs->v[i];
            memmove(&rs->v[i], &rs->v[i + 1], (rs->n - i - 1) * sizeof *rs->v);
            rs->n--;
            break;
        }
    }
    return g;
}

/* The region a pointer lies in, or NULL. */
static const region *set_find(const region_set *rs, const void *p)
{
    const char *c = p;
    size_t lo = 0;
    size_t hi = rs->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const region *g = &rs->v[mid];
        if (c < g->base) {
            hi = mid;
        } else if (c >= g->base + g->bytes) {
            lo = mid + 1;
        } else {
            return g;
        }
    }
    return NULL;
}

static void tp_weight_free(nv_backend *be, nv_bweight *w)
{
    tp_backend *tb = tb_of(be);
    tp_weight *tw = w->impl;
    if (tw != NULL) {
        if (tw->rank != NULL && tw->rank[0].t.data != NULL && tw->slice[0].whole) {
            region g = set_take(&tb->weights, tw->rank[0].t.data);
            nv_free(be->ctx, g.at);
        }
        for (int r = 0; r < tb->size; r++) {
            if (tw->rank != NULL && tw->rank[r].t.data != NULL) {
                tb->rank[r]->ops->weight_free(tb->rank[r], &tw->rank[r]);
            }
            if (tw->copy != NULL) {
                nv_free(be->ctx, tw->copy[r]);
            }
        }
        nv_free(be->ctx, tw->slice);
        nv_free(be->ctx, tw->rank);
        nv_free(be->ctx, tw->copy);
        nv_free(be->ctx, tw);
    }
    memset(w, 0, sizeof *w);
}

/* The host tensor rank r loads: a view into src for whole tensors and single row blocks, else
 * a repacked copy (*copy, owned by the weight). */
static nvlm_status slice_view(nv_backend *be, const nv_tensor *src, const tp_slice *s,
                              nv_tensor *view, void **copy, void *eh)
{
    *view = *src;
    *copy = NULL;
    if (s->whole) {
        return NVLM_OK;
    }
    size_t es = nv_dtype_size(src->dtype);
    int64_t row_elems = nv_tensor_nelem(src) / src->shape[0];
    size_t row_bytes = (size_t)row_elems * es;
    if (!s->cols && s->blocks == 1) {
        view->shape[0] = s->count;
        view->data = (char *)src->data + (size_t)s->begin * row_bytes;
        if (src->scale != NULL) {
            view->scale = src->scale + s->begin; /* FP8: the scales go with their rows */
        }
        return NVLM_OK;
    }
    if (src->scale != NULL && !s->cols) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "an FP8 weight cut in %d row blocks",
                        s->blocks);
    }
    size_t bytes = (size_t)s->nelem * es;
    char *dst = nv_malloc(be->ctx, bytes == 0 ? 1 : bytes);
    if (dst == NULL) {
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a weight slice");
    }
    const char *from = src->data;
    if (s->cols) {
        /* (rows, cols) -> (rows, count): columns [begin, begin + count) of every row */
        size_t take = (size_t)s->count * es;
        for (int64_t i = 0; i < src->shape[0]; i++) {
            memcpy(dst + (size_t)i * take, from + (size_t)i * row_bytes + (size_t)s->begin * es,
                   take);
        }
        view->shape[1] = s->count;
    } else {
        /* blocks of block_rows rows -> the same rows of each block, one after another */
        size_t take = (size_t)s->count * row_bytes;
        for (int b = 0; b < s->blocks; b++) {
            size_t at = ((size_t)b * (size_t)s->block_rows + (size_t)s->begin) * row_bytes;
            memcpy(dst + (size_t)b * take, from + at, take);
        }
        view->shape[0] = (int64_t)s->blocks * s->count;
    }
    view->data = dst;
    *copy = dst;
    return NVLM_OK;
}

static nvlm_status tp_weight_load(nv_backend *be, const nv_tensor *src, const nv_tp_cut *cut,
                                  nv_bweight *out, void *eh)
{
    tp_backend *tb = tb_of(be);
    memset(out, 0, sizeof *out);
    nvlm_context *ctx = be->ctx;
    tp_weight *tw = nv_calloc(ctx, 1, sizeof *tw);
    if (tw != NULL) {
        tw->slice = nv_calloc(ctx, (size_t)tb->size, sizeof *tw->slice);
        tw->rank = nv_calloc(ctx, (size_t)tb->size, sizeof *tw->rank);
        tw->copy = nv_calloc(ctx, (size_t)tb->size, sizeof *tw->copy);
    }
    if (tw == NULL || tw->slice == NULL || tw->rank == NULL || tw->copy == NULL) {
        out->impl = tw;
        tp_weight_free(be, out);
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a sharded weight");
    }
    out->impl = tw;
    tw->cut = cut != NULL ? *cut : (nv_tp_cut){NV_TP_WHOLE, false, 1};
    if (tw->cut.cols && src->ndim != 2) {
        tp_weight_free(be, out);
        return nv_error(eh, NVLM_ERR_INTERNAL, "a column cut of a %d-D tensor", src->ndim);
    }
    nvlm_status st = NVLM_OK;
    for (int r = 0; r < tb->size && st == NVLM_OK; r++) {
        tw->slice[r] = tp_plan_slice(&tb->plan, r, &tw->cut, src->ndim, src->shape);
        if (tw->slice[r].nelem == 0) {
            continue; /* this rank holds none of it */
        }
        nv_tensor view;
        st = slice_view(be, src, &tw->slice[r], &view, &tw->copy[r], eh);
        if (st == NVLM_OK) {
            st = tb->rank[r]->ops->weight_load(tb->rank[r], &view, NULL, &tw->rank[r], eh);
        }
    }
    if (st != NVLM_OK) {
        tp_weight_free(be, out);
        return st;
    }
    /* the pipeline sees the whole tensor: rank 0's data and dtype, the checkpoint's shape. It
     * reads replicated weights through that address (the embedding rows): registered, so that
     * every rank reads its own copy. */
    if (tw->slice[0].whole) {
        region g = {tw->rank[0].t.data,
                    (size_t)nv_tensor_nelem(&tw->rank[0].t) * nv_dtype_size(tw->rank[0].t.dtype),
                    nv_calloc(ctx, (size_t)tb->size, sizeof(void *)), 0, 0};
        if (g.at == NULL || !set_add(ctx, &tb->weights, g)) {
            nv_free(ctx, g.at);
            tp_weight_free(be, out);
            return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a weight");
        }
        for (int r = 0; r < tb->size; r++) {
            g.at[r] = tw->rank[r].t.data;
        }
    }
    out->t = tw->rank[0].t;
    out->t.ndim = src->ndim;
    memcpy(out->t.shape, src->shape, sizeof out->t.shape);
    out->owned = 1;
    return NVLM_OK;
}

static void tp_destroy(nv_backend *be)
{
    if (be == NULL) {
        return;
    }
    tp_backend *tb = tb_of(be);
    if (tb != NULL) {
        if (tb->shared != NULL) {
            tb->shared->ops->destroy(tb->shared);
        }
        pthread_mutex_destroy(&tb->turn);
        for (int r = 0; r < tb->size; r++) {
            if (tb->rank[r] != NULL) {
                tb->rank[r]->ops->destroy(tb->rank[r]);
            }
        }
        for (size_t i = 0; i < tb->weights.n; i++) {
            nv_free(be->ctx, tb->weights.v[i].at);
        }
        nv_free(be->ctx, tb->weights.v);
        nv_free(be->ctx, tb->rank);
        nv_free(be->ctx, tb);
    }
    nv_free(be->ctx, be);
}

/* ---- execs: one worker thread per rank -------------------------------------------------- */


typedef struct tp_exec tp_exec;
typedef nvlm_status (*rank_fn)(tp_exec *t, int r, const void *args);

typedef struct rank_state {
    nv_handle err;               /* this rank's failure text */
    nv_exec *ex;
    float *scr[3];               /* scratch (rank memory) for column gathers and scatters */
    size_t scr_cap[3];           /* floats */
    char *host[2];               /* host staging of collectives (device ranks) */
    size_t host_cap[2];          /* bytes */
    pthread_t thread;
    bool started;
} rank_state;

struct tp_exec {
    tp_backend *tb;
    nvlm_context *ctx;
    int size;
    rank_state *rk;
    tp_comm *comm;
    region_set bufs;             /* the pipeline's buffers */
    /* The job: fn(args) on every rank. The calling thread runs rank 0 itself; ranks 1 .. size
     * - 1 have a worker thread each. job_id publishes a job (fn, args, inject written first),
     * n_done counts the ranks that finished it. Waiting spins briefly, then blocks on the
     * condition variables (under lock). */
    pthread_mutex_t lock;
    pthread_cond_t go, done;
    atomic_uint_fast64_t job_id; /* jobs handed out */
    rank_fn fn;
    const void *args;
    int inject;                  /* tests: the rank whose op of this job fails, or -1 */
    atomic_int n_done;
    int first_fail;              /* the rank that failed first in this job, or -1 (lock) */
    atomic_bool quit;
    nvlm_status *st;             /* size: written by each rank, read once all are done */
    int fail_rank;               /* tests: this rank fails its fail_at-th op from now */
    int64_t fail_at;
};

/* Iterations of a busy wait before blocking (tens of microseconds): longer than the gap
 * between back-to-back ops, so ranks do not sleep and wake (25-50 us each on the dev VM)
 * between them, and short enough not to hold a core while a session is idle. */
#define TP_SPIN 20000

static tp_exec *tx_of(nv_exec *ex)
{
    return ex->impl;
}

typedef struct worker_arg {
    tp_exec *t;
    int r;
} worker_arg;

/* Rank r's part of the current job; the last rank to finish wakes the caller. */
static void run_rank(tp_exec *t, int r)
{
    rank_state *rs = &t->rk[r];
    rs->err.err[0] = '\0'; /* only this rank writes its text during a job */
    nvlm_status st = r == t->inject
                         ? nv_error(&rs->err, NVLM_ERR_BACKEND, "injected failure")
                         : t->fn(t, r, t->args);
    if (st != NVLM_OK) {
        pthread_mutex_lock(&t->lock);
        if (t->first_fail < 0) {
            t->first_fail = r;
        }
        pthread_mutex_unlock(&t->lock);
        t->comm->ops->abort(t->comm, st);
    }
    t->st[r] = st;
    if (atomic_fetch_add(&t->n_done, 1) + 1 == t->size) {
        pthread_mutex_lock(&t->lock);
        pthread_cond_signal(&t->done);
        pthread_mutex_unlock(&t->lock);
    }
}

static void *worker(void *p)
{
    worker_arg a = *(worker_arg *)p;
    nv_free(a.t->ctx, p);
    tp_exec *t = a.t;
    uint64_t seen = 0;
    for (;;) {
        for (int i = 0; i < TP_SPIN && atomic_load(&t->job_id) == seen &&
                        !atomic_load(&t->quit);
             i++) {
        }
        if (atomic_load(&t->job_id) == seen && !atomic_load(&t->quit)) {
            pthread_mutex_lock(&t->lock);
            while (atomic_load(&t->job_id) == seen && !atomic_load(&t->quit)) {
                pthread_cond_wait(&t->go, &t->lock);
            }
            pthread_mutex_unlock(&t->lock);
        }
        if (atomic_load(&t->quit)) {
            return NULL;
        }
        seen = atomic_load(&t->job_id);
        run_rank(t, a.r);
    }
}

/* Runs fn on every rank and waits for all. On failure the first failing rank's text goes to
 * the exec's error handle and the communicator is made usable again. A model-wide
 * communicator serves one session's op at a time: every op is complete on all ranks (its
 * collectives included) when it returns, so ops of different sessions never interleave their
 * collectives. */
static nvlm_status run_all(nv_exec *ex, rank_fn fn, const void *args)
{
    tp_exec *t = tx_of(ex);
    tp_backend *tb = t->tb;
    if (tb->shared != NULL) {
        pthread_mutex_lock(&tb->turn);
    }
    pthread_mutex_lock(&t->lock);
    t->fn = fn;
    t->args = args;
    t->inject = t->fail_rank >= 0 && --t->fail_at == 0 ? t->fail_rank : -1;
    t->first_fail = -1;
    atomic_store(&t->n_done, 0);
    atomic_fetch_add(&t->job_id, 1);
    pthread_cond_broadcast(&t->go);
    pthread_mutex_unlock(&t->lock);
    run_rank(t, 0);
    for (int i = 0; i < TP_SPIN && atomic_load(&t->n_done) < t->size; i++) {
    }
    pthread_mutex_lock(&t->lock);
    while (atomic_load(&t->n_done) < t->size) {
        pthread_cond_wait(&t->done, &t->lock);
    }
    int bad = t->first_fail;
    pthread_mutex_unlock(&t->lock);
    if (bad >= 0) {
        t->comm->ops->reset(t->comm);
    }
    if (tb->shared != NULL) {
        pthread_mutex_unlock(&tb->turn);
    }
    if (bad < 0) {
        return NVLM_OK;
    }
    const char *msg = t->rk[bad].err.err;
    return nv_error(ex->err_handle, t->st[bad], "tensor-parallel rank %d: %s", bad,
                    msg[0] != '\0' ? msg : nvlm_status_str(t->st[bad]));
}

/* The buffer (or replicated weight) a pipeline pointer lies in, or NULL. */
static const region *region_of(const tp_exec *t, const void *p)
{
    const region *g = set_find(&t->bufs, p);
    return g != NULL ? g : set_find(&t->tb->weights, p);
}

/* The rank-r address of a pipeline pointer: the same offset in the rank's copy of the buffer
 * or replicated weight it lies in. Other pointers (host data of sliced weights) are the same
 * on every rank. */
static void *at(const tp_exec *t, int r, const void *p)
{
    if (p == NULL || r == 0) {
        return (void *)p;
    }
    const region *g = region_of(t, p);
    return g != NULL ? (char *)g->at[r] + ((const char *)p - g->base) : (void *)p;
}

/* The kv heads rank r keeps of a KV cache. */
static tp_range kv_heads_of(const tp_exec *t, int r)
{
    return tp_plan_range(&t->tb->plan, r, NV_TP_LLM_KV_HEADS);
}

static const nv_backend_ops *rops(const tp_exec *t, int r)
{
    return t->tb->rank[r]->ops;
}

/* Rank r's scratch buffer i with room for n floats. */
static nvlm_status scratch(tp_exec *t, int r, int i, size_t n, float **out)
{
    rank_state *rs = &t->rk[r];
    if (rs->scr_cap[i] < n) {
        if (rs->scr[i] != NULL) {
            rops(t, r)->free(rs->ex, rs->scr[i]);
            rs->scr[i] = NULL;
            rs->scr_cap[i] = 0;
        }
        void *p = NULL;
        NVLM_TRY(rops(t, r)->alloc(rs->ex, n * sizeof(float), &p));
        rs->scr[i] = p;
        rs->scr_cap[i] = n;
    }
    *out = rs->scr[i];
    return NVLM_OK;
}

/* Rank r's host staging buffer i with room for `bytes` bytes. */
static nvlm_status host_scratch(tp_exec *t, int r, int i, size_t bytes, char **out)
{
    rank_state *rs = &t->rk[r];
    if (rs->host_cap[i] < bytes) {
        char *p = nv_malloc(t->ctx, bytes);
        if (p == NULL) {
            return nv_error(&rs->err, NVLM_ERR_OUT_OF_MEMORY, "out of memory for staging");
        }
        nv_free(t->ctx, rs->host[i]);
        rs->host[i] = p;
        rs->host_cap[i] = bytes;
    }
    *out = rs->host[i];
    return NVLM_OK;
}

/* Whether collectives must go through host memory: device ranks over a host communicator. */
static bool staged(const tp_exec *t)
{
    return t->tb->staged ||
           (t->tb->rank[0]->device_memory && !t->comm->ops->device_buffers);
}

/* A device communicator works on its own streams: the rank's queued work must be done first. */
static nvlm_status ready(tp_exec *t, int r)
{
    return t->comm->ops->device_buffers ? rops(t, r)->sync(t->rk[r].ex) : NVLM_OK;
}

/* buf (n floats in rank memory) = the sum over the ranks. */
static nvlm_status coll_sum(tp_exec *t, int r, float *buf, size_t n)
{
    if (!staged(t)) {
        NVLM_TRY(ready(t, r));
        return t->comm->ops->all_reduce_sum(t->comm, r, buf, n);
    }
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    char *h = NULL;
    NVLM_TRY(host_scratch(t, r, 0, n * sizeof(float), &h));
    NVLM_TRY(op->download(ex, h, buf, n * sizeof(float)));
    NVLM_TRY(t->comm->ops->all_reduce_sum(t->comm, r, (float *)h, n));
    return op->upload(ex, buf, h, n * sizeof(float));
}

/* recv (size * bytes, rank memory) = every rank's send (bytes) in rank order. */
static nvlm_status coll_gather(tp_exec *t, int r, const void *send, size_t bytes, void *recv)
{
    if (!staged(t)) {
        NVLM_TRY(ready(t, r));
        return t->comm->ops->all_gather(t->comm, r, send, bytes, recv);
    }
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    char *hs = NULL;
    char *hr = NULL;
    NVLM_TRY(host_scratch(t, r, 0, bytes, &hs));
    NVLM_TRY(host_scratch(t, r, 1, bytes * (size_t)t->size, &hr));
    NVLM_TRY(op->download(ex, hs, send, bytes));
    NVLM_TRY(t->comm->ops->all_gather(t->comm, r, hs, bytes, hr));
    return op->upload(ex, recv, hr, bytes * (size_t)t->size);
}

/* ---- memory ----------------------------------------------------------------------------- */

static void tp_free(nv_exec *ex, void *ptr);

/* Allocates every rank's copy (bytes[r] bytes) and registers the buffer. */
static nvlm_status add_region(nv_exec *ex, const size_t *bytes, int kv_heads, int head_dim,
                              void **out)
{
    tp_exec *t = tx_of(ex);
    *out = NULL;
    void **copies = nv_calloc(t->ctx, (size_t)t->size, sizeof *copies);
    if (copies == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    nvlm_status st = NVLM_OK;
    for (int r = 0; r < t->size && st == NVLM_OK; r++) {
        st = rops(t, r)->alloc(t->rk[r].ex, bytes[r], &copies[r]);
        if (st != NVLM_OK) {
            nv_error_copy(ex->err_handle, &t->rk[r].err, st);
        }
    }
    if (st != NVLM_OK) {
        for (int r = 0; r < t->size; r++) {
            if (copies[r] != NULL) {
                rops(t, r)->free(t->rk[r].ex, copies[r]);
            }
        }
        nv_free(t->ctx, copies);
        return st;
    }
    region g = {copies[0], NV_MAX(bytes[0], (size_t)1), copies, kv_heads, head_dim};
    if (!set_add(t->ctx, &t->bufs, g)) {
        for (int r = 0; r < t->size; r++) {
            rops(t, r)->free(t->rk[r].ex, copies[r]);
        }
        nv_free(t->ctx, copies);
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    *out = copies[0];
    return NVLM_OK;
}

static nvlm_status tp_alloc(nv_exec *ex, size_t bytes, void **out)
{
    tp_exec *t = tx_of(ex);
    size_t *b = nv_alloc_array(t->ctx, (size_t)t->size, sizeof *b);
    if (b == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int r = 0; r < t->size; r++) {
        b[r] = bytes;
    }
    nvlm_status st = add_region(ex, b, 0, 0, out);
    nv_free(t->ctx, b);
    return st;
}

static nvlm_status tp_alloc_kv(nv_exec *ex, int64_t rows, int kv_heads, int head_dim,
                               nv_dtype dtype, void **out)
{
    tp_exec *t = tx_of(ex);
    if (kv_heads != t->tb->plan.total[NV_TP_LLM_KV_HEADS]) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "a KV cache of %d kv heads",
                        kv_heads);
    }
    size_t *b = nv_alloc_array(t->ctx, (size_t)t->size, sizeof *b);
    if (b == NULL) {
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory");
    }
    nvlm_status st = NVLM_OK;
    for (int r = 0; r < t->size && st == NVLM_OK; r++) {
        if (!nv_kv_bytes(rows, kv_heads_of(t, r).count, head_dim, dtype, &b[r])) {
            st = nv_error(ex->err_handle, NVLM_ERR_LIMIT, "KV cache size overflows");
        }
    }
    if (st == NVLM_OK) {
        st = add_region(ex, b, kv_heads, head_dim, out);
    }
    nv_free(t->ctx, b);
    return st;
}

static void tp_free(nv_exec *ex, void *ptr)
{
    tp_exec *t = tx_of(ex);
    region g = set_take(&t->bufs, ptr);
    if (g.at != NULL) {
        for (int r = 0; r < t->size; r++) {
            rops(t, r)->free(t->rk[r].ex, g.at[r]);
        }
        nv_free(t->ctx, g.at);
    }
}

/* Forwards rank r's failure text to the exec's handle. */
static nvlm_status rank_err(nv_exec *ex, int r, nvlm_status st)
{
    tp_exec *t = tx_of(ex);
    return st == NVLM_OK ? st
                         : nv_error(ex->err_handle, st, "tensor-parallel rank %d: %s", r,
                                    t->rk[r].err.err);
}

static nvlm_status tp_upload(nv_exec *ex, void *dst, const void *host, size_t bytes)
{
    tp_exec *t = tx_of(ex);
    for (int r = 0; r < t->size; r++) {
        NVLM_TRY(rank_err(ex, r, rops(t, r)->upload(t->rk[r].ex, at(t, r, dst), host, bytes)));
    }
    return NVLM_OK;
}

/* Every rank holds the same values in what the pipeline downloads: read rank 0's. */
static nvlm_status tp_download(nv_exec *ex, void *host, const void *src, size_t bytes)
{
    tp_exec *t = tx_of(ex);
    return rank_err(ex, 0, rops(t, 0)->download(t->rk[0].ex, host, src, bytes));
}

/* A copy of whole KV cache rows moves each rank's shorter rows. */
static nvlm_status tp_copy(nv_exec *ex, void *dst, const void *src, size_t bytes)
{
    tp_exec *t = tx_of(ex);
    const region *g = region_of(t, src);
    for (int r = 0; r < t->size; r++) {
        size_t b = bytes;
        if (g != NULL && g->kv_heads > 0) {
            b = bytes / (size_t)g->kv_heads * (size_t)kv_heads_of(t, r).count;
        }
        NVLM_TRY(rank_err(ex, r, rops(t, r)->copy(t->rk[r].ex, at(t, r, dst), at(t, r, src),
                                                   b)));
    }
    return NVLM_OK;
}

static nvlm_status tp_copy_2d(nv_exec *ex, void *dst, size_t dpitch, const void *src,
                              size_t spitch, size_t width, size_t rows)
{
    tp_exec *t = tx_of(ex);
    for (int r = 0; r < t->size; r++) {
        NVLM_TRY(rank_err(ex, r, rops(t, r)->copy_2d(t->rk[r].ex, at(t, r, dst), dpitch,
                                                      at(t, r, src), spitch, width, rows)));
    }
    return NVLM_OK;
}

static nvlm_status tp_zero(nv_exec *ex, void *dst, size_t bytes)
{
    tp_exec *t = tx_of(ex);
    for (int r = 0; r < t->size; r++) {
        NVLM_TRY(rank_err(ex, r, rops(t, r)->zero(t->rk[r].ex, at(t, r, dst), bytes)));
    }
    return NVLM_OK;
}

static nvlm_status tp_sync(nv_exec *ex)
{
    tp_exec *t = tx_of(ex);
    for (int r = 0; r < t->size; r++) {
        NVLM_TRY(rank_err(ex, r, rops(t, r)->sync(t->rk[r].ex)));
    }
    return NVLM_OK;
}

/* ---- compute ---------------------------------------------------------------------------- */

typedef struct matmul_args {
    float *y;
    const float *x;
    const nv_bweight *w, *bias;
    int M;
} matmul_args;

static const nv_bweight *rw(const nv_bweight *w, int r)
{
    return w != NULL ? &((const tp_weight *)w->impl)->rank[r] : NULL;
}

/* Column-parallel: the rank's output columns (of each q/k/v block) into y; vocab-parallel
 * (gather): then every rank's columns to every rank. */
static nvlm_status matmul_cols_out(tp_exec *t, int r, const matmul_args *a, const tp_slice *s,
                                   bool gather)
{
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    const tp_weight *tw = a->w->impl;
    size_t N = (size_t)a->w->t.shape[0];
    size_t M = (size_t)a->M;
    float *y = at(t, r, a->y);
    const float *x = at(t, r, a->x);
    size_t width = (size_t)s->blocks * (size_t)s->count;
    if (!gather && s->blocks == 1 && M == 1 && width > 0) {
        /* one row: the rank's columns are contiguous in y */
        return op->matmul(ex, y + s->begin, x, rw(a->w, r), rw(a->bias, r), 1);
    }
    float *part = NULL;
    NVLM_TRY(scratch(t, r, 0, M * NV_MAX(width, (size_t)1), &part));
    if (width > 0) {
        NVLM_TRY(op->matmul(ex, part, x, rw(a->w, r), rw(a->bias, r), a->M));
    }
    if (!gather) {
        for (int b = 0; b < s->blocks; b++) {
            NVLM_TRY(op->copy_2d(ex, y + (size_t)b * (size_t)s->block_rows + (size_t)s->begin,
                                 N * 4, part + (size_t)b * (size_t)s->count, width * 4,
                                 (size_t)s->count * 4, M));
        }
        return NVLM_OK;
    }
    /* this rank's (M, width) padded to the largest rank's (M, pad), every rank's gathered,
     * their columns unpacked into y */
    const tp_plan *plan = &t->tb->plan;
    size_t pad = (size_t)(tp_plan_max_count(plan, tw->cut.part) * plan->unit[tw->cut.part]);
    float *padded = NULL;
    float *all = NULL;
    NVLM_TRY(scratch(t, r, 1, M * pad, &padded));
    NVLM_TRY(scratch(t, r, 2, M * pad * (size_t)t->size, &all));
    NVLM_TRY(op->zero(ex, padded, M * pad * 4));
    NVLM_TRY(op->copy_2d(ex, padded, pad * 4, part, width * 4, width * 4, M));
    NVLM_TRY(coll_gather(t, r, padded, M * pad * 4, all));
    for (int k = 0; k < t->size; k++) {
        const tp_slice *sk = &tw->slice[k];
        NVLM_TRY(op->copy_2d(ex, y + sk->begin, N * 4, all + (size_t)k * M * pad, pad * 4,
                             (size_t)sk->count * 4, M));
    }
    return NVLM_OK;
}

/* Row-parallel: the rank's input columns times its weight columns, all-reduced, bias once. */
static nvlm_status matmul_rows_in(tp_exec *t, int r, const matmul_args *a, const tp_slice *s)
{
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    int64_t N = a->w->t.shape[0];
    int64_t K = a->w->t.shape[1];
    size_t M = (size_t)a->M;
    float *y = at(t, r, a->y);
    const float *x = at(t, r, a->x);
    if (s->count == 0) {
        NVLM_TRY(op->zero(ex, y, M * (size_t)N * 4));
    } else {
        const float *xs = x + s->begin;
        if (M > 1 && s->count < K) {
            float *g = NULL;
            NVLM_TRY(scratch(t, r, 0, M * (size_t)s->count, &g));
            NVLM_TRY(op->copy_2d(ex, g, (size_t)s->count * 4, xs, (size_t)K * 4,
                                 (size_t)s->count * 4, M));
            xs = g;
        }
        NVLM_TRY(op->matmul(ex, y, xs, rw(a->w, r), NULL, a->M));
    }
    NVLM_TRY(coll_sum(t, r, y, M * (size_t)N));
    if (a->bias != NULL) {
        NVLM_TRY(op->add_rows(ex, y, rw(a->bias, r), 1, a->M, (int)N));
    }
    return NVLM_OK;
}

static nvlm_status run_matmul(tp_exec *t, int r, const void *p)
{
    const matmul_args *a = p;
    const tp_weight *tw = a->w->impl;
    const tp_slice *s = &tw->slice[r];
    if (s->whole) {
        return rops(t, r)->matmul(t->rk[r].ex, at(t, r, a->y), at(t, r, a->x), rw(a->w, r),
                                  rw(a->bias, r), a->M);
    }
    if (s->cols) {
        return matmul_rows_in(t, r, a, s);
    }
    return matmul_cols_out(t, r, a, s, tw->cut.part == NV_TP_VOCAB);
}

static nvlm_status tp_matmul(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                             const nv_bweight *bias, int M)
{
    matmul_args a = {y, x, w, bias, M};
    return run_all(ex, run_matmul, &a);
}

typedef struct norm_args {
    float *y;
    const float *x;
    int ldy, ldx;
    const nv_bweight *w, *b;
    int rows, cols, stat_cols;
    float eps;
} norm_args;

/* A replicated RMSNorm, or the ViT QK-norm over the rank's head columns: partial sums of
 * squares over its real channels (those below stat_cols), all-reduced, then the scaling. */
static nvlm_status run_rmsnorm(tp_exec *t, int r, const void *p)
{
    const norm_args *a = p;
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    const tp_slice *s = &((const tp_weight *)a->w->impl)->slice[r];
    float *y = at(t, r, a->y);
    const float *x = at(t, r, a->x);
    if (s->whole) {
        return op->rmsnorm(ex, y, a->ldy, x, a->ldx, rw(a->w, r), a->rows, a->cols,
                           a->stat_cols, a->eps);
    }
    if (op->rows_sumsq == NULL || op->rmsnorm_scale == NULL) {
        return nv_error(&t->rk[r].err, NVLM_ERR_UNSUPPORTED,
                        "the %s backend cannot split a norm over ranks", op->name);
    }
    float *ss = NULL;
    NVLM_TRY(scratch(t, r, 0, (size_t)a->rows, &ss));
    int64_t real = NV_MAX((int64_t)0, NV_MIN(s->begin + s->count, (int64_t)a->stat_cols) -
                                          s->begin);
    NVLM_TRY(op->rows_sumsq(ex, ss, x + s->begin, a->ldx, a->rows, (int)real));
    NVLM_TRY(coll_sum(t, r, ss, (size_t)a->rows));
    if (s->count == 0) {
        return NVLM_OK;
    }
    return op->rmsnorm_scale(ex, y + s->begin, a->ldy, x + s->begin, a->ldx, rw(a->w, r),
                             a->rows, (int)s->count, ss, a->stat_cols, a->eps);
}

static nvlm_status tp_rmsnorm(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                              const nv_bweight *w, int rows, int cols, int stat_cols, float eps)
{
    norm_args a = {y, x, ldy, ldx, w, NULL, rows, cols, stat_cols, eps};
    return run_all(ex, run_rmsnorm, &a);
}

static nvlm_status run_layernorm(tp_exec *t, int r, const void *p)
{
    const norm_args *a = p;
    return rops(t, r)->layernorm(t->rk[r].ex, at(t, r, a->y), at(t, r, a->x), rw(a->w, r),
                                 rw(a->b, r), a->rows, a->cols, a->eps);
}

static nvlm_status tp_layernorm(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                                const nv_bweight *b, int rows, int cols, float eps)
{
    norm_args a = {y, x, 0, 0, w, b, rows, cols, cols, eps};
    return run_all(ex, run_layernorm, &a);
}

typedef struct rope_args {
    float *x;
    int ld, rows, n_heads, head_dim;
    int64_t pos0;
    double theta;
} rope_args;

/* Replicated: every rank rotates every head (the columns of other ranks' heads are never
 * read; a rope is cheap next to the matmuls around it). */
static nvlm_status run_rope(tp_exec *t, int r, const void *p)
{
    const rope_args *a = p;
    return rops(t, r)->rope(t->rk[r].ex, at(t, r, a->x), a->ld, a->rows, a->n_heads,
                            a->head_dim, a->pos0, a->theta);
}

static nvlm_status tp_rope(nv_exec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
                           int64_t pos0, double theta)
{
    rope_args a = {x, ld, rows, n_heads, head_dim, pos0, theta};
    return run_all(ex, run_rope, &a);
}

typedef struct attn_args {
    float *out;
    int ldo;
    const float *q;
    int ldq;
    const void *k, *v;
    int ldkv;
    nv_dtype kv_type;
    int batch, n_q, n_kv, n_heads, n_kv_heads, head_dim;
    float scale;
    int64_t causal_pos0;
    nv_tp_part heads;
} attn_args;

/* Query heads [h0, h0 + n) with their kv heads [k0, k0 + nk): in a KV cache the rank's rows
 * start at its first kv head. */
static nvlm_status attend(tp_exec *t, int r, const attn_args *a, int h0, int n, int k0, int nk)
{
    size_t kv_es = nv_dtype_size(a->kv_type);
    int hd = a->head_dim;
    float *out = (float *)at(t, r, a->out) + (size_t)h0 * hd;
    const float *q = (const float *)at(t, r, a->q) + (size_t)h0 * hd;
    int ldkv = a->ldkv;
    int64_t first = 0;
    const region *g = region_of(t, a->k);
    if (g != NULL && g->kv_heads > 0) {
        tp_range mine = kv_heads_of(t, r);
        ldkv = (int)mine.count * hd;
        first = mine.begin;
    }
    const char *k = (const char *)at(t, r, a->k) + (size_t)(k0 - first) * hd * kv_es;
    const char *v = (const char *)at(t, r, a->v) + (size_t)(k0 - first) * hd * kv_es;
    return rops(t, r)->attention(t->rk[r].ex, out, a->ldo, q, a->ldq, k, v, ldkv, a->kv_type,
                                 a->batch, a->n_q, a->n_kv, n, nk, hd, a->scale, a->causal_pos0,
                                 a->heads);
}

static nvlm_status run_attention(tp_exec *t, int r, const void *p)
{
    const attn_args *a = p;
    tp_range q = {0, a->n_heads};
    if (a->heads == NV_TP_LLM_HEADS || a->heads == NV_TP_VIT_HEADS) {
        q = tp_plan_range(&t->tb->plan, r, a->heads);
    }
    /* the ViT may attend over its real heads only (dummy heads skipped) */
    int64_t end = NV_MIN(q.begin + q.count, (int64_t)a->n_heads);
    int h0 = (int)q.begin;
    int n = (int)(end - q.begin);
    if (n <= 0) {
        return NVLM_OK;
    }
    int g = a->n_heads / a->n_kv_heads;
    if (h0 % g == 0 && n % g == 0) {
        return attend(t, r, a, h0, n, h0 / g, n / g);
    }
    /* the rank's heads straddle kv groups: one call per kv head */
    for (int kv = h0 / g; kv <= (h0 + n - 1) / g; kv++) {
        int lo = NV_MAX(h0, kv * g);
        int hi = NV_MIN(h0 + n, (kv + 1) * g);
        NVLM_TRY(attend(t, r, a, lo, hi - lo, kv, 1));
    }
    return NVLM_OK;
}

static nvlm_status tp_attention(nv_exec *ex, float *out, int ldo, const float *q, int ldq,
                                const void *k, const void *v, int ldkv, nv_dtype kv_type,
                                int batch, int n_q, int n_kv, int n_heads, int n_kv_heads,
                                int head_dim, float scale, int64_t causal_pos0, nv_tp_part heads)
{
    if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0) {
        return nv_error(ex->err_handle, NVLM_ERR_INTERNAL, "bad attention shape");
    }
    attn_args a = {out, ldo, q, ldq, k, v, ldkv, kv_type, batch, n_q, n_kv, n_heads, n_kv_heads,
                   head_dim, scale, causal_pos0, heads};
    return run_all(ex, run_attention, &a);
}

/* Replicated elementwise and data-movement ops: the same call on every rank's copies. */
typedef struct ew_args {
    int kind;
    float *y;
    const float *x, *x2;
    const void *src;
    const nv_bweight *w;
    const int32_t *di, *si;
    nv_dtype type;
    size_t n;
    int64_t row0;
    int a, b, c, d, e;
} ew_args;

enum { EW_GELU, EW_SILU, EW_ADD_SCALED, EW_ADD_ROWS, EW_ROWS_COPY, EW_STORE, EW_IM2COL };

static nvlm_status run_ew(tp_exec *t, int r, const void *p)
{
    const ew_args *a = p;
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    float *y = at(t, r, a->y);
    switch (a->kind) {
    case EW_GELU:
        return op->gelu(ex, y, at(t, r, a->x), a->n);
    case EW_SILU:
        return op->silu_mul(ex, y, at(t, r, a->x), at(t, r, a->x2), a->n);
    case EW_ADD_SCALED:
        return op->add_scaled(ex, y, at(t, r, a->x), rw(a->w, r), a->a, a->b);
    case EW_ADD_ROWS:
        return op->add_rows(ex, y, rw(a->w, r), a->a, a->b, a->c);
    case EW_ROWS_COPY:
        return op->rows_copy(ex, y, a->di, at(t, r, a->src), a->type, a->si, a->n, a->a);
    case EW_STORE: {
        /* into a KV cache: the columns of the rank's kv heads */
        const region *g = region_of(t, a->src);
        const float *x = at(t, r, a->x);
        int cols = a->b;
        if (g != NULL && g->kv_heads > 0) {
            tp_range mine = kv_heads_of(t, r);
            x += (size_t)mine.begin * g->head_dim;
            cols = (int)mine.count * g->head_dim;
        }
        return op->store_rows(ex, at(t, r, a->src), a->type, a->row0, x, a->a, a->n, cols);
    }
    default:
        return op->im2col(ex, y, at(t, r, a->x), a->a, a->b, a->c, a->d, a->e);
    }
}

static nvlm_status tp_gelu(nv_exec *ex, float *y, const float *x, size_t n)
{
    ew_args a = {.kind = EW_GELU, .y = y, .x = x, .n = n};
    return run_all(ex, run_ew, &a);
}

static nvlm_status tp_silu_mul(nv_exec *ex, float *y, const float *g, const float *u, size_t n)
{
    ew_args a = {.kind = EW_SILU, .y = y, .x = g, .x2 = u, .n = n};
    return run_all(ex, run_ew, &a);
}

static nvlm_status tp_add_scaled(nv_exec *ex, float *y, const float *x, const nv_bweight *s,
                                 int rows, int cols)
{
    ew_args a = {.kind = EW_ADD_SCALED, .y = y, .x = x, .w = s, .a = rows, .b = cols};
    return run_all(ex, run_ew, &a);
}

typedef struct addnorm_args {
    float *h;
    const float *a;
    const nv_bweight *s;
    float *x;
    const nv_bweight *w;
    int rows, cols;
    float eps;
} addnorm_args;

/* Replicated activations and norm weight: each rank's own fused op, or its two plain ones. */
static nvlm_status run_add_rmsnorm(tp_exec *t, int r, const void *p)
{
    const addnorm_args *a = p;
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    float *h = at(t, r, a->h);
    const float *in = at(t, r, a->a);
    float *x = at(t, r, a->x);
    if (op->add_rmsnorm != NULL) {
        return op->add_rmsnorm(ex, h, in, rw(a->s, r), x, rw(a->w, r), a->rows, a->cols, a->eps);
    }
    if (in != NULL) {
        NVLM_TRY(op->add_scaled(ex, h, in, rw(a->s, r), a->rows, a->cols));
    }
    return op->rmsnorm(ex, x, a->cols, h, a->cols, rw(a->w, r), a->rows, a->cols, a->cols,
                       a->eps);
}

static nvlm_status tp_add_rmsnorm(nv_exec *ex, float *h, const float *a, const nv_bweight *s,
                                  float *x, const nv_bweight *w, int rows, int cols, float eps)
{
    if (!((const tp_weight *)w->impl)->slice[0].whole) {
        /* a norm spread over the ranks: the plain ops (tp_rmsnorm all-reduces its statistic) */
        if (a != NULL) {
            NVLM_TRY(tp_add_scaled(ex, h, a, s, rows, cols));
        }
        return tp_rmsnorm(ex, x, cols, h, cols, w, rows, cols, cols, eps);
    }
    addnorm_args args = {h, a, s, x, w, rows, cols, eps};
    return run_all(ex, run_add_rmsnorm, &args);
}

typedef struct ropestore_args {
    void *dst;
    nv_dtype type;
    int64_t row0;
    float *src;
    int lds, rows, n_heads, head_dim;
    double theta;
} ropestore_args;

/* Into a KV cache: the rank's kv heads (their columns of src, as EW_STORE takes them). */
static nvlm_status run_rope_store(tp_exec *t, int r, const void *p)
{
    const ropestore_args *a = p;
    const nv_backend_ops *op = rops(t, r);
    nv_exec *ex = t->rk[r].ex;
    const region *g = region_of(t, a->dst);
    float *x = at(t, r, a->src);
    int heads = a->n_heads;
    if (g != NULL && g->kv_heads > 0) {
        tp_range mine = kv_heads_of(t, r);
        x += (size_t)mine.begin * a->head_dim;
        heads = (int)mine.count;
    }
    if (heads <= 0 || a->rows <= 0) {
        return NVLM_OK;
    }
    void *dst = at(t, r, a->dst);
    if (op->rope_store != NULL) {
        return op->rope_store(ex, dst, a->type, a->row0, x, a->lds, a->rows, heads, a->head_dim,
                              a->theta);
    }
    NVLM_TRY(op->rope(ex, x, a->lds, a->rows, heads, a->head_dim, a->row0, a->theta));
    return op->store_rows(ex, dst, a->type, a->row0, x, a->lds, (size_t)a->rows,
                          heads * a->head_dim);
}

static nvlm_status tp_rope_store(nv_exec *ex, void *dst, nv_dtype type, int64_t row0, float *src,
                                 int lds, int rows, int n_heads, int head_dim, double theta)
{
    ropestore_args a = {dst, type, row0, src, lds, rows, n_heads, head_dim, theta};
    return run_all(ex, run_rope_store, &a);
}

static nvlm_status tp_add_rows(nv_exec *ex, float *y, const nv_bweight *b, int b_rows, int rows,
                               int cols)
{
    ew_args a = {.kind = EW_ADD_ROWS, .y = y, .w = b, .a = b_rows, .b = rows, .c = cols};
    return run_all(ex, run_ew, &a);
}

static nvlm_status tp_rows_copy(nv_exec *ex, float *dst, const int32_t *dst_idx, const void *src,
                                nv_dtype src_type, const int32_t *src_idx, size_t n, int cols)
{
    ew_args a = {.kind = EW_ROWS_COPY, .y = dst, .di = dst_idx, .src = src, .type = src_type,
                 .si = src_idx, .n = n, .a = cols};
    return run_all(ex, run_ew, &a);
}

static nvlm_status tp_store_rows(nv_exec *ex, void *dst, nv_dtype type, int64_t row0,
                                 const float *src, int lds, size_t n, int cols)
{
    ew_args a = {.kind = EW_STORE, .src = dst, .type = type, .row0 = row0, .x = src, .a = lds,
                 .n = n, .b = cols};
    return run_all(ex, run_ew, &a);
}

static nvlm_status tp_im2col(nv_exec *ex, float *out, const float *pix, int batch, int channels,
                             int height, int width, int patch)
{
    ew_args a = {.kind = EW_IM2COL, .y = out, .x = pix, .a = batch, .b = channels, .c = height,
                 .d = width, .e = patch};
    return run_all(ex, run_ew, &a);
}

/* ---- exec lifetime ---------------------------------------------------------------------- */

static void tp_exec_free(nv_exec *ex)
{
    if (ex == NULL) {
        return;
    }
    tp_exec *t = tx_of(ex);
    nvlm_context *ctx = ex->be->ctx;
    if (t != NULL) {
        pthread_mutex_lock(&t->lock);
        atomic_store(&t->quit, true);
        pthread_cond_broadcast(&t->go);
        pthread_mutex_unlock(&t->lock);
        /* rk is NULL when the exec's creation failed that early */
        int n_ranks = t->rk != NULL ? t->size : 0;
        for (int r = 0; r < n_ranks; r++) {
            if (t->rk[r].started) {
                pthread_join(t->rk[r].thread, NULL);
            }
        }
        while (t->bufs.n > 0) {
            tp_free(ex, t->bufs.v[t->bufs.n - 1].base);
        }
        for (int r = 0; r < n_ranks; r++) {
            rank_state *rs = &t->rk[r];
            for (int i = 0; i < 3; i++) {
                if (rs->scr[i] != NULL) {
                    rops(t, r)->free(rs->ex, rs->scr[i]);
                }
            }
            nv_free(ctx, rs->host[0]);
            nv_free(ctx, rs->host[1]);
            if (rs->ex != NULL) {
                rops(t, r)->exec_free(rs->ex);
            }
        }
        if (t->comm != NULL && t->comm != t->tb->shared) {
            t->comm->ops->destroy(t->comm);
        }
        pthread_cond_destroy(&t->go);
        pthread_cond_destroy(&t->done);
        pthread_mutex_destroy(&t->lock);
        nv_free(ctx, t->bufs.v);
        nv_free(ctx, t->st);
        nv_free(ctx, t->rk);
        nv_free(ctx, t);
    }
    nv_free(ctx, ex);
}

static nvlm_status tp_exec_create(nv_backend *be, int n_threads, void *err_handle,
                                  nv_exec **out)
{
    *out = NULL;
    tp_backend *tb = tb_of(be);
    nvlm_context *ctx = be->ctx;
    nv_exec *ex = nv_calloc(ctx, 1, sizeof *ex);
    tp_exec *t = nv_calloc(ctx, 1, sizeof *t);
    if (ex == NULL || t == NULL) {
        nv_free(ctx, ex);
        nv_free(ctx, t);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for an exec");
    }
    ex->be = be;
    ex->err_handle = err_handle;
    ex->impl = t;
    t->tb = tb;
    t->ctx = ctx;
    t->size = tb->size;
    t->fail_rank = -1;
    t->inject = -1;
    atomic_init(&t->job_id, 0);
    atomic_init(&t->n_done, 0);
    atomic_init(&t->quit, false);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->go, NULL);
    pthread_cond_init(&t->done, NULL);
    t->rk = nv_calloc(ctx, (size_t)t->size, sizeof *t->rk);
    t->st = nv_calloc(ctx, (size_t)t->size, sizeof *t->st);
    if (t->rk == NULL || t->st == NULL) {
        tp_exec_free(ex);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for an exec");
    }
    /* the threads are split over the ranks, at least one each, the first ranks taking the
     * extra ones */
    int threads = NV_MAX(n_threads, t->size);
    nvlm_status st = NVLM_OK;
    for (int r = 0; r < t->size && st == NVLM_OK; r++) {
        rank_state *rs = &t->rk[r];
        nv_handle_init(&rs->err, NV_MAGIC_DEAD, ctx);
        int n = (int)tp_split(threads, t->size, r).count;
        st = tb->rank[r]->ops->exec_create(tb->rank[r], n, &rs->err, &rs->ex);
        if (st != NVLM_OK) {
            nv_error_copy(err_handle, &rs->err, st);
        }
    }
    if (st == NVLM_OK && tb->shared != NULL) {
        t->comm = tb->shared;
    } else if (st == NVLM_OK) {
        st = tp_comm_local_create(ctx, t->size, err_handle, &t->comm);
    }
    for (int r = 1; r < t->size && st == NVLM_OK; r++) {
        worker_arg *a = nv_malloc(ctx, sizeof *a);
        if (a == NULL) {
            st = nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a rank");
            break;
        }
        a->t = t;
        a->r = r;
        if (pthread_create(&t->rk[r].thread, NULL, worker, a) != 0) {
            nv_free(ctx, a);
            st = nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "cannot start rank %d's thread", r);
            break;
        }
        t->rk[r].started = true;
    }
    if (st != NVLM_OK) {
        tp_exec_free(ex);
        return st;
    }
    *out = ex;
    return NVLM_OK;
}

void nv_tp_inject_failure(nv_exec *ex, int rank, int64_t op_count)
{
    tp_exec *t = tx_of(ex);
    pthread_mutex_lock(&t->lock);
    t->fail_rank = rank;
    t->fail_at = op_count;
    pthread_mutex_unlock(&t->lock);
}

/* ---- table ------------------------------------------------------------------------------ */

/* The calling thread runs rank 0 (and loads every rank's weights): its state is the ranks'
 * kind's, saved and restored by any rank's ops. */
static int tp_thread_enter(nv_backend *be)
{
    nv_backend *r0 = tb_of(be)->rank[0];
    return r0->ops->thread_enter != NULL ? r0->ops->thread_enter(r0) : 0;
}

static void tp_thread_leave(nv_backend *be, int saved)
{
    nv_backend *r0 = tb_of(be)->rank[0];
    if (r0->ops->thread_leave != NULL) {
        r0->ops->thread_leave(r0, saved);
    }
}

static const nv_backend_ops tp_ops = {
    .name = "tp",
    .weight_load = tp_weight_load,
    .weight_free = tp_weight_free,
    .destroy = tp_destroy,
    .thread_enter = tp_thread_enter,
    .thread_leave = tp_thread_leave,
    .exec_create = tp_exec_create,
    .exec_free = tp_exec_free,
    .alloc = tp_alloc,
    .alloc_kv = tp_alloc_kv,
    .free = tp_free,
    .upload = tp_upload,
    .download = tp_download,
    .copy = tp_copy,
    .copy_2d = tp_copy_2d,
    .zero = tp_zero,
    .sync = tp_sync,
    .matmul = tp_matmul,
    .rmsnorm = tp_rmsnorm,
    .layernorm = tp_layernorm,
    .rope = tp_rope,
    .attention = tp_attention,
    .gelu = tp_gelu,
    .silu_mul = tp_silu_mul,
    .add_scaled = tp_add_scaled,
    .add_rows = tp_add_rows,
    .rows_copy = tp_rows_copy,
    .store_rows = tp_store_rows,
    .im2col = tp_im2col,
    .add_rmsnorm = tp_add_rmsnorm,
    .rope_store = tp_rope_store,
};

nvlm_status nv_backend_tp_create(nvlm_context *ctx, const nv_config *cfg, nv_backend **ranks,
                                 int size, struct tp_comm *shared, void *err_handle,
                                 nv_backend **out)
{
    *out = NULL;
    tp_plan plan;
    nvlm_status st = tp_plan_init(&plan, cfg, size, err_handle);
    nv_backend *be = st == NVLM_OK ? nv_calloc(ctx, 1, sizeof *be) : NULL;
    tp_backend *tb = be != NULL ? nv_calloc(ctx, 1, sizeof *tb) : NULL;
    nv_backend **own = tb != NULL ? nv_calloc(ctx, (size_t)size, sizeof *own) : NULL;
    if (own == NULL) {
        if (shared != NULL) {
            shared->ops->destroy(shared);
        }
        for (int r = 0; r < size; r++) {
            ranks[r]->ops->destroy(ranks[r]);
        }
        nv_free(ctx, tb);
        nv_free(ctx, be);
        return st != NVLM_OK ? st
                             : nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY,
                                        "out of memory for the tensor-parallel backend");
    }
    memcpy(own, ranks, (size_t)size * sizeof *own);
    tb->size = size;
    tb->plan = plan;
    tb->rank = own;
    tb->shared = shared;
    pthread_mutex_init(&tb->turn, NULL);
    be->ops = &tp_ops;
    be->ctx = ctx;
    be->kv_default = ranks[0]->kv_default;
    be->precision = ranks[0]->precision;
    be->device_memory = ranks[0]->device_memory;
    be->impl = tb;
    *out = be;
    return NVLM_OK;
}

void nv_tp_set_staged(nv_backend *be, bool on)
{
    tb_of(be)->staged = on;
}

nvlm_status nv_tp_share_local_comm(nv_backend *be)
{
    tp_backend *tb = tb_of(be);
    if (tb->shared != NULL) {
        return NVLM_OK;
    }
    return tp_comm_local_create(be->ctx, tb->size, NULL, &tb->shared);
}
