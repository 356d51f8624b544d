/*
 * upload_host.c - the host-side parts of the weight upload, plain C without a device: how the
 * CUDA backend stores a weight (dtype, bytes), the slab's aligned pieces, the split of a tensor
 * over the upload threads and the conversion into the staging buffer (memory_plan.h). The
 * CUDA backend (cuda/upload.cu) calls them; tests exercise them on the CPU.
 */
#include "memory_plan.h"

#include <stdio.h>
#include <string.h>

/* ---- storage of one weight -------------------------------------------------------------- */

size_t nv_slab_piece(size_t bytes)
{
    size_t b;
    if (!nv_add_size(bytes == 0 ? 1 : bytes, NV_SLAB_ALIGN - 1, &b)) {
        return SIZE_MAX;
    }
    return b & ~(NV_SLAB_ALIGN - 1);
}

int64_t nv_mem_weight_ld(int ndim, int64_t K)
{
    if (ndim != 4 || K <= 0 || K % NV_MEM_K_ALIGN == 0 || K > INT64_MAX - NV_MEM_K_ALIGN) {
        return K;
    }
    return (K + NV_MEM_K_ALIGN - 1) / NV_MEM_K_ALIGN * NV_MEM_K_ALIGN;
}

int64_t nv_mem_fp8_block_rows(int64_t N, int64_t K)
{
    int64_t per = K > 0 ? (int64_t)(NV_MEM_FP8_DQ_ELEMS / (uint64_t)K) : N;
    return per >= N ? N : per < 64 ? 64 : per / 64 * 64;
}

void nv_pad_rows(void *dst, const void *src, size_t rows, size_t cols, size_t ld, size_t elem)
{
    for (size_t r = 0; r < rows; r++) {
        char *d = (char *)dst + r * ld * elem;
        memcpy(d, (const char *)src + r * cols * elem, cols * elem);
        memset(d + cols * elem, 0, (ld - cols) * elem);
    }
}

bool nv_mem_weight_store(int ndim, const int64_t *shape, nv_dtype src_dtype, nv_dtype *dtype,
                         size_t *bytes)
{
    int big_dims = 0;
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || !nv_mul_size(n, (size_t)shape[d], &n)) {
            return false;
        }
        big_dims += shape[d] > 1;
    }
    if (src_dtype == NV_F8_E4M3) {
        /* codes, then one f32 scale per row at the next aligned offset */
        size_t rows = ndim > 0 ? (size_t)shape[0] : 1;
        size_t codes = nv_slab_piece(n);
        *dtype = NV_F8_E4M3;
        return codes != SIZE_MAX && nv_mul_size(rows, sizeof(float), bytes) &&
               nv_add_size(codes, *bytes, bytes);
    }
    *dtype = big_dims > 1 ? NV_BF16 : NV_F32;
    if (*dtype == NV_BF16 && ndim > 0 && shape[0] > 0) {
        size_t rows = (size_t)shape[0];
        int64_t ld = nv_mem_weight_ld(ndim, (int64_t)(n / rows));
        if (!nv_mul_size(rows, (size_t)ld, &n)) {
            return false;
        }
    }
    return nv_mul_size(n, nv_dtype_size(*dtype), bytes);
}

bool nv_slab_take(nv_slab *s, size_t bytes, size_t *off)
{
    size_t piece = nv_slab_piece(bytes);
    if (piece == SIZE_MAX || piece > s->cap - s->used) {
        return false;
    }
    *off = s->used;
    s->used += piece;
    return true;
}

int nv_upload_split(size_t n, size_t quantum, size_t min_elems, int max_parts, size_t *begin,
                    size_t *count)
{
    if (n == 0 || max_parts < 1) {
        return 0;
    }
    quantum = quantum > 0 ? quantum : 1;
    size_t units = (n + quantum - 1) / quantum;
    size_t min_units = NV_MAX((size_t)1, (min_elems + quantum - 1) / quantum);
    size_t parts = NV_MIN((size_t)max_parts, NV_MAX((size_t)1, units / min_units));
    size_t at = 0;
    for (size_t i = 0; i < parts; i++) {
        /* the first units % parts parts take one unit more */
        size_t u = units / parts + (i < units % parts ? 1 : 0);
        size_t c = NV_MIN(u * quantum, n - at);
        begin[i] = at;
        count[i] = c;
        at += c;
    }
    return (int)parts;
}

void nv_convert_weight(void *dst, nv_dtype dt, const void *src, nv_dtype st, size_t n)
{
    size_t des = nv_dtype_size(dt);
    size_t ses = nv_dtype_size(st);
    if (st == dt) {
        memcpy(dst, src, n * des);
        return;
    }
    float tmp[1024];
    char *d = dst;
    const char *s = src;
    for (size_t i = 0; i < n; i += NV_ARRAY_LEN(tmp)) {
        size_t c = NV_MIN(NV_ARRAY_LEN(tmp), n - i);
        nv_to_f32(tmp, s + i * ses, st, c);
        if (dt == NV_F32) {
            memcpy(d + i * des, tmp, c * sizeof(float));
        } else {
            uint16_t *o = (uint16_t *)(void *)(d + i * des);
            for (size_t j = 0; j < c; j++) {
                o[j] = nv_f32_to_bf16(tmp[j]);
            }
        }
    }
}

void nv_mem_gib(char *buf, size_t n, uint64_t bytes)
{
    snprintf(buf, n, "%.2f GiB", (double)bytes / (double)(1ull << 30));
}
