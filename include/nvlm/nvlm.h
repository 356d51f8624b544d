/*
 * nvlm.h - embeddable inference for NVIDIA NVLM-1.0-D (InternViT-6B -> MLP -> Qwen2-72B).
 *
 * Usage (error handling shortened; every call returns an nvlm_status):
 *
 *     nvlm_context_params cp;
 *     nvlm_context_default_params(&cp);
 *     nvlm_context *ctx;
 *     nvlm_context_create(&cp, &ctx);
 *
 *     nvlm_model *model;
 *     if (nvlm_model_load(ctx, "/models/NVLM-D-72B", NULL, &model) != NVLM_OK) {
 *         fprintf(stderr, "%s\n", nvlm_last_error(ctx));
 *     }
 *
 *     nvlm_image *img;
 *     nvlm_image_load_file(ctx, "photo.jpg", NULL, &img);      // decode + dynamic tiles
 *
 *     nvlm_session *s;
 *     nvlm_session_create(model, NULL, &s);                      // owns the KV cache
 *     nvlm_session_add_turn(s, NVLM_ROLE_USER, "Describe the image.", &img, 1);
 *     nvlm_session_generate(s, NULL, on_text, user_data, NULL); // streams UTF-8 pieces
 *
 *     nvlm_session_free(s);
 *     nvlm_image_free(img);
 *     nvlm_model_free(model);
 *     nvlm_context_free(ctx);
 *
 * Conventions (see docs/abi.md):
 *  - Every fallible call returns nvlm_status; NVLM_OK is 0. Detailed text for the last failure is
 *    available from nvlm_last_error(handle). Constructors write the new handle through an
 *    out-pointer and leave failure text on the parent handle (the context, model or tokenizer).
 *  - Params structs start with `struct_size`; fill them with nvlm_*_default_params() and change
 *    fields afterwards. The library reads only struct_size bytes, so old binaries keep working.
 *    Passing NULL for a params pointer means "defaults".
 *  - Strings are UTF-8. Outputs go into caller buffers; size queries report the size needed.
 *  - Free functions accept NULL. No global state: everything hangs off an nvlm_context.
 *  - The library never prints, exits or aborts; diagnostics go to the context's log callback.
 *  - Loaded at run time (dlopen, FFI bindings), the shared library is never unloaded: it is linked
 *    with -z nodelete, so dlclose (or interpreter exit) while a context, model or session is still
 *    live cannot crash, and a later dlopen in the same process finds it loaded and works. Free
 *    the handles to release their memory and threads; dlclose does not.
 *
 * Thread rules (each section repeats its own):
 *  - nvlm_context: its functions are thread-safe.
 *  - nvlm_model, nvlm_tokenizer: read-only after load; any number of threads may use one at once.
 *  - nvlm_session, nvlm_image, nvlm_stream_decoder: one thread at a time per handle; different
 *    handles may be used from different threads at the same time. A session refuses a call
 *    that overlaps another one on it with NVLM_ERR_BUSY (see the Session section).
 */
#ifndef NVLM_NVLM_H
#define NVLM_NVLM_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(NVLM_BUILD)
#define NVLM_API __declspec(dllexport)
#elif defined(NVLM_BUILD)
#define NVLM_API __attribute__((visibility("default")))
#else
#define NVLM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================================================ */
/* Version                                                                                       */
/* ============================================================================================ */

#define NVLM_VERSION_MAJOR 0
#define NVLM_VERSION_MINOR 1
#define NVLM_VERSION_PATCH 0
#define NVLM_VERSION_STRING "0.1.0"
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define NVLM_VERSION_NUMBER (NVLM_VERSION_MAJOR * 10000 + NVLM_VERSION_MINOR * 100 + NVLM_VERSION_PATCH)

/* Run-time version of the linked library: a static string such as "0.1.0". Thread-safe. */
NVLM_API const char *nvlm_version(void);
/* Run-time NVLM_VERSION_NUMBER of the linked library. Thread-safe. */
NVLM_API uint32_t nvlm_version_number(void);

/* ============================================================================================ */
/* Status codes (values are pinned; new codes are appended)                                      */
/* ============================================================================================ */

typedef enum nvlm_status {
    NVLM_OK = 0,
    NVLM_ERR_INVALID_ARGUMENT = 1, /* NULL handle, bad value, wrong API use, invalid UTF-8 */
    NVLM_ERR_OUT_OF_MEMORY = 2,    /* an allocation failed */
    NVLM_ERR_IO = 3,               /* a file could not be opened, read or mapped */
    NVLM_ERR_FORMAT = 4,           /* a file or buffer is corrupt, truncated or malformed */
    NVLM_ERR_UNSUPPORTED = 5,      /* valid input that this build does not handle */
    NVLM_ERR_LIMIT = 6,            /* a configured or built-in size limit was exceeded */
    NVLM_ERR_SHAPE = 7,            /* tensors missing, unexpected or of the wrong shape or dtype */
    NVLM_ERR_NOT_FOUND = 8,        /* a named file, tensor or token does not exist */
    NVLM_ERR_CANCELLED = 9,        /* a callback asked to stop */
    NVLM_ERR_BUFFER_TOO_SMALL = 10, /* the caller's buffer is too small; the size is reported */
    NVLM_ERR_CONTEXT_FULL = 11,    /* the session's context window is exhausted */
    NVLM_ERR_BACKEND = 12,         /* the compute backend failed (CUDA, cuBLASLt, NCCL) */
    NVLM_ERR_NO_DEVICE = 13,       /* the requested device does not exist */
    NVLM_ERR_INTERNAL = 14,        /* a bug in nvlm; please report it */
    NVLM_ERR_BUSY = 15             /* the session is in use: by another thread, or by the call
                                      whose token callback is running */
} nvlm_status;

/* Static, never-NULL English name of a status ("NVLM_OK", "invalid argument", ...). Thread-safe. */
NVLM_API const char *nvlm_status_str(nvlm_status status);

/* The detailed message of the last failed call on `handle` (an nvlm_context, nvlm_model,
 * nvlm_tokenizer, nvlm_session, nvlm_image or nvlm_stream_decoder pointer), or "" when the last
 * call succeeded. Owned by the handle; valid until the next call on that handle. Handles that
 * threads share (context, model, tokenizer) hold the last failure of any thread, and the text
 * may change under a reader while another thread fails on the same handle: read it right after
 * the failing call, or use the context's log callback for per-call diagnostics.
 * Returns "" for NULL and "invalid handle" for a pointer that is not an nvlm handle. */
NVLM_API const char *nvlm_last_error(const void *handle);

/* ============================================================================================ */
/* Context: allocator, logging, threads, devices.  Thread-safe.                                 */
/* ============================================================================================ */

typedef struct nvlm_context nvlm_context;
typedef struct nvlm_model nvlm_model;
typedef struct nvlm_tokenizer nvlm_tokenizer;
typedef struct nvlm_session nvlm_session;
typedef struct nvlm_image nvlm_image;
typedef struct nvlm_stream_decoder nvlm_stream_decoder;

typedef enum nvlm_log_level {
    NVLM_LOG_ERROR = 0,
    NVLM_LOG_WARN = 1,
    NVLM_LOG_INFO = 2,
    NVLM_LOG_DEBUG = 3
} nvlm_log_level;

/* Receives one message (no trailing newline, borrowed for the call). May be called from any
 * thread that uses the context; must not call back into nvlm. */
typedef void (*nvlm_log_fn)(void *user, nvlm_log_level level, const char *message);

/* Allocator hooks. All three set, or all NULL for malloc/realloc/free. alloc_fn must return
 * memory aligned to at least 16 bytes (64 preferred). The hooks must be thread-safe.
 * Memory-mapped weights and third-party decoders' scratch memory do not go through them. */
typedef void *(*nvlm_alloc_fn)(void *user, size_t size);
typedef void *(*nvlm_realloc_fn)(void *user, void *ptr, size_t size);
typedef void (*nvlm_free_fn)(void *user, void *ptr);

/* The CUDA backend is a plugin, libnvlm-cuda.so.0, installed beside libnvlm (LIBDIR). The
 * library opens it only when a context asks for CUDA, or when `auto` finds a CUDA driver with a
 * device: libnvlm itself links no CUDA library, so a CPU-only process never loads the CUDA
 * runtime. It is looked for beside libnvlm.so (or beside the executable that linked libnvlm.a,
 * and in ../lib from there), then through the dynamic loader's search path. It must come from
 * the same build as the library (a plugin of another version is refused).
 * CUDA and the host application: every call restores the calling thread's current device as it
 * found it (also around the token callback; except a device the process has no CUDA context on,
 * such as the device 0 that a thread which never chose one reports: selecting it would create a
 * context there, so the thread stays on the model's device), and the library never clears a CUDA
 * error it did not cause (an op that finds one pending fails with NVLM_ERR_BACKEND and leaves it).
 * A sticky CUDA error (illegal address, launch failure, device assert, ...) loses the device's
 * context for the process: every later call of every model on that device returns NVLM_ERR_BACKEND
 * "device N context lost ...; free and reload the model", and once the last model on it is freed
 * the device is reset, so a model loaded after that works. Setting the environment variable
 * NVLM_CUDA_SYNC=1 (read when a model is loaded) makes every op wait for its work, so that an
 * asynchronous failure is reported by the op that caused it (slow; for debugging). See
 * docs/cuda.md. */
typedef enum nvlm_backend {
    NVLM_BACKEND_AUTO = 0, /* CUDA when the plugin loads and a device exists, else CPU. Chosen
                              when the context is created: a model that then does not fit the
                              device is refused by nvlm_model_load's fit check (the message
                              names the CPU backend among the remedies), never moved to the
                              CPU silently */
    NVLM_BACKEND_CPU = 1,
    NVLM_BACKEND_CUDA = 2
} nvlm_backend;

typedef struct nvlm_context_params {
    uint32_t struct_size;
    int32_t n_threads;        /* CPU worker threads; 0 = number of online cores */
    nvlm_backend backend;     /* default NVLM_BACKEND_AUTO */
    int32_t device;           /* CUDA device ordinal; default 0 */
    nvlm_log_fn log_fn;       /* NULL = no logging */
    void *log_user;
    nvlm_log_level log_level; /* messages above this level are dropped; default NVLM_LOG_WARN */
    nvlm_alloc_fn alloc_fn;
    nvlm_realloc_fn realloc_fn;
    nvlm_free_fn free_fn;
    void *alloc_user;
    /* Tensor parallelism: each model loaded in this context is sharded over tp_size ranks
     * (default 1: none; 0 means 1; at most 256). Every rank holds its own slice of each
     * sharded weight, its own activations and the KV cache of its heads. CPU backend: a rank
     * is a group of worker threads of this process; each session splits n_threads among the
     * ranks (at least one thread each). CUDA backend: a rank is a GPU (see devices), with NCCL
     * between distinct GPUs. Results equal tp_size 1 within float rounding (on CPU ranks the
     * sums over ranks run in a fixed order, so a given tp_size is deterministic).
     * nvlm_model_load returns NVLM_ERR_INVALID_ARGUMENT when tp_size exceeds the LLM's query
     * heads. See docs/parallel.md. */
    int32_t tp_size;
    /* CUDA backend: the device of each rank, devices[0 .. n_devices) (borrowed for the call;
     * the context keeps a copy). n_devices 0 (default): devices 0 .. tp_size - 1 (the `device`
     * field when tp_size is 1). n_devices > 0 must equal tp_size, or sets it when tp_size is 0
     * or 1. A device may repeat (ranks sharing a GPU; their collectives then go through host
     * memory, as NCCL needs one GPU per rank). */
    int32_t n_devices;
    const int32_t *devices;
} nvlm_context_params;

/* Fills defaults into the first `size` bytes of *p and sets p->struct_size = size. */
NVLM_API void nvlm_context_params_init(nvlm_context_params *p, size_t size);
static inline void nvlm_context_default_params(nvlm_context_params *p)
{
    nvlm_context_params_init(p, sizeof *p);
}

/* Creates a context. params may be NULL (defaults). On success *out owns a new context that the
 * caller frees with nvlm_context_free after every model, image and tokenizer made from it
 * (handles left live at dlclose stay valid: the library is never unmapped).
 * Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (out NULL, struct_size too small, bad field),
 * NVLM_ERR_OUT_OF_MEMORY, NVLM_ERR_NO_DEVICE (backend CUDA requested but unavailable: the
 * reason goes to log_fn at NVLM_LOG_ERROR, and nvlm_backend_probe tells it). `auto` resolves to
 * CPU when CUDA is unavailable (the reason goes to log_fn at NVLM_LOG_INFO). */
NVLM_API nvlm_status nvlm_context_create(const nvlm_context_params *params, nvlm_context **out);
/* Whether `backend` can run on CUDA device `device` (ignored for the CPU), and why: reason
 * (reason_len bytes, always terminated; may be NULL) gets the device's description, or the
 * real cause when it cannot: "libnvlm-cuda.so.0 not found (looked in ...)", the loader's
 * message for a plugin that cannot load (a missing CUDA library), "cudaGetDeviceCount: CUDA
 * driver version is insufficient for CUDA runtime version", "device 3 requested, 2 present",
 * a device older than sm_80, or a plugin of another version. For NVLM_BACKEND_AUTO it says
 * which backend a context would get ("CPU (CUDA: <reason>)"). Returns NVLM_OK when it can,
 * NVLM_ERR_NO_DEVICE when it cannot, NVLM_ERR_INVALID_ARGUMENT for a bad backend or device.
 * Loads the plugin (and so the CUDA runtime) for NVLM_BACKEND_CUDA. Thread-safe. */
NVLM_API nvlm_status nvlm_backend_probe(nvlm_backend backend, int32_t device, char *reason,
                                        size_t reason_len);
NVLM_API void nvlm_context_free(nvlm_context *ctx);
/* The backend the context resolved to (never NVLM_BACKEND_AUTO). */
NVLM_API nvlm_backend nvlm_context_backend(const nvlm_context *ctx);
/* Static name of a backend: "auto", "cpu", "cuda". */
NVLM_API const char *nvlm_backend_name(nvlm_backend backend);

/* ============================================================================================ */
/* Model: config, weights, tokenizer.  Read-only once loaded; shareable between threads.        */
/* ============================================================================================ */

/* Load progress, fraction in [0, 1], non-decreasing: up to 0.35 for the config, index, shards
 * and tokenizer, then by bytes of weights laid out (uploaded to the device on CUDA), reported
 * each time it has moved by 1/512 or more, ending at 1. Return non-zero to cancel the load: it
 * stops, frees what it made and returns NVLM_ERR_CANCELLED. */
typedef int (*nvlm_progress_fn)(void *user, float fraction);

typedef enum nvlm_load_mode {
    NVLM_LOAD_FULL = 0,        /* config, tokenizer and every weight (mapped, shapes checked) */
    NVLM_LOAD_CONFIG_ONLY = 1  /* config.json (+ index and shard headers when present): for
                                  introspection and memory estimates; sessions cannot be created */
} nvlm_load_mode;

/* How the CPU backend computes the projections (every Linear: the ViT's patch embedding, qkv,
 * proj, fc1, fc2, the projector's two linears, the decoder's q/k/v/o, gate/up/down and lm_head).
 * Everything else (norms, softmax, RoPE, GELU/SiLU, the residual stream, attention scores and
 * sums) is f32 in both. */
typedef enum nvlm_precision {
    NVLM_PRECISION_EXACT = 0,  /* f32 activations x weights widened exactly to f32, f32 sums */
    NVLM_PRECISION_FAST = 1    /* activations rounded to bf16 (round to nearest even) at every
                                  projection's input; bf16 x bf16 products summed in f32
                                  (AVX512-BF16 vdpbf16ps where the CPU has it, else the same
                                  products widened to f32 and FMA). bf16 weights are used as
                                  stored; f16/f32 weights are multiplied as stored with the
                                  rounded activations. The KV cache defaults to bf16
                                  (nvlm_session_params.kv_type NVLM_KV_F32 still wins). Logits
                                  move by ~1e-2 relative (L2) from exact; prefill and the vision
                                  encoder run faster on CPUs with AVX512-BF16 (figures:
                                  docs/performance.md). The CUDA
                                  backend always computes this way: both values run the same
                                  there, except for FP8 weights (nvlm_weight_type) in prefill
                                  (more than 8 rows): FAST on a GPU of compute capability 8.9+
                                  also rounds each row of activations to FP8 E4M3 with its own
                                  scale and multiplies FP8 x FP8 (about 2.5 % relative L2 per
                                  projection), EXACT widens the weights to bf16. */
} nvlm_precision;

/* How the LLM's seven projections (q/k/v/o_proj, gate/up/down_proj of every decoder layer) are
 * stored. FP8: E4M3 codes with one f32 scale per output channel, scale[n] = max_k |W[n,k]| / 448
 * (1 for an all-zero row), q[n,k] = E4M3(fl32(W[n,k] / scale[n])) rounded to nearest even and
 * saturating at +-448; the layer computes y[n] = scale[n] * sum_k x[k] q[n,k] (+ bias) with f32
 * activations and accumulation, so results equal a float32 model whose weights are q * scale.
 * Everything else (embeddings, lm_head, norms, biases, the vision encoder, the projector) is
 * used as stored. docs/fp8.md has the details. */
typedef enum nvlm_weight_type {
    NVLM_WEIGHTS_AUTO = 0,     /* as the checkpoint stores them */
    NVLM_WEIGHTS_BF16 = 1,     /* as stored (bf16/f16/f32 checkpoints only) */
    NVLM_WEIGHTS_FP8 = 2       /* quantized to FP8 at load (about half the bytes); CPU and
                                  CUDA backends (CUDA: see nvlm_precision for its prefill) */
} nvlm_weight_type;

typedef struct nvlm_model_params {
    uint32_t struct_size;
    nvlm_load_mode mode;       /* default NVLM_LOAD_FULL */
    nvlm_progress_fn progress; /* NULL = none */
    void *progress_user;
    int32_t use_mmap;          /* 1 (default): map shards; 0: read them into memory */
    nvlm_precision precision;  /* default NVLM_PRECISION_EXACT; fixed for the model's life and
                                  all its sessions (tensor-parallel ranks included). Appended
                                  after use_mmap: a caller built against a header without it
                                  (smaller struct_size) gets the default. */
    nvlm_weight_type weight_type; /* default NVLM_WEIGHTS_AUTO; see nvlm_weight_type. Appended
                                     after precision: a caller built against an older header
                                     (smaller struct_size) gets the default. */
} nvlm_model_params;

/* Fills defaults into the first `size` bytes of *p and sets p->struct_size = size. */
NVLM_API void nvlm_model_params_init(nvlm_model_params *p, size_t size);
static inline void nvlm_model_default_params(nvlm_model_params *p)
{
    nvlm_model_params_init(p, sizeof *p);
}

/* Loads an NVLM-D checkpoint from a Hugging Face directory: config.json, model.safetensors or
 * model.safetensors.index.json + shards, tokenizer.json (or vocab.json + merges.txt +
 * tokenizer_config.json) and optional generation_config.json. Every file is treated as
 * untrusted. Every expected tensor's name, shape and dtype (bf16/f16/f32; F8_E4M3 with a
 * weight_scale for the LLM projections of a compressed-tensors FP8 checkpoint, see
 * nvlm_weight_type) is checked against the config before use. The tokenizer, when present,
 * must fit the model (both modes): every id below llm_config.vocab_size, and <|im_start|>,
 * <|im_end|>, <|vision_pad|> among its added tokens. On success *out is a new model owned by
 * the caller (nvlm_model_free), which must outlive its sessions; the context must outlive the
 * model. Failure text goes to ctx.
 * Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (also an unknown precision or weight type),
 * NVLM_ERR_IO (also a FIFO, directory, device or socket in a file's place: refused without
 * blocking), NVLM_ERR_FORMAT (bad JSON, corrupt
 * safetensors, a NUL in an index name, two index names for one shard file, a tokenizer that does
 * not fit the model; an FP8 checkpoint's missing or bad weight_scale, NaN code, or ignored
 * module stored as FP8; a projection to quantize that holds an infinity or NaN),
 * NVLM_ERR_SHAPE (missing/unexpected/misshaped tensors, named in the message),
 * NVLM_ERR_UNSUPPORTED (also: another quantization method, static activation scales,
 * NVLM_WEIGHTS_BF16 on an FP8 checkpoint), NVLM_ERR_LIMIT
 * (also shard headers or an index far larger than the config's tensor layout),
 * NVLM_ERR_NOT_FOUND (missing file or shard),
 * NVLM_ERR_OUT_OF_MEMORY (also when parsing JSON runs out; on the CUDA backend also the fit
 * check, before any weight is uploaded: when a device's free memory is below what its ranks
 * need, nvlm_model_info.cuda_load_bytes each, the message says "needs X GiB, device N has
 * Y GiB free" with the parts and the remedies: more tensor-parallel ranks with their
 * per-device figure, FP8 weights, and for the auto backend the CPU backend; docs/cuda.md),
 * NVLM_ERR_CANCELLED (progress callback), NVLM_ERR_BACKEND. */
NVLM_API nvlm_status nvlm_model_load(nvlm_context *ctx, const char *dir,
                                     const nvlm_model_params *params, nvlm_model **out);
NVLM_API void nvlm_model_free(nvlm_model *model);

/* Writes an FP8 copy of the bf16/f16/f32 checkpoint in directory in_dir to directory out_dir
 * (created when missing; it must not be in_dir): the LLM's seven projections as F8_E4M3 codes
 * plus F32 [N, 1] `<name>_scale` tensors by the NVLM_WEIGHTS_FP8 rule, every other tensor
 * copied byte for byte, shard by shard under the same file names (scales first in each shard);
 * config.json gains a compressed-tensors quantization_config (float-quantized, 8-bit float
 * weights per channel, no activation quantization, the vision model, projector and lm_head
 * ignored); model.safetensors.index.json gets the new weight map and total_size;
 * generation_config.json, the tokenizer files and preprocessor_config.json are copied when
 * present. Memory: one shard mapped plus one tensor's codes and scales. Loading the result
 * (NVLM_WEIGHTS_AUTO) gives bit-identical results to loading in_dir with NVLM_WEIGHTS_FP8.
 * progress (may be NULL) gets the fraction of shards written; non-zero cancels. Failure text
 * goes to ctx. Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (NULL argument, out_dir = in_dir),
 * NVLM_ERR_NOT_FOUND, NVLM_ERR_IO, NVLM_ERR_FORMAT (bad JSON or safetensors, an infinity or NaN
 * in a projection), NVLM_ERR_UNSUPPORTED (already quantized), NVLM_ERR_OUT_OF_MEMORY,
 * NVLM_ERR_CANCELLED. Files already written stay. Thread-safe for distinct directories. */
NVLM_API nvlm_status nvlm_checkpoint_quantize(nvlm_context *ctx, const char *in_dir,
                                              const char *out_dir, nvlm_progress_fn progress,
                                              void *progress_user);

/* Everything about a model that does not need the weights. Field names follow config.json. */
typedef struct nvlm_model_info {
    uint32_t struct_size;
    /* vision_config (InternViT) */
    int32_t vision_hidden_size;
    int32_t vision_intermediate_size;
    int32_t vision_num_hidden_layers;
    int32_t vision_num_attention_heads; /* real heads (25 for NVLM-D-72B) */
    int32_t vision_num_dummy_heads;     /* padding heads (7), derived from the qkv shape */
    int32_t vision_head_dim;
    int32_t vision_image_size;
    int32_t vision_patch_size;
    double vision_layer_norm_eps;
    /* projector (mlp1) */
    double downsample_ratio;
    int32_t num_image_token;            /* per tile (256) */
    int32_t projector_input_size;       /* vision_hidden_size / downsample_ratio^2 */
    int32_t projector_hidden_size;      /* mlp1.1 output width (29568) */
    int32_t projector_output_size;      /* = llm hidden size */
    /* llm_config (Qwen2) */
    int32_t llm_hidden_size;
    int32_t llm_intermediate_size;
    int32_t llm_num_hidden_layers;
    int32_t llm_num_attention_heads;
    int32_t llm_num_key_value_heads;
    int32_t llm_head_dim;
    int32_t vocab_size;                 /* embedding rows */
    int32_t max_position_embeddings;
    double rope_theta;
    double rms_norm_eps;
    /* tiling */
    int32_t image_size;                 /* force_image_size: 448 */
    int32_t min_dynamic_patch;
    int32_t max_dynamic_patch;
    int32_t use_thumbnail;
    /* tokens (-1 when absent) */
    int32_t bos_token_id;               /* the token put before a prompt: -1, as NVLM-D (Qwen2)
                                           adds none; the tokenizer's bos when one is configured
                                           (= nvlm_tokenizer_special_tokens' bos). llm_config's
                                           bos_token_id is not used by the model. */
    int32_t eos_token_id;               /* llm_config eos_token_id: <|im_end|>, the default stop */
    int32_t pad_token_id;               /* the tokenizer's pad (<|endoftext|>, as
                                           nvlm_tokenizer_special_tokens); without a tokenizer,
                                           llm_config's pad_token_id */
    int32_t image_context_token_id;     /* <|vision_pad|>; -1 without a tokenizer */
    int32_t tokenizer_vocab_size;       /* 0 when no tokenizer was loaded */
    /* sizes */
    uint64_t n_params;                  /* parameters, dummy-head padding included */
    uint64_t weight_bytes;              /* bytes of the tensors as stored in the checkpoint */
    uint64_t cpu_bytes;                 /* resident bytes the CPU backend needs for weights
                                           (weight_type FP8: the projections as 1-byte codes
                                           plus a 4-byte scale per output row) */
    uint64_t cuda_bytes;                /* device bytes the CUDA backend's weights take on one
                                           device: matrices bf16, vectors f32, each weight at a
                                           256-byte offset of one slab; with weight_type FP8 the
                                           projections as codes + f32 row scales (the CUDA
                                           backend cannot run FP8 weights yet: this is the
                                           planned storage) */
    uint64_t kv_bytes_per_token_f32;    /* KV cache bytes per token, f32 cache */
    uint64_t kv_bytes_per_token_bf16;   /* KV cache bytes per token, bf16 cache */
    int32_t weights_loaded;             /* 1 for NVLM_LOAD_FULL */
    /* tensor parallelism (the context's tp_size) */
    int32_t tp_size;
    uint64_t per_rank_weight_bytes;     /* weight bytes of the largest rank in the CUDA
                                           backend's storage (as cuda_bytes, for the rank's
                                           slices); cuda_bytes at tp_size 1; 0 when tp_size
                                           exceeds the query heads */
    /* Appended (a shorter struct_size leaves it out): */
    nvlm_weight_type weight_type;       /* the model's resolved weight type: NVLM_WEIGHTS_BF16
                                           (as stored) or NVLM_WEIGHTS_FP8 */
    /* Appended: what the CUDA backend needs on each device, from the estimator its fit check
     * uses (docs/cuda.md, "Memory"); per rank of tp_size (the largest), 0 when tp_size exceeds
     * the query heads. A session adds workspace + activations + its KV cache; each device
     * keeps headroom free. */
    uint64_t cuda_workspace_bytes;      /* one session: cuBLASLt workspace, the bf16 copy of the
                                           widest GEMM input, attention scratch, the device
                                           logits and sampler, FP8 matmul scratch (FP8
                                           weights) */
    uint64_t cuda_activation_bytes;     /* one session: the activation arena of the largest
                                           pass (a 2048-token decoder chunk, or one image of
                                           max_dynamic_patch tiles + thumbnail) */
    uint64_t cuda_kv_bytes_per_token;   /* bf16 KV cache bytes per token (the rank's kv heads) */
    uint64_t cuda_kv_bytes_default_ctx; /* bf16 KV cache for cuda_default_n_ctx tokens */
    uint64_t cuda_headroom_bytes;       /* kept free per device (allocator, cuBLASLt) */
    uint64_t cuda_load_bytes;           /* what nvlm_model_load requires free on the device:
                                           weights + one session's workspace and activations +
                                           the KV cache of cuda_load_n_ctx tokens + headroom */
    uint64_t cuda_default_ctx_bytes;    /* weights + one session at the default context
                                           (cuda_default_n_ctx) + headroom */
    int32_t cuda_default_n_ctx;         /* the default context: max_position_embeddings */
    int32_t cuda_load_n_ctx;            /* tokens of one full decoder pass (2048 at most) */
} nvlm_model_info;

/* Fills the first info->struct_size bytes of *info (set struct_size = sizeof *info first).
 * Returns NVLM_OK or NVLM_ERR_INVALID_ARGUMENT. */
NVLM_API nvlm_status nvlm_model_get_info(const nvlm_model *model, nvlm_model_info *info);
/* The model's tokenizer, borrowed (valid while the model lives), or NULL if none was loaded. */
NVLM_API nvlm_tokenizer *nvlm_model_tokenizer(const nvlm_model *model);

/* ============================================================================================ */
/* Tokenizer: byte-level BPE from tokenizer.json, exact to Hugging Face `tokenizers`.            */
/* Read-only once loaded; shareable between threads.                                             */
/* ============================================================================================ */

/* Loads a tokenizer from `path`: a tokenizer.json file, or a directory holding tokenizer.json
 * or vocab.json + merges.txt (+ tokenizer_config.json for the added tokens). The caller owns
 * *out (nvlm_tokenizer_free). Failure text goes to ctx. Returns NVLM_OK,
 * NVLM_ERR_INVALID_ARGUMENT, NVLM_ERR_IO (also a FIFO, device or socket given as a file:
 * refused without blocking), NVLM_ERR_NOT_FOUND, NVLM_ERR_FORMAT,
 * NVLM_ERR_UNSUPPORTED (a normalizer/pre-tokenizer/model type it does not implement, named in
 * the message), NVLM_ERR_OUT_OF_MEMORY. */
NVLM_API nvlm_status nvlm_tokenizer_load(nvlm_context *ctx, const char *path, nvlm_tokenizer **out);
/* Frees a tokenizer from nvlm_tokenizer_load. Do not free the one owned by a model. */
NVLM_API void nvlm_tokenizer_free(nvlm_tokenizer *tok);

/* Number of ids the tokenizer can produce (base vocabulary plus added tokens). */
NVLM_API int32_t nvlm_tokenizer_vocab_size(const nvlm_tokenizer *tok);
/* Id of the token whose text is exactly `text` (base or added), or -1. */
NVLM_API int32_t nvlm_tokenizer_token_id(const nvlm_tokenizer *tok, const char *text);

typedef struct nvlm_special_tokens {
    uint32_t struct_size;
    int32_t bos;           /* -1 when none (NVLM-D has none) */
    int32_t eos;           /* <|im_end|> */
    int32_t pad;           /* <|endoftext|> */
    int32_t image_context; /* <|vision_pad|> */
    int32_t im_start;      /* <|im_start|> */
    int32_t im_end;        /* <|im_end|> */
} nvlm_special_tokens;
/* Fills the first out->struct_size bytes. Returns NVLM_OK or NVLM_ERR_INVALID_ARGUMENT. */
NVLM_API nvlm_status nvlm_tokenizer_special_tokens(const nvlm_tokenizer *tok, nvlm_special_tokens *out);

enum {
    /* Tokens flagged special are encoded as plain text (tokenizers' split_special_tokens);
     * non-special added tokens are still matched. */
    NVLM_TOKENIZE_SPLIT_SPECIAL = 1u << 0
};

/* Encodes `len` bytes of UTF-8 `text` (NUL bytes allowed) without adding any special token.
 * Added tokens in the text are matched (all of them, or the non-special ones with
 * NVLM_TOKENIZE_SPLIT_SPECIAL), as Hugging Face `tokenizers` does: do not build a chat prompt
 * from untrusted text this way; nvlm_prompt_tokenize keeps message content plain text.
 * Writes up to `cap` ids to `ids` (may be NULL when cap is 0) and the number of ids the whole
 * encoding has to *n_ids. Returns NVLM_OK, NVLM_ERR_BUFFER_TOO_SMALL (nothing useful written;
 * *n_ids says how many are needed), NVLM_ERR_INVALID_ARGUMENT (invalid UTF-8: the message
 * gives the byte offset; flag bits other than NVLM_TOKENIZE_*: the message names them),
 * NVLM_ERR_OUT_OF_MEMORY. Failure text goes to tok. */
NVLM_API nvlm_status nvlm_tokenize(const nvlm_tokenizer *tok, const char *text, size_t len,
                                   uint32_t flags, int32_t *ids, size_t cap, size_t *n_ids);

enum {
    NVLM_DETOKENIZE_SKIP_SPECIAL = 1u << 0 /* drop tokens flagged special */
};

/* Decodes ids to UTF-8 text, invalid byte sequences replaced by U+FFFD as Rust's
 * String::from_utf8_lossy does. snprintf-style: writes at most cap-1 bytes plus a NUL to buf
 * (buf may be NULL when cap is 0) and the full length (without NUL) to *len.
 * Returns NVLM_OK (also when truncated; compare *len with cap), NVLM_ERR_INVALID_ARGUMENT
 * (an id out of range; flag bits other than NVLM_DETOKENIZE_*, named in the message),
 * NVLM_ERR_OUT_OF_MEMORY. */
NVLM_API nvlm_status nvlm_detokenize(const nvlm_tokenizer *tok, const int32_t *ids, size_t n_ids,
                                     uint32_t flags, char *buf, size_t cap, size_t *len);

/* The raw bytes of one token (byte-level decoded; may be an incomplete UTF-8 sequence), not
 * NUL-terminated: writes min(cap, *len) bytes to buf (may be NULL when cap is 0) and the piece's
 * full length to *len. Returns NVLM_OK (also when truncated), NVLM_ERR_INVALID_ARGUMENT (NULL
 * tok/len, id out of range). Failure text goes to tok. Thread-safe. */
NVLM_API nvlm_status nvlm_token_to_piece(const nvlm_tokenizer *tok, int32_t id, char *buf,
                                         size_t cap, size_t *len);

/* Streaming detokenizer: feed ids one at a time and get text that never ends inside a UTF-8
 * sequence; the concatenation of all pieces plus the final flush equals nvlm_detokenize of all
 * ids. flags: NVLM_DETOKENIZE_*. On success the caller owns *out (nvlm_stream_decoder_free);
 * failure text goes to tok. Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (NULL tok/out; flag
 * bits other than NVLM_DETOKENIZE_*, named in the message), NVLM_ERR_OUT_OF_MEMORY. One thread
 * at a time per decoder. The tokenizer must outlive it. */
NVLM_API nvlm_status nvlm_stream_decoder_create(const nvlm_tokenizer *tok, uint32_t flags,
                                                nvlm_stream_decoder **out);
/* Pushes one id; writes the newly completed text to buf (snprintf-style, *len = bytes of new
 * text). Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (bad id), NVLM_ERR_BUFFER_TOO_SMALL (the
 * id is not consumed; retry with a buffer of *len + 1 bytes). */
NVLM_API nvlm_status nvlm_stream_decoder_push(nvlm_stream_decoder *sd, int32_t id, char *buf,
                                              size_t cap, size_t *len);
/* Emits what is left (an incomplete trailing sequence becomes U+FFFD) and resets the decoder.
 * snprintf-style as nvlm_stream_decoder_push. Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (NULL
 * decoder/len), NVLM_ERR_BUFFER_TOO_SMALL (nothing consumed; retry with *len + 1 bytes). */
NVLM_API nvlm_status nvlm_stream_decoder_flush(nvlm_stream_decoder *sd, char *buf, size_t cap,
                                               size_t *len);
NVLM_API void nvlm_stream_decoder_free(nvlm_stream_decoder *sd);

/* ---- Prompt builder: the model's chatml template with NVLM tile tags ------------------------ */

typedef enum nvlm_role {
    NVLM_ROLE_SYSTEM = 0,
    NVLM_ROLE_USER = 1,
    NVLM_ROLE_ASSISTANT = 2
} nvlm_role;

typedef struct nvlm_chat_message {
    nvlm_role role;
    const char *content;         /* UTF-8, NUL-terminated; may contain "<image>" placeholders */
    size_t n_images;             /* images attached to this message */
    const int32_t *image_tiles;  /* n_images entries: tiles each image gives the encoder
                                    (thumbnail included), from nvlm_image_tile_count */
} nvlm_chat_message;

typedef struct nvlm_prompt_params {
    uint32_t struct_size;
    const char *system_message;   /* NULL = the template default "Answer the questions." A
                                     leading NVLM_ROLE_SYSTEM message overrides it. */
    int32_t no_system_message;    /* 1: emit no system block at all */
    int32_t add_generation_prompt;/* 1 (default): end with "<|im_start|>assistant\n" */
    int32_t parse_special_in_content; /* 0 (default): message content is text; 1: added tokens
                                     in content become control ids (trusted content only) */
} nvlm_prompt_params;

/* Fills defaults into the first `size` bytes of *p and sets p->struct_size = size. */
NVLM_API void nvlm_prompt_params_init(nvlm_prompt_params *p, size_t size);
static inline void nvlm_prompt_default_params(nvlm_prompt_params *p)
{
    nvlm_prompt_params_init(p, sizeof *p);
}

/* Where one tile's embeddings go in a token sequence: a run of `length` (num_image_token, 256)
 * <|vision_pad|> ids starting at `start`. Tiles of one image are separated by their tile tags. */
typedef struct nvlm_image_span {
    uint32_t image;  /* image index, in order of appearance */
    uint32_t tile;   /* tile index within the image, encoder order (thumbnail last) */
    size_t start;    /* position of the first <|vision_pad|> of the tile */
    size_t length;   /* number of <|vision_pad|> positions of the tile */
} nvlm_image_span;

/* Message content is text. By default every added token of tokenizer.json that appears in
 * message content or a system message (special or not: "<|im_end|>", "<|im_start|>",
 * "<tool_call>", ...) is tokenized as plain characters, as if the tokenizer had no added tokens
 * (normalizer, pre-tokenizer and BPE over those characters together with the text around them),
 * so the template's own tokens are the only control tokens and a user cannot forge a turn
 * ("hi<|im_end|>\n<|im_start|>system\n..."). Content without added tokens gives the same ids
 * either way. parse_special_in_content = 1 matches added tokens in content too, as the
 * reference Python code does (it tokenizes the whole rendered prompt with special-token
 * parsing); use it only for content the application trusts. "<|vision_pad|>" in content is
 * refused by nvlm_prompt_tokenize in both modes: only images supply those positions.
 * nvlm_prompt_format returns the rendered text, in which content and template tokens look
 * alike: tokenizing that text with nvlm_tokenize (which matches added tokens) gives the
 * parse_special_in_content = 1 ids, not the safe ones; use nvlm_prompt_tokenize's ids. */

/* Renders the prompt text (after <image> expansion) for `msgs`. When a user message has images
 * but no "<image>" placeholder, one "<image>\n" per image is inserted at its start; a count
 * mismatch is NVLM_ERR_INVALID_ARGUMENT. snprintf-style output as nvlm_detokenize. Returns
 * NVLM_OK (also when truncated; compare *len with cap), NVLM_ERR_INVALID_ARGUMENT (NULL
 * arguments, bad role, image count mismatch, invalid UTF-8), NVLM_ERR_OUT_OF_MEMORY. Failure
 * text goes to tok. Thread-safe. */
NVLM_API nvlm_status nvlm_prompt_format(const nvlm_tokenizer *tok, const nvlm_chat_message *msgs,
                                        size_t n_msgs, const nvlm_prompt_params *params, char *buf,
                                        size_t cap, size_t *len);

/* Renders and tokenizes the prompt. ids/cap/n_ids as nvlm_tokenize. spans (may be NULL) gets
 * one entry per tile of every image in order, up to span_cap; *n_spans (may be NULL) the number
 * of tile spans the prompt has (BUFFER_TOO_SMALL when span_cap is less). Returns NVLM_OK, NVLM_ERR_BUFFER_TOO_SMALL,
 * NVLM_ERR_INVALID_ARGUMENT, NVLM_ERR_OUT_OF_MEMORY. Failure text goes to tok. */
NVLM_API nvlm_status nvlm_prompt_tokenize(const nvlm_tokenizer *tok, const nvlm_chat_message *msgs,
                                          size_t n_msgs, const nvlm_prompt_params *params,
                                          int32_t *ids, size_t cap, size_t *n_ids,
                                          nvlm_image_span *spans, size_t span_cap,
                                          size_t *n_spans);

/* ============================================================================================ */
/* Image: decode (PNG, JPEG) or raw pixels -> RGB -> dynamic 448x448 tiles (Pillow-exact).       */
/* One thread at a time per image; images are independent of models.                            */
/* ============================================================================================ */

typedef struct nvlm_image_params {
    uint32_t struct_size;
    int32_t min_tiles;          /* min_dynamic_patch; default 1 */
    int32_t max_tiles;          /* max_dynamic_patch (grid tiles, thumbnail not counted);
                                   default 6 */
    int32_t use_thumbnail;      /* default 1: append a thumbnail when the grid has > 1 tile */
    int32_t tile_size;          /* default 448 */
    int32_t apply_exif_orientation; /* default 0 (the reference ignores EXIF) */
    uint64_t max_pixels;        /* decoded width*height limit; default 64 * 1024 * 1024 */
} nvlm_image_params;

/* Fills defaults into the first `size` bytes of *p and sets p->struct_size = size. */
NVLM_API void nvlm_image_params_init(nvlm_image_params *p, size_t size);
static inline void nvlm_image_default_params(nvlm_image_params *p)
{
    nvlm_image_params_init(p, sizeof *p);
}
/* Tiling defaults taken from a model's config (min/max_dynamic_patch, use_thumbnail,
 * force_image_size); the first p->struct_size bytes are filled (set struct_size first; fields
 * the config does not give keep nvlm_image_params_init's defaults). Returns NVLM_OK,
 * NVLM_ERR_INVALID_ARGUMENT (NULL model/p, struct_size < 4). Thread-safe. */
NVLM_API nvlm_status nvlm_model_image_params(const nvlm_model *model, nvlm_image_params *p);

typedef enum nvlm_pixel_format {
    NVLM_PIXEL_RGB8 = 0,
    NVLM_PIXEL_RGBA8 = 1,  /* alpha dropped, as Pillow's convert('RGB') */
    NVLM_PIXEL_GRAY8 = 2
} nvlm_pixel_format;

/* Decode an image file / memory buffer (format sniffed from the bytes) and tile it. The caller
 * owns *out (nvlm_image_free). Failure text goes to ctx. Returns NVLM_OK,
 * NVLM_ERR_INVALID_ARGUMENT, NVLM_ERR_IO (also a path that is not a regular file: a directory,
 * FIFO, device or socket, refused without blocking), NVLM_ERR_FORMAT (corrupt, truncated,
 * unknown format),
 * NVLM_ERR_LIMIT (too many pixels, checked before any pixel buffer is allocated),
 * NVLM_ERR_UNSUPPORTED, NVLM_ERR_OUT_OF_MEMORY. */
NVLM_API nvlm_status nvlm_image_load_file(nvlm_context *ctx, const char *path,
                                          const nvlm_image_params *params, nvlm_image **out);
NVLM_API nvlm_status nvlm_image_load_memory(nvlm_context *ctx, const void *data, size_t size,
                                            const nvlm_image_params *params, nvlm_image **out);
/* From pixels the application holds (borrowed for the call): `stride` bytes between rows
 * (0 = tightly packed). The caller owns *out; failure text goes to ctx. Returns NVLM_OK,
 * NVLM_ERR_INVALID_ARGUMENT (NULL pixels/out, width or height < 1, stride smaller than a row,
 * unknown format), NVLM_ERR_LIMIT (width*height above max_pixels), NVLM_ERR_OUT_OF_MEMORY. */
NVLM_API nvlm_status nvlm_image_from_pixels(nvlm_context *ctx, const void *pixels, int32_t width,
                                            int32_t height, size_t stride,
                                            nvlm_pixel_format format,
                                            const nvlm_image_params *params, nvlm_image **out);
NVLM_API void nvlm_image_free(nvlm_image *img);

/* Source size in pixels (after EXIF orientation, when applied); 0 for NULL. */
NVLM_API int32_t nvlm_image_width(const nvlm_image *img);
NVLM_API int32_t nvlm_image_height(const nvlm_image *img);
/* The tile grid chosen (cols x rows, thumbnail not counted); 0 x 0 for NULL img. cols and rows
 * may be NULL. */
NVLM_API void nvlm_image_grid(const nvlm_image *img, int32_t *cols, int32_t *rows);
/* Tiles the vision encoder sees: cols*rows plus the thumbnail when one is appended. */
NVLM_API int32_t nvlm_image_tile_count(const nvlm_image *img);
/* Tile `index` (encoder order, thumbnail last) as tile_size*tile_size*3 RGB bytes, row-major
 * HWC; borrowed, valid while the image lives. NULL for a bad index. */
NVLM_API const uint8_t *nvlm_image_tile_rgb(const nvlm_image *img, int32_t index);
/* Tile `index` normalized as the encoder consumes it: float32 CHW (3, size, size),
 * (u8/255 - mean) / std with ImageNet mean/std. `out` holds 3*size*size floats. Returns
 * NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (NULL img/out, index out of range). */
NVLM_API nvlm_status nvlm_image_tile_normalized(const nvlm_image *img, int32_t index, float *out);

/* ============================================================================================ */
/* Session: one conversation and its KV cache.  One thread at a time per session; many          */
/* sessions of one model may run on different threads at once.                                   */
/* ============================================================================================ */

/* Overlapping calls: nvlm_session_reset, _add_turn, _feed, _sample and _generate each hold a
 * per-session busy flag. One of them called while another runs on the same session (from
 * another thread, or from the running call's token callback) returns NVLM_ERR_BUSY at once and
 * changes nothing, not even nvlm_last_error(s): that text belongs to the running call, and
 * reading it from another thread meanwhile is a data race. The flag is a safety net for
 * misuse, not a lock to schedule work with: a caller that shares a session between threads
 * must still serialize its calls. */

typedef enum nvlm_kv_type {
    NVLM_KV_DEFAULT = 0, /* f32 on the CPU backend (bf16 for a model loaded with
                            NVLM_PRECISION_FAST), bf16 on CUDA */
    NVLM_KV_F32 = 1,
    NVLM_KV_BF16 = 2
} nvlm_kv_type;

typedef struct nvlm_session_params {
    uint32_t struct_size;
    int32_t n_ctx;              /* context window in tokens; 0 = max_position_embeddings. On
                                   the CUDA backend the KV cache for all n_ctx tokens is
                                   allocated when the session is created (on the CPU it
                                   grows with the conversation) */
    nvlm_kv_type kv_type;
    uint64_t seed;              /* sampling RNG seed; default 0x5eed */
    const char *system_message; /* NULL = template default; used by nvlm_session_add_turn */
    int32_t no_system_message;  /* 1: no system block */
    int32_t parse_special_in_content; /* 0 (default): turn content and the system message are
                                   text, their added tokens tokenized as plain characters; 1:
                                   matched as control ids (trusted content only). As
                                   nvlm_prompt_params.parse_special_in_content. */
} nvlm_session_params;

/* Fills defaults into the first `size` bytes of *p and sets p->struct_size = size. */
NVLM_API void nvlm_session_params_init(nvlm_session_params *p, size_t size);
static inline void nvlm_session_default_params(nvlm_session_params *p)
{
    nvlm_session_params_init(p, sizeof *p);
}

/* Creates a session over a fully loaded model (which must outlive it). Failure text goes to the
 * model. Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (config-only model, bad params),
 * NVLM_ERR_OUT_OF_MEMORY (also, on the CUDA backend, when its workspace, activations and KV
 * cache for the whole n_ctx do not fit a device's free memory now: the message says how many
 * tokens of context would), NVLM_ERR_BACKEND. */
NVLM_API nvlm_status nvlm_session_create(nvlm_model *model, const nvlm_session_params *params,
                                         nvlm_session **out);
/* Frees the session and everything it owns; NULL is a no-op. Call it when no other call on the
 * session runs. Calling it from the session's own token callback (or while another thread is
 * inside a call on it) is forbidden; the library survives it by deferring the free: the running
 * call finishes (generate stops once the callback returns and reports NVLM_FINISH_CANCELLED),
 * frees the session and returns. Either way the handle is invalid as soon as
 * nvlm_session_free is called: not even the running call's caller may read nvlm_last_error(s)
 * afterwards. */
NVLM_API void nvlm_session_free(nvlm_session *s);
/* Forgets the conversation (KV cache emptied, RNG reseeded); the session stays usable.
 * Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (NULL or not a session), NVLM_ERR_BUSY (another
 * call on the session runs; nothing is reset). */
NVLM_API nvlm_status nvlm_session_reset(nvlm_session *s);

/* Appends one chat turn in the model's template and prefills only its new tokens: the system
 * block first when the session is empty, then "<|im_start|>{role}\n{content}<|im_end|>" and, for
 * a user turn, the generation prompt "<|im_start|>assistant\n". Images are encoded (all tiles as
 * one batch) and spliced over their <|vision_pad|> positions; a user turn with images and no
 * "<image>" gets "<image>\n" per image in front. If the previous assistant reply did not end in
 * <|im_end|> (max tokens, stop string, cancel), one is appended first. An assistant turn right
 * after a user turn (whose generation prompt is already there) adds only "{content}<|im_end|>",
 * so a history replays as user, assistant, user, ... turns. content and the system message
 * are text: added tokens in them ("<|im_end|>", "<|im_start|>", ...) are tokenized as plain
 * characters unless the session was created with parse_special_in_content = 1, so only the
 * template adds control tokens (see nvlm_prompt_params); "<|vision_pad|>" in content is
 * NVLM_ERR_INVALID_ARGUMENT in both modes. The images are borrowed
 * for the call only. Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT, NVLM_ERR_CONTEXT_FULL (nothing
 * of the turn is kept), NVLM_ERR_OUT_OF_MEMORY, NVLM_ERR_BACKEND, NVLM_ERR_BUSY (another call
 * on the session runs; nothing of the turn is added). */
NVLM_API nvlm_status nvlm_session_add_turn(nvlm_session *s, nvlm_role role, const char *content,
                                           nvlm_image *const *images, size_t n_images);

/* Low level: appends raw token ids (which may contain <|vision_pad|> runs, filled in order by
 * the tiles of `images`: their total tiles*256 must equal the number of pad ids) and runs them
 * through the decoder in batched passes of up to 2048 tokens. Any length up to n_ctx works (a
 * turn of nvlm_session_add_turn too); an image's rows may span passes. Afterwards
 * nvlm_session_logits gives the logits of the last id. Returns as nvlm_session_add_turn. */
NVLM_API nvlm_status nvlm_session_feed(nvlm_session *s, const int32_t *ids, size_t n_ids,
                                       nvlm_image *const *images, size_t n_images);

/* Logits (float32, *n_vocab entries: every embedding row of the model) of the last fed
 * position; borrowed, valid until the next call on the session. NULL before anything was fed
 * (or when copying them from the device failed: the reason is the session's last error). On a
 * backend that samples on the device (CUDA) they stay there until this is called, which copies
 * them once per fed position; sampling never needs them on the host.
 * Rows past the tokenizer's ids (the checkpoint's padding rows, e.g. 152,064 rows for 151,665
 * ids in NVLM-D-72B) are included but never sampled nor chosen greedily. May be called inside
 * the token callback. */
NVLM_API const float *nvlm_session_logits(nvlm_session *s, size_t *n_vocab);
/* Tokens in the KV cache (prompt and generated); borrowed as above. May be called inside the
 * token callback. */
NVLM_API const int32_t *nvlm_session_tokens(const nvlm_session *s, size_t *n_tokens);

typedef struct nvlm_logit_bias {
    int32_t token;  /* an id the tokenizer has: a padding row is NVLM_ERR_INVALID_ARGUMENT */
    float bias;     /* added to the logit; -INFINITY bans the token, +INFINITY forces it (ties
                       among forced tokens as among equal logits); NaN is refused. A bias never
                       revives a non-finite logit. */
} nvlm_logit_bias;

/* Never chosen, greedy or sampled, and left out before top-k / top-p / min-p normalise: rows
 * past the tokenizer's ids (padding rows; all rows are candidates when the model has no
 * tokenizer), logits that are NaN, +Inf or -Inf (a numeric failure upstream: NaN/Inf weights
 * or values that overflow), and tokens the bias bans. When no logit is finite, sampling fails
 * with NVLM_ERR_BACKEND ("all logits are non-finite"); when the bias (or the penalties) leave
 * no token, with NVLM_ERR_INVALID_ARGUMENT ("the logit bias bans every token"). */

typedef struct nvlm_sampler_params {
    uint32_t struct_size;
    float temperature;        /* 0 = greedy (lowest index wins ties); default 0 */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off (CTRL-style, over the last penalty_last_n tokens) */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    int32_t penalty_last_n;   /* tokens the penalties look at; -1 = whole session; default 64 */
    const nvlm_logit_bias *logit_bias; size_t n_logit_bias;
    const int32_t *stop_ids;  size_t n_stop_ids;  /* NULL = the model's eos (<|im_end|>);
                                                     non-NULL with n_stop_ids 0 = none */
    const char *const *stop_strings; size_t n_stop_strings;
    int32_t max_new_tokens;   /* -1 (the default) = the model's default: max_new_tokens of
                                 generation_config.json, else 1024. 0 generates nothing; other
                                 negative values are NVLM_ERR_INVALID_ARGUMENT */
} nvlm_sampler_params;

/* Fills defaults into the first `size` bytes of *p and sets p->struct_size = size. */
NVLM_API void nvlm_sampler_params_init(nvlm_sampler_params *p, size_t size);
static inline void nvlm_sampler_default_params(nvlm_sampler_params *p)
{
    nvlm_sampler_params_init(p, sizeof *p);
}

/* Picks the next token from the current logits with the session's RNG (does not feed it). On
 * the CUDA backend the whole sampler runs on the device with the CPU sampler's order, RNG
 * stream and errors: the same token for the same logits and seed (sums of probabilities are
 * added in another order, which can matter only for a draw within ~1e-16 of a boundary).
 * Returns NVLM_OK, NVLM_ERR_INVALID_ARGUMENT (no logits yet, bad params, the logit bias bans
 * every token), NVLM_ERR_BACKEND ("all logits are non-finite"), NVLM_ERR_BUSY (another call on
 * the session runs). */
NVLM_API nvlm_status nvlm_session_sample(nvlm_session *s, const nvlm_sampler_params *params,
                                         int32_t *token);

/* Called for every generated token with the newly completed UTF-8 text (never a partial
 * character; may be empty; special tokens produce no text; the last token's text also carries
 * an incomplete trailing UTF-8 sequence flushed as U+FFFD). Borrowed for the call. It runs
 * before the token is fed: nvlm_session_logits(s) then returns the logits that chose `token`.
 * Inside the callback only nvlm_session_logits, nvlm_session_tokens and nvlm_last_error may be
 * called on the session; nvlm_session_reset, _add_turn, _feed, _sample and _generate return
 * NVLM_ERR_BUSY, and nvlm_session_free is forbidden (see there). Return 0 to continue,
 * non-zero to stop. */
typedef int (*nvlm_token_fn)(void *user, int32_t token, const char *text, size_t len);

typedef enum nvlm_finish_reason {
    NVLM_FINISH_STOP_TOKEN = 0,
    NVLM_FINISH_STOP_STRING = 1,
    NVLM_FINISH_MAX_TOKENS = 2,
    NVLM_FINISH_CANCELLED = 3,   /* the callback returned non-zero */
    NVLM_FINISH_CONTEXT_FULL = 4
} nvlm_finish_reason;

typedef struct nvlm_generate_result {
    uint32_t struct_size;
    int32_t n_tokens;            /* tokens generated by this call (stop token included) */
    nvlm_finish_reason finish_reason;
    double prefill_ms;           /* time of the pending prefill, if any */
    double decode_ms;
} nvlm_generate_result;

/* Generates from the current state until a stop token, stop string, max_new_tokens, the
 * callback's stop or a full context. Generated tokens (the stop token included) stay in the KV
 * cache, so the next nvlm_session_add_turn continues the conversation. result may be NULL; a
 * failure midway still reports the tokens generated before it there. Returns NVLM_OK (see
 * result->finish_reason), NVLM_ERR_INVALID_ARGUMENT (nothing fed yet, bad params, the logit
 * bias bans every token), NVLM_ERR_BACKEND (also "all logits are non-finite": the weights or
 * the config produce NaN/Inf), NVLM_ERR_OUT_OF_MEMORY, NVLM_ERR_BUSY (another call on the
 * session runs; nothing is generated). */
NVLM_API nvlm_status nvlm_session_generate(nvlm_session *s, const nvlm_sampler_params *params,
                                           nvlm_token_fn on_token, void *user,
                                           nvlm_generate_result *result);

#ifdef __cplusplus
}
#endif

#endif /* NVLM_NVLM_H */
