/*
 * test_plugin.c - the CUDA backend as a run-time plugin (libnvlm-cuda.so.0): the core library,
 * the static archive and the CLI carry and load no CUDA code; `auto` on a machine without a
 * CUDA driver never opens the plugin; an explicit CUDA request without one fails with the real
 * reason (missing plugin, a plugin that cannot load, the driver's own words); the entry point
 * refuses a core of another build; and the lost-context registry (src/cuda/fault.c) that turns a
 * sticky CUDA error into "device context lost; free and reload the model".
 * Runs from the repository root; NVLM_CLI is the CLI of the build tree. Without a CUDA build
 * the plugin checks are skipped, saying so.
 */
#include "testutil.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cuda/cuda_api.h"
#include "cuda/fault.h"
#include "internal.h"
#include "nvlm/nvlm.h"
#include "plugin/cuda_plugin.h"
#include "tp/comm.h"

#ifndef NVLM_TEST_LIBDIR
#define NVLM_TEST_LIBDIR "lib"
#endif

/* Output of a shell command (at most cap - 1 bytes), or "" when it cannot run. */
static const char *run(const char *cmd, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = popen(cmd, "r");
    if (f == NULL) {
        return buf;
    }
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    pclose(f);
    return buf;
}

#ifdef NVLM_WITH_CUDA
/* Whether this process has a file whose path contains `name` mapped. */
static bool mapped(const char *name)
{
    char *maps = tu_read_file("/proc/self/maps", NULL);
    bool found = maps != NULL && strstr(maps, name) != NULL;
    free(maps);
    return found;
}
#endif

static void no_cuda_in_core(void)
{
    tu_section("the core, the static archive and the CLI link no CUDA");
    static char out[1 << 16];
    const char *cli = getenv("NVLM_CLI") != NULL ? getenv("NVLM_CLI") : "bin/nvlm";
    const char *objs[] = {NVLM_TEST_LIBDIR "/libnvlm.so.0", cli};
    for (size_t i = 0; i < 2; i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "readelf -d %s 2>&1", objs[i]);
        run(cmd, out, sizeof out);
        CHECK(strstr(out, "NEEDED") != NULL, "readelf -d %s lists its libraries", objs[i]);
        CHECK(strstr(out, "libcuda") == NULL && strstr(out, "libcublas") == NULL &&
                  strstr(out, "libnccl") == NULL,
              "%s needs no CUDA library", objs[i]);
    }
    run("nm " NVLM_TEST_LIBDIR "/libnvlm.a 2>&1", out, sizeof out);
    CHECK(strstr(out, "nvlm_context_create") != NULL, "nm reads libnvlm.a");
    CHECK(strstr(out, "cudaMalloc") == NULL && strstr(out, "__cudaRegisterFatBinary") == NULL &&
              strstr(out, "cublasLt") == NULL,
          "libnvlm.a has no CUDA code and no CUDA reference");

    /* `nvlm --version` stays small: it maps no CUDA runtime */
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        execl(cli, cli, "--version", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    CHECK(pid > 0 && wait4(pid, &status, 0, &ru) == pid, "ran %s --version", cli);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "nvlm --version exits 0");
    CHECK(ru.ru_maxrss > 0 && ru.ru_maxrss < 16 * 1024, "nvlm --version peak RSS %ld KiB < 16 MiB",
          ru.ru_maxrss);
}

#ifdef NVLM_WITH_CUDA
static void plugin_files(void)
{
    tu_section("the plugin exports its entry point only and carries the CUDA libraries");
    static char out[1 << 16];
    run("nm -D --defined-only " NVLM_TEST_LIBDIR "/libnvlm-cuda.so.0 2>&1", out, sizeof out);
    CHECK(strstr(out, NV_CUDA_PLUGIN_ENTRY) != NULL, "exports %s", NV_CUDA_PLUGIN_ENTRY);
    int lines = 0;
    for (const char *p = out; *p != '\0'; p++) {
        lines += *p == '\n';
    }
    CHECK_EQ_INT(lines, 1, "defined dynamic symbols of the plugin");
    run("readelf -d " NVLM_TEST_LIBDIR "/libnvlm-cuda.so.0 2>&1", out, sizeof out);
    CHECK(strstr(out, "libcudart") != NULL && strstr(out, "libcublasLt") != NULL,
          "the plugin needs libcudart and libcublasLt");
    CHECK(strstr(out, "libnvlm.so") == NULL, "the plugin needs no libnvlm (no core symbol)");
}

/* auto in a child process, so that its maps say what it alone loaded. */
static void auto_without_driver(void)
{
    tu_section("auto without a CUDA driver: CPU, and no CUDA library loaded");
    char why[512];
    if (nv_cuda_driver_has_device(why, sizeof why)) {
        printf("SKIP auto without a driver: this machine has one (%s)\n", why);
        return;
    }
    CHECK(strstr(why, "libcuda.so.1") != NULL || strstr(why, "driver") != NULL,
          "the driver check says why: %s", why);
    int fd[2];
    CHECK(pipe(fd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        char res[4] = {'?', '?', '?', '?'};
        nvlm_context *ctx = NULL;
        res[0] = nvlm_context_create(NULL, &ctx) == NVLM_OK ? 'o' : 'e';
        res[1] = ctx != NULL && nvlm_context_backend(ctx) == NVLM_BACKEND_CPU ? 'c' : 'x';
        char r[512];
        res[2] = nvlm_backend_probe(NVLM_BACKEND_AUTO, 0, r, sizeof r) == NVLM_OK &&
                         strncmp(r, "CPU (CUDA: ", 11) == 0
                     ? 'p'
                     : 'x';
        res[3] = mapped("libcudart") || mapped("libcublas") || mapped("libnvlm-cuda") ? 'L'
                                                                                       : 'n';
        nvlm_context_free(ctx);
        if (write(fd[1], res, sizeof res) != (ssize_t)sizeof res) {
            _exit(1);
        }
        _exit(0);
    }
    close(fd[1]);
    char res[4] = {0};
    ssize_t n = read(fd[0], res, sizeof res);
    close(fd[0]);
    waitpid(pid, NULL, 0);
    CHECK(n == 4 && res[0] == 'o' && res[1] == 'c', "auto resolves to the CPU");
    CHECK(n == 4 && res[2] == 'p', "nvlm_backend_probe(AUTO) says CPU and why");
    CHECK(n == 4 && res[3] == 'n', "neither the plugin nor a CUDA library was loaded");
}

static char g_log[1024];

static void log_fn(void *user, nvlm_log_level level, const char *msg)
{
    (void)user;
    if (level == NVLM_LOG_ERROR) {
        snprintf(g_log, sizeof g_log, "%s", msg);
    }
}

static void explicit_cuda(void)
{
    tu_section("backend cuda: a status and the real reason");
    char why[512];
    nvlm_status pst = nvlm_backend_probe(NVLM_BACKEND_CUDA, 0, why, sizeof why);
    if (pst == NVLM_OK) {
        printf("SKIP cuda failure reasons: device 0 is usable (%s)\n", why);
        return;
    }
    CHECK_EQ_INT(pst, NVLM_ERR_NO_DEVICE, "probe without a device");
    CHECK(strstr(why, "cudaGetDeviceCount") != NULL || strstr(why, "requested") != NULL,
          "the reason is the CUDA runtime's own: %s", why);
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CUDA;
    cp.log_fn = log_fn;
    nvlm_context *ctx = NULL;
    CHECK_EQ_INT(nvlm_context_create(&cp, &ctx), NVLM_ERR_NO_DEVICE, "context create");
    CHECK(ctx == NULL, "no context");
    CHECK(strstr(g_log, "CUDA backend unavailable: ") == g_log && strstr(g_log, why) != NULL,
          "the log gets the same reason: %s", g_log);
    CHECK_EQ_INT(nvlm_backend_probe(NVLM_BACKEND_CUDA, -1, why, sizeof why),
                 NVLM_ERR_INVALID_ARGUMENT, "device -1");
    CHECK_EQ_INT(nvlm_backend_probe((nvlm_backend)7, 0, NULL, 0), NVLM_ERR_INVALID_ARGUMENT,
                 "unknown backend");
    CHECK_EQ_INT(nvlm_backend_probe(NVLM_BACKEND_CPU, 0, why, sizeof why), NVLM_OK, "CPU");
}

/* The CLI copied elsewhere: no plugin beside it, then a file that is not one. */
static void cli_reasons(void)
{
    tu_section("nvlm --backend cuda: missing or broken plugin");
    const char *cli = getenv("NVLM_CLI") != NULL ? getenv("NVLM_CLI") : "bin/nvlm";
    char dir[] = "/tmp/nvlm-plugin-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char cmd[1024];
    static char out[8192];
    snprintf(cmd, sizeof cmd, "cp %s %s/nvlm && LD_LIBRARY_PATH= %s/nvlm generate "
             "tests/data/tiny-nvlm-d -p hi -n 1 --backend cuda 2>&1; echo rc=$?", cli, dir, dir);
    run(cmd, out, sizeof out);
    CHECK(strstr(out, "nvlm: generate: ") != NULL &&
              strstr(out, "libnvlm-cuda.so.0 not found (looked in ") != NULL &&
              strstr(out, "rc=1") != NULL,
          "missing plugin named: %s", out);
    /* the plugin beside the CLI, run through PATH from another directory (argv[0] is a bare
     * name): found beside the executable */
    char cwd[512];
    CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
    snprintf(cmd, sizeof cmd, "cp " NVLM_TEST_LIBDIR "/libnvlm-cuda.so.0 %s/ && cd / && "
             "PATH=%s:$PATH LD_LIBRARY_PATH= nvlm generate %s/tests/data/tiny-nvlm-d -p hi "
             "-n 1 --backend cuda 2>&1; echo rc=$?", dir, dir, cwd);
    run(cmd, out, sizeof out);
    CHECK(strstr(out, "rc=") != NULL && strstr(out, "not found") == NULL,
          "run through PATH, the plugin beside it is found: %s", out);
    snprintf(cmd, sizeof cmd, "echo garbage > %s/libnvlm-cuda.so.0 && %s/nvlm generate "
             "tests/data/tiny-nvlm-d -p hi -n 1 --backend cuda 2>&1; echo rc=$?", dir, dir);
    run(cmd, out, sizeof out);
    CHECK(strstr(out, "libnvlm-cuda.so.0: ") != NULL && strstr(out, "not found") == NULL &&
              strstr(out, "rc=1") != NULL,
          "a plugin that cannot load: the loader's reason: %s", out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

static nvlm_status fake_error(void *h, nvlm_status st, const char *msg)
{
    (void)h;
    (void)msg;
    return st;
}

static void handshake(void)
{
    tu_section("the entry point: versioned table, refuses another build");
    void *h = dlopen(NVLM_TEST_LIBDIR "/libnvlm-cuda.so.0", RTLD_NOW | RTLD_LOCAL);
    CHECK(h != NULL, "dlopen the plugin: %s", h != NULL ? "ok" : dlerror());
    if (h == NULL) {
        return;
    }
    nv_cuda_plugin_entry_fn entry;
    void *sym = dlsym(h, NV_CUDA_PLUGIN_ENTRY);
    CHECK(sym != NULL, "entry point found");
    if (sym == NULL) {
        return;
    }
    memcpy(&entry, &sym, sizeof entry);
    char why[512] = "";
    nv_cuda_host bad = {NV_CUDA_PLUGIN_ABI, sizeof bad, "0.0.9", NV_CUDA_PLUGIN_LAYOUT,
                        fake_error, NULL, NULL, NULL, NULL};
    CHECK(entry(&bad, why, sizeof why) == NULL, "another version refused");
    CHECK(strstr(why, "does not match") != NULL && strstr(why, "0.0.9") != NULL,
          "and says so: %s", why);
    bad.version = NVLM_VERSION_STRING;
    bad.layout = NV_CUDA_PLUGIN_LAYOUT + 1;
    CHECK(entry(&bad, why, sizeof why) == NULL, "another struct layout refused");
    bad.layout = NV_CUDA_PLUGIN_LAYOUT;
    bad.abi = NV_CUDA_PLUGIN_ABI + 1;
    CHECK(entry(&bad, why, sizeof why) == NULL, "another ABI refused");
    CHECK(entry(NULL, why, sizeof why) == NULL, "no host refused");
    /* the core's own opening gives a complete table of this version */
    const nv_cuda_plugin *p = nv_cuda_plugin_open(why, sizeof why);
    CHECK(p != NULL, "nv_cuda_plugin_open: %s", p != NULL ? "ok" : why);
    if (p != NULL) {
        CHECK(p->abi == NV_CUDA_PLUGIN_ABI && p->size == sizeof *p &&
                  strcmp(p->version, NVLM_VERSION_STRING) == 0,
              "table version");
        CHECK(p->probe_reason != NULL && p->backend_create != NULL && p->mem_info != NULL &&
                  p->tp_comm_nccl_create != NULL && p->exec_stream != NULL &&
                  p->backend_device != NULL && p->time != NULL && p->weight_slab != NULL &&
                  p->upload_end != NULL && p->step_stats != NULL,
              "every entry filled");
        CHECK(!p->probe_reason(-1, why, sizeof why), "device -1 is not usable");
    }
}

static void *fake_stream(nv_exec *ex)
{
    (void)ex;
    return (void *)&g_log;
}

/* The C entry points reach the plugin for CUDA backends only, also in a context of another
 * kind (tests and benchmarks make CUDA backends in a CPU context). */
static void entry_points(void)
{
    tu_section("cuda_api.h entry points: CUDA backends only, in any context");
    nvlm_context_params cp;
    nvlm_context_default_params(&cp);
    cp.backend = NVLM_BACKEND_CPU;
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(&cp, &ctx));
    if (ctx == NULL) {
        return;
    }
    nv_cuda_plugin fake;
    memset(&fake, 0, sizeof fake);
    fake.exec_stream = fake_stream;
    nv_backend_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.name = "cpu";
    nv_backend be;
    memset(&be, 0, sizeof be);
    be.ops = &ops;
    be.ctx = ctx;
    nv_exec ex;
    memset(&ex, 0, sizeof ex);
    ex.be = &be;
    ctx->cuda = &fake;
    CHECK(nv_cuda_exec_stream(&ex) == NULL, "a backend of another kind never reaches the plugin");
    ops.name = "cuda";
    CHECK(nv_cuda_exec_stream(&ex) == (void *)&g_log, "a CUDA backend reaches its plugin");
    ctx->cuda = NULL;
    /* a CPU context after the plugin was opened (handshake): NCCL through that plugin */
    tp_comm *c = NULL;
    const int dev[1] = {0};
    nvlm_status st = nv_tp_comm_nccl_create(ctx, 1, dev, NULL, ctx, &c);
    CHECK(st == NVLM_OK || strstr(nvlm_last_error(ctx), "NCCL needs") == NULL,
          "NCCL in a CPU context reaches the opened plugin: %s",
          st == NVLM_OK ? "ok" : nvlm_last_error(ctx));
    if (c != NULL) {
        c->ops->destroy(c);
    }
    nvlm_context_free(ctx);
}
#endif

static void fault_registry(void)
{
    tu_section("lost device contexts (fault.c)");
    const int sticky[] = {700, 702, 710, 714, 715, 716, 717, 718, 719, 214};
    const int plain[] = {0, 1, 2, 35, 98, 101, 209, 400, 999};
    for (size_t i = 0; i < sizeof sticky / sizeof *sticky; i++) {
        CHECK(cuda_fault_is_sticky(sticky[i]), "error %d is sticky", sticky[i]);
    }
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        CHECK(!cuda_fault_is_sticky(plain[i]), "error %d is not sticky", plain[i]);
    }
    /* two backends on device 3, one on device 4; device 3 dies */
    cuda_fault_backend_created(3);
    cuda_fault_backend_created(3);
    cuda_fault_backend_created(4);
    CHECK(!cuda_fault_is_dead(3) && !cuda_fault_is_dead(4), "alive at first");
    cuda_fault_mark_dead(3);
    CHECK(cuda_fault_is_dead(3) && !cuda_fault_is_dead(4), "device 3 dead, device 4 not");
    CHECK(!cuda_fault_backend_destroyed(3), "first of two backends gone: no reset yet");
    CHECK(cuda_fault_is_dead(3), "still dead while a backend lives on it");
    CHECK(cuda_fault_backend_destroyed(3), "last backend gone: reset the context");
    CHECK(!cuda_fault_is_dead(3), "alive again after the reset");
    CHECK(!cuda_fault_backend_destroyed(4), "a live device is never reset");
    CHECK(!cuda_fault_backend_destroyed(3), "no backend left: nothing to reset");
    cuda_fault_mark_dead(-1);
    cuda_fault_mark_dead(CUDA_FAULT_MAX_DEVICES);
    CHECK(!cuda_fault_is_dead(-1) && !cuda_fault_is_dead(CUDA_FAULT_MAX_DEVICES),
          "untracked ordinals are ignored");
    CHECK(!cuda_fault_sync_requested(NULL) && !cuda_fault_sync_requested("") &&
              !cuda_fault_sync_requested("0") && cuda_fault_sync_requested("1"),
          "NVLM_CUDA_SYNC: unset, empty and 0 are off");
}

int main(void)
{
    no_cuda_in_core();
#ifdef NVLM_WITH_CUDA
    plugin_files();
    auto_without_driver();
    explicit_cuda();
    cli_reasons();
    handshake();
    entry_points();
#else
    printf("SKIP plugin checks: built without CUDA (make CUDA=0 or no nvcc)\n");
#endif
    fault_registry();
    return tu_done();
}
