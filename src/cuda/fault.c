/*
 * fault.c - lost device contexts (fault.h). The state is the process's: a CUDA context is one
 * per device and process, and so is its loss.
 */
#include "cuda/fault.h"

#include <pthread.h>
#include <string.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_live[CUDA_FAULT_MAX_DEVICES];  /* backends per device */
static int g_dead[CUDA_FAULT_MAX_DEVICES];  /* read without the lock: atomics */

static bool tracked(int device)
{
    return device >= 0 && device < CUDA_FAULT_MAX_DEVICES;
}

bool cuda_fault_is_sticky(int code)
{
    switch (code) {
    case 214: /* cudaErrorECCUncorrectable */
    case 220: /* cudaErrorNvlinkUncorrectable */
    case 700: /* cudaErrorIllegalAddress */
    case 702: /* cudaErrorLaunchTimeout */
    case 703: /* cudaErrorLaunchIncompatibleTexturing */
    case 709: /* cudaErrorContextIsDestroyed */
    case 710: /* cudaErrorAssert */
    case 714: /* cudaErrorHardwareStackError */
    case 715: /* cudaErrorIllegalInstruction */
    case 716: /* cudaErrorMisalignedAddress */
    case 717: /* cudaErrorInvalidAddressSpace */
    case 718: /* cudaErrorInvalidPc */
    case 719: /* cudaErrorLaunchFailure */
    case 721: /* cudaErrorTensorMemoryLeak */
    case 911: /* cudaErrorExternalDevice */
        return true;
    default:
        return false;
    }
}

void cuda_fault_mark_dead(int device)
{
    if (tracked(device)) {
        __atomic_store_n(&g_dead[device], 1, __ATOMIC_RELEASE);
    }
}

bool cuda_fault_is_dead(int device)
{
    return tracked(device) && __atomic_load_n(&g_dead[device], __ATOMIC_ACQUIRE) != 0;
}

void cuda_fault_backend_created(int device)
{
    if (tracked(device)) {
        pthread_mutex_lock(&g_lock);
        g_live[device]++;
        pthread_mutex_unlock(&g_lock);
    }
}

bool cuda_fault_backend_destroyed(int device)
{
    if (!tracked(device)) {
        return false;
    }
    pthread_mutex_lock(&g_lock);
    bool reset = false;
    if (g_live[device] > 0) {
        g_live[device]--;
    }
    if (g_live[device] == 0 && cuda_fault_is_dead(device)) {
        __atomic_store_n(&g_dead[device], 0, __ATOMIC_RELEASE);
        reset = true;
    }
    pthread_mutex_unlock(&g_lock);
    return reset;
}

bool cuda_fault_sync_requested(const char *value)
{
    return value != NULL && value[0] != '\0' && strcmp(value, "0") != 0;
}
