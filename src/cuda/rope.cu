/*
 * rope.cu - rotate-half RoPE in place: row r (position pos0 + r), pair (i, i + hd/2) of every
 * head rotated by fp32(pos) * inv_freq[i]. inv_freq comes from the host (computed exactly as
 * the CPU op does); cos/sin are evaluated in double and rounded, as on the CPU, so both
 * backends agree to the last bit of the angle.
 */
#include "cuda/cuda_internal.h"

typedef struct rope_freq {
    float f[CUDA_ROPE_MAX_HALF];
} rope_freq;

static __global__ void rope_kernel(float *x, int ld, int rows, int n_heads, int head_dim,
                                   long long pos0, rope_freq fr)
{
    int half = head_dim / 2;
    size_t total = (size_t)rows * (size_t)half;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(t / (size_t)half);
        int i = (int)(t % (size_t)half);
        float pos = (float)(pos0 + r);
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

cudaError_t cuda_rope(cudaStream_t s, float *x, int ld, int rows, int n_heads, int head_dim,
                      int64_t pos0, const float *inv_freq)
{
    int half = head_dim / 2;
    if (rows <= 0 || half <= 0 || half > CUDA_ROPE_MAX_HALF) {
        return rows <= 0 ? cudaSuccess : cudaErrorInvalidValue;
    }
    rope_freq fr;
    for (int i = 0; i < CUDA_ROPE_MAX_HALF; i++) {
        fr.f[i] = i < half ? inv_freq[i] : 0.0f;
    }
    unsigned threads = 256;
    NV_LAUNCH(rope_kernel, cuda_blocks((size_t)rows * half, threads), threads, 0, s)(
        x, ld, rows, n_heads, head_dim, (long long)pos0, fr);
    return cudaGetLastError();
}
