/*
 * test_fp8_emu.cpp - the FP8 kernels of src/cuda/fp8.cu, compiled for the host through the
 * kernel emulation (src/cuda/emu/cuda_host.h: threads as fibers, real barriers and shuffles),
 * against host references and the CPU's FP8 layer (cpu_matmul_fp8) at real NVLM-D-72B shapes.
 *
 * Under the emulation the kernels convert with the CPU's fp8_to_f32 / fp8_from_f32 (on the
 * device: cuda_fp8.h's conversions, checked only on a GPU); what is checked here is everything
 * else: the indexing, the vector and scalar K loops, the split of K over warps and its
 * shuffle + shared-memory reduction, the row guard, the scale and the bias, the per-token
 * amax reduction and quantization, the epilogue's offsets.
 *
 * Bounds (per element, deterministic): the GEMV sums K products in f32 in a fixed tree (each
 * thread K / 2048 chunks of 16 sequential products, 32 lanes, 4 warps), so against the exact
 * sum (double) of the same products its error is below (K / 128 + 8) u sum_k |x_k w_k| with
 * u = 2^-24, plus one rounding each for the scale and the bias: checked as
 * |got - ref| <= 1e-5 * (scale * S + |bias|), S = sum_k |x_k e4m3(q_k)|, against a reference
 * fed the same x (f32, or rounded to bf16 for the bf16 kernel). Against the CPU's FP8 layer
 * with f32 x the bf16 kernel also carries the rounding of x (|dx| <= 2^-9 |x|): bound
 * (2^-9 + 2e-5) * (scale * S + |bias|). The per-token quantization is bit-exact against the
 * CPU's rule, the epilogue within 2 roundings. Each check is shown to fail on a broken kernel
 * (scale dropped, a shuffle or the barrier of the reduction switched off).
 */
#include "cuda/cuda_internal.h"

extern "C" {
#include "cpu/kernels.h"
#include "fp8.h"
#include "testutil.h"
}

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

/* The emulated kernels' grid-size helper (the Makefile renames cuda_blocks in the emulated
 * build; device.cu is not emulated): capped at 512 blocks as in test_cuda_emu, so grid-stride
 * loops run several rounds. */
unsigned cuda_blocks(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    if (b < 1) {
        b = 1;
    }
    return b > 512u ? 512u : (unsigned)b;
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static float bf16r(float v)
{
    return nv_bf16_to_f32(nv_f32_to_bf16(v));
}

/* An FP8 weight quantized by fp8.h's rule from random values whose rows span 2^-6 .. 2^6. */
struct weight {
    int N, K;
    std::vector<uint8_t> q;
    std::vector<float> scale, bias;
    std::vector<float> deq; /* e4m3(q), unscaled */
};

static void make_weight(weight *w, int N, int K)
{
    w->N = N;
    w->K = K;
    std::vector<float> v((size_t)N * K);
    for (int n = 0; n < N; n++) {
        float f = ldexpf(0.05f, n % 13 - 6);
        for (int k = 0; k < K; k++) {
            v[(size_t)n * K + k] = f * frand();
        }
    }
    w->q.resize((size_t)N * K);
    w->scale.resize(N);
    w->bias.resize(N);
    CHECK(fp8_quantize(w->q.data(), w->scale.data(), v.data(), NV_F32, N, K), "quantize");
    for (int n = 0; n < N; n++) {
        w->bias[n] = 0.5f * frand();
    }
    w->deq.resize((size_t)N * K);
    for (size_t i = 0; i < w->q.size(); i++) {
        w->deq[i] = fp8_to_f32(w->q[i]);
    }
}

/* ref[m][n] = scale[n] * sum_k x[m][k] e4m3(q[n][k]) + bias[n] in double, and the bound's
 * magnitude mag[m][n] = scale[n] * sum_k |x e4m3(q)| + |bias[n]|. */
static void reference(const weight *w, const float *x, int M, bool bias, std::vector<double> *ref,
                      std::vector<double> *mag)
{
    ref->assign((size_t)M * w->N, 0.0);
    mag->assign((size_t)M * w->N, 0.0);
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * w->K;
        for (int n = 0; n < w->N; n++) {
            const float *wr = &w->deq[(size_t)n * w->K];
            double s = 0.0;
            double a = 0.0;
            for (int k = 0; k < w->K; k++) {
                double p = (double)xr[k] * wr[k];
                s += p;
                a += fabs(p);
            }
            double b = bias ? w->bias[n] : 0.0;
            (*ref)[(size_t)m * w->N + n] = s * w->scale[n] + b;
            (*mag)[(size_t)m * w->N + n] = a * w->scale[n] + fabs(b);
        }
    }
}

/* The number of elements with |got - want| > tol * mag (NaN counts). */
static size_t over(const float *got, const double *want, const double *mag, size_t n, double tol)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= tol * mag[i] + 1e-30)) {
            bad++;
        }
    }
    return bad;
}

static double rel_l2(const float *got, const float *want, size_t n)
{
    double num = 0.0;
    double den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num) / (den > 0.0 ? sqrt(den) : 1.0);
}

/* Runs the GEMV (f32 x when !bf16, else bf16 x) on M rows; y poisoned with NaN first. */
static cudaError_t gemv(const weight *w, const float *scale, const float *x, int M, bool bias,
                        bool bf16, std::vector<float> *y)
{
    y->assign((size_t)M * w->N, NAN);
    const float *b = bias ? w->bias.data() : NULL;
    if (!bf16) {
        return cuda_fp8_gemv_f32(NULL, y->data(), x, w->q.data(), scale, b, M, w->N, w->K);
    }
    std::vector<__nv_bfloat16> xb((size_t)M * w->K);
    for (size_t i = 0; i < xb.size(); i++) {
        xb[i] = __float2bfloat16_rn(x[i]);
    }
    return cuda_fp8_gemv_bf16(NULL, y->data(), xb.data(), w->q.data(), scale, b, M, w->N, w->K);
}

/* One GEMV case: the kernel against the reference with its own x (tight) and against the CPU's
 * FP8 layer on f32 x. Returns whether the tight check held (for the mutation checks). */
static bool gemv_case(const weight *w, int M, bool bias, bool bf16, bool quiet)
{
    std::vector<float> x((size_t)M * w->K);
    for (float &v : x) {
        v = frand();
    }
    std::vector<float> xr(x);
    if (bf16) {
        for (float &v : xr) {
            v = bf16r(v);
        }
    }
    std::vector<float> y;
    cudaError_t e = gemv(w, w->scale.data(), x.data(), M, bias, bf16, &y);
    std::vector<double> ref, mag;
    reference(w, xr.data(), M, bias, &ref, &mag);
    size_t n = (size_t)M * w->N;
    size_t bad = over(y.data(), ref.data(), mag.data(), n, 1e-5);
    if (quiet) {
        return e == cudaSuccess && bad == 0;
    }
    CHECK(e == cudaSuccess, "gemv M %d N %d K %d launch: %s", M, w->N, w->K, nvemu_message());
    CHECK(bad == 0, "gemv %s x M %d N %d K %d%s vs reference with the same x: %zu of %zu over "
          "1e-5 (scale S + |b|)", bf16 ? "bf16" : "f32", M, w->N, w->K, bias ? " +bias" : "",
          bad, n);
    /* the CPU's FP8 layer on f32 x */
    std::vector<float> cpu(n);
    cpu_matmul_fp8(NULL, cpu.data(), x.data(), w->q.data(), w->scale.data(),
                   bias ? w->bias.data() : NULL, M, w->N, w->K);
    std::vector<double> cpud(cpu.begin(), cpu.end());
    double tol = bf16 ? ldexp(1.0, -9) + 2e-5 : 2e-5;
    size_t bad_cpu = over(y.data(), cpud.data(), mag.data(), n, tol);
    CHECK(bad_cpu == 0, "gemv %s x M %d N %d K %d vs cpu_matmul_fp8 (f32 x): %zu of %zu over "
          "%.3g (scale S + |b|); rel L2 %.3g", bf16 ? "bf16" : "f32", M, w->N, w->K, bad_cpu, n,
          tol, rel_l2(y.data(), cpu.data(), n));
    return e == cudaSuccess && bad == 0;
}

/* Negative controls: the same checks reject a GEMV given unit scales, and one whose reduction
 * has a shuffle or the barrier switched off (every such site of fp8.cu executed, one at a
 * time). */
struct site_list {
    std::vector<int> lines;
    std::vector<int> kinds;
    const site_list *skip; /* lines already listed */
};

static void collect(const ::nvemu::site *s, void *arg)
{
    site_list *l = (site_list *)arg;
    size_t n = strlen(s->file);
    if (n < 7 || strcmp(s->file + n - 7, "/fp8.cu") != 0 || s->hits == 0) {
        return;
    }
    const site_list *lists[2] = {l, l->skip};
    for (int j = 0; j < 2; j++) {
        if (lists[j] == NULL) {
            continue;
        }
        for (int line : lists[j]->lines) {
            if (line == s->line) {
                return;
            }
        }
    }
    l->lines.push_back(s->line);
    l->kinds.push_back(s->kind);
}

static site_list g_gemv_sites;

static void mutations(void)
{
    tu_section("fp8 emu: the checks fail on broken kernels");
    weight w;
    make_weight(&w, 40, 4096);
    CHECK(gemv_case(&w, 1, true, false, true), "control: the unbroken small case passes");
    /* scale dropped */
    std::vector<float> ones(w.N, 1.0f);
    std::vector<float> x(w.K);
    for (float &v : x) {
        v = frand();
    }
    std::vector<float> y;
    gemv(&w, ones.data(), x.data(), 1, true, false, &y);
    std::vector<double> ref, mag;
    reference(&w, x.data(), 1, true, &ref, &mag);
    CHECK(over(y.data(), ref.data(), mag.data(), (size_t)w.N, 1e-5) > 0,
          "a GEMV without the row scales fails the check");
    site_list &sites = g_gemv_sites;
    sites.skip = NULL;
    nvemu_sites(collect, &sites);
    int n_shfl = 0;
    int n_bar = 0;
    for (size_t i = 0; i < sites.lines.size(); i++) {
        int line = sites.lines[i];
        if (nvemu_mutate("fp8.cu", line, false) <= 0) {
            continue;
        }
        bool ok = true;
        for (int M = 1; M <= 3 && ok; M += 2) {
            ok = gemv_case(&w, M, true, M > 1, true);
        }
        nvemu_mutate_clear();
        if (sites.kinds[i] == ::nvemu::SITE_SHUFFLE) {
            n_shfl++;
        } else if (sites.kinds[i] == ::nvemu::SITE_BARRIER) {
            n_bar++;
        }
        CHECK(!ok, "fp8.cu:%d (%s) switched off: the GEMV check fails", line,
              sites.kinds[i] == ::nvemu::SITE_SHUFFLE ? "shuffle" : "barrier");
    }
    CHECK(n_shfl >= 1 && n_bar >= 1, "mutated %d shuffle and %d barrier sites of fp8.cu",
          n_shfl, n_bar);
}

/* Per-token quantization (bit-exact against the CPU's rule) and the epilogue. */
static void quant_epilogue(int M, int N, int K)
{
    tu_section("fp8 emu: per-token activation quantization + scale epilogue");
    weight w;
    make_weight(&w, N, K);
    std::vector<float> x((size_t)M * K);
    for (int m = 0; m < M; m++) {
        float amp = ldexpf(1.0f, m % 9 - 4);
        for (int k = 0; k < K; k++) {
            x[(size_t)m * K + k] = m == 1 ? 0.0f : amp * frand(); /* row 1: all zero */
        }
    }
    std::vector<uint8_t> xq((size_t)M * K, 0x7f);
    std::vector<float> as(M, NAN);
    cudaError_t e = cuda_fp8_quant_rows(NULL, xq.data(), as.data(), x.data(), M, K);
    CHECK(e == cudaSuccess, "quant_rows launch: %s", nvemu_message());
    size_t bad_s = 0;
    size_t bad_q = 0;
    for (int m = 0; m < M; m++) {
        float mx = 0.0f;
        for (int k = 0; k < K; k++) {
            mx = fmaxf(mx, fabsf(x[(size_t)m * K + k]));
        }
        float s = mx > 0.0f ? mx / 448.0f : 1.0f;
        bad_s += !(as[m] == s);
        for (int k = 0; k < K; k++) {
            bad_q += xq[(size_t)m * K + k] != fp8_from_f32(x[(size_t)m * K + k] / s);
        }
    }
    CHECK(bad_s == 0, "M %d K %d: %zu row scales differ from max |x| / 448", M, K, bad_s);
    CHECK(bad_q == 0, "M %d K %d: %zu codes differ from E4M3(x / scale)", M, K, bad_q);
    /* cuBLASLt's part on the host: acc = codes x codes in double, rounded to f32 */
    std::vector<float> acc((size_t)M * N);
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                s += (double)fp8_to_f32(xq[(size_t)m * K + k]) * w.deq[(size_t)n * K + k];
            }
            acc[(size_t)m * N + n] = (float)s;
        }
    }
    /* the widening path's use: column blocks of nc into y (ld N) from a packed acc block */
    int nc = N / 3 + 5;
    std::vector<float> y((size_t)M * N, NAN);
    bool launched = true;
    for (int n0 = 0; n0 < N; n0 += nc) {
        int c = N - n0 < nc ? N - n0 : nc;
        std::vector<float> blk((size_t)M * c);
        for (int m = 0; m < M; m++) {
            memcpy(&blk[(size_t)m * c], &acc[(size_t)m * N + n0], (size_t)c * sizeof(float));
        }
        launched &= cuda_fp8_epilogue(NULL, y.data(), N, n0, blk.data(), c, as.data(),
                                      w.scale.data(), w.bias.data(), M) == cudaSuccess;
    }
    CHECK(launched, "epilogue launches");
    size_t bad = 0;
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double want = (double)acc[(size_t)m * N + n] * as[m] * w.scale[n] + w.bias[n];
            double d = fabs(y[(size_t)m * N + n] - want);
            bad += !(d <= 3.0 * ldexp(fabs(want) + fabs(w.bias[n]), -24));
        }
    }
    CHECK(bad == 0, "epilogue (column blocks of %d): %zu of %d elements off acc * a * w + b",
          nc, bad, M * N);
    /* the whole FAST path against the CPU's FP8 layer on f32 x: E4M3 activations cost ~2.5 %
     * (relative L2; numpy: 2.5-2.7 % for uniform and normal x at K = 80 .. 8192) */
    std::vector<float> cpu((size_t)M * N);
    cpu_matmul_fp8(NULL, cpu.data(), x.data(), w.q.data(), w.scale.data(), w.bias.data(), M, N,
                   K);
    double r = rel_l2(y.data(), cpu.data(), (size_t)M * N);
    CHECK(r <= 4e-2 && r >= 1e-3, "E4M3 activations x E4M3 weights vs cpu_matmul_fp8: rel L2 "
          "%.3g (expected ~2.5e-2)", r);
    /* dropping the activation scale fails */
    std::vector<float> y2((size_t)M * N);
    cuda_fp8_epilogue(NULL, y2.data(), N, 0, acc.data(), N, NULL, w.scale.data(),
                      w.bias.data(), M);
    CHECK(rel_l2(y2.data(), cpu.data(), (size_t)M * N) > 0.5,
          "without the activation scales the result is far off (rel L2 %.3g)",
          rel_l2(y2.data(), cpu.data(), (size_t)M * N));
}

/* The quantization kernel's amax reduction with a shuffle or its barrier off: the row scales
 * (and so the codes) no longer match the CPU's rule. */
static void quant_mutations(void)
{
    tu_section("fp8 emu: the quantization check fails on a broken kernel");
    site_list sites;
    sites.skip = &g_gemv_sites;
    nvemu_sites(collect, &sites);
    const int M = 3;
    const int K = 1000;
    std::vector<float> x((size_t)M * K);
    for (size_t i = 0; i < x.size(); i++) {
        x[i] = frand() * (float)(1 + (int)(i % 97)); /* the row maxima far from each other */
    }
    int n = 0;
    for (size_t i = 0; i < sites.lines.size(); i++) {
        if (nvemu_mutate("fp8.cu", sites.lines[i], false) <= 0) {
            continue;
        }
        std::vector<uint8_t> xq((size_t)M * K);
        std::vector<float> as(M, NAN);
        cuda_fp8_quant_rows(NULL, xq.data(), as.data(), x.data(), M, K);
        nvemu_mutate_clear();
        size_t bad = 0;
        for (int m = 0; m < M; m++) {
            float mx = 0.0f;
            for (int k = 0; k < K; k++) {
                mx = fmaxf(mx, fabsf(x[(size_t)m * K + k]));
            }
            bad += !(as[m] == mx / 448.0f);
        }
        n++;
        CHECK(bad > 0, "fp8.cu:%d switched off: %zu of %d row scales wrong", sites.lines[i], bad,
              M);
    }
    CHECK(n >= 2, "mutated %d sites of the quantization kernel", n);
}

/* E4M3 -> bf16 widening: every code except NaN, exact. */
static void widen(void)
{
    tu_section("fp8 emu: E4M3 -> bf16 widening");
    std::vector<uint8_t> q(256 * 17);
    for (size_t i = 0; i < q.size(); i++) {
        q[i] = (uint8_t)(i * 37u);
    }
    std::vector<__nv_bfloat16> out(q.size());
    CHECK(cuda_fp8_to_bf16(NULL, out.data(), q.data(), q.size()) == cudaSuccess, "launch");
    size_t bad = 0;
    for (size_t i = 0; i < q.size(); i++) {
        float want = fp8_to_f32(q[i]);
        float got = __bfloat162float(out[i]);
        if ((q[i] & 0x7f) == 0x7f) {
            bad += !isnan(got);
        } else {
            bad += !(got == want);
        }
    }
    CHECK(bad == 0, "%zu of %zu widened codes differ", bad, q.size());
}

int main(int argc, char **argv)
{
    bool small = false;
#ifdef NVLM_EMU_SMALL
    small = true; /* the sanitizer build */
#endif
    for (int i = 1; i < argc; i++) {
        small |= strcmp(argv[i], "--small") == 0;
    }
    tu_section(small ? "fp8 emu: decode GEMV (small shapes)"
                     : "fp8 emu: decode GEMV at NVLM-D-72B shapes");
    if (small) {
        weight w;
        make_weight(&w, 70, 512);
        gemv_case(&w, 1, true, false, false);
        gemv_case(&w, 6, true, true, false);
    } else {
        weight w; /* q/o_proj: N = K = 8192 */
        make_weight(&w, 8192, 8192);
        gemv_case(&w, 1, true, false, false);
        gemv_case(&w, 2, false, true, false);
    }
    if (!small) {
        weight w; /* k/v_proj at TP 1: N = 1024, K = 8192 */
        make_weight(&w, 1024, 8192);
        gemv_case(&w, 5, true, true, false);
        gemv_case(&w, 8, true, true, false);
    }
    if (!small) {
        weight w; /* down_proj: N = 8192, K = 29568 (a fifth of the rows) */
        make_weight(&w, 1640, 29568);
        gemv_case(&w, 1, false, false, false);
    }
    {
        weight w; /* odd shapes: N not a multiple of the rows per block, K % 16 != 0 */
        make_weight(&w, 37, 200);
        gemv_case(&w, 1, true, false, false);
        gemv_case(&w, 3, true, true, false);
        make_weight(&w, 33, 72);
        gemv_case(&w, 4, true, true, false);
    }
    /* the small cases again with the threads of a block taking turns in other orders (a
     * missing barrier often shows under one order only) */
    static const int orders[2] = {NVEMU_SCHED_WARP_FIRST, NVEMU_SCHED_REVERSE};
    for (int i = 0; i < 2; i++) {
        tu_section(i == 0 ? "fp8 emu: GEMV, a warp's lanes first" : "fp8 emu: GEMV, reverse order");
        nvemu_schedule(orders[i]);
        weight w;
        make_weight(&w, 37, 512);
        gemv_case(&w, 1, true, false, false);
        gemv_case(&w, 3, true, true, false);
        make_weight(&w, 33, 72);
        gemv_case(&w, 2, true, true, false);
    }
    nvemu_schedule(NVEMU_SCHED_IN_ORDER);
    mutations(); /* before the other kernels run: only the GEMV's sites are listed */
    quant_epilogue(small ? 5 : 19, small ? 40 : 96, small ? 256 : 1024);
    nvemu_schedule(NVEMU_SCHED_REVERSE);
    quant_epilogue(4, 40, 300);
    nvemu_schedule(NVEMU_SCHED_IN_ORDER);
    quant_mutations();
    widen();
    return tu_done();
}
