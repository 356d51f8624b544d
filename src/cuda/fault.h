/*
 * fault.h - the CUDA plugin's record of lost device contexts, in plain C so that its logic is
 * tested on machines without a GPU. A sticky CUDA error (an illegal address, a failed launch,
 * a device assert, ...) leaves the process's context on that device unusable: every later call
 * fails with it. The plugin then marks the device dead, so that every later op of every backend
 * on it says "device context lost; free and reload the model" instead of blaming the op at
 * hand; when the last backend on a dead device is destroyed the context is reset, and a model
 * loaded after that works again.
 */
#ifndef NVLM_CUDA_FAULT_H
#define NVLM_CUDA_FAULT_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Devices the registry tracks; a higher ordinal is never marked dead (its errors still fail
 * the op that met them). */
#define CUDA_FAULT_MAX_DEVICES 256

/* Whether the cudaError_t value `code` is sticky (corrupts the context for the process). */
bool cuda_fault_is_sticky(int code);
/* Marks `device` dead (its context met a sticky error). */
void cuda_fault_mark_dead(int device);
bool cuda_fault_is_dead(int device);
/* A backend on `device` was created / is being destroyed. Destroy returns true exactly when
 * it was the last backend on a dead device: the caller then resets the device's context
 * (cudaDeviceReset), after which the device counts as alive again. */
void cuda_fault_backend_created(int device);
bool cuda_fault_backend_destroyed(int device);
/* The debug switch NVLM_CUDA_SYNC read from `value` (the environment's text, or NULL): when
 * on, every op synchronises its stream so that an asynchronous failure names the op. */
bool cuda_fault_sync_requested(const char *value);

#ifdef __cplusplus
}
#endif

#endif /* NVLM_CUDA_FAULT_H */
