/*
 * fp8.h - FP8 E4M3 ("fn": no infinities, max 448, NaN codes 0x7F / 0xFF) weights of the LLM's
 * seven projections: the scalar conversions, per-output-channel quantization of a bf16/f16/f32
 * matrix (scale[n] = max_k |W[n,k]| / 448, q = E4M3(fl32(W / scale)), round to nearest even,
 * saturating), and which checkpoint tensors are quantized. docs/fp8.md states the scheme.
 */
#ifndef NVLM_FP8_H
#define NVLM_FP8_H

#include "internal.h"
#include "tensor.h"

#define FP8_MAX 448.0f

/* One f32 -> E4M3 code, round to nearest even, saturating at +-448 (NaN -> 0x7F). */
uint8_t fp8_from_f32(float v);
/* The value of an E4M3 code (NaN for 0x7F / 0xFF). */
float fp8_to_f32(uint8_t c);

/* Quantizes an (N, K) row-major matrix `w` of dtype wt (NV_BF16, NV_F16, NV_F32) into q (N*K
 * codes) and scale (N floats) by the rule above (scale 1 for an all-zero row). Returns false
 * (nothing else is defined) when w holds an infinity or NaN. */
bool fp8_quantize(uint8_t *q, float *scale, const void *w, nv_dtype wt, int64_t N, int64_t K);

/* Index of the first NaN code (0x7F or 0xFF) among n codes, or -1: one pass over the bytes
 * (about a memory read's time: ~70 GB for NVLM-D-72B's projections). */
int64_t fp8_find_nan(const uint8_t *q, size_t n);

/* Whether checkpoint tensor `name` is the weight of one of the LLM's seven projections
 * (language_model.model.layers.L.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}.weight). */
bool fp8_is_projection(const char *name);

/* ---- FP8 checkpoints in the compressed-tensors format (fp8_ckpt.c) ---------------------- */

/* config.json's quantization_config (top level, or inside llm_config). */
typedef struct fp8_qconfig {
    bool present;            /* quant_method "compressed-tensors", float-quantized FP8 */
    char **ignore;           /* module names (matched as a suffix at a '.') or "re:" regexes */
    size_t n_ignore;
} fp8_qconfig;

/* Parses the quantization_config of config.json text into *out (zeroed: absent). Accepts
 * quant_method "compressed-tensors" with format "float-quantized" (top level or per config
 * group) whose groups quantize weights to 8-bit floats per channel or per tensor, with
 * input_activations null or dynamic (ignore list: "ignore"); and quant_method "fp8" with a
 * dynamic activation_scheme and no weight_block_size (ignore list: "ignored_layers"). Another method, weight format or static activations:
 * NVLM_ERR_UNSUPPORTED naming it; malformed: NVLM_ERR_FORMAT. Errors go to err_handle. */
nvlm_status fp8_qconfig_parse(nvlm_context *ctx, const char *json, size_t len, fp8_qconfig *out,
                              void *err_handle);
void fp8_qconfig_free(nvlm_context *ctx, fp8_qconfig *q);
/* Whether module `module` (a tensor name without ".weight") is on the ignore list; an invalid
 * regex matches nothing. */
bool fp8_ignored(const fp8_qconfig *q, const char *module);

/* Checks a weight_scale tensor for an (N, K) FP8 weight: F32 or BF16, shape [N, 1], [N], [1]
 * or []. */
bool fp8_scale_ok(const nv_tensor *scale, int64_t N);
/* Writes the N per-row scales of `scale` (per channel, or one per tensor broadcast) as f32;
 * false when one is not finite and positive. */
bool fp8_scale_expand(float *out, const nv_tensor *scale, int64_t N);

#endif /* NVLM_FP8_H */
