/*
 * test_core.c - version, status strings, context creation, params struct_size handling,
 * allocator hooks and nvlm_last_error on bad handles.
 */
#include "internal.h"
#include "tensor.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_allocs;
static int fail_at = -1;

static void *count_alloc(void *user, size_t size)
{
    (void)user;
    if (n_allocs++ == fail_at) {
        return NULL;
    }
    return malloc(size);
}
static void *count_realloc(void *user, void *p, size_t size)
{
    (void)user;
    return realloc(p, size);
}
static void count_free(void *user, void *p)
{
    (void)user;
    free(p);
}

/* Tests pin their backend (testutil.h): the CPU unless a test opts in to NVLM_BACKEND, which
 * only the harness reads. The library's sources name NVLM_BACKEND only as the enum's values. */
static void test_backend_pinning(void)
{
    tu_section("tests pin their backend; NVLM_BACKEND is the harness's");
    const char *saved = getenv("NVLM_BACKEND");
    char keep[64];
    snprintf(keep, sizeof keep, "%s", saved != NULL ? saved : "");
    setenv("NVLM_BACKEND", "cuda", 1);
    CHECK_EQ_INT(tu_backend(), NVLM_BACKEND_CPU, "without opting in: the CPU, whatever the env");
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    CHECK_EQ_INT(ctx != NULL ? (int)nvlm_context_backend(ctx) : -1, NVLM_BACKEND_CPU,
                 "tu_context_create: a CPU context");
    nvlm_context_free(ctx);
    CHECK_EQ_INT(tu_backend_from_env(), NVLM_BACKEND_CUDA, "opted in, NVLM_BACKEND=cuda");
    CHECK(strcmp(tu_backend_name(), "cuda") == 0, "CLI name cuda");
    setenv("NVLM_BACKEND", "cpu", 1);
    CHECK_EQ_INT(tu_backend_from_env(), NVLM_BACKEND_CPU, "NVLM_BACKEND=cpu");
    unsetenv("NVLM_BACKEND");
    CHECK_EQ_INT(tu_backend_from_env(), NVLM_BACKEND_CPU, "NVLM_BACKEND unset");
    CHECK(strcmp(tu_backend_name(), "cpu") == 0, "CLI name cpu");
    if (saved != NULL) {
        setenv("NVLM_BACKEND", keep, 1);
    }

    /* Every mention of NVLM_BACKEND in src/ and include/ is an enum value (NVLM_BACKEND_...). */
    FILE *p = popen("grep -rnw NVLM_BACKEND src include", "r");
    CHECK(p != NULL, "popen grep");
    if (p != NULL) {
        char line[512];
        int hits = 0;
        while (fgets(line, sizeof line, p) != NULL) {
            printf("  library reads NVLM_BACKEND? %s", line);
            hits++;
        }
        pclose(p);
        CHECK(hits == 0, "src/ and include/ never name NVLM_BACKEND (%d lines)",
              hits);
    }
}

int main(void)
{
    tu_section("version");
    CHECK(strcmp(nvlm_version(), NVLM_VERSION_STRING) == 0, "nvlm_version %s", nvlm_version());
    CHECK_EQ_INT(nvlm_version_number(), NVLM_VERSION_NUMBER, "version number");

    tu_section("status strings");
    for (int s = 0; s <= NVLM_ERR_BUSY; s++) {
        CHECK(strcmp(nvlm_status_str((nvlm_status)s), "unknown status") != 0, "status %d named", s);
    }
    CHECK_EQ_INT(NVLM_ERR_BUSY, 15, "NVLM_ERR_BUSY is pinned at 15");
    CHECK(strcmp(nvlm_status_str(NVLM_ERR_BUSY), "session busy") == 0, "NVLM_ERR_BUSY named");
    CHECK(strcmp(nvlm_status_str((nvlm_status)999), "unknown status") == 0, "unknown status");

    tu_section("context");
    nvlm_context *ctx = NULL;
    CHECK_EQ_INT(nvlm_context_create(NULL, NULL), NVLM_ERR_INVALID_ARGUMENT, "NULL out");
    CHECK_OK(nvlm_context_create(NULL, &ctx));
    CHECK(ctx != NULL, "context created with NULL params");
    /* auto, deliberately: CUDA where the plugin finds a device, else the CPU */
    const bool have_gpu = nvlm_backend_probe(NVLM_BACKEND_CUDA, 0, NULL, 0) == NVLM_OK;
    CHECK_EQ_INT(nvlm_context_backend(ctx), have_gpu ? NVLM_BACKEND_CUDA : NVLM_BACKEND_CPU,
                 "AUTO resolves to CUDA with a device, else to the CPU");
    CHECK(strcmp(nvlm_last_error(ctx), "") == 0, "no error text after success");
    CHECK(strcmp(nvlm_last_error(NULL), "") == 0, "NULL handle");
    uint32_t junk[300] = {0};
    CHECK(strcmp(nvlm_last_error(junk), "invalid handle") == 0, "junk handle");
    nv_error(ctx, NVLM_ERR_IO, "x=%d", 42);
    CHECK(strcmp(nvlm_last_error(ctx), "x=42") == 0, "error text set");
    nvlm_context_free(ctx);
    nvlm_context_free(NULL);

    tu_section("params struct_size");
    nvlm_context_params p;
    nvlm_context_default_params(&p);
    CHECK_EQ_INT(p.struct_size, sizeof p, "struct_size");
    CHECK_EQ_INT(p.log_level, NVLM_LOG_WARN, "default log level");
    p.struct_size = 2;
    CHECK_EQ_INT(nvlm_context_create(&p, &ctx), NVLM_ERR_INVALID_ARGUMENT, "tiny struct_size");
    /* An older, shorter struct: only n_threads and backend are read; the rest is default. */
    nvlm_context_default_params(&p);
    p.struct_size = (uint32_t)offsetof(nvlm_context_params, device);
    p.n_threads = 3;
    p.log_fn = (nvlm_log_fn)(uintptr_t)1; /* beyond struct_size: must be ignored */
    CHECK_OK(nvlm_context_create(&p, &ctx));
    CHECK_EQ_INT(ctx->n_threads, 3, "n_threads read");
    CHECK(ctx->log_fn == NULL, "fields past struct_size ignored");
    nvlm_context_free(ctx);
    nvlm_context_default_params(&p);
    p.n_threads = -1;
    CHECK_EQ_INT(nvlm_context_create(&p, &ctx), NVLM_ERR_INVALID_ARGUMENT, "negative threads");
    nvlm_context_default_params(&p);
    p.backend = NVLM_BACKEND_CUDA;
    nvlm_status st = nvlm_context_create(&p, &ctx);
    CHECK(st == NVLM_ERR_NO_DEVICE || st == NVLM_OK, "CUDA request: NO_DEVICE without a GPU");
    if (st == NVLM_OK) {
        nvlm_context_free(ctx);
    }

    tu_section("allocator hooks");
    nvlm_context_default_params(&p);
    p.alloc_fn = count_alloc;
    CHECK_EQ_INT(nvlm_context_create(&p, &ctx), NVLM_ERR_INVALID_ARGUMENT, "partial hooks");
    p.realloc_fn = count_realloc;
    p.free_fn = count_free;
    CHECK_OK(nvlm_context_create(&p, &ctx));
    CHECK(n_allocs == 1, "context allocated through the hook (%d)", n_allocs);
    void *q = nv_malloc(ctx, 100);
    CHECK(q != NULL && n_allocs == 2, "nv_malloc uses the hook");
    nv_free(ctx, q);
    CHECK(nv_calloc(ctx, SIZE_MAX / 2, 4) == NULL, "calloc overflow refused");
    nvlm_context_free(ctx);
    n_allocs = 0;
    fail_at = 0;
    CHECK_EQ_INT(nvlm_context_create(&p, &ctx), NVLM_ERR_OUT_OF_MEMORY, "failing allocator");
    fail_at = -1;

    tu_section("bf16/f16");
    CHECK(nv_f32_to_bf16(1.0f) == 0x3f80, "bf16 1.0");
    CHECK(nv_f32_to_bf16(nv_bf16_to_f32(0x3f81)) == 0x3f81, "bf16 round trip");
    CHECK(nv_f32_to_bf16(1.00390625f) == 0x3f80, "bf16 ties to even (down)");
    CHECK(nv_f32_to_bf16(1.01171875f) == 0x3f82, "bf16 ties to even (up)");
    CHECK(nv_f16_to_f32(0x3c00) == 1.0f, "f16 1.0");
    CHECK(nv_f16_to_f32(0x0001) == 5.9604644775390625e-08f, "f16 smallest subnormal");
    CHECK(nv_f32_to_f16(65504.0f) == 0x7bff, "f16 max");
    CHECK(nv_f32_to_f16(1e6f) == 0x7c00, "f16 overflow to inf");
    int bad = 0;
    for (uint32_t h = 0; h < 0x7c00; h++) {
        bad += nv_f32_to_f16(nv_f16_to_f32((uint16_t)h)) != h;
    }
    CHECK(bad == 0, "f16 round trip over all finite positives (%d bad)", bad);
    test_backend_pinning();
    return tu_done();
}
