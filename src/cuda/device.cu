/*
 * device.cu - device probe and selection, CUDA error -> nvlm_status with a message, and the
 * scratch-buffer helper every op family uses. A build without a usable device (no driver, no
 * GPU, or a GPU this fat binary has no code for) probes false and never crashes.
 */
#include "cuda/cuda_internal.h"
#include "cuda/fault.h"
extern "C" {
#include "memory_plan.h"
}

#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* Launched by nobody: cudaFuncGetAttributes on it tells whether the binary has an image for
 * the device (sm_80 code runs on 8.x, sm_90a only on 9.0). */
__global__ void cuda_probe_kernel(int *p)
{
    if (p != NULL) {
        *p = 1;
    }
}

/* cuDevicePrimaryCtxGetState, from the driver through the runtime (the plugin links no
 * libcuda); NULL when the driver does not offer it. */
typedef int (*primary_state_fn)(int device, unsigned int *flags, int *active);
static primary_state_fn g_primary_state;
static pthread_once_t g_primary_once = PTHREAD_ONCE_INIT;

static void primary_lookup(void)
{
    void *p = NULL;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuDevicePrimaryCtxGetState", &p, 12000,
                                         cudaEnableDefault, &q) != cudaSuccess) {
        cudaGetLastError();
        return;
    }
    if (q == cudaDriverEntryPointSuccess && p != NULL) {
        memcpy(&g_primary_state, &p, sizeof p);
    }
}

/* Whether `device`'s primary context is active in this process (true when unknown). */
static bool primary_active(int device)
{
    pthread_once(&g_primary_once, primary_lookup);
    if (g_primary_state == NULL) {
        return true;
    }
    unsigned int flags = 0;
    int active = 1;
    return g_primary_state(device, &flags, &active) != 0 || active != 0;
}

void cuda_restore_device(int saved)
{
    int cur = -1;
    if (saved < 0 || (cudaGetDevice(&cur) == cudaSuccess && cur == saved)) {
        return;
    }
    if (primary_active(saved)) {
        cudaSetDevice(saved);
    }
}

extern "C" bool nv_cuda_probe_reason(int device, char *buf, size_t n)
{
    char tmp[256];
    if (buf == NULL || n == 0) {
        buf = tmp;
        n = sizeof tmp;
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(buf, n, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
        cudaGetLastError();
        return false;
    }
    if (device < 0 || device >= count) {
        snprintf(buf, n, "device %d requested, %d present", device, count);
        return false;
    }
    cudaDeviceProp p;
    e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
        snprintf(buf, n, "cudaGetDeviceProperties: %s", cudaGetErrorString(e));
        cudaGetLastError();
        return false;
    }
    if (p.major < 8) {
        snprintf(buf, n, "%s is sm_%d%d; bf16 kernels need sm_80+", p.name, p.major, p.minor);
        return false;
    }
    int prev = -1;
    cudaGetDevice(&prev);
    cudaFuncAttributes fa;
    e = cudaSetDevice(device);
    if (e == cudaSuccess) {
        e = cudaFuncGetAttributes(&fa, cuda_probe_kernel);
    }
    cuda_restore_device(prev);
    if (e != cudaSuccess) {
        snprintf(buf, n, "%s (sm_%d%d): no kernel image in this build (%s)", p.name, p.major,
                 p.minor, cudaGetErrorString(e));
        cudaGetLastError();
        return false;
    }
    snprintf(buf, n, "%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return true;
}

extern "C" bool nv_cuda_probe(int device)
{
    return nv_cuda_probe_reason(device, NULL, 0);
}

nvlm_status cuda_status(void *err_handle, cudaError_t e, const char *what)
{
    if (e == cudaSuccess) {
        return NVLM_OK;
    }
    if (cuda_fault_is_sticky((int)e)) {
        int dev = -1;
        cudaGetDevice(&dev);
        cuda_fault_mark_dead(dev);
        return nv_error(err_handle, NVLM_ERR_BACKEND,
                        "CUDA %s: %s (%s): device %d context lost; free and reload the model",
                        what, cudaGetErrorName(e), cudaGetErrorString(e), dev);
    }
    cudaGetLastError();
    return nv_error(err_handle, NVLM_ERR_BACKEND, "CUDA %s: %s (%s)", what, cudaGetErrorName(e),
                    cudaGetErrorString(e));
}

nvlm_status cuda_alive(int device, void *err_handle)
{
    if (cuda_fault_is_dead(device)) {
        return nv_error(err_handle, NVLM_ERR_BACKEND,
                        "device %d context lost after an earlier CUDA error; free and reload the "
                        "model", device);
    }
    /* An error pending on this thread is not ours (every error of ours is taken when it is
     * met, and a sticky one marks its device dead): leave it to the application rather than
     * take it or blame an op for it. A sticky one marks `device` dead only when the thread
     * is on it (one context per device and process: the same context); met on another
     * device, marking this one would reset a healthy context, with the application's own
     * allocations on it, when its last model is freed. */
    cudaError_t pending = cudaPeekAtLastError();
    if (pending != cudaSuccess) {
        int cur = -1;
        if (cuda_fault_is_sticky((int)pending) && cudaGetDevice(&cur) == cudaSuccess &&
            cur == device) {
            cuda_fault_mark_dead(device);
        }
        return nv_error(err_handle, NVLM_ERR_BACKEND,
                        "a CUDA error is pending on this thread (%s: %s), left by the "
                        "application or another library; nvlm does not clear it",
                        cudaGetErrorName(pending), cudaGetErrorString(pending));
    }
    return NVLM_OK;
}

nvlm_status cuda_enter(nv_exec *ex)
{
    /* Any op may write the rows add_rmsnorm converted (fused_ops.cu): forget them. */
    cuda_ex(ex)->xbf_of = NULL;
    int want = cuda_ex(ex)->cb->device;
    NVLM_TRY(cuda_alive(want, ex->err_handle));
    int cur = -1;
    cudaError_t e = cudaGetDevice(&cur);
    if (e == cudaSuccess && cur != want) {
        e = cudaSetDevice(want);
    }
    return cuda_status(ex->err_handle, e, "select device");
}

nvlm_status cuda_synced(nv_exec *ex, const char *op)
{
    cuda_exec *ce = cuda_ex(ex);
    if (!ce->cb->debug_sync) {
        return NVLM_OK;
    }
    cudaError_t e = cudaStreamSynchronize(ce->stream);
    if (e == cudaSuccess) {
        e = cudaGetLastError();
    }
    char what[160];
    snprintf(what, sizeof what, "%s (NVLM_CUDA_SYNC: failed in this op)", op);
    return cuda_status(ex->err_handle, e, what);
}

nvlm_status cuda_scratch(nv_exec *ex, void **buf, size_t *cap, size_t need, size_t elem,
                         const char *what)
{
    if (need <= *cap) {
        return NVLM_OK;
    }
    size_t bytes;
    size_t grow = NV_MEM_SCRATCH_CAP(need); /* what the memory estimator counts */
    if (!nv_mul_size(grow, elem, &bytes)) {
        return nv_error(ex->err_handle, NVLM_ERR_LIMIT, "%s scratch size overflows", what);
    }
    cuda_exec *ce = cuda_ex(ex);
    NVLM_TRY(cuda_status(ex->err_handle, cudaStreamSynchronize(ce->stream), what));
    ce->gen++; /* captured graphs point into the old buffer */
    if (*buf != NULL) {
        cudaFree(*buf);
        *buf = NULL;
        *cap = 0;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return nv_error(ex->err_handle, NVLM_ERR_OUT_OF_MEMORY,
                        "out of device memory for %s scratch (%zu bytes)", what, bytes);
    }
    *buf = p;
    *cap = grow;
    return NVLM_OK;
}

unsigned cuda_blocks(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    if (b < 1) {
        b = 1;
    }
    return b > 65535u * 16u ? 65535u * 16u : (unsigned)b;
}
