/* cuda_fp16.h for the host emulation of the CUDA kernels: everything is in cuda_host.h. */
#include "../cuda_host.h"
