/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader (nv_st_parse) and, on the
 * same bytes, the config.json parser (nv_config_parse). `make fuzz FUZZ_SECONDS=60`.
 * Any accepted file must satisfy the reader's promises: names findable, tensors sorted by
 * offset, byte counts = dtype x shape, all inside the buffer and covering the data area.
 */
#include "model.h"
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

static nvlm_context *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    nvlm_context_params cp; /* parsing only: the CPU, never the plugin (auto) */
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    if (nvlm_context_create(&cp, &ctx) != NVLM_OK) {
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nv_st_file *f = NULL;
    if (nv_st_parse(ctx, data, size, "fuzz", ctx, &f) == NVLM_OK) {
        uint64_t total = 0;
        const uint8_t *end = data + size;
        for (size_t i = 0; i < nv_st_count(f); i++) {
            const nv_weight *w = nv_st_at(f, i);
            uint64_t n = nv_st_nbytes(w);
            const uint8_t *p = w->t.data;
            if (nv_st_find(f, w->name) != w || p < data || p > end || n > (uint64_t)(end - p)) {
                abort();
            }
            if (i > 0 && (const uint8_t *)nv_st_at(f, i - 1)->t.data > p) {
                abort();
            }
            total += n;
        }
        if (total != nv_st_data_bytes(f)) {
            abort();
        }
        nv_st_close(f);
    } else if (f != NULL || nvlm_last_error(ctx)[0] == '\0') {
        abort(); /* a failure must leave no file and a message */
    }
    nv_config cfg;
    nv_config_parse(&cfg, (const char *)data, size, ctx);
    return 0;
}
