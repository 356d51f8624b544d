/*
 * dec_step.c - the decoder's decode pass as a backend step (step.h): one new token, its id and
 * position described to step_begin, the ordinary dec_forward in between, step_end after. A
 * backend that captures (CUDA) replays the pass as one graph per token; when it cannot (an op
 * not capturable, buffers that moved since the capture) it asks for the pass again and it
 * runs without a step. Prefill, image splices and traces (but the device copy of the logits)
 * never use a step.
 */
#include "engine.h"

#include <string.h>

/* Whether the pass (n tokens, n_img image rows, n_logits rows of logits, trace) is a decode
 * step on this backend. A trace that only sends the logits to a device buffer (device
 * sampling) is part of the step: a device-to-device copy is captured like any op. */
static bool is_step(const nv_exec *ex, const dec_weights *w, const int32_t *ids, int n,
                    int n_img, int n_logits, const dec_trace *trace)
{
    const nv_backend_ops *op = ex->be->ops;
    bool plain = trace == NULL || (trace->embeds == NULL && trace->layers == NULL &&
                                   trace->final_norm == NULL);
    return op->step_begin != NULL && op->step_end != NULL && n == 1 && n_img == 0 &&
           n_logits <= 1 && plain && ids[0] >= 0 && ids[0] < w->vocab;
}

nvlm_status dec_decode(nv_exec *ex, nv_arena *ar, const dec_weights *w, dec_kv *kv,
                       const int32_t *ids, int n, const float *img, const int32_t *img_pos,
                       const int32_t *img_row, int n_img, int n_logits, float *logits,
                       dec_trace *trace)
{
    if (!is_step(ex, w, ids, n, n_img, n_logits, trace)) {
        return dec_forward(ex, ar, w, kv, ids, n, img, img_pos, img_row, n_img, n_logits, logits,
                           trace);
    }
    const nv_backend_ops *op = ex->be->ops;
    int64_t pos0 = kv->n;
    nv_step s;
    memset(&s, 0, sizeof s);
    bool fits = nv_step_key_make(&s.key, 1, n, (int)kv->type, kv->cap);
    s.n_seq = 1;
    s.tokens = ids;
    s.pos0 = &pos0;
    s.out_bytes = (size_t)n_logits * (size_t)w->vocab * sizeof(float);
    nvlm_status st = fits ? op->step_begin(ex, &s) : NVLM_ERR_UNSUPPORTED;
    if (st == NVLM_ERR_UNSUPPORTED) {
        return dec_forward(ex, ar, w, kv, ids, n, img, img_pos, img_row, n_img, n_logits, logits,
                           trace);
    }
    NVLM_TRY(st);
    size_t mark = nv_arena_mark(ar);
    st = dec_forward(ex, ar, w, kv, ids, n, img, img_pos, img_row, n_img, n_logits, logits,
                     trace);
    bool redo = false;
    nvlm_status end = op->step_end(ex, st == NVLM_OK, &redo);
    if (st == NVLM_OK && end == NVLM_OK && !redo) {
        return NVLM_OK;
    }
    kv->n = pos0;
    if (st != NVLM_OK && !redo) {
        return st;
    }
    if (end != NVLM_OK) {
        return end;
    }
    /* The backend did not run the pass (capture failed, replay refused): run it plainly. */
    nv_arena_rewind(ar, mark);
    return dec_forward(ex, ar, w, kv, ids, n, img, img_pos, img_row, n_img, n_logits, logits,
                       trace);
}
