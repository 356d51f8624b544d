/*
 * test_projector.c - pixel shuffle v2 + mlp1 on the tiny model against the reference goldens:
 * case2's vit_out -> pixel_shuffle_out and proj_out; case1's stored vit_out tiles (0 and 6)
 * -> their rows of proj_out (tiles are independent). atol 1e-4, rtol 1e-4.
 */
#include "eng_golden.h"

static void run_case(nv_engine *e, nv_exec *ex, nvlm_context *ctx, const char *name)
{
    nv_st_file *f = eg_open(ctx, name);
    const nv_tensor *vo = eg_tensor(f, "vit_out", NV_F32);
    const nv_tensor *vi = eg_tensor(f, "vit_out_tile_index", NV_I64);
    const nv_tensor *po = eg_tensor(f, "proj_out", NV_F32);
    const nv_weight *ps = f != NULL ? nv_st_find(f, "pixel_shuffle_out") : NULL;
    if (vo == NULL || vi == NULL || po == NULL) {
        nv_st_close(f);
        return;
    }
    const vit_weights *v = &e->vit;
    const proj_weights *w = &e->proj;
    int T = (int)vo->shape[0];
    size_t in_n = (size_t)T * v->n_patches * v->D;
    size_t rows = (size_t)T * v->n_patches / 4;
    nv_arena ar = {.ex = ex};
    CHECK_OK(nv_arena_reserve(&ar, nv_arena_size(rows * w->out) + nv_arena_size(in_n) +
                                       proj_arena_bytes(w, v, T)));
    float *out = nv_arena_floats(&ar, rows * w->out);
    float *vit = nv_arena_floats(&ar, in_n);
    memcpy(vit, vo->data, in_n * sizeof(float));
    float *shuf = malloc(rows * w->in * sizeof(float));
    CHECK_OK(proj_forward(ex, &ar, w, v, vit, T, out, shuf));
    char what[96];
    if (ps != NULL && out != NULL) {
        snprintf(what, sizeof what, "%s pixel_shuffle_out", name);
        eg_close(what, shuf, ps->t.data, rows * w->in, 1e-4);
    }
    const int64_t *idx = vi->data;
    size_t per = (size_t)v->n_patches / 4 * w->out;
    for (int i = 0; i < T && out != NULL; i++) {
        snprintf(what, sizeof what, "%s proj_out tile %lld", name, (long long)idx[i]);
        eg_close(what, out + (size_t)i * per, (const float *)po->data + (size_t)idx[i] * per,
                 per, 1e-4);
    }
    free(shuf);
    nv_arena_release(&ar);
    nv_st_close(f);
}

int main(void)
{
    nvlm_context *ctx = NULL;
    nvlm_model *m = eg_load_model(&ctx, 2);
    nv_engine *e = m != NULL ? m->engine : NULL;
    if (e != NULL) {
        tu_section("projector: shapes");
        CHECK_EQ_INT(e->proj.in, 256, "mlp1 input (4 x 64)");
        CHECK_EQ_INT(e->proj.hidden, 320, "mlp1 hidden");
        CHECK_EQ_INT(e->proj.out, 128, "mlp1 output = llm hidden");
        nv_exec *ex = NULL;
        CHECK_OK(e->be->ops->exec_create(e->be, 2, m, &ex));
        if (ex != NULL) {
            tu_section("projector: case2 (pixel shuffle + mlp1)");
            run_case(e, ex, ctx, "case2_single_tile");
            tu_section("projector: case1 tiles 0 and 6");
            run_case(e, ex, ctx, "case1_multitile");
            e->be->ops->exec_free(ex);
        }
    }
    nvlm_model_free(m);
    nvlm_context_free(ctx);
    return tu_done();
}
