/*
 * pool.c - the CPU backend's thread pool: n - 1 persistent workers plus the calling thread.
 * A run publishes (fn, arg) and bumps a generation counter; workers spin briefly on the
 * counter (a run every few microseconds during decode), then block on a condition variable.
 * No allocation per run; nv_pool_free wakes, stops and joins the workers.
 */
#include "cpu/kernels.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NV_CPU_RELAX() _mm_pause()
#else
#define NV_CPU_RELAX() ((void)0)
#endif

/* Spin iterations before blocking: about 10-50 us, long enough to bridge consecutive GEMMs of
 * one decode step, short enough not to burn a core when many pools share the machine. */
#ifndef POOL_SPIN
#define POOL_SPIN 20000
#endif

/* One spin step. Every YIELD_EVERY steps the thread offers its core to any other runnable
 * thread: on a machine busy with other work a spinning worker otherwise takes the time slice
 * the thread it waits for needs (measured: decode GEMV at a third of its speed). */
#ifndef YIELD_EVERY
#define YIELD_EVERY 64
#endif
static inline void spin_pause(int s)
{
    if (YIELD_EVERY > 0 && s % YIELD_EVERY == YIELD_EVERY - 1) {
        sched_yield();
    } else {
        NV_CPU_RELAX();
    }
}

typedef struct pool_worker {
    struct nv_pool *pool;
    int index;
} pool_worker;

struct nv_pool {
    nvlm_context *ctx;
    int n;                       /* threads including the caller */
    int n_started;               /* workers actually running */
    int spin;                    /* spin iterations before blocking; 0 when oversubscribed */
    pthread_t *threads;          /* n - 1 */
    pool_worker *workers;        /* n - 1 */
    void *scratch_raw;           /* n * NV_POOL_SCRATCH bytes + alignment slack */
    char *scratch;               /* 64-byte aligned start */
    pthread_mutex_t mu;
    pthread_cond_t cv_start;     /* generation advanced or stop */
    pthread_cond_t cv_done;      /* pending reached 0 */
    void (*fn)(void *arg, int i, int n);
    void *arg;
    atomic_uint gen;             /* written under mu, read lock-free by spinning workers */
    atomic_int pending;          /* workers still running the current generation */
    atomic_bool stop;
};

static void *worker_main(void *p)
{
    pool_worker *w = p;
    nv_pool *pool = w->pool;
    /* Generation 0 is the state at creation: a run may start before this thread does. */
    unsigned seen = 0;
    for (;;) {
        unsigned g = seen;
        for (int s = 0; s < pool->spin; s++) {
            g = atomic_load_explicit(&pool->gen, memory_order_acquire);
            if (g != seen || atomic_load_explicit(&pool->stop, memory_order_acquire)) {
                break;
            }
            spin_pause(s);
        }
        if (g == seen) {
            pthread_mutex_lock(&pool->mu);
            for (;;) {
                g = atomic_load_explicit(&pool->gen, memory_order_acquire);
                if (g != seen || atomic_load_explicit(&pool->stop, memory_order_acquire)) {
                    break;
                }
                pthread_cond_wait(&pool->cv_start, &pool->mu);
            }
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            return NULL;
        }
        seen = g;
        /* fn/arg were stored before the release increment of gen that we acquired. */
        pool->fn(pool->arg, w->index, pool->n);
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->mu);
            pthread_cond_signal(&pool->cv_done);
            pthread_mutex_unlock(&pool->mu);
        }
    }
}

static void pool_stop(nv_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    atomic_store_explicit(&pool->stop, true, memory_order_release);
    pthread_cond_broadcast(&pool->cv_start);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->n_started; i++) {
        pthread_join(pool->threads[i], NULL);
    }
    pool->n_started = 0;
}

/* Destroys the first n_sync of the pool's mutex and condition variables (in the order they are
 * made: mu, cv_start, cv_done) and frees its memory. No worker may be running. */
static void pool_release(nv_pool *pool, int n_sync)
{
    if (n_sync >= 3) {
        pthread_cond_destroy(&pool->cv_done);
    }
    if (n_sync >= 2) {
        pthread_cond_destroy(&pool->cv_start);
    }
    if (n_sync >= 1) {
        pthread_mutex_destroy(&pool->mu);
    }
    nvlm_context *ctx = pool->ctx;
    nv_free(ctx, pool->scratch_raw);
    nv_free(ctx, pool->threads);
    nv_free(ctx, pool->workers);
    nv_free(ctx, pool);
}

nvlm_status nv_pool_create(nvlm_context *ctx, int n_threads, nv_pool **out)
{
    if (out == NULL) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "nv_pool_create: out is NULL");
    }
    *out = NULL;
    if (n_threads < 1 || n_threads > 4096) {
        return nv_error(ctx, NVLM_ERR_INVALID_ARGUMENT, "thread count %d out of range 1..4096",
                        n_threads);
    }
    nv_pool *pool = nv_calloc(ctx, 1, sizeof(*pool));
    if (pool == NULL) {
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
    }
    pool->ctx = ctx;
    pool->n = n_threads;
    /* More threads than cores: a spinning thread would hold the core a sleeping one needs. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    pool->spin = cores > 0 && n_threads > cores ? 0 : POOL_SPIN;
    atomic_init(&pool->gen, 0u);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->stop, false);
    if (n_threads > 1) {
        pool->threads = nv_calloc(ctx, (size_t)n_threads - 1, sizeof(*pool->threads));
        pool->workers = nv_calloc(ctx, (size_t)n_threads - 1, sizeof(*pool->workers));
        if (pool->threads == NULL || pool->workers == NULL) {
            pool_release(pool, 0);
            return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
        }
    }
    size_t scratch_bytes = (size_t)n_threads * NV_POOL_SCRATCH + 64;
    pool->scratch_raw = nv_malloc(ctx, scratch_bytes);
    if (pool->scratch_raw == NULL) {
        pool_release(pool, 0);
        return nv_error(ctx, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
    }
    pool->scratch = (char *)(((uintptr_t)pool->scratch_raw + 63u) & ~(uintptr_t)63u);
    int n_sync = pthread_mutex_init(&pool->mu, NULL) == 0 ? 1 : 0;
    if (n_sync == 1 && pthread_cond_init(&pool->cv_start, NULL) == 0) {
        n_sync = 2;
    }
    if (n_sync == 2 && pthread_cond_init(&pool->cv_done, NULL) == 0) {
        n_sync = 3;
    }
    if (n_sync < 3) {
        pool_release(pool, n_sync);
        return nv_error(ctx, NVLM_ERR_INTERNAL, "%s failed",
                        n_sync == 0 ? "pthread_mutex_init" : "pthread_cond_init");
    }
    for (int i = 0; i < n_threads - 1; i++) {
        pool->workers[i].pool = pool;
        pool->workers[i].index = i + 1;
        int rc = pthread_create(&pool->threads[i], NULL, worker_main, &pool->workers[i]);
        if (rc != 0) {
            nv_pool_free(pool);
            return nv_error(ctx, NVLM_ERR_INTERNAL, "cannot start worker thread %d of %d: %s",
                            i + 1, n_threads - 1, strerror(rc));
        }
        pool->n_started = i + 1;
    }
    *out = pool;
    return NVLM_OK;
}

void nv_pool_free(nv_pool *pool)
{
    if (pool == NULL) {
        return;
    }
    pool_stop(pool);
    pool_release(pool, 3);
}

void *nv_pool_scratch(nv_pool *pool, int i)
{
    if (pool == NULL || i < 0 || i >= pool->n) {
        return NULL;
    }
    return pool->scratch + (size_t)i * NV_POOL_SCRATCH;
}

int nv_pool_size(const nv_pool *pool)
{
    return pool != NULL ? pool->n : 1;
}

void nv_pool_run(nv_pool *pool, void (*fn)(void *arg, int i, int n), void *arg)
{
    if (pool == NULL || pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->pending, pool->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool->mu);
    atomic_fetch_add_explicit(&pool->gen, 1u, memory_order_release);
    pthread_cond_broadcast(&pool->cv_start);
    pthread_mutex_unlock(&pool->mu);

    fn(arg, 0, pool->n);

    for (int s = 0; s < pool->spin; s++) {
        if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0) {
            return;
        }
        spin_pause(s);
    }
    pthread_mutex_lock(&pool->mu);
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0) {
        pthread_cond_wait(&pool->cv_done, &pool->mu);
    }
    pthread_mutex_unlock(&pool->mu);
}
