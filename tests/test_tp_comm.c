/*
 * test_tp_comm.c - the local communicator (src/tp/comm_local.c): ranks as threads. All-reduce
 * equals the sum in rank order 0..N-1, bit for bit, on every rank and in repeated calls;
 * all-gather and broadcast; an abort from one rank releases every rank waiting in a collective
 * within a second, and later calls fail until reset.
 */
#include "testutil.h"
#include "tp/comm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_RANKS 8
#define N_ELEMS 1031

typedef struct rank_arg {
    tp_comm *c;
    int rank;
    int rounds;
    float *buf;            /* N_ELEMS per round */
    float gathered[MAX_RANKS * 4];
    int bcast[3];
    nvlm_status st;
    bool abort_first;      /* this rank aborts instead of joining */
    double waited_ms;
} rank_arg;

static float value(int rank, int round, size_t i)
{
    /* magnitudes far apart so that the order of additions shows in the bits */
    uint32_t x = (uint32_t)(rank * 7919 + round * 104729 + (int)i * 31 + 1) * 2654435761u;
    return ((float)(x >> 8) / 16777216.0f - 0.5f) * powf(10.0f, (float)((rank + (int)i) % 7));
}

static void *run_rank(void *p)
{
    rank_arg *a = p;
    for (int round = 0; round < a->rounds && a->st == NVLM_OK; round++) {
        float *b = a->buf + (size_t)round * N_ELEMS;
        for (size_t i = 0; i < N_ELEMS; i++) {
            b[i] = value(a->rank, round, i);
        }
        a->st = a->c->ops->all_reduce_sum(a->c, a->rank, b, N_ELEMS);
    }
    float mine[4] = {(float)a->rank, (float)a->rank + 0.5f, -1.0f, 2.0f * (float)a->rank};
    if (a->st == NVLM_OK) {
        a->st = a->c->ops->all_gather(a->c, a->rank, mine, sizeof mine, a->gathered);
    }
    a->bcast[0] = a->rank == 1 ? 42 : -a->rank;
    a->bcast[1] = a->rank == 1 ? 43 : 0;
    a->bcast[2] = a->rank == 1 ? 44 : 0;
    if (a->st == NVLM_OK) {
        a->st = a->c->ops->broadcast(a->c, a->rank, a->bcast, sizeof a->bcast,
                                     a->c->size > 1 ? 1 : 0);
    }
    return NULL;
}

static void test_collectives(nvlm_context *ctx, int size)
{
    tp_comm *c = NULL;
    CHECK_OK(tp_comm_local_create(ctx, size, NULL, &c));
    if (c == NULL) {
        return;
    }
    int rounds = 5;
    rank_arg a[MAX_RANKS];
    pthread_t th[MAX_RANKS];
    memset(a, 0, sizeof a);
    for (int r = 0; r < size; r++) {
        a[r].c = c;
        a[r].rank = r;
        a[r].rounds = rounds;
        a[r].buf = malloc(sizeof(float) * N_ELEMS * (size_t)rounds);
        pthread_create(&th[r], NULL, run_rank, &a[r]);
    }
    for (int r = 0; r < size; r++) {
        pthread_join(th[r], NULL);
    }
    int bad_sum = 0, bad_status = 0, bad_gather = 0, bad_bcast = 0;
    for (int r = 0; r < size; r++) {
        bad_status += a[r].st != NVLM_OK;
        for (int round = 0; round < rounds; round++) {
            for (size_t i = 0; i < N_ELEMS; i++) {
                float want = value(0, round, i);
                for (int k = 1; k < size; k++) {
                    want += value(k, round, i);
                }
                float got = a[r].buf[(size_t)round * N_ELEMS + i];
                bad_sum += memcmp(&got, &want, sizeof got) != 0;
            }
        }
        for (int k = 0; k < size; k++) {
            const float *g = a[r].gathered + 4 * k;
            bad_gather += g[0] != (float)k || g[1] != (float)k + 0.5f || g[2] != -1.0f ||
                          g[3] != 2.0f * (float)k;
        }
        if (size > 1) {
            bad_bcast += a[r].bcast[0] != 42 || a[r].bcast[1] != 43 || a[r].bcast[2] != 44;
        }
        free(a[r].buf);
    }
    CHECK(bad_status == 0, "%d ranks: every collective returns NVLM_OK", size);
    CHECK(bad_sum == 0, "%d ranks: all-reduce = the rank-order sum, bitwise, on every rank "
          "(%d elements differ)", size, bad_sum);
    CHECK(bad_gather == 0, "%d ranks: all-gather in rank order", size);
    CHECK(bad_bcast == 0, "%d ranks: broadcast from rank 1", size);
    c->ops->destroy(c);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void *wait_rank(void *p)
{
    rank_arg *a = p;
    if (a->abort_first) {
        struct timespec d = {0, 50 * 1000 * 1000};
        nanosleep(&d, NULL);
        a->c->ops->abort(a->c, NVLM_ERR_BACKEND);
        a->st = NVLM_ERR_BACKEND;
        return NULL;
    }
    double t0 = now_ms();
    float x[16] = {1};
    a->st = a->c->ops->all_reduce_sum(a->c, a->rank, x, 16);
    a->waited_ms = now_ms() - t0;
    return NULL;
}

static void test_abort(nvlm_context *ctx)
{
    tu_section("abort");
    int size = 4;
    tp_comm *c = NULL;
    CHECK_OK(tp_comm_local_create(ctx, size, NULL, &c));
    if (c == NULL) {
        return;
    }
    rank_arg a[MAX_RANKS];
    pthread_t th[MAX_RANKS];
    memset(a, 0, sizeof a);
    for (int r = 0; r < size; r++) {
        a[r].c = c;
        a[r].rank = r;
        a[r].abort_first = r == 2;
        pthread_create(&th[r], NULL, wait_rank, &a[r]);
    }
    for (int r = 0; r < size; r++) {
        pthread_join(th[r], NULL);
    }
    for (int r = 0; r < size; r++) {
        if (r == 2) {
            continue;
        }
        CHECK(a[r].st == NVLM_ERR_BACKEND && a[r].waited_ms < 1000.0,
              "rank %d: released with the abort status (%d) in %.0f ms", r, (int)a[r].st,
              a[r].waited_ms);
    }
    float x[4] = {0};
    CHECK_EQ_INT(c->ops->barrier(c, 0), NVLM_ERR_BACKEND, "a later collective fails at once");
    CHECK_EQ_INT(c->ops->all_reduce_sum(c, 0, x, 4), NVLM_ERR_BACKEND, "so does an all-reduce");
    c->ops->reset(c);
    test_collectives(ctx, 1);
    tp_comm *one = NULL;
    CHECK_OK(tp_comm_local_create(ctx, 1, NULL, &one));
    if (one != NULL) {
        CHECK_OK(one->ops->all_reduce_sum(one, 0, x, 4));
        one->ops->destroy(one);
    }
    /* after reset the same communicator works again */
    for (int r = 0; r < size; r++) {
        a[r].abort_first = false;
        a[r].st = NVLM_OK;
        pthread_create(&th[r], NULL, wait_rank, &a[r]);
    }
    for (int r = 0; r < size; r++) {
        pthread_join(th[r], NULL);
    }
    int ok = 0;
    for (int r = 0; r < size; r++) {
        ok += a[r].st == NVLM_OK;
    }
    CHECK_EQ_INT(ok, size, "after reset every rank's all-reduce succeeds");
    c->ops->destroy(c);
    tp_comm *bad = NULL;
    CHECK_EQ_INT(tp_comm_local_create(ctx, 0, NULL, &bad), NVLM_ERR_INVALID_ARGUMENT,
                 "0 ranks refused");
}

int main(void)
{
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    tu_section("collectives");
    for (int size = 1; size <= MAX_RANKS; size++) {
        test_collectives(ctx, size);
    }
    test_abort(ctx);
    nvlm_context_free(ctx);
    return tu_done();
}
