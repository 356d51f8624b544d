/*
 * test_vecmath.c - the CPU backend's vector math (src/cpu/vecmath.c) against libm in double:
 * exp (ulp error over a dense sweep of the whole f32 range incl. denormal results), erf
 * (absolute error over a dense sweep), GELU / SiLU / softmax pieces / norm sums, special values
 * (0, -0, +-inf, NaN, large +-x, denormal inputs), every length 0..40 (vector tails), and every
 * SIMD path this CPU supports forced through vm_ops_path, compared with each other.
 */
#include "cpu/vecmath.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Distance in ulps between a float and the exact value, measured in f32 ulps at `exact`. */
static double ulp_err(float got, double exact)
{
    if (isinf(exact) || isinf(got)) {
        return (isinf(got) && isinf(exact) && (got > 0) == (exact > 0)) ? 0.0 : 1e30;
    }
    double a = fabs(exact);
    double ulp;
    if (a < 1.1754943508222875e-38) {
        ulp = 1.4012984643248171e-45; /* denormal spacing */
    } else {
        int e;
        frexp(a, &e);
        ulp = ldexp(1.0, e - 24);
    }
    return fabs((double)got - exact) / ulp;
}

static const vm_ops *paths[MM_SIMD_COUNT];
static int n_paths;

static void test_exp(const vm_ops *o)
{
    tu_section(o->name);
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x);
    float *y = malloc(N * sizeof *y);
    /* dense sweep over [-104, 89], every result from denormal to overflow */
    double worst = 0, at = 0;
    for (int i = 0; i < N; i++) {
        x[i] = (float)(-104.0 + 193.0 * i / (N - 1));
    }
    o->exp(y, x, N);
    for (int i = 0; i < N; i++) {
        double ref = exp((double)x[i]);
        double e = ulp_err(y[i], isinf((float)ref) ? INFINITY : ref);
        if (e > worst) {
            worst = e;
            at = x[i];
        }
    }
    CHECK(worst <= 2.0, "%s exp: %.2f ulp at x = %.9g", o->name, worst, at);
    /* finer sweep of the softmax range [-20, 0] and around 0 */
    worst = 0;
    for (int i = 0; i < N; i++) {
        x[i] = (float)(-20.0 * i / (N - 1));
    }
    o->exp(y, x, N);
    for (int i = 0; i < N; i++) {
        worst = fmax(worst, ulp_err(y[i], exp((double)x[i])));
    }
    CHECK(worst <= 2.0, "%s exp [-20, 0]: %.2f ulp", o->name, worst);
    float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e30f, -1e30f, 88.72f, 88.73f,
                  -87.3f, -103.9f, -104.5f, 1e-45f, -1e-45f, 1e-39f, 3.4e38f, -3.4e38f};
    size_t ns = NV_ARRAY_LEN(sp);
    float ys[NV_ARRAY_LEN(sp)];
    o->exp(ys, sp, ns);
    for (size_t i = 0; i < ns; i++) {
        double ref = exp((double)sp[i]);
        if (isnan(sp[i])) {
            CHECK(isnan(ys[i]), "%s exp(NaN) = %g", o->name, ys[i]);
        } else {
            double want = (double)(float)ref; /* overflow to inf as f32 */
            CHECK(ulp_err(ys[i], isinf(want) ? INFINITY : ref) <= 2.0,
                  "%s exp(%g) = %g, want %g", o->name, sp[i], ys[i], ref);
        }
    }
    free(x);
    free(y);
}

static void test_erf(const vm_ops *o)
{
    enum { N = 1 << 21 };
    float *x = malloc(N * sizeof *x);
    float *y = malloc(N * sizeof *y);
    float *g = malloc(N * sizeof *g);
    for (int i = 0; i < N; i++) {
        x[i] = (float)(-6.0 + 12.0 * i / (N - 1));
    }
    o->erf(y, x, N);
    double worst = 0, worst_f = 0, at = 0;
    for (int i = 0; i < N; i++) {
        double e = fabs((double)y[i] - erf((double)x[i]));
        if (e > worst) {
            worst = e;
            at = x[i];
        }
        worst_f = fmax(worst_f, fabs((double)y[i] - erff(x[i])));
    }
    CHECK(worst <= 1.5e-7, "%s erf: abs error %.3g at x = %.9g", o->name, worst, at);
    CHECK(worst_f <= 2e-7, "%s erf vs erff: %.3g", o->name, worst_f);
    /* small |x|: relative accuracy (erf(x) ~ 2x/sqrt(pi)), denormal inputs included */
    float sx[] = {1e-3f, -1e-5f, 1e-20f, 1e-38f, 1e-40f, -1e-45f};
    float sy[NV_ARRAY_LEN(sx)];
    o->erf(sy, sx, NV_ARRAY_LEN(sx));
    for (size_t i = 0; i < NV_ARRAY_LEN(sx); i++) {
        double ref = erf((double)sx[i]);
        CHECK(fabs(sy[i] - ref) <= fmax(4e-7 * fabs(ref), 2e-45), "%s erf(%g) = %.9g, want %.9g",
              o->name, sx[i], sy[i], ref);
    }
    float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 10.0f, -10.0f, 1e30f, -1e30f, 3.9f};
    float ys[NV_ARRAY_LEN(sp)];
    o->erf(ys, sp, NV_ARRAY_LEN(sp));
    CHECK(ys[0] == 0.0f && !signbit(ys[0]), "%s erf(0) = %g", o->name, ys[0]);
    CHECK(ys[1] == 0.0f && signbit(ys[1]), "%s erf(-0) = %g", o->name, ys[1]);
    CHECK(ys[2] == 1.0f && ys[3] == -1.0f, "%s erf(+-inf) = %g %g", o->name, ys[2], ys[3]);
    CHECK(isnan(ys[4]), "%s erf(NaN) = %g", o->name, ys[4]);
    CHECK(ys[5] == 1.0f && ys[6] == -1.0f && ys[7] == 1.0f && ys[8] == -1.0f,
          "%s erf(large) = %g %g %g %g", o->name, ys[5], ys[6], ys[7], ys[8]);
    CHECK(fabs(ys[9] - erf(3.9)) <= 1e-7, "%s erf(3.9) = %.9g", o->name, ys[9]);
    /* GELU = 0.5 x (1 + erf(x / sqrt 2)) against double */
    o->gelu(g, x, N);
    worst = 0;
    for (int i = 0; i < N; i++) {
        double v = x[i];
        double ref = 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
        worst = fmax(worst, fabs(g[i] - ref) / fmax(1.0, fabs(ref)));
    }
    CHECK(worst <= 1e-6, "%s gelu: error %.3g", o->name, worst);
    free(x);
    free(y);
    free(g);
}

static void test_silu_softmax(const vm_ops *o)
{
    enum { N = 100003 };
    float *g = malloc(N * sizeof *g);
    float *u = malloc(N * sizeof *u);
    float *y = malloc(N * sizeof *y);
    for (int i = 0; i < N; i++) {
        g[i] = (float)(-120.0 + 240.0 * i / (N - 1));
        u[i] = (float)(0.5 + (i % 7) * 0.25);
    }
    o->silu_mul(y, g, u, N);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double v = g[i];
        double ref = v / (1.0 + exp(-v)) * u[i];
        worst = fmax(worst, fabs(y[i] - ref) / fmax(1e-30, fabs(ref)));
    }
    CHECK(worst <= 1e-6, "%s silu: rel error %.3g", o->name, worst);
    /* softmax pieces on every length 1..40 and one long row */
    for (int n = 1; n <= 41; n++) {
        int len = n == 41 ? 5000 : n;
        for (int i = 0; i < len; i++) {
            y[i] = (float)(sin(i * 1.7 + n) * 12.0);
        }
        double m = y[0];
        for (int i = 1; i < len; i++) {
            m = fmax(m, y[i]);
        }
        float mv = o->max(y, (size_t)len);
        CHECK(mv == (float)m, "%s max n=%d: %g vs %g", o->name, len, mv, m);
        double s = 0;
        for (int i = 0; i < len; i++) {
            s += exp((double)y[i] - m);
        }
        float sum = o->exp_sum(y + 1, (size_t)len - 1, mv); /* y[0] kept as the input */
        double ref0 = exp((double)(y[0] - mv));
        sum += o->exp_sum(y, 1, mv);
        CHECK(fabs(sum - s) <= 1e-5 * s, "%s exp_sum n=%d: %.9g vs %.9g", o->name, len, sum, s);
        CHECK(ulp_err(y[0], ref0) <= 2.0, "%s exp_sum store", o->name);
        o->scale(y, (size_t)len, 2.0f);
        CHECK(ulp_err(y[0], 2.0 * ref0) <= 2.0, "%s scale", o->name);
    }
    free(g);
    free(u);
    free(y);
}

static void test_norm_sums(const vm_ops *o)
{
    float x[37], w[37], b[37], y[37], yp[37];
    const vm_ops *p = vm_ops_path(MM_PORTABLE);
    for (int n = 0; n <= 37; n++) {
        for (int i = 0; i < n; i++) {
            x[i] = (float)(cos(i * 0.9 + n) * 3.0 + 0.25);
            w[i] = (float)(1.0 + 0.01 * i);
            b[i] = (float)(0.001 * i - 0.01);
        }
        double s = 0, ss = 0;
        for (int i = 0; i < n; i++) {
            s += x[i];
            ss += (double)x[i] * x[i];
        }
        float mean = n > 0 ? (float)(s / n) : 0.0f;
        double sd = 0;
        for (int i = 0; i < n; i++) {
            sd += ((double)x[i] - mean) * ((double)x[i] - mean);
        }
        CHECK(fabs(o->sum(x, (size_t)n) - s) <= 1e-12 * (1 + fabs(s)), "%s sum n=%d", o->name, n);
        CHECK(fabs(o->sumsq(x, (size_t)n) - ss) <= 1e-12 * (1 + ss), "%s sumsq n=%d", o->name, n);
        CHECK(fabs(o->sqdev(x, (size_t)n, mean) - sd) <= 1e-12 * (1 + sd), "%s sqdev n=%d",
              o->name, n);
        double dref = 0;
        for (int i = 0; i < n; i++) {
            dref += (double)x[i] * w[i];
        }
        float d = o->dot(x, w, (size_t)n);
        CHECK(fabs(d - dref) <= 1e-6 * (1 + fabs(dref)), "%s dot n=%d: %.9g vs %.9g", o->name,
              n, d, dref);
        memcpy(y, b, sizeof b);
        o->axpy(y, 0.75f, x, (size_t)n);
        bool ok = true;
        for (int i = 0; i < 37; i++) {
            double want = i < n ? b[i] + 0.75 * x[i] : b[i];
            ok = ok && fabs(y[i] - want) <= 1e-6 * (1 + fabs(want));
        }
        CHECK(ok, "%s axpy n=%d", o->name, n);
        /* the apply steps are the same f32 operations as the portable path: bitwise equal */
        o->rms_apply(y, x, w, 0.37f, (size_t)n);
        p->rms_apply(yp, x, w, 0.37f, (size_t)n);
        CHECK(n == 0 || memcmp(y, yp, (size_t)n * sizeof(float)) == 0, "%s rms_apply n=%d",
              o->name, n);
        o->ln_apply(y, x, w, b, mean, 0.37f, (size_t)n);
        p->ln_apply(yp, x, w, b, mean, 0.37f, (size_t)n);
        CHECK(n == 0 || memcmp(y, yp, (size_t)n * sizeof(float)) == 0, "%s ln_apply n=%d",
              o->name, n);
    }
}

/* Tails: every length 0..40 gives the same per-element values as one long call, on every
 * path, and elements past n are never written. */
static void test_tails(const vm_ops *o)
{
    float x[48], full[48], y[48];
    for (int i = 0; i < 48; i++) {
        x[i] = (float)(i * 0.37 - 8.0);
    }
    o->gelu(full, x, 48);
    for (int n = 0; n <= 40; n++) {
        for (int i = 0; i < 48; i++) {
            y[i] = -7.0f;
        }
        o->gelu(y, x, (size_t)n);
        bool ok = true;
        for (int i = 0; i < 48; i++) {
            ok = ok && (i < n ? y[i] == full[i] : y[i] == -7.0f);
        }
        CHECK(ok, "%s gelu tail n=%d", o->name, n);
    }
}

/* The vector paths against each other: the same functions within 2 ulp (exp) / 2e-7 (erf). */
static void test_paths_agree(void)
{
    tu_section("paths agree");
    enum { N = 65536 };
    static float x[N], y[MM_SIMD_COUNT][N];
    for (int i = 0; i < N; i++) {
        x[i] = (float)(-90.0 + 180.0 * i / (N - 1));
    }
    for (int p = 0; p < n_paths; p++) {
        paths[p]->exp(y[p], x, N);
    }
    for (int p = 1; p < n_paths; p++) {
        double worst = 0;
        for (int i = 0; i < N; i++) {
            worst = fmax(worst, ulp_err(y[p][i], y[0][i]));
        }
        CHECK(worst <= 3.0, "exp %s vs %s: %.2f ulp", paths[p]->name, paths[0]->name, worst);
    }
    for (int p = 0; p < n_paths; p++) {
        paths[p]->gelu(y[p], x, N);
    }
    for (int p = 1; p < n_paths; p++) {
        double worst = 0;
        for (int i = 0; i < N; i++) {
            worst = fmax(worst, fabs(y[p][i] - y[0][i]) / fmax(1.0, fabs(y[0][i])));
        }
        CHECK(worst <= 1e-6, "gelu %s vs %s: %.3g", paths[p]->name, paths[0]->name, worst);
    }
}

int main(void)
{
    for (int p = 0; p < MM_SIMD_COUNT; p++) {
        const vm_ops *o = vm_ops_path((mm_simd)p);
        CHECK(o != NULL || p != MM_PORTABLE, "portable path missing");
        if (o != NULL) {
            paths[n_paths++] = o;
        }
    }
    CHECK(vm_ops_best() == paths[n_paths - 1], "best path is %s", vm_ops_best()->name);
    for (int p = 0; p < n_paths; p++) {
        test_exp(paths[p]);
        test_erf(paths[p]);
        test_silu_softmax(paths[p]);
        test_norm_sums(paths[p]);
        test_tails(paths[p]);
    }
    test_paths_agree();
    return tu_done();
}
