/*
 * rope.cu - rotate-half RoPE in place: row r (position pos0 + r), pair (i, i + hd/2) of every
 * head rotated by fp32(pos) * inv_freq[i]. inv_freq comes from the host (computed exactly as
 * the CPU op does); cos/sin are evaluated in double and rounded, as on the CPU, so both
 * backends agree to the last bit of the angle.
 */
#include "cuda/cuda_internal.h"

#include <math.h>

typedef struct rope_freq {
    float f[CUDA_ROPE_MAX_HALF];
} rope_freq;

/* dpos: a decode step's device positions (NULL: pos0); row r belongs to sequence
 * r / per_seq and has position dpos[r / per_seq] + r % per_seq. */
static __global__ void rope_kernel(float *x, int ld, int rows, int n_heads, int head_dim,
                                   long long pos0, rope_freq fr, const long long *dpos,
                                   int per_seq)
{
    int half = head_dim / 2;
    size_t total = (size_t)rows * (size_t)half;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(t / (size_t)half);
        int i = (int)(t % (size_t)half);
        long long p = dpos != NULL ? dpos[r / per_seq] + r % per_seq : pos0 + r;
        float pos = (float)p;
        float ang = pos * fr.f[i];
        float c = (float)cos((double)ang);
        float s = (float)sin((double)ang);
        float *row = x + (size_t)r * (size_t)ld;
        for (int h = 0; h < n_heads; h++) {
            float *v = row + (size_t)h * head_dim;
            float a = v[i];
            float b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

/* One launch of rope_kernel: positions pos0 + r, or (dpos not NULL) dpos[r / per_seq] +
 * r % per_seq read on the device. */
static cudaError_t rope_launch(cudaStream_t s, float *x, int ld, int rows, int n_heads,
                               int head_dim, int64_t pos0, const int64_t *dpos, int per_seq,
                               const float *inv_freq)
{
    int half = head_dim / 2;
    if (rows <= 0 || half <= 0 || half > CUDA_ROPE_MAX_HALF || per_seq <= 0) {
        return rows <= 0 ? cudaSuccess : cudaErrorInvalidValue;
    }
    rope_freq fr;
    for (int i = 0; i < CUDA_ROPE_MAX_HALF; i++) {
        fr.f[i] = i < half ? inv_freq[i] : 0.0f;
    }
    unsigned threads = 256;
    NV_LAUNCH(rope_kernel, cuda_blocks((size_t)rows * half, threads), threads, 0, s)(
        x, ld, rows, n_heads, head_dim, (long long)pos0, fr, (const long long *)dpos, per_seq);
    return cudaGetLastError();
}

cudaError_t cuda_rope(cudaStream_t s, float *x, int ld, int rows, int n_heads, int head_dim,
                      int64_t pos0, const float *inv_freq)
{
    return rope_launch(s, x, ld, rows, n_heads, head_dim, pos0, NULL, 1, inv_freq);
}

cudaError_t cuda_rope_step(cudaStream_t s, float *x, int ld, int rows, int n_heads,
                           int head_dim, const int64_t *dpos, int per_seq, const float *inv_freq)
{
    if (dpos == NULL && rows > 0) {
        return cudaErrorInvalidValue;
    }
    return rope_launch(s, x, ld, rows, n_heads, head_dim, 0, dpos, per_seq, inv_freq);
}

void cuda_rope_inv_freq(double theta, int head_dim, float *inv_freq)
{
    /* Exactly the CPU op's table: base ** (2i / dim) in fp32, then 1 / that. */
    float base = (float)theta;
    for (int i = 0; i < head_dim / 2; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        float p = (float)pow((double)base, (double)e);
        inv_freq[i] = 1.0f / p;
    }
}
