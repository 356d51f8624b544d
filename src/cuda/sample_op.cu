/*
 * sample_op.cu - the CUDA backend's `sample` op (backend.h): the exec's sampler workspace
 * (device arrays for one vocabulary, the pinned list buffer; made at the first call, sized
 * once) around the kernel of sample.cu. Per token: one upload of the bias and penalty lists
 * (when there are any), one launch, an 8-byte download of [token, outcome], one sync.
 */
#include "cuda/cuda_internal.h"

#include <string.h>

typedef unsigned long long smp_u64;

/* Per exec: the workspace, sized for one vocabulary at the first call. */
struct cuda_sampler {
    int n;
    const uint8_t *usable_src;   /* the host flags uploaded */
    unsigned char *usable;
    float *val;
    smp_u64 *key;
    double *prob;
    int32_t *list;               /* device copy of the bias and penalty lists */
    int32_t *out;                /* device [token, outcome] */
    int32_t *host;               /* pinned: [token, outcome] then the lists */
    size_t list_cap;             /* int32 elements of list and of host past the result */
};

void cuda_sample_free(nvlm_context *ctx, cuda_exec *ce)
{
    cuda_sampler *s = ce->sampler;
    if (s == NULL) {
        return;
    }
    bool clean = cudaPeekAtLastError() == cudaSuccess; /* else the application's: kept */
    cudaFree(s->usable);
    cudaFree(s->val);
    cudaFree(s->key);
    cudaFree(s->prob);
    cudaFree(s->list);
    cudaFree(s->out);
    cudaFreeHost(s->host);
    if (clean) {
        cudaGetLastError();
    }
    nv_free(ctx, s);
    ce->sampler = NULL;
}

/* The workspace for a->n rows and lists of `need` int32 elements: sized once (lists for every
 * token of the vocabulary once plus the bias list; a longer bias list regrows it). */
static nvlm_status sampler_ready(nv_exec *ex, const nv_sample_args *a, size_t need)
{
    cuda_exec *ce = cuda_ex(ex);
    void *eh = ex->err_handle;
    cuda_sampler *s = ce->sampler;
    if (s != NULL && s->n != a->n) {
        NVLM_TRY(cuda_status(eh, cudaStreamSynchronize(ce->stream), "sample"));
        cuda_sample_free(ex->be->ctx, ce);
        s = NULL;
    }
    if (s == NULL) {
        s = (cuda_sampler *)nv_calloc(ex->be->ctx, 1, sizeof *s);
        if (s == NULL) {
            return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the sampler");
        }
        ce->sampler = s;
        s->n = a->n;
        size_t n = (size_t)a->n;
        cudaError_t e = cudaMalloc((void **)&s->usable, n);
        if (e == cudaSuccess) {
            e = cudaMalloc((void **)&s->val, n * sizeof(float));
        }
        if (e == cudaSuccess) {
            e = cudaMalloc((void **)&s->key, n * sizeof(smp_u64));
        }
        if (e == cudaSuccess) {
            e = cudaMalloc((void **)&s->prob, n * sizeof(double));
        }
        if (e == cudaSuccess) {
            e = cudaMalloc((void **)&s->out, 2 * sizeof(int32_t));
        }
        if (e != cudaSuccess) {
            nvlm_status st = cuda_status(eh, e, "sampler workspace");
            cuda_sample_free(ex->be->ctx, ce);
            return st;
        }
    }
    if (s->usable_src != a->usable) {
        NVLM_TRY(cuda_status(eh, cudaMemcpyAsync(s->usable, a->usable, (size_t)a->n,
                                                 cudaMemcpyHostToDevice, ce->stream),
                             "sampler upload"));
        NVLM_TRY(cuda_status(eh, cudaStreamSynchronize(ce->stream), "sampler upload"));
        s->usable_src = a->usable;
    }
    if (need > s->list_cap || s->host == NULL) {
        size_t cap = need > 2 * (size_t)a->n ? need : 2 * (size_t)a->n;
        NVLM_TRY(cuda_status(eh, cudaStreamSynchronize(ce->stream), "sample"));
        cudaFree(s->list);
        cudaFreeHost(s->host);
        s->list = NULL;
        s->host = NULL;
        s->list_cap = 0;
        NVLM_TRY(cuda_status(eh, cudaMalloc((void **)&s->list, cap * sizeof(int32_t)),
                             "sampler workspace"));
        NVLM_TRY(cuda_status(eh, cudaHostAlloc((void **)&s->host, (cap + 2) * sizeof(int32_t),
                                               cudaHostAllocDefault),
                             "sampler pinned buffer"));
        s->list_cap = cap;
    }
    return NVLM_OK;
}

nvlm_status cuda_sample(nv_exec *ex, const nv_sample_args *a, int32_t *token, int *outcome)
{
    void *eh = ex->err_handle;
    if (a->n <= 0 || a->n_bias > (size_t)INT32_MAX / 4 || a->n_pen > (size_t)a->n) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "bad sampler arguments");
    }
    NVLM_TRY(cuda_enter(ex));
    size_t need = 2 * (a->n_bias + a->n_pen);
    NVLM_TRY(sampler_ready(ex, a, need));
    cuda_exec *ce = cuda_ex(ex);
    cuda_sampler *s = ce->sampler;
    cudaStream_t st = ce->stream;
    if (need > 0) {
        memcpy(s->host + 2, a->list, need * sizeof(int32_t));
        NVLM_TRY(cuda_status(eh, cudaMemcpyAsync(s->list, s->host + 2, need * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, st),
                             "sampler upload"));
    }
    cuda_sample_kargs k;
    memset(&k, 0, sizeof k);
    k.logits = a->logits;
    k.usable = s->usable;
    k.n = a->n;
    k.val = s->val;
    k.key = s->key;
    k.prob = s->prob;
    k.list = s->list;
    k.n_bias = (int)a->n_bias;
    k.bias_serial = a->bias_unique ? 0 : 1;
    k.n_pen = (int)a->n_pen;
    k.temperature = a->temperature;
    k.top_k = a->top_k;
    k.top_p = a->top_p;
    k.min_p = a->min_p;
    k.rep = a->repetition_penalty;
    k.presence = a->presence_penalty;
    k.freq = a->frequency_penalty;
    k.uniform = a->uniform;
    k.out = s->out;
    NVLM_TRY(cuda_status(eh, cuda_sample_launch(st, CUDA_SAMPLE_THREADS, &k), "sample"));
    NVLM_TRY(cuda_status(eh, cudaMemcpyAsync(s->host, s->out, 2 * sizeof(int32_t),
                                             cudaMemcpyDeviceToHost, st),
                         "sample"));
    NVLM_TRY(cuda_status(eh, cudaStreamSynchronize(st), "sample"));
    *token = s->host[0];
    *outcome = s->host[1];
    return NVLM_OK;
}

