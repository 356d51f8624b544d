/*
 * cuda_host.h - host emulation of the CUDA kernel language: the .cu kernel sources of src/cuda/
 * compile with the host C++ compiler and run on the CPU, unchanged, so their logic is checked
 * against the CPU backend on a machine without a GPU (tests/test_cuda_emu.cpp).
 *
 * What it maps:
 *   __global__ __device__ __host__ __forceinline__ __launch_bounds__ __restrict__ __align__
 *       plain C++ (a kernel is an ordinary void function);
 *   threadIdx blockIdx blockDim gridDim warpSize
 *       the running emulated thread's values;
 *   __shared__ (static, in a kernel or __device__ function)
 *       block-scope thread_local: one copy per block (blocks run one after another on the
 *       calling OS thread, all threads of a block share it);
 *   extern __shared__ T name[] (dynamic shared memory)
 *       a per-file array of 227 KiB that NVEMU_DYN_SHARED(name, T) defines; the Makefile
 *       generates that line from the file's `extern __shared__` declarations. Filled with
 *       0xff bytes (NaN floats) before every block, so reading what no thread wrote shows up;
 *       a write into the 1 KiB past the launch's size fails the launch (under AddressSanitizer
 *       any access past it is reported);
 *   __syncthreads __syncwarp __shfl_sync __shfl_xor_sync __shfl_up_sync __shfl_down_sync
 *   __ballot_sync __any_sync __all_sync __activemask
 *       real barriers: every thread of a block is a fiber (its own stack) and runs until it
 *       reaches a barrier or a warp collective, then the next runnable thread runs. Warps are 32
 *       consecutive threads; a shuffle exchanges the values the lanes of the mask handed in at
 *       that point. Threads that have returned do not hold a barrier up (as on sm_70+).
 *       Misuse is a launch failure with a message (nvemu_message()): a barrier that not every
 *       live thread reaches (deadlock), threads at different __syncthreads, lanes of one warp
 *       meeting at different collectives or with different masks, a shuffle reading a lane
 *       outside its mask, a lane returning while its warp waits for it;
 *   atomicAdd/Sub/Max/Min/Exch/CAS/And/Or/Xor, __threadfence*: host atomics;
 *   math: the C library's functions (expf, erff, sqrtf, ...), __expf __logf __fdividef rsqrtf
 *       __saturatef __int_as_float etc. as their exact host counterparts, min/max overloads;
 *   cuda_bf16.h / cuda_fp16.h: __nv_bfloat16 and __half with round-to-nearest-even
 *       conversions (NaN -> canonical quiet NaN), as the device's __float2bfloat16_rn does;
 *   cuda_runtime.h: dim3, the vector types, cudaError_t, cudaStream_t, cudaGetLastError,
 *       cudaFuncSetAttribute(MaxDynamicSharedMemorySize) (a launch asking for more than 48 KiB
 *       of dynamic shared memory without it fails, as on the device); cudaMalloc/Free(Async),
 *       cudaMemcpy/Memset(Async), cudaMemcpyToSymbol on host memory, at once.
 *
 * Launches: write NV_LAUNCH(kernel, grid, block, shmem, stream)(args...) instead of
 * kernel<<<grid, block, shmem, stream>>>(args...) (cuda_internal.h defines it as exactly that
 * under nvcc). Here it runs the whole grid before returning; the stream is ignored;
 * cudaGetLastError() returns the launch's status. A kernel name with template arguments holding
 * a comma: take a pointer first (auto k = kern<A, B>; NV_LAUNCH(k, ...)).
 *
 * Test hooks: every barrier and warp collective is a "site" (file, line).
 * nvemu_mutate(file_suffix, line, false) turns the sites on that line off: a barrier there
 * does nothing, a shuffle/vote returns the calling lane's own value (a source line holding
 * "nvemu: redundant" documents a barrier no result can depend on). nvemu_sites() lists every
 * site executed so far with its hit count; nvemu_schedule() picks the order in which threads
 * take turns (a missing barrier may show under one order only); nvemu_block_filter() runs a
 * sample of the blocks of a big grid.
 *
 * Sanitizers: the fiber switches are annotated for AddressSanitizer (the stacks are mmap'ed,
 * with a guard page); ThreadSanitizer is not supported.
 *
 * Usage: compile a kernel file with
 *   g++ -std=c++17 -include src/cuda/emu/cuda_host.h -include <dyn.h> -Isrc/cuda/emu/include
 *       -Iinclude -Isrc -x c++ src/cuda/<file>.cu
 * and link src/cuda/emu/cuda_host.cpp (the Makefile's CUDA_EMU_SRC list does all of this for
 * tests/test_cuda_emu.cpp; add a kernel file there). Blocks run in order (blockIdx.x fastest),
 * threads of a block in a deterministic order, so a run is reproducible.
 *
 * Not emulated: tensor-core mma/ldmatrix/cp.async/TMA, cooperative groups, clusters, texture,
 * warp-level divergence inside one collective (two lane groups of one warp at different
 * shuffles at once), timing, occupancy and the memory model beyond barriers and atomics.
 */
#ifndef NVLM_CUDA_HOST_H
#define NVLM_CUDA_HOST_H

#ifndef __cplusplus
#error "cuda_host.h is C++"
#endif

#define NVEMU 1

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The library's own f16/bf16 conversions (tensor.c): the emulated device types round exactly
 * as the CPU backend does. */
extern "C" {
#include "tensor.h"
}

#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>

/* ---- qualifiers ---------------------------------------------------------------------------- */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __shared__ thread_local
#define __managed__

#define NVEMU_MAX_DYN_SMEM (227 * 1024)
#define NVEMU_DEFAULT_DYN_SMEM (48 * 1024)

/* ---- vector types -------------------------------------------------------------------------- */

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
#define NVEMU_VEC2(T, N)                                                                       \
    struct alignas(2 * sizeof(T)) N##2 {                                                       \
        T x, y;                                                                                \
    };                                                                                         \
    static inline N##2 make_##N##2(T x, T y)                                                   \
    {                                                                                          \
        return N##2{x, y};                                                                     \
    }
#define NVEMU_VEC4(T, N)                                                                       \
    struct alignas(4 * sizeof(T) > 16 ? 16 : 4 * sizeof(T)) N##4 {                             \
        T x, y, z, w;                                                                          \
    };                                                                                         \
    static inline N##4 make_##N##4(T x, T y, T z, T w)                                         \
    {                                                                                          \
        return N##4{x, y, z, w};                                                               \
    }
NVEMU_VEC2(float, float)
NVEMU_VEC4(float, float)
NVEMU_VEC2(int, int)
NVEMU_VEC4(int, int)
NVEMU_VEC2(unsigned, uint)
NVEMU_VEC4(unsigned, uint)
NVEMU_VEC2(double, double)
struct float3 {
    float x, y, z;
};
static inline float3 make_float3(float x, float y, float z)
{
    return float3{x, y, z};
}
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z)
{
    return uint3{x, y, z};
}

/* ---- runtime types ------------------------------------------------------------------------- */

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorUnknown = 999
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9
};

/* ---- the emulator's runtime (cuda_host.cpp) ------------------------------------------------ */

namespace nvemu {

/* A barrier or warp collective in the source: one per expansion point. */
struct site {
    const char *file;
    int line;
    int kind;                /* NVEMU_SITE_* */
    bool off;                /* mutated: a barrier does nothing, a shuffle returns its input */
    unsigned long long hits;
    site *next;
    site(const char *f, int l, int k);
};
enum { SITE_BARRIER = 0, SITE_SYNCWARP = 1, SITE_SHUFFLE = 2, SITE_VOTE = 3 };

/* Per emulated thread (fiber); `tid` first. */
struct thread_pub {
    uint3 tid;
    int lane;
    int warp;
};
/* Per running block. */
struct block_pub {
    uint3 block_idx{0, 0, 0};
    dim3 block_dim;
    dim3 grid_dim;
};
extern __thread thread_pub *cur_thread;
extern __thread block_pub cur_block;

/* Dynamic shared memory of one translation unit (NVEMU_DYN_SHARED). */
struct dyn_reg {
    void *(*addr)(void);
    size_t bytes;
    dyn_reg *next;
};
struct dyn_list {
    dyn_reg *head;
};
struct dyn_add {
    dyn_add(dyn_list *l, dyn_reg *r)
    {
        r->next = l->head;
        l->head = r;
    }
};

/* The block barrier (__syncthreads) and the warp rendezvous of the collectives. */
void barrier(site &s);
/* Lane publishes `bits` and waits for every lane of `mask`; returns the slot row of this
 * exchange (32 values, by lane) and the participating lanes. */
const uint64_t *warp_exchange(site &s, unsigned mask, uint64_t bits, unsigned *members);
void syncwarp(site &s, unsigned mask);
/* A misuse found inside a kernel: the launch fails with this message. Does not return. */
[[noreturn]] void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

struct launch_cfg {
    dim3 grid, block;
    size_t shmem;
    const void *fn;
    const char *file;
    int line;
    dyn_list *dyn;
};
/* Runs body(arg) as every thread of every block; sets the last error. */
void run_grid(const launch_cfg &c, void (*body)(void *), void *arg);
void set_last_error(cudaError_t e);

template <class... P> struct launcher {
    void (*fn)(P...);
    launch_cfg c;
    template <class... A> void operator()(A &&...a) const
    {
        static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
        std::tuple<P...> args(std::forward<A>(a)...);
        struct pack {
            void (*fn)(P...);
            std::tuple<P...> *args;
        } pk{fn, &args};
        run_grid(c,
                 [](void *p) {
                     pack *k = (pack *)p;
                     std::apply(k->fn, *k->args);
                 },
                 &pk);
    }
};
template <class... P>
launcher<P...> make_launch(void (*fn)(P...), dim3 g, dim3 b, size_t sm, const char *file,
                           int line, dyn_list *dyn)
{
    launcher<P...> l;
    l.fn = fn;
    l.c.grid = g;
    l.c.block = b;
    l.c.shmem = sm;
    l.c.fn = (const void *)fn;
    l.c.file = file;
    l.c.line = line;
    l.c.dyn = dyn;
    return l;
}

template <class T> static inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T> static inline T from_bits(uint64_t b)
{
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

enum { SHFL_IDX, SHFL_XOR, SHFL_UP, SHFL_DOWN };
template <class T> static inline T shfl(site &s, int kind, unsigned mask, T v, int arg, int width)
{
    s.hits++;
    if (s.off) {
        return v;
    }
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
        fail("%s:%d: shuffle width %d", s.file, s.line, width);
    }
    int lane = cur_thread->lane;
    int seg = lane & ~(width - 1);
    int src = lane;
    switch (kind) {
    case SHFL_IDX:
        src = seg + (arg & (width - 1));
        break;
    case SHFL_XOR:
        src = lane ^ arg;
        if (src >= seg + width) {
            src = lane;
        }
        break;
    case SHFL_UP:
        src = lane - arg >= seg ? lane - arg : lane;
        break;
    default:
        src = lane + arg < seg + width ? lane + arg : lane;
        break;
    }
    unsigned members = 0;
    const uint64_t *row = warp_exchange(s, mask, to_bits(v), &members);
    if (src < 0 || src > 31 || !((members >> src) & 1u)) {
        fail("%s:%d: lane %d reads lane %d outside the shuffle's live mask 0x%08x", s.file,
             s.line, lane, src, members);
    }
    return from_bits<T>(row[src]);
}

enum { VOTE_BALLOT, VOTE_ANY, VOTE_ALL };
static inline unsigned vote(site &s, int kind, unsigned mask, int pred)
{
    s.hits++;
    if (s.off) {
        unsigned own = pred ? 1u << cur_thread->lane : 0u;
        return kind == VOTE_BALLOT ? own : (pred != 0);
    }
    unsigned members = 0;
    const uint64_t *row = warp_exchange(s, mask, pred ? 1u : 0u, &members);
    unsigned ballot = 0;
    for (int i = 0; i < 32; i++) {
        if (((members >> i) & 1u) && row[i] != 0) {
            ballot |= 1u << i;
        }
    }
    if (kind == VOTE_BALLOT) {
        return ballot;
    }
    return kind == VOTE_ANY ? ballot != 0 : ballot == members;
}

unsigned activemask();

} /* namespace nvemu */

/* Dynamic shared memory of this translation unit: see NVEMU_DYN_SHARED. */
[[maybe_unused]] static ::nvemu::dyn_list nvemu_tu_dyn;

/* Defines the storage behind `extern __shared__ T name[];` (generated by the Makefile from the
 * declarations; one line per name and file). */
#define NVEMU_DYN_SHARED(name, ...)                                                            \
    alignas(128) static thread_local __VA_ARGS__ name[NVEMU_MAX_DYN_SMEM / sizeof(__VA_ARGS__)]; \
    static ::nvemu::dyn_reg nvemu_dyn_reg_##name = {                                           \
        []() -> void * { return (void *)name; }, sizeof(name), nullptr};                       \
    static ::nvemu::dyn_add nvemu_dyn_add_##name(&nvemu_tu_dyn, &nvemu_dyn_reg_##name);

#define NVEMU_SITE(kind)                                                                       \
    ([]() -> ::nvemu::site & {                                                                 \
        static ::nvemu::site nvemu_s_(__FILE__, __LINE__, (kind));                             \
        return nvemu_s_;                                                                       \
    }())

#define NV_LAUNCH(k, g, b, sm, st)                                                            \
    ((void)(st), ::nvemu::make_launch((k), dim3(g), dim3(b), (size_t)(sm), __FILE__, __LINE__, \
                                      &nvemu_tu_dyn))

/* ---- built-in variables -------------------------------------------------------------------- */

#define threadIdx (::nvemu::cur_thread->tid)
#define blockIdx (::nvemu::cur_block.block_idx)
#define blockDim (::nvemu::cur_block.block_dim)
#define gridDim (::nvemu::cur_block.grid_dim)
static constexpr int warpSize = 32;

/* ---- synchronisation and warp collectives -------------------------------------------------- */

#define __syncthreads() ::nvemu::barrier(NVEMU_SITE(::nvemu::SITE_BARRIER))
#define __syncwarp(...) ::nvemu::syncwarp_at{NVEMU_SITE(::nvemu::SITE_SYNCWARP)}(__VA_ARGS__)
#define __shfl_sync(...) ::nvemu::shfl_idx_(NVEMU_SITE(::nvemu::SITE_SHUFFLE), __VA_ARGS__)
#define __shfl_xor_sync(...) ::nvemu::shfl_xor_(NVEMU_SITE(::nvemu::SITE_SHUFFLE), __VA_ARGS__)
#define __shfl_up_sync(...) ::nvemu::shfl_up_(NVEMU_SITE(::nvemu::SITE_SHUFFLE), __VA_ARGS__)
#define __shfl_down_sync(...) ::nvemu::shfl_down_(NVEMU_SITE(::nvemu::SITE_SHUFFLE), __VA_ARGS__)
#define NVEMU_VOTE(k, m, p) ::nvemu::vote(NVEMU_SITE(::nvemu::SITE_VOTE), (k), (m), (p))
#define __ballot_sync(m, p) NVEMU_VOTE(::nvemu::VOTE_BALLOT, (m), (p))
#define __any_sync(m, p) ((int)NVEMU_VOTE(::nvemu::VOTE_ANY, (m), (p)))
#define __all_sync(m, p) ((int)NVEMU_VOTE(::nvemu::VOTE_ALL, (m), (p)))
#define __activemask() ::nvemu::activemask()

namespace nvemu {
struct syncwarp_at {
    site &s;
    void operator()(unsigned mask = 0xffffffffu) const
    {
        syncwarp(s, mask);
    }
};
template <class T> static inline T shfl_idx_(site &s, unsigned m, T v, int l, int w = 32)
{
    return shfl(s, SHFL_IDX, m, v, l, w);
}
template <class T> static inline T shfl_xor_(site &s, unsigned m, T v, int l, int w = 32)
{
    return shfl(s, SHFL_XOR, m, v, l, w);
}
template <class T> static inline T shfl_up_(site &s, unsigned m, T v, unsigned d, int w = 32)
{
    return shfl(s, SHFL_UP, m, v, (int)d, w);
}
template <class T> static inline T shfl_down_(site &s, unsigned m, T v, unsigned d, int w = 32)
{
    return shfl(s, SHFL_DOWN, m, v, (int)d, w);
}
} /* namespace nvemu */

/* ---- atomics and fences -------------------------------------------------------------------- */

template <class T> static inline T atomicAdd(T *p, T v)
{
    if constexpr (std::is_floating_point<T>::value) {
        T old;
        __atomic_load(p, &old, __ATOMIC_RELAXED);
        T nv = old + v;
        while (!__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST)) {
            nv = old + v;
        }
        return old;
    } else {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
}
template <class T> static inline T atomicSub(T *p, T v)
{
    return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);
}
template <class T> static inline T atomicExch(T *p, T v)
{
    T old;
    __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T> static inline T atomicCAS(T *p, T cmp, T v)
{
    __atomic_compare_exchange(p, &cmp, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
template <class T> static inline T atomicMax(T *p, T v)
{
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange(p, &old, &v, false, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <class T> static inline T atomicMin(T *p, T v)
{
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange(p, &old, &v, false, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST)) {
    }
    return old;
}
template <class T> static inline T atomicAnd(T *p, T v)
{
    return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
}
template <class T> static inline T atomicOr(T *p, T v)
{
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
template <class T> static inline T atomicXor(T *p, T v)
{
    return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST);
}
static inline void __threadfence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
static inline void __threadfence_block(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
template <class T> static inline T __ldg(const T *p)
{
    return *p;
}

/* ---- math ---------------------------------------------------------------------------------- */

/* CUDA's min/max overloads (integers of any mix, float via fminf/fmaxf). */
template <class A, class B> static inline typename std::common_type<A, B>::type min(A a, B b)
{
    typedef typename std::common_type<A, B>::type C;
    if constexpr (std::is_floating_point<C>::value) {
        return std::fmin((C)a, (C)b);
    } else {
        return (C)b < (C)a ? (C)b : (C)a;
    }
}
template <class A, class B> static inline typename std::common_type<A, B>::type max(A a, B b)
{
    typedef typename std::common_type<A, B>::type C;
    if constexpr (std::is_floating_point<C>::value) {
        return std::fmax((C)a, (C)b);
    } else {
        return (C)a < (C)b ? (C)b : (C)a;
    }
}
/* The fast intrinsics are approximations on the device; the host uses the exact function. */
/* glibc declares __expf etc. itself (the same functions): macros, after <math.h>. */
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __powf(x, y) powf((x), (y))
#define __exp10f(x) powf(10.0f, (x))
static inline float __fdividef(float a, float b)
{
    return a / b;
}
static inline float __frcp_rn(float x)
{
    return 1.0f / x;
}
static inline float rsqrtf(float x)
{
    return 1.0f / sqrtf(x);
}
static inline float __frsqrt_rn(float x)
{
    return 1.0f / sqrtf(x);
}
static inline float __fsqrt_rn(float x)
{
    return sqrtf(x);
}
static inline float __saturatef(float x)
{
    return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f));
}
static inline float __fmul_rn(float a, float b)
{
    return a * b;
}
static inline float __fadd_rn(float a, float b)
{
    return a + b;
}
static inline float __fsub_rn(float a, float b)
{
    return a - b;
}
static inline float __fdiv_rn(float a, float b)
{
    return a / b;
}
static inline float __fmaf_rn(float a, float b, float c)
{
    return fmaf(a, b, c);
}
static inline int __float2int_rn(float x)
{
    return (int)nearbyintf(x);
}
static inline int __float2int_rz(float x)
{
    return (int)x;
}
static inline unsigned __float2uint_rn(float x)
{
    return (unsigned)nearbyintf(x);
}
static inline float __int2float_rn(int i)
{
    return (float)i;
}
static inline float __uint2float_rn(unsigned i)
{
    return (float)i;
}
static inline double __longlong_as_double(long long i)
{
    double d;
    memcpy(&d, &i, 8);
    return d;
}
static inline long long __double_as_longlong(double d)
{
    long long i;
    memcpy(&i, &d, 8);
    return i;
}
static inline int __float_as_int(float x)
{
    int i;
    memcpy(&i, &x, 4);
    return i;
}
static inline unsigned __float_as_uint(float x)
{
    unsigned i;
    memcpy(&i, &x, 4);
    return i;
}
static inline float __int_as_float(int i)
{
    float x;
    memcpy(&x, &i, 4);
    return x;
}
static inline float __uint_as_float(unsigned i)
{
    float x;
    memcpy(&x, &i, 4);
    return x;
}
static inline int __popc(unsigned x)
{
    return __builtin_popcount(x);
}
static inline int __popcll(unsigned long long x)
{
    return __builtin_popcountll(x);
}
static inline int __clz(int x)
{
    return x == 0 ? 32 : __builtin_clz((unsigned)x);
}
static inline int __ffs(int x)
{
    return __builtin_ffs(x);
}
static inline unsigned __brev(unsigned x)
{
    unsigned r = 0;
    for (int i = 0; i < 32; i++) {
        r |= ((x >> i) & 1u) << (31 - i);
    }
    return r;
}

/* ---- bf16 and f16 (cuda_bf16.h, cuda_fp16.h) ----------------------------------------------- */

namespace nvemu {
/* As the device's conversions: round to nearest even, and a NaN becomes the canonical 0x7fff
 * (the library's own conversions keep the NaN's payload instead). */
static inline bool is_nan_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x7fffffffu) > 0x7f800000u;
}
static inline uint16_t f32_to_bf16_rn(float f)
{
    return is_nan_bits(f) ? (uint16_t)0x7fffu : nv_f32_to_bf16(f);
}
static inline float bf16_to_f32(uint16_t h)
{
    return nv_bf16_to_f32(h);
}
static inline float f16_to_f32(uint16_t h)
{
    return nv_f16_to_f32(h);
}
static inline uint16_t f32_to_f16_rn(float f)
{
    return is_nan_bits(f) ? (uint16_t)0x7fffu : nv_f32_to_f16(f);
}
} /* namespace nvemu */

struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(::nvemu::f32_to_bf16_rn(f)) {}
    operator float() const
    {
        return ::nvemu::bf16_to_f32(__x);
    }
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    __nv_bfloat16 h;
    h.__x = ::nvemu::f32_to_bf16_rn(f);
    return h;
}
static inline __nv_bfloat16 __float2bfloat16(float f)
{
    return __float2bfloat16_rn(f);
}
static inline float __bfloat162float(__nv_bfloat16 h)
{
    return ::nvemu::bf16_to_f32(h.__x);
}
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h)
{
    return h.__x;
}
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u)
{
    __nv_bfloat16 h;
    h.__x = u;
    return h;
}
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b)
{
    return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
static inline float2 __bfloat1622float2(__nv_bfloat162 h)
{
    return float2{__bfloat162float(h.x), __bfloat162float(h.y)};
}
static inline __nv_bfloat162 __float22bfloat162_rn(float2 f)
{
    return __floats2bfloat162_rn(f.x, f.y);
}

struct __half {
    uint16_t __x;
    __half() = default;
    __half(float f) : __x(::nvemu::f32_to_f16_rn(f)) {}
    operator float() const
    {
        return ::nvemu::f16_to_f32(__x);
    }
};
struct __half2 {
    __half x, y;
};
typedef __half half;
static inline __half __float2half_rn(float f)
{
    __half h;
    h.__x = ::nvemu::f32_to_f16_rn(f);
    return h;
}
static inline __half __float2half(float f)
{
    return __float2half_rn(f);
}
static inline float __half2float(__half h)
{
    return ::nvemu::f16_to_f32(h.__x);
}
static inline unsigned short __half_as_ushort(__half h)
{
    return h.__x;
}
static inline __half __ushort_as_half(unsigned short u)
{
    __half h;
    h.__x = u;
    return h;
}

/* ---- runtime API (the part kernels' launchers use) ------------------------------------------ */

cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorName(cudaError_t e);
const char *cudaGetErrorString(cudaError_t e);
cudaError_t nvemu_func_set_attribute(const void *fn, cudaFuncAttribute attr, int value);
template <class F> static inline cudaError_t cudaFuncSetAttribute(F *fn, cudaFuncAttribute a, int v)
{
    return nvemu_func_set_attribute((const void *)fn, a, v);
}
static inline cudaError_t cudaDeviceSynchronize(void)
{
    return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t)
{
    return cudaSuccess;
}

/* Device memory is host memory here; copies and fills run at once (streams are ignored). */
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};
static inline cudaError_t cudaMalloc(void **p, size_t bytes)
{
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    return *p != NULL || bytes == 0 ? cudaSuccess : cudaErrorMemoryAllocation;
}
template <class T> static inline cudaError_t cudaMalloc(T **p, size_t bytes)
{
    return cudaMalloc((void **)p, bytes);
}
static inline cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}
static inline cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t)
{
    return cudaMalloc(p, bytes);
}
template <class T> static inline cudaError_t cudaMallocAsync(T **p, size_t bytes, cudaStream_t)
{
    return cudaMalloc((void **)p, bytes);
}
static inline cudaError_t cudaFreeAsync(void *p, cudaStream_t)
{
    return cudaFree(p);
}
static inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind)
{
    if (n > 0) {
        memmove(d, s, n);
    }
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k,
                                          cudaStream_t = NULL)
{
    return cudaMemcpy(d, s, n, k);
}
static inline cudaError_t cudaMemset(void *d, int v, size_t n)
{
    if (n > 0) {
        memset(d, v, n);
    }
    return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t = NULL)
{
    return cudaMemset(d, v, n);
}
/* __constant__ / __device__ variables are ordinary globals. */
template <class T>
static inline cudaError_t cudaMemcpyToSymbol(T &sym, const void *src, size_t n, size_t off = 0,
                                             cudaMemcpyKind = cudaMemcpyHostToDevice)
{
    memcpy((char *)&sym + off, src, n);
    return cudaSuccess;
}
template <class T>
static inline cudaError_t cudaMemcpyToSymbolAsync(T &sym, const void *src, size_t n,
                                                  size_t off = 0,
                                                  cudaMemcpyKind = cudaMemcpyHostToDevice,
                                                  cudaStream_t = NULL)
{
    return cudaMemcpyToSymbol(sym, src, n, off);
}

/* ---- test hooks ---------------------------------------------------------------------------- */

/* The message of the last launch failure ("" when none). */
const char *nvemu_message(void);
/* Turns the sites at file (matched as a suffix of __FILE__) : line off (on = false) or back on;
 * returns how many sites matched (sites register when first executed; a setting made earlier
 * applies when they do). nvemu_mutate_clear() turns every site back on. */
int nvemu_mutate(const char *file_suffix, int line, bool on);
void nvemu_mutate_clear(void);
/* Calls fn for every site executed so far. */
void nvemu_sites(void (*fn)(const ::nvemu::site *s, void *arg), void *arg);
/* The order in which runnable threads of a block take turns (a correct kernel gives the same
 * result under each; a missing barrier often shows under one of them only):
 * in thread order (the default), a warp's lanes first (one warp runs ahead), reverse order
 * (threads and blocks: the last block of the grid runs first). */
enum { NVEMU_SCHED_IN_ORDER = 0, NVEMU_SCHED_WARP_FIRST = 1, NVEMU_SCHED_REVERSE = 2 };
void nvemu_schedule(int policy);
/* Runs only the blocks for which keep(blockIdx, gridDim, arg) is true (NULL: all), for a
 * test that checks a sample of the independent blocks of a big grid (and compares only what
 * those blocks write). */
void nvemu_block_filter(bool (*keep)(uint3 block, dim3 grid, void *arg), void *arg);
/* Counts of context switches and blocks run since the start (statistics). */
void nvemu_stats(unsigned long long *switches, unsigned long long *blocks);

#endif /* NVLM_CUDA_HOST_H */
