/*
 * plan.h - the tensor-parallel sharding plan: pure geometry, no memory. For TP = N ranks each
 * divided dimension of the model (nv_tp_part) is cut into N contiguous ranges whose sizes
 * differ by at most one unit, the first ranks taking the extra; a rank holds every LLM kv head
 * its query heads use (replicated when N > kv heads; two when its heads straddle a group).
 * Each tensor of the checkpoint layout (layout.c) then has one slice per rank.
 */
#ifndef NVLM_TP_PLAN_H
#define NVLM_TP_PLAN_H

#include "model.h"

/* A contiguous range of units [begin, begin + count). */
typedef struct tp_range {
    int64_t begin;
    int64_t count;
} tp_range;

/* Range `rank` of n units cut into `parts` ranges (parts >= 1, 0 <= rank < parts): the first
 * n % parts ranks get n / parts + 1 units, the rest n / parts. */
tp_range tp_split(int64_t n, int parts, int rank);

typedef struct tp_plan {
    int size;                          /* ranks */
    int64_t total[NV_TP_N_PARTS];      /* units of each part in the model */
    int64_t unit[NV_TP_N_PARTS];       /* elements per unit along the cut dimension */
    int64_t heads_per_kv;              /* LLM query heads per kv head */
} tp_plan;

/* Plans `size` ranks for the model of cfg. size must be 1 .. the LLM's query-head count.
 * Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (size out of range) or NVLM_ERR_UNSUPPORTED (a
 * config whose heads do not divide into kv groups); the text goes to err_handle. */
nvlm_status tp_plan_init(tp_plan *p, const nv_config *cfg, int size, void *err_handle);

/* Units of `part` that `rank` holds. For NV_TP_LLM_KV_HEADS: the kv heads of its query heads
 * (ranges of neighbouring ranks may overlap); NV_TP_WHOLE: the single unit [0, 1). */
tp_range tp_plan_range(const tp_plan *p, int rank, nv_tp_part part);
/* The largest count of `part` over the ranks (gathers of unequal slices pad to it). */
int64_t tp_plan_max_count(const tp_plan *p, nv_tp_part part);

/* The part of a tensor of shape (ndim, shape) cut by `cut` that a rank holds: rows [begin,
 * begin + count) of each of `blocks` blocks of block_rows rows (cols false), or columns [begin,
 * begin + count) of every row (cols true; 2-D tensors); whole: the entire tensor. nelem:
 * elements of the slice. */
typedef struct tp_slice {
    bool whole;
    bool cols;
    int blocks;
    int64_t block_rows;
    int64_t begin;
    int64_t count;
    int64_t nelem;
} tp_slice;

tp_slice tp_plan_slice(const tp_plan *p, int rank, const nv_tp_cut *cut, int ndim,
                       const int64_t *shape);

/* Weight bytes of the largest rank when every tensor of the layout is stored with elem_size
 * bytes per element (tensors that are absent, such as a tied lm_head, not counted); with fp8
 * the LLM's seven projections take 1 byte per element plus a 4-byte scale per output row the
 * rank holds (a row-parallel layer's rank keeps every scale). */
nvlm_status tp_plan_max_rank_bytes(const tp_plan *p, const nv_config *cfg, size_t elem_size,
                                   bool fp8, uint64_t *bytes);

#endif /* NVLM_TP_PLAN_H */
