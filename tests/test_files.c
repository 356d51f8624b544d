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
    int n = snprintf(out, cap, "%s/%s", dir, name);
    CHECK(n > 0 && (size_t)n < cap, "path %s/%s fits", dir, name);
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

/* ---- aliased shards and the tensor bound ---------------------------------------------------- */

#define BIG_TENSORS 60000

/* A valid safetensors file of n one-byte U8 tensors x.0 ... (a header of ~60 bytes each). */
static void write_big_shard(const char *path, size_t n)
{
    size_t cap = n * 80 + 64;
    char *hdr = malloc(cap);
    size_t len = 0;
    hdr[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        len += (size_t)snprintf(hdr + len, cap - len,
                                "%s\"x.%zu\":{\"dtype\":\"U8\",\"shape\":[1],"
                                "\"data_offsets\":[%zu,%zu]}", i ? "," : "", i, i, i + 1);
    }
    hdr[len++] = '}';
    while (len % 8 != 0) {
        hdr[len++] = ' ';
    }
    FILE *f = fopen(path, "wb");
    uint8_t pre[8];
    for (int i = 0; i < 8; i++) {
        pre[i] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    bool ok = f != NULL && fwrite(pre, 1, 8, f) == 8 && fwrite(hdr, 1, len, f) == len;
    char *zeros = calloc(1, n);
    ok = ok && fwrite(zeros, 1, n, f) == n;
    if (f != NULL) {
        ok = fclose(f) == 0 && ok;
    }
    CHECK(ok, "write %s (%zu tensors, %zu header bytes)", path, n, len);
    free(zeros);
    free(hdr);
}

/* The tiny index plus extra weight_map entries "x.<k>" -> names[k]. */
static void write_index(const char *dir, const char *const *names, size_t n)
{
    char p[1024];
    path_in(p, sizeof p, TINY, "model.safetensors.index.json");
    size_t len;
    char *text = tu_read_file(p, &len);
    cJSON *ix = text != NULL ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    cJSON *map = cJSON_GetObjectItem(ix, "weight_map");
    CHECK(map != NULL, "tiny index has a weight_map");
    for (size_t k = 0; k < n && map != NULL; k++) {
        char key[64];
        snprintf(key, sizeof key, "x.%zu", k);
        cJSON_AddStringToObject(map, key, names[k]);
    }
    char *out = cJSON_PrintUnformatted(ix);
    path_in(p, sizeof p, dir, "model.safetensors.index.json");
    write_text(p, out);
    free(out);
    cJSON_Delete(ix);
}

typedef struct child_result {
    int status;
    long peak_delta_kb;
    char msg[512];
} child_result;

/* Loads dir in a child process (its own context) and reports the status, the message and how
 * far the child's peak resident size grew during the load. */
static child_result load_in_child(const char *dir, nvlm_load_mode mode, int use_mmap)
{
    child_result r;
    memset(&r, 0, sizeof r);
    r.status = -1;
    int fds[2];
    if (pipe(fds) != 0) {
        return r;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        child_result c;
        memset(&c, 0, sizeof c);
        nvlm_context *cctx = NULL;
        struct rusage before;
        struct rusage after;
        c.status = (int)tu_context_create(&cctx);
        getrusage(RUSAGE_SELF, &before);
        if (c.status == 0) {
            c.status = (int)load(cctx, dir, mode, use_mmap);
            snprintf(c.msg, sizeof c.msg, "%s", nvlm_last_error(cctx));
        }
        getrusage(RUSAGE_SELF, &after);
        c.peak_delta_kb = after.ru_maxrss - before.ru_maxrss;
        nvlm_context_free(cctx);
        ssize_t w = write(fds[1], &c, sizeof c);
        _exit(w == (ssize_t)sizeof c ? 0 : 1);
    }
    close(fds[1]);
    ssize_t got = pid > 0 ? read(fds[0], &r, sizeof r) : -1;
    close(fds[0]);
    int ws = 0;
    if (pid > 0) {
        waitpid(pid, &ws, 0);
    }
    if (got != (ssize_t)sizeof r) {
        r.status = -1;
    }
    return r;
}

/* A CLI that blocks is killed too, so that no stray process outlives the test. */
static const char *cli_timeout(void)
{
    return access("/usr/bin/timeout", X_OK) == 0 ? "/usr/bin/timeout 30 " : "";
}

/* `nvlm info DIR`: the exit status and what it printed (stdout and stderr). */
static int run_info(const char *cli, const char *args, char *out, size_t cap)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s%s info %s 2>&1", cli_timeout(), cli, args);
    FILE *f = popen(cmd, "r");
    if (f == NULL) {
        out[0] = '\0';
        return -1;
    }
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    int status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#define MAX_PEAK_KB (64L * 1024)

static void check_aliases(void)
{
    const char *cli = getenv("NVLM_CLI");
    char dir[512];
    char p[1024];
    char target[1024];
    tiny_copy(dir, sizeof dir, "alias");
    path_in(target, sizeof target, dir, "big.safetensors");
    step("write the big shard");
    write_big_shard(target, BIG_TENSORS);
    step_done();

    /* 32 symlinks and a hard link to one shard with a 3.8 MB header */
    enum { N_ALIAS = 33 };
    char names[N_ALIAS][32];
    const char *name_ptr[N_ALIAS];
    for (int k = 0; k < N_ALIAS; k++) {
        snprintf(names[k], sizeof names[k], k < 32 ? "a%02d.safetensors" : "hard.safetensors",
                 k);
        name_ptr[k] = names[k];
        path_in(p, sizeof p, dir, names[k]);
        CHECK((k < 32 ? symlink("big.safetensors", p) : link(target, p)) == 0, "link %s", p);
    }
    write_index(dir, name_ptr, N_ALIAS);
    path_in(p, sizeof p, dir, "big.safetensors");
    unlink(p); /* only the aliases name it now; the hard link keeps it */
    for (int k = 0; k < 32; k++) {
        path_in(p, sizeof p, dir, names[k]);
        unlink(p);
        CHECK(symlink("hard.safetensors", p) == 0, "relink %s", names[k]);
    }
    const struct {
        nvlm_load_mode mode;
        int mmap;
        const char *what;
    } modes[3] = {{NVLM_LOAD_FULL, 1, "full"},
                  {NVLM_LOAD_FULL, 0, "full, use_mmap 0"},
                  {NVLM_LOAD_CONFIG_ONLY, 1, "config-only"}};
    for (int i = 0; i < 3; i++) {
        step("aliased shards");
        child_result r = load_in_child(dir, modes[i].mode, modes[i].mmap);
        step_done();
        CHECK(r.status == NVLM_ERR_FORMAT, "aliases (%s): status %d, want FORMAT; %s",
              modes[i].what, r.status, r.msg);
        CHECK(strstr(r.msg, "are the same file (a link); each shard must be a distinct file") !=
                  NULL && strstr(r.msg, "model.safetensors.index.json: shards a") != NULL,
              "aliases (%s): message: %s", modes[i].what, r.msg);
        CHECK(r.peak_delta_kb < MAX_PEAK_KB, "aliases (%s): peak grew %ld kB (< %ld)",
              modes[i].what, r.peak_delta_kb, MAX_PEAK_KB);
        printf("# aliases (%s): peak resident growth %ld kB\n", modes[i].what, r.peak_delta_kb);
    }
    if (cli != NULL && cli[0] != '\0') {
        char out[4096];
        step("nvlm info on aliased shards");
        int rc = run_info(cli, dir, out, sizeof out);
        step_done();
        CHECK(rc == 1 && strstr(out, "are the same file") != NULL, "nvlm info: rc %d: %s", rc,
              out);
        step("nvlm info --config-only on aliased shards");
        char args[1100];
        snprintf(args, sizeof args, "--config-only %s", dir);
        rc = run_info(cli, args, out, sizeof out);
        step_done();
        CHECK(rc == 1 && strstr(out, "are the same file") != NULL,
              "nvlm info --config-only: rc %d: %s", rc, out);
    }
    rm_tree(dir);

    /* one distinct shard with far more tensors than the layout has: refused before parsing */
    tiny_copy(dir, sizeof dir, "many");
    path_in(target, sizeof target, dir, "big.safetensors");
    write_big_shard(target, BIG_TENSORS);
    const char *one = "big.safetensors";
    write_index(dir, &one, 1);
    for (int i = 0; i < 3; i++) {
        step("a shard with too many tensors");
        child_result r = load_in_child(dir, modes[i].mode, modes[i].mmap);
        step_done();
        CHECK(r.status == NVLM_ERR_LIMIT, "too many tensors (%s): status %d, want LIMIT; %s",
              modes[i].what, r.status, r.msg);
        CHECK(strstr(r.msg, "big.safetensors: header lists 60000 entries, more than the") !=
                  NULL && strstr(r.msg, "config's layout of") != NULL,
              "too many tensors (%s): message: %s", modes[i].what, r.msg);
        CHECK(r.peak_delta_kb < MAX_PEAK_KB, "too many tensors (%s): peak grew %ld kB",
              modes[i].what, r.peak_delta_kb);
    }
    if (cli != NULL && cli[0] != '\0') {
        char out[4096];
        step("nvlm info on a shard with too many tensors");
        int rc = run_info(cli, dir, out, sizeof out);
        step_done();
        CHECK(rc == 1 && strstr(out, "header lists 60000 entries") != NULL, "nvlm info: rc %d: %s",
              rc, out);
    }

    /* an index far larger than the layout: refused before cJSON builds it */
    enum { N_ENTRIES = 70000 };
    const char **many = malloc(N_ENTRIES * sizeof *many);
    for (int k = 0; k < N_ENTRIES; k++) {
        many[k] = SHARD1;
    }
    write_index(dir, many, N_ENTRIES);
    free(many);
    step("an index with too many entries");
    child_result r = load_in_child(dir, NVLM_LOAD_CONFIG_ONLY, 1);
    step_done();
    CHECK(r.status == NVLM_ERR_LIMIT && strstr(r.msg, "JSON values, more than an index of the "
                                                      "config's") != NULL,
          "index too big: status %d: %s", r.status, r.msg);
    rm_tree(dir);
}

/* ---- NUL characters in names ---------------------------------------------------------------- */

static void check_nul_names(nvlm_context *ctx)
{
    char dir[512];
    char p[1024];
    tiny_copy(dir, sizeof dir, "nul");
    path_in(p, sizeof p, dir, "model.safetensors.index.json");
    size_t len;
    char *text = tu_read_file(p, &len);
    const char *from = "\"" SHARD1 "\"";
    char *at = text != NULL ? strstr(text, from) : NULL;
    CHECK(at != NULL, "the index names " SHARD1);
    if (at == NULL) {
        free(text);
        return;
    }
    FILE *f = fopen(p, "wb");
    fwrite(text, 1, (size_t)(at - text), f);
    fputs("\"model-00001\\u0000.safetensors\"", f);
    fputs(at + strlen(from), f);
    fclose(f);
    free(text);
    const char *want = "model.safetensors.index.json: the name \"model-00001\\u0000.safetensors\" "
                       "holds a NUL character (\\u0000), which tensor and shard names cannot";
    for (int mode = 0; mode < 2; mode++) {
        step("NUL in a shard name");
        nvlm_status st = load(ctx, dir, mode == 0 ? NVLM_LOAD_FULL : NVLM_LOAD_CONFIG_ONLY, 1);
        step_done();
        expect(ctx, st, NVLM_ERR_FORMAT, want, mode == 0 ? "NUL shard name (full)"
                                                         : "NUL shard name (config-only)");
    }
    rm_tree(dir);

    /* a tensor name with a NUL in a shard header: cJSON would keep only "a" */
    const char hdr[] = "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    size_t hlen = sizeof hdr - 1;
    uint8_t buf[256];
    for (int i = 0; i < 8; i++) {
        buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    }
    memcpy(buf + 8, hdr, hlen);
    buf[8 + hlen] = 7;
    nv_st_file *sf = NULL;
    nvlm_status st = nv_st_parse(ctx, buf, 8 + hlen + 1, "nul.safetensors", ctx, &sf);
    expect(ctx, st, NVLM_ERR_FORMAT, "nul.safetensors: header string near byte 1 holds a NUL",
           "NUL in a tensor name");
    nv_st_close(sf);
}

/* ---- tokenizer against model ---------------------------------------------------------------- */

static cJSON *read_json_file(const char *path)
{
    size_t len;
    char *text = tu_read_file(path, &len);
    cJSON *j = text != NULL ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    return j;
}

static void write_json_file(const char *path, const cJSON *j)
{
    char *text = cJSON_Print(j);
    write_text(path, text);
    free(text);
}

static cJSON *added_token(int id, const char *content)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", 0);
    cJSON_AddBoolToObject(a, "lstrip", 0);
    cJSON_AddBoolToObject(a, "rstrip", 0);
    cJSON_AddBoolToObject(a, "normalized", 0);
    cJSON_AddBoolToObject(a, "special", 1);
    return a;
}

/* Both load modes refuse the directory with NVLM_ERR_FORMAT and exactly `want`. */
static void expect_refused(nvlm_context *ctx, const char *dir, const char *want, const char *what)
{
    for (int mode = 0; mode < 2; mode++) {
        char w[256];
        snprintf(w, sizeof w, "%s (%s)", what, mode == 0 ? "full" : "config-only");
        step(w);
        nvlm_status st = load(ctx, dir, mode == 0 ? NVLM_LOAD_FULL : NVLM_LOAD_CONFIG_ONLY, 1);
        step_done();
        expect(ctx, st, NVLM_ERR_FORMAT, want, w);
        CHECK(strcmp(nvlm_last_error(ctx), want) == 0, "%s: exactly '%s'", w, want);
    }
}

static void check_tokenizer_fit(nvlm_context *ctx)
{
    char dir[512];
    char p[1024];

    /* an added token past the 4032 embedding rows */
    tiny_copy(dir, sizeof dir, "tok_id");
    path_in(p, sizeof p, dir, "tokenizer.json");
    cJSON *tj = read_json_file(p);
    cJSON_AddItemToArray(cJSON_GetObjectItem(tj, "added_tokens"), added_token(4032, "<|extra|>"));
    write_json_file(p, tj);
    cJSON_Delete(tj);
    expect_refused(ctx, dir, "tokenizer: id 4032 (<|extra|>) has no embedding row: the model has "
                   "4032 (llm_config.vocab_size) and the tokenizer 1 id at or above that",
                   "id past the embedding rows");
    /* the same through vocab.json + merges.txt + tokenizer_config.json */
    unlink(p);
    path_in(p, sizeof p, dir, "tokenizer_config.json");
    cJSON *cfg = read_json_file(p);
    cJSON *dec = cJSON_GetObjectItem(cfg, "added_tokens_decoder");
    cJSON *a = added_token(5000, "<|far|>");
    cJSON_DeleteItemFromObject(a, "id");
    cJSON_AddItemToObject(dec, "5000", a);
    cJSON_AddItemToObject(dec, "4040", added_token(4040, "<|near|>"));
    write_json_file(p, cfg);
    cJSON_Delete(cfg);
    expect_refused(ctx, dir, "tokenizer: id 4040 (<|near|>) has no embedding row: the model has "
                   "4032 (llm_config.vocab_size) and the tokenizer 2 ids at or above that",
                   "vocab.json form: ids past the embedding rows");
    rm_tree(dir);

    /* a tokenizer without one of the template's tokens */
    static const char *const need[] = {"<|im_start|>", "<|im_end|>", "<|vision_pad|>"};
    for (size_t k = 0; k < 3; k++) {
        char name[32];
        snprintf(name, sizeof name, "tok_missing%zu", k);
        tiny_copy(dir, sizeof dir, name);
        path_in(p, sizeof p, dir, "tokenizer.json");
        tj = read_json_file(p);
        cJSON *list = cJSON_GetObjectItem(tj, "added_tokens");
        int n = cJSON_GetArraySize(list);
        for (int i = n - 1; i >= 0; i--) {
            const cJSON *c = cJSON_GetObjectItem(cJSON_GetArrayItem(list, i), "content");
            if (cJSON_IsString(c) && strcmp(c->valuestring, need[k]) == 0) {
                cJSON_DeleteItemFromArray(list, i);
            }
        }
        CHECK_EQ_INT(cJSON_GetArraySize(list), n - 1, "one added token removed");
        write_json_file(p, tj);
        cJSON_Delete(tj);
        char want[256];
        snprintf(want, sizeof want, "tokenizer: %s, which the chat template uses, is not one of "
                 "its added tokens", need[k]);
        expect_refused(ctx, dir, want, need[k]);
        rm_tree(dir);
    }

    /* the tiny checkpoint itself fits */
    CHECK_OK(load(ctx, TINY, NVLM_LOAD_FULL, 1));
    CHECK_OK(load(ctx, TINY, NVLM_LOAD_CONFIG_ONLY, 1));
}

/* ---- message shapes: each file named once ---------------------------------------------------- */

/* Runs the CLI with `args` and returns its exit status; stderr goes to err. */
static int run_cli(const char *cli, const char *args, char *err, size_t cap)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s%s %s 2>&1 >/dev/null", cli_timeout(), cli, args);
    FILE *f = popen(cmd, "r");
    if (f == NULL) {
        err[0] = '\0';
        return -1;
    }
    size_t n = fread(err, 1, cap - 1, f);
    err[n] = '\0';
    int status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void cli_expect(const char *cli, const char *args, const char *want)
{
    char err[4096];
    step(args);
    int rc = run_cli(cli, args, err, sizeof err);
    step_done();
    CHECK(rc == 1 && strcmp(err, want) == 0, "nvlm %s: rc %d, stderr '%s', want '%s'", args, rc,
          err, want);
}

static void check_messages(nvlm_context *ctx)
{
    /* the library names the file once */
    nvlm_image *img = NULL;
    nvlm_status st = nvlm_image_load_file(ctx, "README.md", NULL, &img);
    expect(ctx, st, NVLM_ERR_FORMAT, "README.md", "README.md as an image");
    CHECK(strcmp(nvlm_last_error(ctx), "README.md: unknown image format (not PNG or JPEG)") == 0,
          "image message: %s", nvlm_last_error(ctx));
    nvlm_image_free(img);
    nvlm_tokenizer *tok = NULL;
    st = nvlm_tokenizer_load(ctx, "README.md", &tok);
    expect(ctx, st, NVLM_ERR_FORMAT, "README.md", "README.md as a tokenizer");
    CHECK(strcmp(nvlm_last_error(ctx), "README.md: not a JSON object") == 0,
          "tokenizer message names the file read: %s", nvlm_last_error(ctx));
    nvlm_tokenizer_free(tok);

    char dir[512];
    char p[1024];
    tiny_copy(dir, sizeof dir, "readme_config");
    path_in(p, sizeof p, dir, "config.json");
    CHECK(copy_file("README.md", p), "README.md as config.json");
    st = load(ctx, dir, NVLM_LOAD_FULL, 1);
    expect(ctx, st, NVLM_ERR_FORMAT, "config.json", "README.md as config.json");
    CHECK(strcmp(nvlm_last_error(ctx), "config.json: not valid JSON") == 0, "config message: %s",
          nvlm_last_error(ctx));
    char tdir[512];
    tiny_copy(tdir, sizeof tdir, "readme_tokenizer");
    path_in(p, sizeof p, tdir, "tokenizer.json");
    CHECK(copy_file("README.md", p), "README.md as tokenizer.json");
    st = load(ctx, tdir, NVLM_LOAD_FULL, 1);
    expect(ctx, st, NVLM_ERR_FORMAT, "tokenizer.json", "README.md as tokenizer.json");
    CHECK(strcmp(nvlm_last_error(ctx), "tokenizer.json: not a JSON object") == 0,
          "tokenizer.json message: %s", nvlm_last_error(ctx));

    /* the CLI prefixes its subcommand, not the path the message already names */
    const char *cli = getenv("NVLM_CLI");
    if (cli != NULL && cli[0] != '\0') {
        char args[2048];
        char want[2048];
        cli_expect(cli, "generate " TINY " -p hi -i README.md",
                   "nvlm: generate: README.md: unknown image format (not PNG or JPEG)\n");
        cli_expect(cli, "generate " TINY " -p hi -i /nonexistent.png",
                   "nvlm: generate: cannot open /nonexistent.png: No such file or directory\n");
        cli_expect(cli, "tokenize README.md hi", "nvlm: tokenize: README.md: not a JSON object\n");
        snprintf(args, sizeof args, "info %s", dir);
        cli_expect(cli, args, "nvlm: info: config.json: not valid JSON\n");
        snprintf(args, sizeof args, "generate %s -p hi --backend cpu", tdir);
        cli_expect(cli, args, "nvlm: generate: tokenizer.json: not a JSON object\n");
        path_in(p, sizeof p, tmp_root, "cli_pipe");
        CHECK(mkfifo(p, 0600) == 0, "mkfifo");
        snprintf(args, sizeof args, "tokenize %s hi", p);
        snprintf(want, sizeof want, "nvlm: tokenize: %s is a FIFO, not a regular file\n", p);
        cli_expect(cli, args, want);
        snprintf(args, sizeof args, "generate %s -p hi -i %s --backend cpu", TINY, p);
        snprintf(want, sizeof want, "nvlm: generate: %s is a FIFO, not a regular file\n", p);
        cli_expect(cli, args, want);
        unlink(p);
    }
    rm_tree(dir);
    rm_tree(tdir);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    nvlm_context *ctx = NULL;
    CHECK_OK(tu_context_create(&ctx));
    CHECK(mkdtemp(tmp_root) != NULL, "mkdtemp");

    tu_section("special files");
    check_special_files(ctx);
    tu_section("aliased shards and the tensor bound");
    check_aliases();
    tu_section("NUL in names");
    check_nul_names(ctx);
    tu_section("tokenizer against model");
    check_tokenizer_fit(ctx);
    tu_section("message shapes");
    check_messages(ctx);

    rm_tree(tmp_root);
    nvlm_context_free(ctx);
    return tu_done();
}
