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
