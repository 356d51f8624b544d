/*
 * tp_nccl.cu - the NCCL communicator (tp/comm.h) for tensor-parallel ranks on GPUs of one
 * process: ncclGetUniqueId, then ncclCommInitRankConfig per device inside one group, with
 * non-blocking communicators (config.blocking = 0) so no call can hang the host. Each rank's
 * collective is enqueued on that rank's stream and waited for by polling the stream and
 * ncclCommGetAsyncError; an abort from any rank (or a failed rank's error) makes every waiting
 * rank call ncclCommAbort and return the abort status. After an abort the communicators are
 * rebuilt on reset. libnccl.so.2 is opened when a communicator is made (the library does not
 * link it): without it, making one fails with that reason.
 */
#include "cuda/cuda_internal.h"

extern "C" {
#include "tp/comm.h"
}

#include <dlfcn.h>
#include <nccl.h>
#include <sched.h>
#include <string.h>

/* The NCCL entry points used, from libnccl.so.2. */
typedef struct nccl_api {
    void *lib;
    ncclResult_t (*GetUniqueId)(ncclUniqueId *);
    ncclResult_t (*CommInitRankConfig)(ncclComm_t *, int, ncclUniqueId, int, ncclConfig_t *);
    ncclResult_t (*GroupStart)(void);
    ncclResult_t (*GroupEnd)(void);
    ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t *);
    ncclResult_t (*CommAbort)(ncclComm_t);
    ncclResult_t (*AllReduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t,
                              ncclComm_t, cudaStream_t);
    ncclResult_t (*AllGather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t,
                              cudaStream_t);
    ncclResult_t (*Broadcast)(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t,
                              cudaStream_t);
    const char *(*GetErrorString)(ncclResult_t);
} nccl_api;

static nvlm_status api_open(nccl_api *a, void *eh)
{
    memset(a, 0, sizeof *a);
    a->lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (a->lib == NULL) {
        return nv_error(eh, NVLM_ERR_UNSUPPORTED, "NCCL: libnccl.so.2 not found (%s)",
                        dlerror());
    }
    struct {
        void **slot;
        const char *name;
    } want[] = {
        {(void **)&a->GetUniqueId, "ncclGetUniqueId"},
        {(void **)&a->CommInitRankConfig, "ncclCommInitRankConfig"},
        {(void **)&a->GroupStart, "ncclGroupStart"},
        {(void **)&a->GroupEnd, "ncclGroupEnd"},
        {(void **)&a->CommGetAsyncError, "ncclCommGetAsyncError"},
        {(void **)&a->CommAbort, "ncclCommAbort"},
        {(void **)&a->AllReduce, "ncclAllReduce"},
        {(void **)&a->AllGather, "ncclAllGather"},
        {(void **)&a->Broadcast, "ncclBroadcast"},
        {(void **)&a->GetErrorString, "ncclGetErrorString"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        *want[i].slot = dlsym(a->lib, want[i].name);
        if (*want[i].slot == NULL) {
            dlclose(a->lib);
            a->lib = NULL;
            return nv_error(eh, NVLM_ERR_UNSUPPORTED, "NCCL: libnccl.so.2 has no %s (too old)",
                            want[i].name);
        }
    }
    return NVLM_OK;
}

typedef struct nccl_impl {
    nvlm_context *ctx;
    nccl_api api;
    int *dev;                    /* size */
    cudaStream_t *stream;        /* size, borrowed from the rank execs */
    ncclComm_t *comm;            /* size */
    float **one;                 /* size: one device float per rank (barrier) */
    bool own_streams;            /* the streams are this communicator's */
    pthread_mutex_t lock;
    nvlm_status aborted;         /* NVLM_OK while healthy (under lock) */
} nccl_impl;

static nccl_impl *impl_of(tp_comm *c)
{
    return (nccl_impl *)c->impl;
}

static nvlm_status aborted_status(tp_comm *c)
{
    nccl_impl *n = impl_of(c);
    pthread_mutex_lock(&n->lock);
    nvlm_status st = n->aborted;
    pthread_mutex_unlock(&n->lock);
    return st;
}

/* Makes `device` current for this thread; returns the device to restore (leave_dev). The
 * library never leaves the caller's thread on another device. */
static int enter_dev(int device)
{
    int prev = -1;
    cudaGetDevice(&prev);
    cudaSetDevice(device);
    return prev;
}

static void leave_dev(int prev)
{
    cuda_restore_device(prev);
}

/* Aborts rank r's communicator (once). */
static void abort_rank(nccl_impl *n, int r)
{
    if (n->comm[r] != NULL) {
        int prev = enter_dev(n->dev[r]);
        n->api.CommAbort(n->comm[r]);
        leave_dev(prev);
        n->comm[r] = NULL;
    }
}

/* Waits until rank r's communicator has finished its pending (non-blocking) call and the
 * collective on its stream is done. Any error, or an abort elsewhere, aborts this rank's
 * communicator so the GPU work waiting for the others is released. */
static nvlm_status wait_rank(tp_comm *c, int r, ncclResult_t issued, bool on_stream)
{
    nccl_impl *n = impl_of(c);
    if (issued != ncclSuccess && issued != ncclInProgress) {
        c->ops->abort(c, NVLM_ERR_BACKEND);
        abort_rank(n, r);
        return NVLM_ERR_BACKEND;
    }
    for (;;) {
        nvlm_status ab = aborted_status(c);
        if (ab != NVLM_OK) {
            abort_rank(n, r);
            return ab;
        }
        ncclResult_t state = ncclSuccess;
        if (n->api.CommGetAsyncError(n->comm[r], &state) != ncclSuccess ||
            (state != ncclSuccess && state != ncclInProgress)) {
            c->ops->abort(c, NVLM_ERR_BACKEND);
            abort_rank(n, r);
            return NVLM_ERR_BACKEND;
        }
        if (state == ncclSuccess) {
            cudaError_t q = on_stream ? cudaStreamQuery(n->stream[r]) : cudaSuccess;
            if (q == cudaSuccess) {
                return NVLM_OK;
            }
            if (q != cudaErrorNotReady) {
                c->ops->abort(c, NVLM_ERR_BACKEND);
                abort_rank(n, r);
                return NVLM_ERR_BACKEND;
            }
        }
        sched_yield();
    }
}

static nvlm_status all_reduce_sum(tp_comm *c, int rank, float *buf, size_t n_elems)
{
    nccl_impl *n = impl_of(c);
    NVLM_TRY(aborted_status(c));
    int prev = enter_dev(n->dev[rank]);
    ncclResult_t r = n->api.AllReduce(buf, buf, n_elems, ncclFloat, ncclSum, n->comm[rank],
                                   n->stream[rank]);
    nvlm_status st = wait_rank(c, rank, r, true);
    leave_dev(prev);
    return st;
}

static nvlm_status all_gather(tp_comm *c, int rank, const void *send, size_t bytes, void *recv)
{
    nccl_impl *n = impl_of(c);
    NVLM_TRY(aborted_status(c));
    int prev = enter_dev(n->dev[rank]);
    ncclResult_t r = n->api.AllGather(send, recv, bytes, ncclChar, n->comm[rank],
                                      n->stream[rank]);
    nvlm_status st = wait_rank(c, rank, r, true);
    leave_dev(prev);
    return st;
}

static nvlm_status broadcast(tp_comm *c, int rank, void *buf, size_t bytes, int root)
{
    nccl_impl *n = impl_of(c);
    NVLM_TRY(aborted_status(c));
    int prev = enter_dev(n->dev[rank]);
    ncclResult_t r = n->api.Broadcast(buf, buf, bytes, ncclChar, root, n->comm[rank],
                                   n->stream[rank]);
    nvlm_status st = wait_rank(c, rank, r, true);
    leave_dev(prev);
    return st;
}

static nvlm_status barrier(tp_comm *c, int rank)
{
    return all_reduce_sum(c, rank, impl_of(c)->one[rank], 1);
}

static void comm_abort(tp_comm *c, nvlm_status st)
{
    nccl_impl *n = impl_of(c);
    pthread_mutex_lock(&n->lock);
    if (n->aborted == NVLM_OK) {
        n->aborted = st != NVLM_OK ? st : NVLM_ERR_BACKEND;
    }
    pthread_mutex_unlock(&n->lock);
}

static void free_comms(nccl_impl *n, int size)
{
    for (int r = 0; r < size; r++) {
        abort_rank(n, r);
    }
}

/* One communicator per device, created together; waits until every one is ready. */
static nvlm_status init_comms(nccl_impl *n, int size, void *eh)
{
    ncclUniqueId id;
    if (n->api.GetUniqueId(&id) != ncclSuccess) {
        return nv_error(eh, NVLM_ERR_BACKEND, "NCCL: ncclGetUniqueId failed");
    }
    int prev = enter_dev(n->dev[0]);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t res = n->api.GroupStart();
    for (int r = 0; r < size && (res == ncclSuccess || res == ncclInProgress); r++) {
        cudaSetDevice(n->dev[r]);
        res = n->api.CommInitRankConfig(&n->comm[r], size, id, r, &cfg);
    }
    ncclResult_t end = n->api.GroupEnd();
    leave_dev(prev);
    if ((res != ncclSuccess && res != ncclInProgress) ||
        (end != ncclSuccess && end != ncclInProgress)) {
        free_comms(n, size);
        return nv_error(eh, NVLM_ERR_BACKEND, "NCCL: cannot create the communicators: %s",
                        n->api.GetErrorString(res != ncclSuccess && res != ncclInProgress ? res
                                                                                       : end));
    }
    for (int r = 0; r < size; r++) {
        ncclResult_t state = ncclInProgress;
        while (state == ncclInProgress) {
            if (n->api.CommGetAsyncError(n->comm[r], &state) != ncclSuccess) {
                state = ncclInternalError;
            }
            sched_yield();
        }
        if (state != ncclSuccess) {
            free_comms(n, size);
            return nv_error(eh, NVLM_ERR_BACKEND, "NCCL: rank %d on device %d: %s", r,
                            n->dev[r], n->api.GetErrorString(state));
        }
    }
    return NVLM_OK;
}

static void comm_reset(tp_comm *c)
{
    nccl_impl *n = impl_of(c);
    pthread_mutex_lock(&n->lock);
    bool was = n->aborted != NVLM_OK;
    pthread_mutex_unlock(&n->lock);
    if (!was) {
        return;
    }
    /* aborted communicators cannot be reused: build new ones */
    free_comms(n, c->size);
    nvlm_status st = init_comms(n, c->size, NULL);
    pthread_mutex_lock(&n->lock);
    n->aborted = st == NVLM_OK ? NVLM_OK : st;
    pthread_mutex_unlock(&n->lock);
}

static void destroy(tp_comm *c)
{
    if (c == NULL) {
        return;
    }
    nccl_impl *n = impl_of(c);
    nvlm_context *ctx = n->ctx;
    for (int r = 0; r < c->size; r++) {
        int prev = enter_dev(n->dev[r]);
        /* ncclCommAbort, not ncclCommDestroy: destroying finalizes, which waits for every
         * rank of the clique, and one thread tearing the ranks down in turn would wait for
         * itself; nothing is in flight here (every collective returned complete), and abort
         * frees the same resources without waiting */
        if (n->comm[r] != NULL && n->api.lib != NULL) {
            n->api.CommAbort(n->comm[r]);
        }
        if (n->one[r] != NULL) {
            cudaFree(n->one[r]);
        }
        if (n->own_streams && n->stream[r] != NULL) {
            cudaStreamDestroy(n->stream[r]);
        }
        leave_dev(prev);
    }
    pthread_mutex_destroy(&n->lock);
    if (n->api.lib != NULL) {
        dlclose(n->api.lib);
    }
    nv_free(ctx, n->dev);
    nv_free(ctx, n->stream);
    nv_free(ctx, n->comm);
    nv_free(ctx, n->one);
    nv_free(ctx, n);
    nv_free(ctx, c);
}

static const tp_comm_ops nccl_ops = {
    "nccl", all_reduce_sum, all_gather, broadcast, barrier, comm_abort, comm_reset, destroy,
    true,
};

extern "C" nvlm_status nv_tp_comm_nccl_create(nvlm_context *ctx, int size, const int *devices,
                                              void *const *streams, void *err_handle,
                                              tp_comm **out)
{
    *out = NULL;
    for (int a = 0; a < size; a++) {
        for (int b = a + 1; b < size; b++) {
            if (devices[a] == devices[b]) {
                return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT,
                                "NCCL needs one device per rank (device %d twice)", devices[a]);
            }
        }
    }
    tp_comm *c = (tp_comm *)nv_calloc(ctx, 1, sizeof *c);
    nccl_impl *n = (nccl_impl *)nv_calloc(ctx, 1, sizeof *n);
    if (n != NULL) {
        n->dev = (int *)nv_calloc(ctx, (size_t)size, sizeof *n->dev);
        n->stream = (cudaStream_t *)nv_calloc(ctx, (size_t)size, sizeof *n->stream);
        n->comm = (ncclComm_t *)nv_calloc(ctx, (size_t)size, sizeof *n->comm);
        n->one = (float **)nv_calloc(ctx, (size_t)size, sizeof *n->one);
    }
    if (c == NULL || n == NULL || n->dev == NULL || n->stream == NULL || n->comm == NULL ||
        n->one == NULL) {
        if (n != NULL) {
            nv_free(ctx, n->dev);
            nv_free(ctx, n->stream);
            nv_free(ctx, n->comm);
            nv_free(ctx, n->one);
        }
        nv_free(ctx, n);
        nv_free(ctx, c);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for NCCL");
    }
    n->ctx = ctx;
    pthread_mutex_init(&n->lock, NULL);
    c->ops = &nccl_ops;
    c->size = size;
    c->impl = n;
    n->own_streams = streams == NULL;
    nvlm_status st = api_open(&n->api, err_handle);
    for (int r = 0; r < size && st == NVLM_OK; r++) {
        n->dev[r] = devices[r];
        int prev = enter_dev(devices[r]);
        if (streams != NULL) {
            n->stream[r] = (cudaStream_t)streams[r];
        } else if (cudaStreamCreateWithFlags(&n->stream[r], cudaStreamNonBlocking) !=
                   cudaSuccess) {
            st = nv_error(err_handle, NVLM_ERR_BACKEND, "NCCL: no stream on device %d",
                          devices[r]);
        }
        if (st == NVLM_OK && (cudaMalloc((void **)&n->one[r], sizeof(float)) != cudaSuccess ||
                              cudaMemset(n->one[r], 0, sizeof(float)) != cudaSuccess)) {
            st = nv_error(err_handle, NVLM_ERR_BACKEND, "NCCL: no device memory on device %d",
                          devices[r]);
        }
        leave_dev(prev);
    }
    if (st == NVLM_OK) {
        st = init_comms(n, size, err_handle);
    }
    if (st != NVLM_OK) {
        destroy(c);
        return st;
    }
    *out = c;
    return NVLM_OK;
}
