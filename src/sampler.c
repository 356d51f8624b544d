/*
 * sampler.c - logits (vocab) -> one token id. Order: rows the tokenizer has no token for and
 * non-finite logits are masked out, then logit bias, repetition / presence / frequency
 * penalties over the recent tokens, then greedy argmax (temperature 0; the lowest index wins
 * ties, like torch.argmax) or top-k -> softmax(logits / T) -> top-p -> min-p -> a draw from the
 * session's xoshiro256** generator (seeded with splitmix64).
 */
#include "engine.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void smp_seed(smp_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        r->s[i] = splitmix64(&x);
    }
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(smp_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double smp_uniform(smp_rng *r)
{
    return (double)(xoshiro_next(r) >> 11) * 0x1.0p-53;
}

nvlm_status smp_work_init(nvlm_context *ctx, smp_work *w, int n_vocab)
{
    memset(w, 0, sizeof *w);
    w->n_vocab = n_vocab;
    w->val = nv_alloc_array(ctx, (size_t)n_vocab, sizeof(float));
    w->cand = nv_alloc_array(ctx, (size_t)n_vocab, sizeof(smp_cand));
    w->count = nv_calloc(ctx, (size_t)n_vocab, sizeof(int32_t));
    w->usable = nv_malloc(ctx, (size_t)n_vocab);
    if (w->val == NULL || w->cand == NULL || w->count == NULL || w->usable == NULL) {
        smp_work_free(ctx, w);
        return NVLM_ERR_OUT_OF_MEMORY;
    }
    memset(w->usable, 1, (size_t)n_vocab);
    return NVLM_OK;
}

void smp_work_free(nvlm_context *ctx, smp_work *w)
{
    nv_free(ctx, w->val);
    nv_free(ctx, w->cand);
    nv_free(ctx, w->count);
    nv_free(ctx, w->usable);
    nv_free(ctx, w->list);
    memset(w, 0, sizeof *w);
}

nvlm_status smp_check(const nvlm_sampler_params *p, const smp_work *w, void *err_handle)
{
    int n_vocab = w->n_vocab;
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature)) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "temperature must be >= 0");
    }
    if (p->top_k < 0 || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
        !(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT,
                        "need top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1");
    }
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty) ||
        !isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty) ||
        p->penalty_last_n < -1) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "bad penalty parameters");
    }
    if (p->max_new_tokens < 0) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT,
                        "max_new_tokens %d: need >= 0, or -1 for the model's default",
                        (int)p->max_new_tokens);
    }
    if ((p->n_logit_bias > 0 && p->logit_bias == NULL) ||
        (p->n_stop_ids > 0 && p->stop_ids == NULL) ||
        (p->n_stop_strings > 0 && p->stop_strings == NULL)) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "array pointer is NULL");
    }
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        int32_t t = p->logit_bias[i].token;
        if (t < 0 || t >= n_vocab || isnan(p->logit_bias[i].bias)) {
            return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "bad logit bias entry %zu",
                            i);
        }
        if (!w->usable[t]) {
            return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT,
                            "logit bias entry %zu: id %d has no token in the tokenizer (a padding "
                            "row, never sampled)",
                            i, (int)t);
        }
    }
    for (size_t i = 0; i < p->n_stop_ids; i++) {
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= n_vocab) {
            return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "stop id %d out of range",
                            p->stop_ids[i]);
        }
    }
    for (size_t i = 0; i < p->n_stop_strings; i++) {
        if (p->stop_strings[i] == NULL || p->stop_strings[i][0] == '\0') {
            return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT, "empty stop string %zu", i);
        }
    }
    return NVLM_OK;
}

static bool has_penalties(const nvlm_sampler_params *p)
{
    return p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

static void apply_penalties(const nvlm_sampler_params *p, smp_work *w, const int32_t *hist,
                            size_t n_hist)
{
    bool rep = p->repetition_penalty != 1.0f;
    if (!has_penalties(p)) {
        return;
    }
    size_t n = n_hist;
    if (p->penalty_last_n >= 0 && (size_t)p->penalty_last_n < n) {
        n = (size_t)p->penalty_last_n;
    }
    const int32_t *win = hist + (n_hist - n);
    for (size_t i = 0; i < n; i++) {
        if (win[i] >= 0 && win[i] < w->n_vocab) {
            w->count[win[i]]++;
        }
    }
    /* Each distinct token once; its count is cleared afterwards, so count stays all-zero. */
    for (size_t i = 0; i < n; i++) {
        int32_t t = win[i];
        if (t < 0 || t >= w->n_vocab || w->count[t] == 0) {
            continue;
        }
        float v = w->val[t];
        if (rep) {
            v = v > 0.0f ? v / p->repetition_penalty : v * p->repetition_penalty;
        }
        v -= (float)w->count[t] * p->frequency_penalty + p->presence_penalty;
        w->val[t] = v;
        w->count[t] = 0;
    }
}

/* Sort order: higher value first, lower index first among equals. */
static int cand_cmp(const void *a, const void *b)
{
    const smp_cand *x = a;
    const smp_cand *y = b;
    if (x->v != y->v) {
        return x->v > y->v ? -1 : 1;
    }
    return (x->i > y->i) - (x->i < y->i);
}

nvlm_status smp_sample(const nvlm_sampler_params *p, const float *logits, smp_work *w,
                       const int32_t *hist, size_t n_hist, smp_rng *rng, int32_t *token,
                       void *err_handle)
{
    int n = w->n_vocab;
    if (p->temperature <= 0.0f && p->n_logit_bias == 0 && !has_penalties(p)) {
        /* Plain greedy (the default): one pass over the logits, the same choice as the general
         * path below (lowest index of the largest usable finite logit) without its copies of
         * the vocabulary; a decode step spends ~0.1 ms here instead of ~0.8. */
        int best = -1;
        float bv = 0.0f;
        for (int i = 0; i < n; i++) {
            float v = logits[i];
            if (w->usable[i] && isfinite(v) && (best < 0 || v > bv)) {
                best = i;
                bv = v;
            }
        }
        if (best < 0) {
            return nv_error(err_handle, NVLM_ERR_BACKEND, "all logits are non-finite");
        }
        *token = best;
        return NVLM_OK;
    }
    /* NaN marks a row out of the race: bias and penalties keep it NaN. A non-finite logit is a
     * numeric failure upstream (NaN/Inf weights, overflow), never a preference. */
    int n_finite = 0;
    for (int i = 0; i < n; i++) {
        float v = logits[i];
        bool ok = w->usable[i] && isfinite(v);
        w->val[i] = ok ? v : NAN;
        n_finite += ok;
    }
    if (n_finite == 0) {
        return nv_error(err_handle, NVLM_ERR_BACKEND, "all logits are non-finite");
    }
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        w->val[p->logit_bias[i].token] += p->logit_bias[i].bias;
    }
    apply_penalties(p, w, hist, n_hist);
    /* Eligible: not NaN and not -inf (banned). +inf (a +inf bias) counts as FLT_MAX. */
    smp_cand *c = w->cand;
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = w->val[i];
        if (!isnan(v) && v != -INFINITY) {
            c[m].v = v == INFINITY ? FLT_MAX : v;
            c[m].i = i;
            m++;
        }
    }
    if (m == 0) {
        return nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT,
                        p->n_logit_bias > 0 ? "the logit bias bans every token"
                                            : "the penalties ban every token");
    }
    if (p->temperature <= 0.0f) {
        int best = 0;
        for (int a = 1; a < m; a++) {
            if (c[a].v > c[best].v) {
                best = a;
            }
        }
        *token = c[best].i;
        return NVLM_OK;
    }
    int k = (p->top_k > 0 && p->top_k < m) ? p->top_k : m;
    if (k <= 64) {
        /* partial selection sort of the k best */
        for (int a = 0; a < k; a++) {
            int best = a;
            for (int b = a + 1; b < m; b++) {
                if (cand_cmp(&c[b], &c[best]) < 0) {
                    best = b;
                }
            }
            smp_cand t = c[a];
            c[a] = c[best];
            c[best] = t;
        }
    } else {
        qsort(c, (size_t)m, sizeof *c, cand_cmp);
    }
    /* softmax(v / T) over the k best, as weights relative to the best */
    double vmax = c[0].v;
    double sum = 0.0;
    for (int a = 0; a < k; a++) {
        c[a].p = exp(((double)c[a].v - vmax) / p->temperature);
        sum += c[a].p;
    }
    int keep = k;
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        for (int a = 0; a < k; a++) {
            cum += c[a].p / sum;
            if (cum >= p->top_p) {
                keep = a + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        /* c[0].p == 1: keep tokens with probability >= min_p * the top probability */
        for (int a = 1; a < keep; a++) {
            if (c[a].p < p->min_p) {
                keep = a;
                break;
            }
        }
    }
    double total = 0.0;
    for (int a = 0; a < keep; a++) {
        total += c[a].p;
    }
    double u = smp_uniform(rng) * total;
    double acc = 0.0;
    for (int a = 0; a < keep; a++) {
        acc += c[a].p;
        if (u < acc) {
            *token = c[a].i;
            return NVLM_OK;
        }
    }
    *token = c[keep - 1].i;
    return NVLM_OK;
}

/* The penalty window of hist as (token, count) pairs, each distinct token once in order of
 * first appearance, into out; returns the number of pairs (count stays all-zero). */
static size_t penalty_pairs(const nvlm_sampler_params *p, smp_work *w, const int32_t *hist,
                            size_t n_hist, int32_t *out)
{
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f) {
        return 0;
    }
    size_t n = n_hist;
    if (p->penalty_last_n >= 0 && (size_t)p->penalty_last_n < n) {
        n = (size_t)p->penalty_last_n;
    }
    const int32_t *win = hist + (n_hist - n);
    for (size_t i = 0; i < n; i++) {
        if (win[i] >= 0 && win[i] < w->n_vocab) {
            w->count[win[i]]++;
        }
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t t = win[i];
        if (t < 0 || t >= w->n_vocab || w->count[t] == 0) {
            continue;
        }
        out[2 * m] = t;
        out[2 * m + 1] = w->count[t];
        m++;
        w->count[t] = 0;
    }
    return m;
}

nvlm_status smp_sample_device(nv_exec *ex, const nvlm_sampler_params *p, const float *logits_dev,
                              smp_work *w, const int32_t *hist, size_t n_hist, smp_rng *rng,
                              int32_t *token, void *err_handle)
{
    nvlm_context *ctx = ex->be->ctx;
    if (w->list == NULL || p->n_logit_bias > w->list_bias) {
        size_t nb = NV_MAX(p->n_logit_bias, w->list_bias);
        size_t elems;
        if (!nv_add_size((size_t)w->n_vocab, nb, &elems) ||
            !nv_mul_size(elems, 2, &elems)) {
            return nv_error(err_handle, NVLM_ERR_LIMIT, "logit bias list too long");
        }
        int32_t *l = nv_alloc_array(ctx, elems, sizeof(int32_t));
        if (l == NULL) {
            return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the sampler");
        }
        nv_free(ctx, w->list);
        w->list = l;
        w->list_bias = nb;
    }
    /* bias pairs in order; a token named twice makes the device add them one by one */
    bool unique = true;
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        int32_t t = p->logit_bias[i].token;
        uint32_t bits;
        memcpy(&bits, &p->logit_bias[i].bias, sizeof bits);
        w->list[2 * i] = t;
        w->list[2 * i + 1] = (int32_t)bits;
        unique = unique && w->count[t] == 0;
        w->count[t] = 1;
    }
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        w->count[p->logit_bias[i].token] = 0;
    }
    nv_sample_args a;
    memset(&a, 0, sizeof a);
    a.logits = logits_dev;
    a.n = w->n_vocab;
    a.usable = w->usable;
    a.temperature = p->temperature;
    a.top_k = p->top_k;
    a.top_p = p->top_p;
    a.min_p = p->min_p;
    a.repetition_penalty = p->repetition_penalty;
    a.presence_penalty = p->presence_penalty;
    a.frequency_penalty = p->frequency_penalty;
    a.list = w->list;
    a.n_bias = p->n_logit_bias;
    a.bias_unique = unique;
    a.n_pen = penalty_pairs(p, w, hist, n_hist, w->list + 2 * p->n_logit_bias);
    smp_rng saved = *rng;
    if (p->temperature > 0.0f) {
        a.uniform = smp_uniform(rng);
    }
    int outcome = NV_SAMPLE_OK;
    nvlm_status st = ex->be->ops->sample(ex, &a, token, &outcome);
    if (st == NVLM_OK && outcome == NV_SAMPLE_NONFINITE) {
        st = nv_error(err_handle, NVLM_ERR_BACKEND, "all logits are non-finite");
    } else if (st == NVLM_OK && outcome != NV_SAMPLE_OK) {
        st = nv_error(err_handle, NVLM_ERR_INVALID_ARGUMENT,
                      p->n_logit_bias > 0 ? "the logit bias bans every token"
                                          : "the penalties ban every token");
    } else if (st == NVLM_OK && (*token < 0 || *token >= w->n_vocab)) {
        st = nv_error(err_handle, NVLM_ERR_INTERNAL, "sampler returned token %d", (int)*token);
    }
    if (st != NVLM_OK) {
        *rng = saved;
    }
    return st;
}
