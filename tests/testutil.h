/*
 * testutil.h - a tiny assertion harness. Each check prints "ok" or "FAIL" with its location;
 * tu_done() prints "# N passed, N failed" (read by tests/run_tests.sh) and gives the exit code.
 * Tests run from the repository root; fixtures live in tests/data/.
 */
#ifndef NVLM_TESTUTIL_H
#define NVLM_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nvlm/nvlm.h"

extern int tu_passed;
extern int tu_failed;

bool tu_check(bool cond, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int tu_done(void);
/* Print a section header. */
void tu_section(const char *name);
/* Read a whole file (NUL appended); NULL on failure. Caller frees. */
char *tu_read_file(const char *path, size_t *size);
/* Whether an environment flag like NVLM_TEST_SLOW=1 is set. */
bool tu_env_flag(const char *name);

/* The backend a test runs on. Every test pins its backend through these (or names one itself):
 * tu_backend() is NVLM_BACKEND_CPU, so goldens never follow `auto` onto a GPU. A test that may
 * also run on CUDA calls tu_backend_from_env() first (before any other tu_ call); from then on
 * the environment variable NVLM_BACKEND ("cpu" or "cuda"; unset or empty = cpu) chooses. Only
 * this harness and tools/gpu_check.sh read NVLM_BACKEND; the library never does. An unknown
 * value prints a FAIL and stays on the CPU. */
nvlm_backend tu_backend(void);
/* "cpu" or "cuda": the CLI's --backend argument for tu_backend(). */
const char *tu_backend_name(void);
/* Opts the calling test in to NVLM_BACKEND (see above); returns the backend chosen. */
nvlm_backend tu_backend_from_env(void);
/* nvlm_context_create with default params and backend = tu_backend() (inline: test_dlopen
 * links this harness without the library). */
static inline nvlm_status tu_context_create(nvlm_context **out)
{
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = tu_backend();
    return nvlm_context_create(&cp, out);
}

#define CHECK(cond, ...) tu_check((cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_EQ_INT(a, b, what)                                                         \
    do {                                                                                 \
        long long tu_a_ = (long long)(a), tu_b_ = (long long)(b);                        \
        tu_check(tu_a_ == tu_b_, __FILE__, __LINE__, "%s: got %lld, want %lld", (what),   \
                 tu_a_, tu_b_);                                                          \
    } while (0)
#define CHECK_OK(expr)                                                                   \
    do {                                                                                 \
        int tu_st_ = (int)(expr);                                                        \
        tu_check(tu_st_ == 0, __FILE__, __LINE__, "%s -> status %d", #expr, tu_st_);     \
    } while (0)

#endif
