/*
 * backend_registry.c - which compute backends this build has and whether a device exists.
 */
#include "internal.h"

#ifdef NVLM_WITH_CUDA
bool nv_cuda_probe(int device); /* src/cuda/device.cu */
#endif

bool nv_cuda_available(int device)
{
#ifdef NVLM_WITH_CUDA
    return nv_cuda_probe(device);
#else
    (void)device;
    return false;
#endif
}
