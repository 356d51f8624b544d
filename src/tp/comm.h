/*
 * comm.h - collectives between the ranks of one tensor-parallel model. Every rank calls the
 * same collectives in the same order (the TP backend's per-model forward lock guarantees it).
 * Implementations: local (comm_local.c: ranks are threads of one process, buffers in host
 * memory, sums in a fixed rank order so results do not depend on timing) and NCCL
 * (cuda/tp_nccl.cu: GPUs of this process, device buffers). A failed rank calls abort: every rank's pending and later calls then return
 * the abort status instead of waiting.
 */
#ifndef NVLM_TP_COMM_H
#define NVLM_TP_COMM_H

#include "internal.h"

typedef struct tp_comm tp_comm;

typedef struct tp_comm_ops {
    const char *name;
    /* buf[0..n) = the element-wise sum of every rank's buf, identical bits on every rank. */
    nvlm_status (*all_reduce_sum)(tp_comm *c, int rank, float *buf, size_t n);
    /* recv (size * bytes) = every rank's send (bytes each) in rank order. */
    nvlm_status (*all_gather)(tp_comm *c, int rank, const void *send, size_t bytes, void *recv);
    /* buf (bytes) = root's buf on every rank. */
    nvlm_status (*broadcast)(tp_comm *c, int rank, void *buf, size_t bytes, int root);
    nvlm_status (*barrier)(tp_comm *c, int rank);
    /* Any rank, any thread: fails every pending and later collective with `st` (not NVLM_OK)
     * until reset. */
    void (*abort)(tp_comm *c, nvlm_status st);
    /* Clears an abort once no rank is inside a collective. */
    void (*reset)(tp_comm *c);
    void (*destroy)(tp_comm *c);
    /* true: buffers are device memory of the rank's device (NCCL); false: host memory */
    bool device_buffers;
} tp_comm_ops;

struct tp_comm {
    const tp_comm_ops *ops;
    int size;
    void *impl;
};

/* A communicator for `size` threads of this process (ranks 0 .. size - 1). Errors go to
 * err_handle. */
nvlm_status tp_comm_local_create(nvlm_context *ctx, int size, void *err_handle, tp_comm **out);

/* An NCCL communicator over `size` GPUs of this process, rank r on devices[r] (all distinct),
 * rank r's collectives on the CUDA stream streams[r] (borrowed), or with streams NULL on
 * streams of its own. Each collective returns when it is complete. NVLM_ERR_UNSUPPORTED when
 * libnccl.so.2 cannot be opened. CUDA builds only (cuda/tp_nccl.cu). */
nvlm_status nv_tp_comm_nccl_create(nvlm_context *ctx, int size, const int *devices,
                                   void *const *streams, void *err_handle, tp_comm **out);

#endif /* NVLM_TP_COMM_H */
