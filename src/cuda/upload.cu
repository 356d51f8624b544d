/*
 * upload.cu - weights onto the device: one slab per backend (a single cudaMalloc of the
 * estimator's weight bytes, memory_plan.h; each weight an aligned piece of it), filled by up to
 * UP_LANES host threads, each converting its part of a tensor into its own double-buffered
 * pinned staging halves and copying them on its own stream. Also the device memory probe of
 * the fit check. The slab layout, the thread split and the conversion are the plain C functions
 * of memory_plan.c.
 */
#include "cuda/cuda_internal.h"

extern "C" {
#include "memory_plan.h"
}

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define UP_LANES 4
#define UP_STAGE_BYTES ((size_t)8 << 20)    /* per pinned half, per lane */
#define UP_MIN_PART_BYTES ((size_t)8 << 20) /* a thread's share of a tensor at least */
#define UP_QUANTUM 4096                     /* elements: parts start at multiples of it */

typedef struct up_lane {
    cudaStream_t stream;
    void *stage[2];
    cudaEvent_t ev[2];
} up_lane;

struct cuda_upload {
    char *slab;                 /* NULL until nv_cuda_weight_slab */
    nv_slab plan;               /* pieces handed out so far */
    int n_lanes;                /* 0 until the first upload */
    up_lane lane[UP_LANES];
};

extern "C" nvlm_status nv_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes,
                                        void *err_handle)
{
    *free_bytes = 0;
    *total_bytes = 0;
    int prev = -1;
    cudaGetDevice(&prev);
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return nv_error(err_handle, NVLM_ERR_NO_DEVICE, "CUDA device %d: %s", device,
                        cudaGetErrorString(e));
    }
    e = cudaMemGetInfo(free_bytes, total_bytes);
    /* while `device` is current: a sticky error marks it, not the caller's */
    nvlm_status st = cuda_status(err_handle, e, "memory info");
    cuda_restore_device(prev);
    return st;
}

static cuda_upload *up_of(nv_backend *be, void *eh, nvlm_status *st)
{
    cuda_backend *cb = (cuda_backend *)be->impl;
    if (cb->up == NULL) {
        cb->up = (cuda_upload *)nv_calloc(be->ctx, 1, sizeof *cb->up);
        if (cb->up == NULL) {
            *st = nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory for the weight upload");
        }
    }
    return cb->up;
}

extern "C" nvlm_status nv_cuda_weight_slab(nv_backend *be, size_t bytes, void *err_handle)
{
    cuda_backend *cb = (cuda_backend *)be->impl;
    nvlm_status st = NVLM_OK;
    cuda_upload *up = up_of(be, err_handle, &st);
    NVLM_TRY(st);
    if (up->slab != NULL || bytes == 0) {
        return NVLM_OK;
    }
    /* a lost context, or an error pending on this thread, is reported as such rather than as
     * a failed allocation */
    NVLM_TRY(cuda_alive(cb->device, err_handle));
    /* made before the loader's thread_enter: the caller's device comes back here */
    int prev = -1;
    cudaGetDevice(&prev);
    NVLM_TRY(cuda_status(err_handle, cudaSetDevice(cb->device), "select device"));
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    cuda_restore_device(prev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        char g[32];
        nv_mem_gib(g, sizeof g, bytes);
        return nv_error(err_handle, NVLM_ERR_OUT_OF_MEMORY, "cannot allocate the weight slab "
                        "(%s) on CUDA device %d: %s", g, cb->device, cudaGetErrorString(e));
    }
    up->slab = (char *)p;
    up->plan.cap = bytes;
    up->plan.used = 0;
    return NVLM_OK;
}

static void lanes_free(cuda_upload *up)
{
    bool clean = cudaPeekAtLastError() == cudaSuccess; /* else the application's: kept */
    for (int i = 0; i < up->n_lanes; i++) {
        up_lane *l = &up->lane[i];
        if (l->stream != NULL) {
            cudaStreamSynchronize(l->stream);
        }
        for (int h = 0; h < 2; h++) {
            if (l->ev[h] != NULL) {
                cudaEventDestroy(l->ev[h]);
            }
            if (l->stage[h] != NULL) {
                cudaFreeHost(l->stage[h]);
            }
        }
        if (l->stream != NULL) {
            cudaStreamDestroy(l->stream);
        }
        memset(l, 0, sizeof *l);
    }
    up->n_lanes = 0;
    if (clean) {
        cudaGetLastError();
    }
}

extern "C" void nv_cuda_upload_end(nv_backend *be)
{
    cuda_backend *cb = (cuda_backend *)be->impl;
    if (cb->up != NULL) {
        cudaSetDevice(cb->device);
        lanes_free(cb->up);
    }
}

void cuda_upload_free(nv_backend *be)
{
    cuda_backend *cb = (cuda_backend *)be->impl;
    if (cb->up == NULL) {
        return;
    }
    cudaSetDevice(cb->device);
    lanes_free(cb->up);
    if (cb->up->slab != NULL && cudaFree(cb->up->slab) != cudaSuccess) {
        cudaGetLastError();
    }
    nv_free(be->ctx, cb->up);
    cb->up = NULL;
}

bool cuda_slab_owns(const cuda_backend *cb, const void *p)
{
    const cuda_upload *up = cb->up;
    return up != NULL && up->slab != NULL && (const char *)p >= up->slab &&
           (const char *)p < up->slab + up->plan.cap;
}

/* Lanes: as many as half the cores (1 .. UP_LANES), each a stream, two pinned halves and
 * their events. All or none: a failure frees the lanes made so far. */
static nvlm_status lanes_init(cuda_upload *up, void *eh)
{
    if (up->n_lanes > 0) {
        return NVLM_OK;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = (int)NV_MAX(1L, NV_MIN((long)UP_LANES, cores / 2));
    nvlm_status st = NVLM_OK;
    for (int i = 0; i < n && st == NVLM_OK; i++) {
        up_lane *l = &up->lane[i];
        up->n_lanes = i + 1;
        st = cuda_status(eh, cudaStreamCreateWithFlags(&l->stream, cudaStreamNonBlocking),
                         "create upload stream");
        for (int h = 0; h < 2 && st == NVLM_OK; h++) {
            st = cuda_status(eh, cudaHostAlloc(&l->stage[h], UP_STAGE_BYTES,
                                               cudaHostAllocDefault), "pinned staging");
            if (st == NVLM_OK) {
                st = cuda_status(eh, cudaEventCreateWithFlags(&l->ev[h],
                                                              cudaEventDisableTiming),
                                 "staging event");
            }
        }
    }
    if (st != NVLM_OK) {
        lanes_free(up);
    }
    return st;
}

typedef struct up_job {
    int device;
    up_lane *lane;
    char *dst;
    nv_dtype dt;
    const char *src;
    nv_dtype st;
    size_t n;
    cudaError_t err;
} up_job;

/* One lane's part: convert a half while the other half's copy is in flight. */
static void *run_job(void *arg)
{
    up_job *j = (up_job *)arg;
    size_t des = nv_dtype_size(j->dt);
    size_t ses = nv_dtype_size(j->st);
    size_t per = UP_STAGE_BYTES / des;
    up_lane *l = j->lane;
    cudaError_t e = cudaSetDevice(j->device);
    int half = 0;
    for (size_t off = 0; off < j->n && e == cudaSuccess; off += per, half ^= 1) {
        size_t cnt = NV_MIN(per, j->n - off);
        e = cudaEventSynchronize(l->ev[half]);
        if (e != cudaSuccess) {
            break;
        }
        nv_convert_weight(l->stage[half], j->dt, j->src + off * ses, j->st, cnt);
        e = cudaMemcpyAsync(j->dst + off * des, l->stage[half], cnt * des,
                            cudaMemcpyHostToDevice, l->stream);
        if (e == cudaSuccess) {
            e = cudaEventRecord(l->ev[half], l->stream);
        }
    }
    cudaError_t s = cudaStreamSynchronize(l->stream);
    j->err = e != cudaSuccess ? e : s;
    return NULL;
}

/* n elements of src (dtype st) to dst (dtype dt), split over the lanes. */
static nvlm_status upload_parts(cuda_backend *cb, cuda_upload *up, void *dst, nv_dtype dt,
                                const void *src, nv_dtype st, size_t n, void *eh)
{
    size_t begin[UP_LANES];
    size_t count[UP_LANES];
    size_t des = nv_dtype_size(dt);
    int parts = nv_upload_split(n, UP_QUANTUM, UP_MIN_PART_BYTES / des, up->n_lanes, begin,
                                count);
    up_job job[UP_LANES];
    pthread_t th[UP_LANES];
    bool started[UP_LANES] = {false};
    for (int i = 0; i < parts; i++) {
        job[i].device = cb->device;
        job[i].lane = &up->lane[i];
        job[i].dst = (char *)dst + begin[i] * des;
        job[i].dt = dt;
        job[i].src = (const char *)src + begin[i] * nv_dtype_size(st);
        job[i].st = st;
        job[i].n = count[i];
        job[i].err = cudaSuccess;
        if (i > 0) {
            started[i] = pthread_create(&th[i], NULL, run_job, &job[i]) == 0;
        }
    }
    for (int i = 0; i < parts; i++) {
        if (!started[i]) {
            run_job(&job[i]); /* part 0, or a thread that could not start */
        }
    }
    cudaError_t e = cudaSuccess;
    for (int i = 0; i < parts; i++) {
        if (started[i]) {
            pthread_join(th[i], NULL);
        }
        e = e != cudaSuccess ? e : job[i].err;
    }
    return cuda_status(eh, e, "weight upload");
}

/* `bytes` of device memory for one weight: the next piece of the slab, or (no slab, or the
 * estimate missed it) an allocation of its own (*own). */
static nvlm_status take_piece(nv_backend *be, cuda_upload *up, size_t bytes, char **p, bool *own,
                              void *eh)
{
    size_t off;
    *own = false;
    if (up->slab != NULL && nv_slab_take(&up->plan, bytes, &off)) {
        *p = up->slab + off;
        return NVLM_OK;
    }
    cudaError_t e = cudaMalloc((void **)p, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return nv_error(eh, NVLM_ERR_OUT_OF_MEMORY,
                        "out of device memory for a weight (%zu bytes)", bytes);
    }
    *own = true;
    if (up->slab != NULL) {
        nv_log(be->ctx, NVLM_LOG_WARN, "a weight of %zu bytes did not fit the weight slab "
               "(%zu of %zu bytes used)", bytes, up->plan.used, up->plan.cap);
    }
    return NVLM_OK;
}

/* The upload state, with the device current and the lanes ready. */
static nvlm_status upload_begin(nv_backend *be, cuda_upload **out, void *eh)
{
    cuda_backend *cb = (cuda_backend *)be->impl;
    nvlm_status st = NVLM_OK;
    cuda_upload *up = up_of(be, eh, &st);
    NVLM_TRY(st);
    NVLM_TRY(cuda_status(eh, cudaSetDevice(cb->device), "select device"));
    NVLM_TRY(lanes_init(up, eh));
    *out = up;
    return NVLM_OK;
}

nvlm_status cuda_weight_upload(nv_backend *be, const nv_tensor *src, nv_bweight *out, void *eh)
{
    cuda_backend *cb = (cuda_backend *)be->impl;
    nv_dtype dt;
    size_t bytes;
    int64_t n = nv_tensor_nelem(src);
    if (n < 0 || n == INT64_MAX ||
        !nv_mem_weight_store(src->ndim, src->shape, src->dtype, &dt, &bytes)) {
        return nv_error(eh, NVLM_ERR_LIMIT, "weight too large");
    }
    if (dt == NV_F8_E4M3 && src->scale == NULL) {
        return nv_error(eh, NVLM_ERR_INTERNAL, "an FP8 weight without scales");
    }
    cuda_upload *up;
    NVLM_TRY(upload_begin(be, &up, eh));
    char *p = NULL;
    bool own = false;
    NVLM_TRY(take_piece(be, up, bytes, &p, &own, eh));
    /* a convolution kernel goes up with its rows padded (nv_mem_weight_ld), from a padded
     * host copy; `t` keeps the checkpoint shape */
    nvlm_status st = NVLM_OK;
    const void *from = src->data;
    void *padded = NULL;
    size_t n_store = (size_t)n;
    int64_t rows = src->ndim > 0 && src->shape[0] > 0 ? src->shape[0] : 1;
    int64_t cols = n / rows;
    int64_t ld = dt == NV_BF16 ? nv_mem_weight_ld(src->ndim, cols) : cols;
    if (ld != cols) {
        size_t es = nv_dtype_size(src->dtype);
        n_store = (size_t)rows * (size_t)ld; /* fits: bytes above counted it */
        padded = nv_alloc_array(be->ctx, n_store, es);
        if (padded == NULL) {
            st = nv_error(eh, NVLM_ERR_OUT_OF_MEMORY, "out of memory padding a weight's rows");
        } else {
            nv_pad_rows(padded, src->data, (size_t)rows, (size_t)cols, (size_t)ld, es);
            from = padded;
        }
    }
    if (st == NVLM_OK) {
        st = upload_parts(cb, up, p, dt, from, src->dtype, n_store, eh);
    }
    nv_free(be->ctx, padded);
    float *scale = NULL;
    if (st == NVLM_OK && dt == NV_F8_E4M3) {
        /* one f32 scale per row after the codes (nv_mem_weight_store's layout) */
        scale = (float *)(void *)(p + nv_slab_piece((size_t)n));
        st = upload_parts(cb, up, scale, NV_F32, src->scale, NV_F32,
                          (size_t)(src->ndim > 0 ? src->shape[0] : 1), eh);
    }
    if (st != NVLM_OK) {
        if (own) {
            cudaFree(p);
            cudaGetLastError();
        }
        return st;
    }
    out->t = *src;
    out->t.dtype = dt;
    out->t.data = p;
    out->t.scale = scale;
    out->t.device = cb->device;
    out->owned = 1;
    return NVLM_OK;
}

nvlm_status cuda_weight_upload_group(nv_backend *be, const nv_tensor *srcs, int n, nv_dtype dt,
                                     int64_t rows, int64_t cols, nv_bweight *out, void *eh)
{
    cuda_backend *cb = (cuda_backend *)be->impl;
    size_t es = nv_dtype_size(dt);
    size_t bytes;
    if (rows < 0 || cols < 0 || !nv_mul_size((size_t)rows, (size_t)cols, &bytes) ||
        !nv_mul_size(bytes, es, &bytes)) {
        return nv_error(eh, NVLM_ERR_LIMIT, "weight too large");
    }
    cuda_upload *up;
    NVLM_TRY(upload_begin(be, &up, eh));
    char *p = NULL;
    bool own = false;
    /* the parts' own pieces would have been rounded up one by one: the whole fits in them */
    NVLM_TRY(take_piece(be, up, nv_slab_piece(bytes), &p, &own, eh));
    size_t at = 0;
    nvlm_status st = NVLM_OK;
    for (int i = 0; i < n && st == NVLM_OK; i++) {
        size_t cnt = (size_t)srcs[i].shape[0] * (size_t)cols;
        st = upload_parts(cb, up, p + at * es, dt, srcs[i].data, srcs[i].dtype, cnt, eh);
        at += cnt;
    }
    if (st != NVLM_OK) {
        if (own) {
            cudaFree(p);
            cudaGetLastError();
        }
        return st;
    }
    out->t = srcs[0];
    out->t.shape[0] = rows;
    out->t.dtype = dt;
    out->t.data = p;
    out->t.device = cb->device;
    out->owned = 1;
    return NVLM_OK;
}
