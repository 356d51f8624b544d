#include "testutil.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tu_passed;
int tu_failed;

bool tu_check(bool cond, const char *file, int line, const char *fmt, ...)
{
    if (cond) {
        tu_passed++;
        if (getenv("NVLM_TEST_VERBOSE") == NULL) {
            return true;
        }
    } else {
        tu_failed++;
    }
    printf("%s %s:%d: ", cond ? "ok  " : "FAIL", file, line);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    return cond;
}

void tu_section(const char *name)
{
    printf("== %s\n", name);
    fflush(stdout);
}

int tu_done(void)
{
    printf("# %d passed, %d failed\n", tu_passed, tu_failed);
    return tu_failed == 0 && tu_passed > 0 ? 0 : 1;
}

char *tu_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    if (size != NULL) {
        *size = (size_t)n;
    }
    return buf;
}

bool tu_env_flag(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

static nvlm_backend tu_backend_choice = NVLM_BACKEND_CPU;

nvlm_backend tu_backend(void)
{
    return tu_backend_choice;
}

const char *tu_backend_name(void)
{
    return tu_backend_choice == NVLM_BACKEND_CUDA ? "cuda" : "cpu";
}

nvlm_backend tu_backend_from_env(void)
{
    const char *v = getenv("NVLM_BACKEND");
    if (v == NULL || v[0] == '\0' || strcmp(v, "cpu") == 0) {
        tu_backend_choice = NVLM_BACKEND_CPU;
    } else if (strcmp(v, "cuda") == 0) {
        tu_backend_choice = NVLM_BACKEND_CUDA;
    } else {
        tu_check(false, __FILE__, __LINE__, "NVLM_BACKEND=%s: want cpu or cuda", v);
        tu_backend_choice = NVLM_BACKEND_CPU;
    }
    printf("# backend: %s (NVLM_BACKEND)\n", tu_backend_name());
    fflush(stdout);
    return tu_backend_choice;
}
