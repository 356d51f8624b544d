/*
 * backend.h - the backend seam: the only way the pipeline (vision.c, projector.c, decoder.c,
 * session.c) touches memory or compute. A backend is a table of ops plus a per-model state
 * (`nv_backend`: its weights) and a per-session stream (`nv_exec`: threads / CUDA stream and
 * scratch). Activations are f32 nv_tensors that live on the backend's device; weights are
 * `nv_bweight`s laid out by the backend. The tensor-parallel backend (tp/backend_tp.c)
 * implements this same table over per-rank backends (docs/parallel.md).
 */
#ifndef NVLM_BACKEND_H
#define NVLM_BACKEND_H

#include "internal.h"
#include "model.h"
#include "step.h"
#include "tensor.h"

/* A weight owned by the backend. `t` describes it in backend memory (shape as in the
 * checkpoint); `owned` is non-zero when the backend allocated a copy (the CPU backend keeps
 * big matrices in place in the mapped checkpoint and converts 1-D vectors to f32). `impl`:
 * backend-private (the tensor-parallel backend's per-rank slices), NULL for the others. The
 * data may hold padded rows only where the backend's own matmul is the sole reader: CUDA
 * stores 4-D (convolution) kernels with rows padded to a multiple of 8 (docs/cuda.md). */
typedef struct nv_bweight {
    nv_tensor t;
    int owned;
    void *impl;
} nv_bweight;

typedef struct nv_backend nv_backend;
typedef struct nv_exec nv_exec;

/* What the optional `sample` op gets (sampler.c's smp_sample_device fills it in): the CPU
 * sampler's inputs with the logits in device memory, the RNG's draw made by the host. */
typedef struct nv_sample_args {
    const float *logits;        /* device: n f32 logits */
    int n;
    const uint8_t *usable;      /* host: n flags (0: a row the tokenizer lacks); the same
                                   array for the exec's life (the op may upload it once) */
    float temperature;          /* the nvlm_sampler_params fields, checked by smp_check */
    int32_t top_k;
    float top_p;
    float min_p;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    /* host: n_bias (token, bias as float bits) pairs in the params' order, then n_pen
     * (token, count) pairs: each distinct token of the penalty window once (n_pen 0 when the
     * penalties are off). bias_unique: no token appears twice among the bias pairs. */
    const int32_t *list;
    size_t n_bias;
    bool bias_unique;
    size_t n_pen;
    double uniform;             /* the draw in [0, 1) (used when temperature > 0) */
} nv_sample_args;

/* Outcomes of the `sample` op. */
#define NV_SAMPLE_OK 0
#define NV_SAMPLE_NONFINITE 1   /* no usable row holds a finite logit */
#define NV_SAMPLE_BANNED 2      /* bias / penalties left no candidate */

typedef struct nv_backend_ops {
    const char *name;

    /* ---- per-model state ---- */
    /* Lays out one checkpoint tensor (host memory, bf16/f16/f32) for this backend. 1-D tensors
     * come back as f32. cut: how tensor parallelism divides it (layout.c; single-device
     * backends ignore it; NULL = replicated). Errors go to err_handle. */
    nvlm_status (*weight_load)(nv_backend *be, const nv_tensor *src, const nv_tp_cut *cut,
                               nv_bweight *out, void *err_handle);
    void (*weight_free)(nv_backend *be, nv_bweight *w);
    void (*destroy)(nv_backend *be);
    /* Optional (NULL: nothing to do), on the calling thread around each public call that runs
     * ops: a session's calls, a model's load and free. thread_enter returns what thread_leave
     * puts back: CUDA saves the application's current device and restores it, so the library
     * never changes it for the host application. destroy and exec_free restore
     * it by themselves. */
    int (*thread_enter)(nv_backend *be);
    void (*thread_leave)(nv_backend *be, int saved);

    /* ---- per-session stream ---- */
    /* n_threads: CPU worker threads; err_handle: where op failures are reported. */
    nvlm_status (*exec_create)(nv_backend *be, int n_threads, void *err_handle, nv_exec **out);
    void (*exec_free)(nv_exec *ex);

    /* ---- memory (device buffers of `bytes` bytes, 64-byte aligned) ---- */
    nvlm_status (*alloc)(nv_exec *ex, size_t bytes, void **out);
    /* A KV cache buffer: rows x kv_heads x head_dim elements of dtype. The pipeline touches it
     * only through store_rows, attention, copy (rows x row bytes) and free, always at its base
     * address, so a tensor-parallel backend may keep just each rank's kv heads. */
    nvlm_status (*alloc_kv)(nv_exec *ex, int64_t rows, int kv_heads, int head_dim,
                            nv_dtype dtype, void **out);
    void (*free)(nv_exec *ex, void *ptr);
    /* Host <-> device and device <-> device byte copies. */
    nvlm_status (*upload)(nv_exec *ex, void *dst, const void *host, size_t bytes);
    nvlm_status (*download)(nv_exec *ex, void *host, const void *src, size_t bytes);
    nvlm_status (*copy)(nv_exec *ex, void *dst, const void *src, size_t bytes);
    /* Copies `rows` rows of `width` bytes from src (rows `spitch` bytes apart) to dst (`dpitch`
     * bytes apart), device to device: column blocks of row-major matrices. */
    nvlm_status (*copy_2d)(nv_exec *ex, void *dst, size_t dpitch, const void *src,
                           size_t spitch, size_t width, size_t rows);
    /* Sets `bytes` bytes of device memory to zero. */
    nvlm_status (*zero)(nv_exec *ex, void *dst, size_t bytes);
    /* Waits until every queued op has finished (no-op on the CPU). */
    nvlm_status (*sync)(nv_exec *ex);

    /* ---- compute; all activations f32, row-major, on the device ---- */
    /* y[M][N] = x[M][K] . W^T (+ bias[N]); W (N, K). With a ROW-split W under TP the
     * backend all-reduces y. */
    nvlm_status (*matmul)(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                          const nv_bweight *bias, int M);
    /* y = x * rsqrt(mean(x[0..stat_cols)^2) + eps) * w over `cols` channels per row (stat_cols
     * = cols for a plain RMSNorm; fewer for the ViT QK-norm). Row strides ldy/ldx; in place
     * allowed. */
    nvlm_status (*rmsnorm)(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                           const nv_bweight *w, int rows, int cols, int stat_cols, float eps);
    /* Optional (NULL: no tensor parallelism over this backend), for an RMSNorm whose channels
     * are spread over ranks: out[r] = sum of x[r][0..cols)^2 (ld between rows; cols may be 0),
     * and y = x * rsqrt(sumsq[r] / n + eps) * w over `cols` channels with the statistic given. */
    nvlm_status (*rows_sumsq)(nv_exec *ex, float *out, const float *x, int ld, int rows,
                              int cols);
    nvlm_status (*rmsnorm_scale)(nv_exec *ex, float *y, int ldy, const float *x, int ldx,
                                 const nv_bweight *w, int rows, int cols, const float *sumsq,
                                 int n, float eps);
    /* y = (x - mean) * rsqrt(var + eps) * w + b per row (biased variance). */
    nvlm_status (*layernorm)(nv_exec *ex, float *y, const float *x, const nv_bweight *w,
                             const nv_bweight *b, int rows, int cols, float eps);
    /* Rotate-half RoPE in place on `n_heads` heads of `head_dim` per row (row stride ld); row r
     * has position pos0 + r; inv_freq_i = 1 / theta^(2i/head_dim) in f32. */
    nvlm_status (*rope)(nv_exec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
                        int64_t pos0, double theta);
    /* Scaled dot-product attention for `batch` independent sequences. q: batch x n_q rows of
     * stride ldq (head h at h*head_dim); k, v: batch x n_kv rows of stride ldkv, dtype kv_type
     * (NV_F32 or NV_BF16); out: batch x n_q rows of stride ldo, head h at h*head_dim.
     * q head h uses kv head h / (n_heads / n_kv_heads). causal_pos0 < 0: no mask; else query i
     * sees keys 0 .. causal_pos0 + i. heads: which model heads these are (NV_TP_LLM_HEADS or
     * NV_TP_VIT_HEADS), so that tensor parallelism can give each rank its own. */
    nvlm_status (*attention)(nv_exec *ex, float *out, int ldo, const float *q, int ldq,
                             const void *k, const void *v, int ldkv, nv_dtype kv_type, int batch,
                             int n_q, int n_kv, int n_heads, int n_kv_heads, int head_dim,
                             float scale, int64_t causal_pos0, nv_tp_part heads);
    /* y = gelu(x) (exact erf), n elements, in place allowed. */
    nvlm_status (*gelu)(nv_exec *ex, float *y, const float *x, size_t n);
    /* y = silu(g) * u, n elements. */
    nvlm_status (*silu_mul)(nv_exec *ex, float *y, const float *g, const float *u, size_t n);
    /* y[r] += s (.) x[r] for rows of `cols` (s may be NULL: plain residual add). */
    nvlm_status (*add_scaled)(nv_exec *ex, float *y, const float *x, const nv_bweight *s,
                              int rows, int cols);
    /* y[r] += b[r mod b_rows] (bias or position-embedding broadcast); b is a weight. */
    nvlm_status (*add_rows)(nv_exec *ex, float *y, const nv_bweight *b, int b_rows, int rows,
                            int cols);
    /* Gather/scatter of rows of `cols` elements: dst[di(i)] = f32(src[si(i)]) for i < n, where
     * di/si are the host index arrays dst_idx/src_idx (NULL = identity). src is device memory
     * of dtype src_type (f32, bf16, f16): activations or a weight's data. */
    nvlm_status (*rows_copy)(nv_exec *ex, float *dst, const int32_t *dst_idx, const void *src,
                             nv_dtype src_type, const int32_t *src_idx, size_t n, int cols);
    /* Stores n rows of `cols` f32 values into a cache buffer of dtype `type` starting at row
     * `row0` (the KV cache append). */
    nvlm_status (*store_rows)(nv_exec *ex, void *dst, nv_dtype type, int64_t row0,
                              const float *src, int lds, size_t n, int cols);
    /* Image patches to rows: pix (batch, C, H, W) f32 -> out (batch * (H/p) * (W/p), C*p*p),
     * patch order row-major, features (c, ky, kx): a stride-p convolution becomes a GEMM. */
    nvlm_status (*im2col)(nv_exec *ex, float *out, const float *pix, int batch, int channels,
                          int height, int width, int patch);

    /* ---- optional fused ops (NULL: the pipeline runs the plain sequence given for each) ---- */
    /* Lays out n checkpoint tensors of one dtype as ONE weight whose rows are theirs in order
     * (2-D parts of equal width: (sum of rows, K); 1-D parts: their concatenation), so that one
     * matmul computes what n did: the decoder's q|k|v (with q_b|k_b|v_b as one bias) and
     * gate|up. *grouped false (and NVLM_OK, nothing loaded): this backend keeps these tensors
     * apart (their dtype, say); load them one by one. A backend that groups also has
     * silu_mul_cat. The tensor-parallel backend does not group. */
    nvlm_status (*weight_load_group)(nv_backend *be, const nv_tensor *srcs, int n,
                                     nv_bweight *out, bool *grouped, void *err_handle);
    /* The residual add and the next RMSNorm in one pass: h[r] += s (.) a[r] when a is not NULL
     * (s may be NULL: plain add), then x = rmsnorm(h) * w over `cols` channels, all rows of
     * `cols` (= add_scaled then rmsnorm with stat_cols = cols). x is the input of the matmuls
     * that follow: a backend whose GEMMs read another dtype (CUDA: bf16) also keeps x in that
     * dtype for matmuls reading x until any other op runs. x must not overlap h or a. */
    nvlm_status (*add_rmsnorm)(nv_exec *ex, float *h, const float *a, const nv_bweight *s,
                               float *x, const nv_bweight *w, int rows, int cols, float eps);
    /* y[r][c] = silu(gu[r][c]) * gu[r][cols + c]: silu_mul on the output of a grouped gate|up
     * matmul (rows of 2 * cols); y (rows of cols) must not overlap gu. */
    nvlm_status (*silu_mul_cat)(nv_exec *ex, float *y, const float *gu, int rows, int cols);
    /* rope then store_rows in one pass, for the KV append: row r of src (stride lds, n_heads
     * heads of head_dim) rotated at position row0 + r (as rope with pos0 = row0) is stored at
     * cache row row0 + r (rows of n_heads * head_dim, dtype type). src's contents afterwards
     * are unspecified (the CPU rotates it in place; CUDA leaves it). */
    nvlm_status (*rope_store)(nv_exec *ex, void *dst, nv_dtype type, int64_t row0, float *src,
                              int lds, int rows, int n_heads, int head_dim, double theta);
    /* Optional (NULL: the session downloads the logits and runs smp_sample on the host): picks
     * a token from device logits exactly as smp_sample's order and arithmetic do (its sums may
     * be added in another order) and writes it to *token and an NV_SAMPLE_* code to *outcome;
     * only those cross to the host. Synchronises. */
    nvlm_status (*sample)(nv_exec *ex, const nv_sample_args *a, int32_t *token, int *outcome);
    /* ---- decode steps (optional: NULL = every op runs as it comes; CPU, tensor-parallel) ----
     * The pipeline brackets one decode pass (one new token per sequence, step.h) with
     * step_begin / step_end so that a backend may capture its ops once per step key and replay
     * them per token (the CUDA backend: a CUDA graph). Inside a step the ops get the same
     * arguments as outside; the per-token ones (rows_copy's src_idx = the step's token ids,
     * rope's pos0, store_rows' row0 = pos0, attention's causal_pos0 = pos0 and n_kv = pos0 +
     * n_tokens) must equal the step's values: the backend reads them from a device copy of the
     * step block instead, so the captured work is valid for every token. download's host
     * copy may be deferred to step_end (its data is there when step_end returns) and sync
     * waits there too; alloc, free and upload are not for steps. An op that cannot be
     * captured, or a replay whose ops differ from the capture (a buffer moved), makes
     * step_end ask for the pass again with *redo = true: the pipeline then reruns it without
     * a step (KV rows are rewritten with the same values). */
    /* Starts a step (s borrowed for the call). Errors: NVLM_ERR_INTERNAL for a step that does
     * not fit its key, NVLM_ERR_UNSUPPORTED for a key the backend cannot run (the pipeline
     * then runs the pass without a step), NVLM_ERR_BACKEND. */
    nvlm_status (*step_begin)(nv_exec *ex, const nv_step *s);
    /* Ends the step begun last: ok is false when the pipeline's pass failed (nothing is
     * launched then). On return with NVLM_OK and *redo false the step's work is enqueued and
     * its downloads are in host memory. */
    nvlm_status (*step_end)(nv_exec *ex, bool ok, bool *redo);
} nv_backend_ops;

struct nv_backend {
    const nv_backend_ops *ops;
    nvlm_context *ctx;
    nv_dtype kv_default;     /* the KV cache dtype of NVLM_KV_DEFAULT */
    /* How matmul computes (nvlm_model_params.precision), set by the engine right after the
     * backend is created (with kv_default), before any weight is laid out. The CPU backend's
     * matmul reads it; CUDA's GEMMs are always bf16 x bf16; the tensor-parallel backend's
     * ranks carry their own copy. */
    nvlm_precision precision;
    bool device_memory;      /* activations live in device memory (not host-addressable) */
    /* The KV cache is allocated once for the session's whole context (n_ctx) when the session
     * is created, never grown by reallocation and copy: captured decode steps hold the
     * buffers' addresses (CUDA; the tensor-parallel backend copies it from its ranks). */
    bool kv_reserve_all;
    void *impl;              /* backend-private */
};

struct nv_exec {
    nv_backend *be;
    void *err_handle;        /* where op errors are reported (the session) */
    void *impl;              /* backend-private: thread pool, stream, scratch */
};

/* Bytes of a KV cache buffer of rows x kv_heads x head_dim elements of dtype (alloc_kv);
 * false for a negative count or on overflow. */
static inline bool nv_kv_bytes(int64_t rows, int64_t kv_heads, int64_t head_dim, nv_dtype dtype,
                               size_t *out)
{
    size_t n;
    return rows >= 0 && kv_heads >= 0 && head_dim >= 0 &&
           nv_mul_size((size_t)rows, (size_t)kv_heads, &n) &&
           nv_mul_size(n, (size_t)head_dim, &n) && nv_mul_size(n, nv_dtype_size(dtype), out);
}

/* The CPU backend (src/cpu/backend_cpu.c). */
nvlm_status nv_backend_cpu_create(nvlm_context *ctx, nv_backend **out);
struct tp_comm;

/* The tensor-parallel backend (src/tp/backend_tp.c) over `size` rank backends of one kind,
 * sharded by the plan for cfg; it owns the ranks and `shared` from the call on (also on
 * failure). shared: one communicator for the whole model (NCCL between the ranks' GPUs; its
 * sessions then take turns op by op, so every rank issues the collectives in one order), or
 * NULL: each session makes its own local communicator (staged through host memory when the
 * ranks' memory is a device's) and sessions run side by side. */
nvlm_status nv_backend_tp_create(nvlm_context *ctx, const nv_config *cfg, nv_backend **ranks,
                                 int size, struct tp_comm *shared, void *err_handle,
                                 nv_backend **out);
/* Tests: collectives go through host memory even over host-memory ranks (the staging path of
 * device ranks with the local communicator). */
void nv_tp_set_staged(nv_backend *be, bool staged);
/* Tests: the model's sessions share one local communicator, taking turns op by op (the path
 * of a per-model NCCL communicator). Call before any session exists. */
nvlm_status nv_tp_share_local_comm(nv_backend *be);
/* Tests: rank `rank` of a tensor-parallel exec fails its op_count-th op from now with
 * NVLM_ERR_BACKEND "injected failure". */
void nv_tp_inject_failure(nv_exec *ex, int rank, int64_t op_count);

/* A bump arena in backend memory for a forward pass's activations: reserve once, take
 * aligned pieces, rewind to a mark to reuse the space above it (the session keeps an image's
 * projector rows below the mark while every decoder chunk reuses the space above). Grows only
 * in nv_arena_reserve (never during a forward). A piece that does not fit poisons the arena:
 * every later piece is NULL too, until the next reserve or rewind. */
typedef struct nv_arena {
    nv_exec *ex;
    char *base;
    size_t cap;
    size_t used;
    bool failed;             /* a piece did not fit since the last reserve or rewind */
} nv_arena;

/* Ensures capacity >= bytes and empties the arena (contents are discarded when it grows). */
nvlm_status nv_arena_reserve(nv_arena *a, size_t bytes);
/* n floats from the arena (64-byte aligned), or NULL when the reservation was too small or an
 * earlier piece did not fit. */
float *nv_arena_floats(nv_arena *a, size_t n);
/* The current fill level, to rewind to later. */
size_t nv_arena_mark(const nv_arena *a);
/* Frees every piece taken since `mark` (from nv_arena_mark) and clears the poison. */
void nv_arena_rewind(nv_arena *a, size_t mark);
void nv_arena_release(nv_arena *a);
/* Bytes nv_arena_floats(n) consumes (n floats rounded up to 64 bytes); saturates. */
size_t nv_arena_size(size_t n_floats);

#endif /* NVLM_BACKEND_H */
