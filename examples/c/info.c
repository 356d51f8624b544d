/*
 * info.c - smallest nvlm consumer: load a model directory (config-only, or with its weights)
 * and print what nvlm_model_get_info reports. Uses only the public API.
 *
 *   cc info.c $(pkg-config --cflags --libs nvlm) -o info
 *   ./info MODEL_DIR [--full]
 */
#include <nvlm/nvlm.h>

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [--full]\n", argv[0]);
        return 2;
    }
    int full = argc > 2 && strcmp(argv[2], "--full") == 0;

    nvlm_context *ctx = NULL;
    nvlm_status st = nvlm_context_create(NULL, &ctx);
    if (st != NVLM_OK) {
        fprintf(stderr, "context: %s\n", nvlm_status_str(st));
        return 1;
    }
    nvlm_model_params mp;
    nvlm_model_default_params(&mp);
    mp.mode = full ? NVLM_LOAD_FULL : NVLM_LOAD_CONFIG_ONLY;
    nvlm_model *model = NULL;
    st = nvlm_model_load(ctx, argv[1], &mp, &model);
    if (st != NVLM_OK) {
        fprintf(stderr, "load %s: %s: %s\n", argv[1], nvlm_status_str(st), nvlm_last_error(ctx));
        nvlm_context_free(ctx);
        return 1;
    }
    nvlm_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    nvlm_model_get_info(model, &info);
    printf("nvlm %s\n", nvlm_version());
    printf("vision_hidden_size %d\n", info.vision_hidden_size);
    printf("vision_num_hidden_layers %d\n", info.vision_num_hidden_layers);
    printf("vision_num_dummy_heads %d\n", info.vision_num_dummy_heads);
    printf("llm_hidden_size %d\n", info.llm_hidden_size);
    printf("llm_num_hidden_layers %d\n", info.llm_num_hidden_layers);
    printf("vocab_size %d\n", info.vocab_size);
    printf("n_params %llu\n", (unsigned long long)info.n_params);
    printf("weight_bytes %llu\n", (unsigned long long)info.weight_bytes);
    printf("weights_loaded %d\n", info.weights_loaded);
    nvlm_model_free(model);
    nvlm_context_free(ctx);
    return 0;
}
