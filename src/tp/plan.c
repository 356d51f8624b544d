/*
 * plan.c - the tensor-parallel sharding plan (plan.h): contiguous, near-equal ranges of heads,
 * channels and vocabulary rows per rank, and the slice of every checkpoint tensor that follows
 * from the tensor's cut in the layout. Megatron-style: column-parallel q/k/v, gate/up, fc1 and
 * mlp1.1; row-parallel o_proj, down_proj, ViT proj, fc2 and mlp1.3; vocab-parallel lm_head.
 */
#include "tp/plan.h"

#include "fp8.h"

#include <string.h>

tp_range tp_split(int64_t n, int parts, int rank)
{
    int64_t base = n / parts;
    int64_t extra = n % parts;
    tp_range r;
    r.count = base + (rank < extra ? 1 : 0);
    r.begin = (int64_t)rank * base + (rank < extra ? rank : extra);
    return r;
}

nvlm_status tp_plan_init(tp_plan *p, const nv_config *cfg, int size, void *err_handle)
{
    const nv_llm_config *l = &cfg->llm;
    const nv_vision_config *v = &cfg->vision;
    memset(p, 0, sizeof *p);
    if (l->num_heads <= 0 || l->num_kv_heads <= 0 || l->num_heads % l->num_kv_heads != 0) {
        return nv_error(err_handle, NVLM_ERR_UNSUPPORTED,
                        "tensor parallelism: %d query heads do not form groups of %d kv heads",
                        l->num_heads, l->num_kv_heads);
    }
    if (size < 1 || size > l->num_heads) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT,
                        "tensor parallelism over %d ranks: must be 1 .. %d (the query heads)",
                        size, l->num_heads);
    }
    p->size = size;
    p->heads_per_kv = l->num_heads / l->num_kv_heads;
    for (int i = 0; i < NV_TP_N_PARTS; i++) {
        p->unit[i] = 1;
    }
    p->total[NV_TP_WHOLE] = 1;
    p->total[NV_TP_LLM_HEADS] = l->num_heads;
    p->unit[NV_TP_LLM_HEADS] = l->head_dim;
    p->total[NV_TP_LLM_KV_HEADS] = l->num_kv_heads;
    p->unit[NV_TP_LLM_KV_HEADS] = l->head_dim;
    p->total[NV_TP_LLM_MLP] = l->intermediate_size;
    p->total[NV_TP_VOCAB] = l->vocab_size;
    p->total[NV_TP_VIT_HEADS] = (int64_t)v->num_heads + v->num_dummy_heads;
    p->unit[NV_TP_VIT_HEADS] = v->head_dim;
    p->total[NV_TP_VIT_MLP] = v->intermediate_size;
    p->total[NV_TP_PROJ_HIDDEN] = cfg->proj_hidden_size;
    return NVLM_OK;
}

tp_range tp_plan_range(const tp_plan *p, int rank, nv_tp_part part)
{
    if (part == NV_TP_WHOLE) {
        return (tp_range){0, 1};
    }
    if (part != NV_TP_LLM_KV_HEADS) {
        return tp_split(p->total[part], p->size, rank);
    }
    /* query head h uses kv head h / heads_per_kv: the kv heads from the rank's first query
     * head's to its last one's */
    tp_range q = tp_split(p->total[NV_TP_LLM_HEADS], p->size, rank);
    int64_t first = q.begin / p->heads_per_kv;
    int64_t last = (q.begin + q.count - 1) / p->heads_per_kv;
    return (tp_range){first, last - first + 1};
}

int64_t tp_plan_max_count(const tp_plan *p, nv_tp_part part)
{
    int64_t m = 0;
    for (int r = 0; r < p->size; r++) {
        m = NV_MAX(m, tp_plan_range(p, r, part).count);
    }
    return m;
}

tp_slice tp_plan_slice(const tp_plan *p, int rank, const nv_tp_cut *cut, int ndim,
                       const int64_t *shape)
{
    tp_slice s;
    memset(&s, 0, sizeof s);
    int64_t nelem = 1;
    for (int d = 0; d < ndim; d++) {
        nelem *= shape[d];
    }
    s.blocks = 1;
    if (cut == NULL || cut->part == NV_TP_WHOLE || ndim < 1 || shape[0] <= 0) {
        s.whole = true;
        s.nelem = nelem;
        return s;
    }
    tp_range r = tp_plan_range(p, rank, cut->part);
    int64_t unit = p->unit[cut->part];
    s.cols = cut->cols;
    s.begin = r.begin * unit;
    s.count = r.count * unit;
    if (s.cols) {
        /* (rows, cols): every row keeps columns [begin, begin + count) */
        s.nelem = shape[0] * s.count;
        return s;
    }
    s.blocks = cut->blocks;
    s.block_rows = shape[0] / s.blocks;
    s.nelem = nelem / shape[0] * s.blocks * s.count;
    return s;
}

typedef struct bytes_walk {
    const tp_plan *p;
    int rank;
    size_t elem_size;
    bool fp8;
    uint64_t bytes;
} bytes_walk;

static nvlm_status add_bytes(void *u, const nv_layout_tensor *t)
{
    bytes_walk *w = u;
    if (t->optional) {
        return NVLM_OK;
    }
    tp_slice s = tp_plan_slice(w->p, w->rank, &t->tp, t->ndim, t->shape);
    if (w->fp8 && t->ndim == 2 && fp8_is_projection(t->name)) {
        /* codes, plus the scales of the rows this rank holds */
        int64_t rows = s.cols ? t->shape[0] : s.nelem / NV_MAX(1, t->shape[1]);
        w->bytes += (uint64_t)s.nelem + (s.nelem > 0 ? 4u * (uint64_t)rows : 0u);
    } else {
        w->bytes += (uint64_t)s.nelem * w->elem_size;
    }
    return NVLM_OK;
}

nvlm_status tp_plan_max_rank_bytes(const tp_plan *p, const nv_config *cfg, size_t elem_size,
                                   bool fp8, uint64_t *bytes)
{
    /* the first rank is the largest in every part (it takes the extra unit first) except
     * possibly in kv heads, so walk every rank; one walk per rank keeps this allocation-free */
    *bytes = 0;
    for (int r = 0; r < p->size; r++) {
        bytes_walk w = {p, r, elem_size, fp8, 0};
        NVLM_TRY(nv_layout_tensors(cfg, add_bytes, &w));
        *bytes = NV_MAX(*bytes, w.bytes);
    }
    return NVLM_OK;
}
