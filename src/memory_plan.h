/*
 * memory_plan.h - what a model needs on a device, computed once from the config: the weights
 * as the CUDA backend stores them (matrices bf16, vectors f32, FP8 projections as E4M3 codes +
 * f32 row scales) per tensor-parallel rank, the per-session workspace and activation arena of
 * the largest pass, and the KV cache for a context. nvlm_model_get_info's memory figures and
 * the fit check before upload both come from nv_mem_estimate. Also the host-side parts of the
 * weight upload that need no device: the slab layout, the split of a tensor over upload
 * threads and the load progress accounting (docs/cuda.md, "Memory").
 */
#ifndef NVLM_MEMORY_PLAN_H
#define NVLM_MEMORY_PLAN_H

#include "model.h"
#include "tensor.h"

/* ---- the estimator ---------------------------------------------------------------------- */

/* Alignment of every weight in a device slab (and of each piece the estimator counts). */
#define NV_SLAB_ALIGN ((size_t)256)
/* Device memory kept free beyond the estimate: the CUDA allocator's granularity, cuBLASLt's
 * internal buffers, kernel stacks. Per device. */
#define NV_MEM_HEADROOM ((uint64_t)512 << 20)
/* Workspace pieces of one session on one device (the CUDA backend's sizes). */
#define NV_MEM_GEMM_WORKSPACE ((uint64_t)32 << 20)  /* cuBLASLt workspace */
#define NV_MEM_ATTN_SCRATCH ((uint64_t)64 << 20)    /* split-KV partials, row indices */
/* A session's device scratch buffer that must hold n elements is allocated for
 * NV_MEM_SCRATCH_CAP(n) (cuda_scratch), so that a slightly larger pass reuses it. */
#define NV_MEM_SCRATCH_CAP(n) ((n) + (n) / 4)
/* The device sampler of one session, bytes per vocabulary entry: the logits (f32) and the
 * sampler's workspace (sample_op.cu: flag 1, value 4, key 8, probability 8, two list
 * entries 8). */
#define NV_MEM_SAMPLER_BYTES_PER_ID 33u
/* The FP8 matmul of one session (fp8_gemm.cu): the E4M3 cuBLASLt workspace, and the elements
 * of the bf16 weight block of the widening path (nv_mem_fp8_block_rows). */
#define NV_MEM_FP8_WORKSPACE ((uint64_t)8 << 20)
#define NV_MEM_FP8_DQ_ELEMS ((uint64_t)32 << 20)
/* Rows of an FP8 weight of N rows and K columns widened to bf16 per block by the FP8 matmul's
 * widening path: all N when N x K fits NV_MEM_FP8_DQ_ELEMS, else a multiple of 64 (64 at
 * least). */
int64_t nv_mem_fp8_block_rows(int64_t N, int64_t K);

typedef struct nv_mem_plan {
    int tp_size;
    bool fp8;                    /* LLM projections stored as FP8 */
    uint64_t weights;            /* weight bytes of the largest rank (all of them at tp 1) */
    uint64_t weights_all;        /* weight bytes summed over the ranks */
    uint64_t workspace;          /* per rank and session: cuBLASLt workspace, the bf16 copy of
                                    the largest GEMM input, attention scratch, the device
                                    sampler and logits, FP8 matmul scratch (FP8 weights) */
    uint64_t activations;        /* per rank and session: the arena of the largest pass (a
                                    full DEC_MAX_BATCH decoder chunk, or one image of
                                    max_dynamic_patch tiles + thumbnail with its rows) */
    uint64_t kv_per_token;       /* per rank (the largest): KV cache bytes per token */
    int64_t n_ctx;               /* the context kv is counted for */
    uint64_t kv;                 /* per rank: KV cache for n_ctx tokens */
    uint64_t headroom;           /* NV_MEM_HEADROOM */
    uint64_t total;              /* per rank: weights + workspace + activations + kv +
                                    headroom (what must be free on the rank's device) */
} nv_mem_plan;

/* Row length (elements) the CUDA backend stores a bf16 matrix of K columns with: convolution
 * kernels (4-D, read only by the CUDA matmul, over im2col rows) get K rounded up to
 * NV_MEM_K_ALIGN with zero columns, so the GEMM runs with an aligned K (the ViT patch
 * embedding: 588 -> 592); every other matrix keeps K (other ops read its rows densely). */
#define NV_MEM_K_ALIGN 8
int64_t nv_mem_weight_ld(int ndim, int64_t K);
/* Copies `rows` rows of `cols` elements of `elem` bytes into rows of `ld` elements, zeroing
 * columns cols..ld-1 (zero bits are 0.0 in bf16, f16 and f32). */
void nv_pad_rows(void *dst, const void *src, size_t rows, size_t cols, size_t ld, size_t elem);
/* How the backend stores one weight handed to weight_load: *dtype (bf16 for tensors with two
 * or more dimensions above 1, f32 for vectors; F8_E4M3 stays FP8) and *bytes, its slab piece
 * before alignment (FP8: the codes, padded to NV_SLAB_ALIGN, then one f32 scale per row; bf16
 * convolution kernels: rows of nv_mem_weight_ld). False on overflow. */
bool nv_mem_weight_store(int ndim, const int64_t *shape, nv_dtype src_dtype, nv_dtype *dtype,
                         size_t *bytes);
/* A piece of `bytes` rounded up to NV_SLAB_ALIGN (at least one alignment unit); SIZE_MAX on
 * overflow. */
size_t nv_slab_piece(size_t bytes);

/* Estimates for cfg over tp_size ranks (1 .. the LLM's query heads) with the given weight
 * storage, KV cache dtype (NV_BF16 or NV_F32) and context n_ctx (<= 0: max_position_embeddings).
 * lm_head_stored: whether the checkpoint has its own lm_head (else a tied lm_head is a second
 * copy of the embeddings, as the engine loads it). rank_weights (may be NULL): tp_size
 * entries receiving each rank's weight bytes. Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT
 * (tp_size out of range), NVLM_ERR_UNSUPPORTED (heads that do not divide into kv groups),
 * NVLM_ERR_LIMIT (overflow); text to err_handle. */
nvlm_status nv_mem_estimate(const nv_config *cfg, int tp_size, bool fp8, nv_dtype kv_type,
                            int64_t n_ctx, bool lm_head_stored, uint64_t *rank_weights,
                            nv_mem_plan *out, void *err_handle);

/* ---- the fit check ---------------------------------------------------------------------- */

/* nv_mem_probe_fn (internal.h): free and total bytes of CUDA device `device`. The library's
 * probe is nv_cuda_mem_info (cuda_api.h); tests install their own on the context. */

/* Tests: every fit check of models loaded in ctx asks fn instead of the CUDA runtime, and runs
 * whatever backend the context has (the probe stands in for its devices). NULL removes it. */
void nv_mem_set_probe(nvlm_context *ctx, nv_mem_probe_fn fn, void *user);

/* The load-time check of model m (config parsed, weight type resolved): for each distinct
 * device of the context's ranks, the needs of the ranks on it (weights + one session's
 * workspace and activations + the KV cache of one full pass, NV_MEM_HEADROOM) against its
 * free memory. Runs for the CUDA backend, or any backend when a test probe is set; otherwise
 * returns NVLM_OK at once. Refuses with NVLM_ERR_OUT_OF_MEMORY "needs X GiB, device N has Y
 * GiB free" and the remedies that exist (more tensor-parallel ranks with their per-rank
 * figure, FP8 weights); text to m. */
nvlm_status nv_mem_fit_model(const nvlm_model *m);
/* The session-time check: one more session with a KV cache of n_ctx tokens of kv_type on each
 * rank's device (workspace + activations + KV; the weights are already there). Same rules and
 * errors; text to err_handle. */
nvlm_status nv_mem_fit_session(const nvlm_model *m, int64_t n_ctx, nv_dtype kv_type,
                               void *err_handle);
/* Writes "1.23 GiB" into buf. */
void nv_mem_gib(char *buf, size_t n, uint64_t bytes);

/* ---- weight upload: host-side parts ----------------------------------------------------- */

/* A device slab: pieces handed out at NV_SLAB_ALIGN offsets from its base. */
typedef struct nv_slab {
    size_t cap;
    size_t used;
} nv_slab;

/* Takes a piece of `bytes` (rounded by nv_slab_piece): its offset into *off. False (nothing
 * taken) when it does not fit. */
bool nv_slab_take(nv_slab *s, size_t bytes, size_t *off);

/* Splits n elements over at most max_parts upload threads so that every part but the last
 * holds a multiple of `quantum` elements and at least min_elems of them (small tensors go to
 * one thread). begin/count receive max_parts entries; returns the number of parts (>= 1 when
 * n > 0, 0 for n = 0). */
int nv_upload_split(size_t n, size_t quantum, size_t min_elems, int max_parts, size_t *begin,
                    size_t *count);

/* Converts n elements of src (dtype st: bf16, f16, f32) to dst (dtype dt: bf16 or f32; FP8
 * codes are copied as bytes when st = dt), as the weight upload stages them. */
void nv_convert_weight(void *dst, nv_dtype dt, const void *src, nv_dtype st, size_t n);

/* nvlm_model_load's progress: 0 .. 0.1 config and index, .. 0.3 shards opened, this after the
 * tokenizer, then by bytes of weights laid out (uploaded to the device) up to 1. */
#define NV_LOAD_WEIGHTS_F0 0.35f

/* Load progress by bytes: fractions from f0 to f1 as `done` goes from 0 to `total`, reported
 * through the model params' callback when they move by at least 1/512 (and at the end). */
typedef struct nv_progress {
    nvlm_progress_fn fn;
    void *user;
    float f0, f1;
    uint64_t total, done;
    float last;                  /* the fraction last reported */
} nv_progress;

/* Adds `bytes` done; calls the callback when due. Returns NVLM_OK or NVLM_ERR_CANCELLED (the
 * callback returned non-zero; text to err_handle). */
nvlm_status nv_progress_add(nv_progress *p, uint64_t bytes, void *err_handle);

#endif /* NVLM_MEMORY_PLAN_H */
