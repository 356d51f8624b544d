/*
 * test_files.c - what the loaders do with hostile file system objects and inconsistent model
 * directories built from the tiny checkpoint in a temporary directory: FIFOs, directories,
 * devices and sockets in every file role (an I/O error, never a hang: each step runs under
 * alarm()), shards aliased through the index, tokenizers that do not fit the model, a shard
 * name with a NUL, and the shape of file error messages (CLI too, when NVLM_CLI names it).
 */
#include "model.h"
#include "safetensors.h"
#include "testutil.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define TINY "tests/data/tiny-nvlm-d"
#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"
#define STEP_SECONDS 60

static char tmp_root[] = "/tmp/nvlm_files_XXXXXX";
static const char *volatile g_step = "";

/* A step that blocks (a FIFO opened for reading) ends the test with a failure, not a hang. */
static void on_alarm(int sig)
{
    (void)sig;
    const char *a = "FAIL hung (alarm) in: ";
    ssize_t r = write(2, a, strlen(a));
    r = write(2, g_step, strlen(g_step));
    r = write(2, "\n", 1);
    (void)r;
    _exit(1);
}

static void step(const char *what)
{
    g_step = what;
    alarm(STEP_SECONDS);
}

static void step_done(void)
{
    alarm(0);
    g_step = "";
}

/* ---- temporary model directories ----------------------------------------------------------- */

static void path_in(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static bool copy_file(const char *src, const char *dst)
{
    size_t n;
    char *data = tu_read_file(src, &n);
    if (data == NULL) {
        return false;
    }
    FILE *f = fopen(dst, "wb");
    bool ok = f != NULL && fwrite(data, 1, n, f) == n;
    if (f != NULL) {
        ok = fclose(f) == 0 && ok;
    }
    free(data);
    return ok;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

/* tmp_root/name holding a copy of the tiny checkpoint; the path goes to out. */
static void tiny_copy(char *out, size_t cap, const char *name)
{
    path_in(out, cap, tmp_root, name);
    CHECK(mkdir(out, 0700) == 0, "mkdir %s", out);
    DIR *d = opendir(TINY);
    if (d == NULL) {
        CHECK(false, "opendir " TINY);
        return;
    }
    const struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char src[1024];
        char dst[1024];
        path_in(src, sizeof src, TINY, e->d_name);
        path_in(dst, sizeof dst, out, e->d_name);
        CHECK(copy_file(src, dst), "copy %s", e->d_name);
    }
    closedir(d);
}

/* Replaces dir/name with a FIFO. */
static void to_fifo(const char *dir, const char *name)
{
    char p[1024];
    path_in(p, sizeof p, dir, name);
    unlink(p);
    CHECK(mkfifo(p, 0600) == 0, "mkfifo %s", p);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void rm_tree(const char *p)
{
    nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static nvlm_status load(nvlm_context *ctx, const char *dir, nvlm_load_mode mode, int use_mmap)
{
    nvlm_model_params p;
    nvlm_model_default_params(&p);
    p.mode = mode;
    p.use_mmap = use_mmap;
    nvlm_model *m = NULL;
    nvlm_status st = nvlm_model_load(ctx, dir, &p, &m);
    nvlm_model_free(m);
    return st;
}

/* Status `want` and a message containing `sub`. */
static void expect(nvlm_context *ctx, nvlm_status st, nvlm_status want, const char *sub,
                   const char *what)
{
    const char *msg = nvlm_last_error(ctx);
    CHECK(st == want, "%s: status %d (%s), want %d; message: %s", what, (int)st,
          nvlm_status_str(st), (int)want, msg);
    CHECK(strstr(msg, sub) != NULL, "%s: message '%s' contains '%s'", what, msg, sub);
}

/* ---- special files (FIFO, directory, device, socket) --------------------------------------- */

static void fifo_in_model_dir(nvlm_context *ctx, const char *name, const char *file)
{
    char dir[512];
    char want[1024];
    char what[256];
    tiny_copy(dir, sizeof dir, name);
    to_fifo(dir, file);
    snprintf(want, sizeof want, "%s/%s is a FIFO, not a regular file", dir, file);
    const nvlm_load_mode modes[2] = {NVLM_LOAD_FULL, NVLM_LOAD_CONFIG_ONLY};
    for (int k = 0; k < 2; k++) {
        snprintf(what, sizeof what, "FIFO as %s (%s load)", file, k == 0 ? "full" : "config-only");
        step(what);
        nvlm_status st = load(ctx, dir, modes[k], 1);
        step_done();
        expect(ctx, st, NVLM_ERR_IO, want, what);
        CHECK(strcmp(nvlm_last_error(ctx), want) == 0, "%s: the whole message is '%s'", what,
              want);
    }
    snprintf(what, sizeof what, "FIFO as %s (full load, use_mmap 0)", file);
    step(what);
    nvlm_status st = load(ctx, dir, NVLM_LOAD_FULL, 0);
    step_done();
    expect(ctx, st, NVLM_ERR_IO, want, what);
    rm_tree(dir);
}

static void check_special_files(nvlm_context *ctx)
{
    static const char *const files[] = {"config.json", "generation_config.json",
                                        "model.safetensors.index.json", SHARD1, SHARD2,
                                        "tokenizer.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "fifo%zu", i);
        fifo_in_model_dir(ctx, name, files[i]);
    }

    /* the tokenizer's vocab.json + merges.txt + tokenizer_config.json form */
    static const char *const tok_files[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    for (size_t i = 0; i < 3; i++) {
        char dir[512];
        char name[64];
        char want[1024];
        snprintf(name, sizeof name, "tokfifo%zu", i);
        tiny_copy(dir, sizeof dir, name);
        char p[1024];
        path_in(p, sizeof p, dir, "tokenizer.json");
        unlink(p);
        nvlm_tokenizer *tok = NULL;
        step("vocab + merges tokenizer directory");
        CHECK_OK(nvlm_tokenizer_load(ctx, dir, &tok));
        step_done();
        nvlm_tokenizer_free(tok);
        tok = NULL;
        to_fifo(dir, tok_files[i]);
        snprintf(want, sizeof want, "%s/%s is a FIFO, not a regular file", dir, tok_files[i]);
        step(tok_files[i]);
        nvlm_status st = nvlm_tokenizer_load(ctx, dir, &tok);
        step_done();
        expect(ctx, st, NVLM_ERR_IO, want, tok_files[i]);
        CHECK(tok == NULL, "no tokenizer on failure");
        nvlm_tokenizer_free(tok);
        rm_tree(dir);
    }

    char p[1024];
    char want[1200];
    path_in(p, sizeof p, tmp_root, "pipe");
    CHECK(mkfifo(p, 0600) == 0, "mkfifo pipe");

    /* a FIFO as the tokenizer path */
    nvlm_tokenizer *tok = NULL;
    snprintf(want, sizeof want, "%s is a FIFO, not a regular file", p);
    step("FIFO as the tokenizer path");
    nvlm_status st = nvlm_tokenizer_load(ctx, p, &tok);
    step_done();
    expect(ctx, st, NVLM_ERR_IO, want, "FIFO as the tokenizer path");
    nvlm_tokenizer_free(tok);

    /* a FIFO as an image */
    nvlm_image *img = NULL;
    step("FIFO as an image");
    st = nvlm_image_load_file(ctx, p, NULL, &img);
    step_done();
    expect(ctx, st, NVLM_ERR_IO, want, "FIFO as an image");
    CHECK(strcmp(nvlm_last_error(ctx), want) == 0, "FIFO image message is exactly '%s'", want);
    nvlm_image_free(img);
    img = NULL;
    unlink(p);

    /* a directory as an image: an I/O error naming it, not a size of 2^63 - 1 bytes */
    snprintf(want, sizeof want, "%s is a directory, not a regular file", tmp_root);
    step("directory as an image");
    st = nvlm_image_load_file(ctx, tmp_root, NULL, &img);
    step_done();
    expect(ctx, st, NVLM_ERR_IO, want, "directory as an image");
    CHECK(strstr(nvlm_last_error(ctx), "9223372036854775807") == NULL, "no 2^63 - 1 size");
    nvlm_image_free(img);
    img = NULL;

    /* devices through symlinks: /dev/zero as an image, /dev/null as config.json */
    path_in(p, sizeof p, tmp_root, "zero.png");
    CHECK(symlink("/dev/zero", p) == 0, "symlink /dev/zero");
    snprintf(want, sizeof want, "%s is a character device, not a regular file", p);
    step("/dev/zero as an image");
    st = nvlm_image_load_file(ctx, p, NULL, &img);
    step_done();
    expect(ctx, st, NVLM_ERR_IO, want, "/dev/zero as an image");
    nvlm_image_free(img);
    unlink(p);

    char dir[512];
    tiny_copy(dir, sizeof dir, "devnull");
    path_in(p, sizeof p, dir, "config.json");
    unlink(p);
    CHECK(symlink("/dev/null", p) == 0, "symlink /dev/null");
    snprintf(want, sizeof want, "%s is a character device, not a regular file", p);
    step("/dev/null as config.json");
    st = load(ctx, dir, NVLM_LOAD_CONFIG_ONLY, 1);
    step_done();
    expect(ctx, st, NVLM_ERR_IO, want, "/dev/null as config.json");

    /* a socket as config.json */
    unlink(p);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    bool bound = s >= 0 && strlen(p) < sizeof sa.sun_path;
    if (bound) {
        memcpy(sa.sun_path, p, strlen(p) + 1);
        bound = bind(s, (const struct sockaddr *)&sa, sizeof sa) == 0;
    }
    CHECK(bound, "bind a socket at %s", p);
    snprintf(want, sizeof want, "%s is a socket, not a regular file", p);
    step("socket as config.json");
    st = load(ctx, dir, NVLM_LOAD_FULL, 1);
    step_done();
    expect(ctx, st, NVLM_ERR_IO, want, "socket as config.json");
    if (s >= 0) {
        close(s);
    }
    rm_tree(dir);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    nvlm_context *ctx = NULL;
    CHECK_OK(nvlm_context_create(NULL, &ctx));
    CHECK(mkdtemp(tmp_root) != NULL, "mkdtemp");

    tu_section("special files");
    check_special_files(ctx);

    rm_tree(tmp_root);
    nvlm_context_free(ctx);
    return tu_done();
}
