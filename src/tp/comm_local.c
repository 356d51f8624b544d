/*
 * comm_local.c - the local communicator (comm.h): ranks are threads of one process. Each
 * collective publishes the ranks' buffers, meets at a barrier, lets every rank work on its own
 * share, and meets again. All-reduce: rank r sums chunk r of every buffer in rank order 0, 1,
 * ..., N-1 and writes the sum back into every buffer, so each element has one fixed order of
 * additions whatever the threads' timing.
 */
#include "tp/comm.h"

#include <stdatomic.h>
#include <string.h>

/* Iterations of a busy wait at a barrier before blocking (tens of microseconds: ranks usually
 * arrive within that of each other, and a sleep and wake-up costs 25-50 us on the dev VM). */
#define MEET_SPIN 20000

typedef struct local {
    nvlm_context *ctx;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int waiting;                /* ranks at the barrier (lock) */
    atomic_uint_fast64_t generation; /* barriers passed (written under lock) */
    nvlm_status aborted;        /* NVLM_OK while healthy */
    void **slot;                /* size: each rank's published buffer */
} local;

/* Waits until every rank has arrived, or the communicator is aborted: a short busy wait on
 * the generation, then blocking on the condition variable. */
static nvlm_status meet(tp_comm *c)
{
    local *l = c->impl;
    pthread_mutex_lock(&l->lock);
    nvlm_status st = l->aborted;
    if (st != NVLM_OK) {
        pthread_mutex_unlock(&l->lock);
        return st;
    }
    uint64_t gen = atomic_load(&l->generation);
    if (++l->waiting == c->size) {
        l->waiting = 0;
        atomic_store(&l->generation, gen + 1);
        pthread_cond_broadcast(&l->cond);
        pthread_mutex_unlock(&l->lock);
        return NVLM_OK;
    }
    pthread_mutex_unlock(&l->lock);
    for (int i = 0; i < MEET_SPIN && atomic_load(&l->generation) == gen; i++) {
    }
    pthread_mutex_lock(&l->lock);
    while (atomic_load(&l->generation) == gen && l->aborted == NVLM_OK) {
        pthread_cond_wait(&l->cond, &l->lock);
    }
    st = atomic_load(&l->generation) == gen ? l->aborted : NVLM_OK;
    pthread_mutex_unlock(&l->lock);
    return st;
}

static void publish(tp_comm *c, int rank, const void *p)
{
    local *l = c->impl;
    pthread_mutex_lock(&l->lock);
    l->slot[rank] = (void *)p;
    pthread_mutex_unlock(&l->lock);
}

/* The buffer rank k published, read between a collective's two barriers: the first barrier
 * orders it after the publish, and no rank publishes again before the second. */
static void *slot(tp_comm *c, int k)
{
    return ((local *)c->impl)->slot[k];
}

static nvlm_status all_reduce_sum(tp_comm *c, int rank, float *buf, size_t n)
{
    publish(c, rank, buf);
    NVLM_TRY(meet(c));
    int size = c->size;
    size_t lo = n / (size_t)size * (size_t)rank + NV_MIN((size_t)rank, n % (size_t)size);
    size_t hi = lo + n / (size_t)size + ((size_t)rank < n % (size_t)size ? 1 : 0);
    for (size_t i = lo; i < hi; i++) {
        float s = ((float *)slot(c, 0))[i];
        for (int k = 1; k < size; k++) {
            s += ((float *)slot(c, k))[i];
        }
        for (int k = 0; k < size; k++) {
            ((float *)slot(c, k))[i] = s;
        }
    }
    return meet(c);
}

static nvlm_status all_gather(tp_comm *c, int rank, const void *send, size_t bytes, void *recv)
{
    publish(c, rank, send);
    NVLM_TRY(meet(c));
    for (int k = 0; k < c->size; k++) {
        memcpy((char *)recv + (size_t)k * bytes, slot(c, k), bytes);
    }
    return meet(c);
}

static nvlm_status broadcast(tp_comm *c, int rank, void *buf, size_t bytes, int root)
{
    publish(c, rank, buf);
    NVLM_TRY(meet(c));
    if (rank != root) {
        memcpy(buf, slot(c, root), bytes);
    }
    return meet(c);
}

static nvlm_status barrier(tp_comm *c, int rank)
{
    (void)rank;
    return meet(c);
}

static void comm_abort(tp_comm *c, nvlm_status st)
{
    local *l = c->impl;
    pthread_mutex_lock(&l->lock);
    if (l->aborted == NVLM_OK) {
        l->aborted = st != NVLM_OK ? st : NVLM_ERR_BACKEND;
    }
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

static void comm_reset(tp_comm *c)
{
    local *l = c->impl;
    pthread_mutex_lock(&l->lock);
    l->aborted = NVLM_OK;
    l->waiting = 0;
    pthread_mutex_unlock(&l->lock);
}

static void destroy(tp_comm *c)
{
    if (c == NULL) {
        return;
    }
    local *l = c->impl;
    nvlm_context *ctx = l->ctx;
    pthread_cond_destroy(&l->cond);
    pthread_mutex_destroy(&l->lock);
    nv_free(ctx, l->slot);
    nv_free(ctx, l);
    nv_free(ctx, c);
}

static const tp_comm_ops local_ops = {
    "local", all_reduce_sum, all_gather, broadcast, barrier, comm_abort, comm_reset, destroy,
    false,
};

nvlm_status tp_comm_local_create(nvlm_context *ctx, int size, void *err_handle, tp_comm **out)
{
    *out = NULL;
    if (size < 1) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "communicator of %d ranks", size);
    }
    tp_comm *c = nv_calloc(ctx, 1, sizeof *c);
    local *l = nv_calloc(ctx, 1, sizeof *l);
    void **slots = nv_calloc(ctx, (size_t)size, sizeof(void *));
    if (c == NULL || l == NULL || slots == NULL) {
        nv_free(ctx, slots);
        nv_free(ctx, l);
        nv_free(ctx, c);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for a communicator");
    }
    l->ctx = ctx;
    l->slot = slots;
    atomic_init(&l->generation, 0);
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cond, NULL);
    c->ops = &local_ops;
    c->size = size;
    c->impl = l;
    *out = c;
    return NVLM_OK;
}
