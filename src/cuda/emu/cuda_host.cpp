/*
 * cuda_host.cpp - the runtime of the host CUDA emulation (cuda_host.h): every thread of a block
 * is a fiber on its own stack; a fiber runs until it reaches a barrier or a warp collective, then
 * the next runnable fiber (in thread order, cyclically) runs, so a barrier is a real barrier and
 * a shuffle exchanges the values the lanes hold at that point. Blocks run one after another on
 * the calling thread. The context switch is a few instructions of assembly on x86-64 (callee-
 * saved registers and the stack pointer); other machines use ucontext.
 */
#include "cuda_host.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>

#if defined(__SANITIZE_ADDRESS__)
#define NVEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NVEMU_ASAN 1
#endif
#endif

#ifdef NVEMU_ASAN
extern "C" void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom,
                                               size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                                size_t *size_old);
extern "C" void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
extern "C" void __asan_poison_memory_region(void const volatile *addr, size_t size);
#define NVEMU_STACK (512 * 1024)
#else
#define NVEMU_STACK (128 * 1024)
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define NVEMU_MAX_THREADS 1024

namespace nvemu {

__thread thread_pub *cur_thread;
__thread block_pub cur_block;

namespace {

enum { F_READY, F_WARP, F_BLOCK, F_DONE };

struct fiber : thread_pub {
    void *sp;
    int state;
    unsigned wait_gen;
    const site *at;       /* where it waits */
    char *stack;          /* NVEMU_STACK bytes above a guard page */
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
};

struct warp_st {
    unsigned gen;
    int count;
    unsigned members;
    unsigned present;
    unsigned exited;
    const site *at;
    uint64_t slot[2][32];
};

struct block_rt {
    fiber f[NVEMU_MAX_THREADS];
    warp_st w[NVEMU_MAX_THREADS / 32];
    int n;
    int live;
    unsigned gen;
    int count;
    const site *at;
    void *main_sp;
#if !defined(__x86_64__)
    ucontext_t main_uc;
#endif
    const void *main_bottom;
    size_t main_size;
    void (*body)(void *);
    void *arg;
    bool failed;
    bool dirty;           /* fibers were abandoned: stacks need their shadow cleared */
    char msg[1024];
};

__thread block_rt *rt;
__thread cudaError_t last_error = cudaSuccess;
__thread char last_msg[1200];

std::mutex site_mu;
site *site_head;
struct mut_spec {
    char file[256];
    int line;
};
mut_spec muts[64];
int n_muts;
unsigned long long n_switches;
int policy = NVEMU_SCHED_IN_ORDER;
bool (*block_keep)(uint3 block, dim3 grid, void *arg);
void *block_arg;
unsigned long long n_blocks;

std::mutex attr_mu;
struct fn_attr {
    const void *fn;
    int max_dyn;
};
fn_attr attrs[256];
int n_attrs;

bool suffix_match(const char *file, const char *suffix)
{
    size_t a = strlen(file);
    size_t b = strlen(suffix);
    return b <= a && strcmp(file + a - b, suffix) == 0;
}

} /* namespace */
} /* namespace nvemu */

#if defined(__x86_64__)
/* nvemu_ctx_switch(save, to): pushes the callee-saved registers, stores the stack pointer in
 * *save, loads `to` and pops the other context's registers. */
extern "C" void nvemu_ctx_switch(void **save, void *to);
__asm__(".text\n"
        ".globl nvemu_ctx_switch\n"
        ".type nvemu_ctx_switch,@function\n"
        ".p2align 4\n"
        "nvemu_ctx_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size nvemu_ctx_switch, .-nvemu_ctx_switch\n");
#endif

extern "C" void nvemu_fiber_entry(void);

namespace nvemu {
namespace {

/* Switches from the running context to `to` (a fiber, or the block's caller when NULL).
 * `dying`: the running fiber never resumes. */
void switch_to(fiber *from, fiber *to, bool dying)
{
    block_rt *b = rt;
    n_switches++;
#ifdef NVEMU_ASAN
    void *fake = NULL;
    const void *bottom = to != NULL ? (const void *)to->stack : b->main_bottom;
    size_t size = to != NULL ? (size_t)NVEMU_STACK : b->main_size;
    __sanitizer_start_switch_fiber(dying ? NULL : &fake, bottom, size);
#else
    (void)dying;
#endif
    cur_thread = to;
#if defined(__x86_64__)
    void **save = from != NULL ? &from->sp : &b->main_sp;
    nvemu_ctx_switch(save, to != NULL ? to->sp : b->main_sp);
#else
    swapcontext(from != NULL ? &from->uc : &b->main_uc, to != NULL ? &to->uc : &b->main_uc);
#endif
#ifdef NVEMU_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    cur_thread = from;
}

bool ready(const block_rt *b, const fiber *f)
{
    switch (f->state) {
    case F_READY:
        return true;
    case F_WARP:
        return b->w[f->warp].gen != f->wait_gen;
    case F_BLOCK:
        return b->gen != f->wait_gen;
    default:
        return false;
    }
}

void deadlock(fiber *me)
{
    block_rt *b = rt;
    char buf[512];
    size_t o = 0;
    int shown = 0;
    for (int i = 0; i < b->n && shown < 4; i++) {
        const fiber *f = &b->f[i];
        if (f->state == F_WARP || f->state == F_BLOCK) {
            o += (size_t)snprintf(buf + o, sizeof buf - o, "%sthread %d at %s %s:%d",
                                  shown > 0 ? ", " : "", i,
                                  f->state == F_BLOCK ? "barrier" : "warp collective",
                                  f->at != NULL ? f->at->file : "?",
                                  f->at != NULL ? f->at->line : 0);
            if (o >= sizeof buf) {
                o = sizeof buf - 1;
            }
            shown++;
        }
    }
    (void)me;
    fail("deadlock: %d live threads wait forever (%s)", b->live, buf);
}

/* The k-th candidate after fiber i (k = 1..n) under the schedule policy: the next thread in
 * order; or the next lane of the same warp first (a warp runs ahead of the others); or the
 * previous thread (reverse order). */
int candidate(const block_rt *b, int i, int k)
{
    int n = b->n;
    int j;
    if (policy == NVEMU_SCHED_WARP_FIRST) {
        int w0 = i & ~31;
        int wn = n - w0 < 32 ? n - w0 : 32;
        if (k <= wn) {
            return w0 + ((i - w0) + k) % wn;
        }
        j = w0 + wn + (k - wn) - 1; /* then the threads after this warp, cyclically */
        return j % n;
    }
    if (policy == NVEMU_SCHED_REVERSE) {
        j = i - k;
        return j < 0 ? j + n : j;
    }
    j = i + k;
    return j >= n ? j - n : j;
}

/* Runs the next runnable fiber after `me`; returns when `me` runs again. */
void schedule(fiber *me)
{
    block_rt *b = rt;
    int n = b->n;
    int i = (int)(me - b->f);
    for (int k = 1; k <= n; k++) {
        fiber *f = &b->f[candidate(b, i, k)];
        if (ready(b, f)) {
            f->state = F_READY;
            if (f == me) {
                return;
            }
            switch_to(me, f, me->state == F_DONE);
            return;
        }
    }
    if (b->live == 0) {
        switch_to(me, NULL, true);
        return;
    }
    deadlock(me);
}

void thread_exit(fiber *me)
{
    block_rt *b = rt;
    me->state = F_DONE;
    b->live--;
    warp_st &w = b->w[me->warp];
    unsigned bit = 1u << me->lane;
    w.exited |= bit;
    if (w.count > 0 && (w.members & bit) != 0) {
        fail("thread %d exited while lanes of its warp wait for it at %s:%d",
             (int)(me - b->f), w.at->file, w.at->line);
    }
    if (b->count > 0 && b->count >= b->live) {
        b->count = 0;
        b->gen++;
    }
    schedule(me);
    abort(); /* a finished fiber is never resumed */
}

void init_fiber(block_rt *b, int i, const dim3 &bd)
{
    fiber *f = &b->f[i];
    f->tid.x = (unsigned)i % bd.x;
    f->tid.y = ((unsigned)i / bd.x) % bd.y;
    f->tid.z = (unsigned)i / (bd.x * bd.y);
    f->lane = i & 31;
    f->warp = i >> 5;
    f->state = F_READY;
    f->wait_gen = 0;
    f->at = NULL;
    if (f->stack == NULL) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        char *m = (char *)mmap(NULL, NVEMU_STACK + page, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "nvemu: no memory for a fiber stack\n");
            abort();
        }
        mprotect(m, page, PROT_NONE); /* guard page: a stack overflow faults */
        f->stack = m + page;
    }
#ifdef NVEMU_ASAN
    /* A finished fiber never returns from its last frames (entry, exit, scheduler): their
     * redzones stay poisoned near the top of the stack; an abandoned one (a failed launch)
     * may leave any depth poisoned. */
    if (b->dirty) {
        __asan_unpoison_memory_region(f->stack, NVEMU_STACK);
    } else {
        __asan_unpoison_memory_region(f->stack + NVEMU_STACK - 32768, 32768);
    }
#endif
#if defined(__x86_64__)
    uintptr_t top = ((uintptr_t)f->stack + NVEMU_STACK) & ~(uintptr_t)15;
    void **sp = (void **)(top - 16);
    sp[1] = NULL;                          /* the entry's return address: never used */
    sp[0] = (void *)&nvemu_fiber_entry;    /* where the first switch "returns" */
    sp -= 6;                               /* rbp rbx r12 r13 r14 r15 */
    for (int k = 0; k < 6; k++) {
        sp[k] = NULL;
    }
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = NVEMU_STACK;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, nvemu_fiber_entry, 0);
#endif
}

block_rt *get_rt(void)
{
    if (rt == NULL) {
        rt = (block_rt *)calloc(1, sizeof(block_rt));
        if (rt == NULL) {
            fprintf(stderr, "nvemu: out of memory\n");
            abort();
        }
    }
    return rt;
}

int max_dyn_for(const void *fn)
{
    std::lock_guard<std::mutex> g(attr_mu);
    for (int i = 0; i < n_attrs; i++) {
        if (attrs[i].fn == fn) {
            return attrs[i].max_dyn;
        }
    }
    return NVEMU_DEFAULT_DYN_SMEM;
}

/* Dynamic shared memory around a block: the launch's bytes filled with 0xff (NaN floats),
 * the next NVEMU_DYN_GUARD bytes with a pattern checked after the block (a write past the end
 * fails the launch); under AddressSanitizer everything past the launch's bytes is poisoned
 * (a read or write there is reported where it happens). */
#define NVEMU_DYN_GUARD 1024
void dyn_prepare(const launch_cfg &c)
{
    for (dyn_reg *r = c.dyn != NULL ? c.dyn->head : NULL; r != NULL; r = r->next) {
        unsigned char *p = (unsigned char *)r->addr();
        size_t n = c.shmem < r->bytes ? c.shmem : r->bytes;
        size_t g = r->bytes - n < NVEMU_DYN_GUARD ? r->bytes - n : NVEMU_DYN_GUARD;
#ifdef NVEMU_ASAN
        __asan_unpoison_memory_region(p, r->bytes);
#endif
        memset(p, 0xff, n);
        for (size_t i = 0; i < g; i++) {
            p[n + i] = (unsigned char)(0xa5 ^ i);
        }
#ifdef NVEMU_ASAN
        __asan_poison_memory_region(p + n, r->bytes - n);
#endif
    }
}

bool dyn_check(const launch_cfg &c)
{
    bool ok = true;
    for (dyn_reg *r = c.dyn != NULL ? c.dyn->head : NULL; r != NULL; r = r->next) {
        unsigned char *p = (unsigned char *)r->addr();
        size_t n = c.shmem < r->bytes ? c.shmem : r->bytes;
        size_t g = r->bytes - n < NVEMU_DYN_GUARD ? r->bytes - n : NVEMU_DYN_GUARD;
#ifdef NVEMU_ASAN
        __asan_unpoison_memory_region(p + n, g);
#endif
        for (size_t i = 0; i < g; i++) {
            ok = ok && p[n + i] == (unsigned char)(0xa5 ^ i);
        }
#ifdef NVEMU_ASAN
        __asan_poison_memory_region(p + n, g);
#endif
    }
    return ok;
}

void dyn_release(const launch_cfg &c)
{
#ifdef NVEMU_ASAN
    for (dyn_reg *r = c.dyn != NULL ? c.dyn->head : NULL; r != NULL; r = r->next) {
        __asan_unpoison_memory_region(r->addr(), r->bytes);
    }
#else
    (void)c;
#endif
}

void set_error(cudaError_t e, const char *msg)
{
    last_error = e;
    snprintf(last_msg, sizeof last_msg, "%s", msg);
}

} /* namespace */

site::site(const char *f, int l, int k) : file(f), line(l), kind(k), off(false), hits(0)
{
    std::lock_guard<std::mutex> g(site_mu);
    for (int i = 0; i < n_muts; i++) {
        if (muts[i].line == l && suffix_match(f, muts[i].file)) {
            off = true;
        }
    }
    next = site_head;
    site_head = this;
}

void fail(const char *fmt, ...)
{
    block_rt *b = rt;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->msg, sizeof b->msg, fmt, ap);
    va_end(ap);
    b->failed = true;
    b->dirty = true;
    fiber *me = (fiber *)cur_thread;
    switch_to(me, NULL, true);
    abort();
}

void barrier(site &s)
{
    s.hits++;
    if (s.off) {
        return;
    }
    block_rt *b = rt;
    fiber *me = (fiber *)cur_thread;
    if (b->count == 0) {
        b->at = &s;
    } else if (b->at != &s) {
        fail("threads of one block wait at different barriers: %s:%d and %s:%d", b->at->file,
             b->at->line, s.file, s.line);
    }
    b->count++;
    if (b->count >= b->live) {
        b->count = 0;
        b->gen++;
        return;
    }
    me->state = F_BLOCK;
    me->wait_gen = b->gen;
    me->at = &s;
    schedule(me);
}

const uint64_t *warp_exchange(site &s, unsigned mask, uint64_t bits, unsigned *members)
{
    block_rt *b = rt;
    fiber *me = (fiber *)cur_thread;
    warp_st &w = b->w[me->warp];
    unsigned bit = 1u << me->lane;
    unsigned live = mask & w.present & ~w.exited;
    if ((mask & bit) == 0) {
        fail("%s:%d: lane %d calls a warp collective with mask 0x%08x that leaves it out",
             s.file, s.line, me->lane, mask);
    }
    if (w.count == 0) {
        w.at = &s;
        w.members = live;
    } else if (w.at != &s || w.members != live) {
        fail("lanes of warp %d meet at different collectives or masks: %s:%d (0x%08x) and "
             "%s:%d (0x%08x)", me->warp, w.at->file, w.at->line, w.members, s.file, s.line,
             live);
    }
    unsigned gen = w.gen;
    w.slot[gen & 1][me->lane] = bits;
    w.count++;
    if (w.count >= __builtin_popcount(w.members)) {
        w.count = 0;
        w.gen++;
    } else {
        me->state = F_WARP;
        me->wait_gen = gen;
        me->at = &s;
        schedule(me);
    }
    *members = w.members;
    return w.slot[gen & 1];
}

void syncwarp(site &s, unsigned mask)
{
    s.hits++;
    if (s.off) {
        return;
    }
    unsigned members;
    warp_exchange(s, mask, 0, &members);
}

unsigned activemask()
{
    block_rt *b = rt;
    fiber *me = (fiber *)cur_thread;
    const warp_st &w = b->w[me->warp];
    return w.present & ~w.exited;
}

void set_last_error(cudaError_t e)
{
    if (e != cudaSuccess && last_error == cudaSuccess) {
        last_error = e;
    }
}

void run_grid(const launch_cfg &c, void (*body)(void *), void *arg)
{
    char msg[1100];
    unsigned long long nt = (unsigned long long)c.block.x * c.block.y * c.block.z;
    if (nt == 0 || nt > NVEMU_MAX_THREADS || c.block.z > 64 || c.grid.x == 0 || c.grid.y == 0 ||
        c.grid.z == 0 || c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535) {
        snprintf(msg, sizeof msg, "%s:%d: invalid launch configuration grid (%u, %u, %u) block "
                 "(%u, %u, %u)", c.file, c.line, c.grid.x, c.grid.y, c.grid.z, c.block.x,
                 c.block.y, c.block.z);
        set_error(cudaErrorInvalidConfiguration, msg);
        return;
    }
    if (c.shmem > (size_t)max_dyn_for(c.fn)) {
        snprintf(msg, sizeof msg, "%s:%d: %zu bytes of dynamic shared memory, the kernel allows "
                 "%d (cudaFuncSetAttribute)", c.file, c.line, c.shmem, max_dyn_for(c.fn));
        set_error(cudaErrorInvalidValue, msg);
        return;
    }
    block_rt *b = get_rt();
    if (b->body != NULL) {
        set_error(cudaErrorNotSupported, "nested launch (a kernel launching a kernel)");
        return;
    }
    int n = (int)nt;
    b->body = body;
    b->arg = arg;
    cur_block.block_dim = c.block;
    cur_block.grid_dim = c.grid;
    bool rev = policy == NVEMU_SCHED_REVERSE;
    for (unsigned iz = 0; iz < c.grid.z; iz++) {
        for (unsigned iy = 0; iy < c.grid.y; iy++) {
            for (unsigned ix = 0; ix < c.grid.x; ix++) {
                unsigned bx = rev ? c.grid.x - 1 - ix : ix;
                unsigned by = rev ? c.grid.y - 1 - iy : iy;
                unsigned bz = rev ? c.grid.z - 1 - iz : iz;
                cur_block.block_idx = uint3{bx, by, bz};
                if (block_keep != NULL && !block_keep(cur_block.block_idx, c.grid, block_arg)) {
                    continue;
                }
                dyn_prepare(c);
                b->n = n;
                b->live = n;
                b->gen = 0;
                b->count = 0;
                b->at = NULL;
                b->failed = false;
                for (int wi = 0; wi < (n + 31) / 32; wi++) {
                    warp_st &w = b->w[wi];
                    int lanes = n - wi * 32 < 32 ? n - wi * 32 : 32;
                    w.gen = 0;
                    w.count = 0;
                    w.members = 0;
                    w.exited = 0;
                    w.at = NULL;
                    w.present = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
                }
                for (int i = 0; i < n; i++) {
                    init_fiber(b, i, c.block);
                }
                b->dirty = false;
                n_blocks++;
                switch_to(NULL, &b->f[0], false);
                if (!b->failed && !dyn_check(c)) {
                    snprintf(b->msg, sizeof b->msg, "wrote past the %zu bytes of dynamic shared "
                             "memory of the launch", c.shmem);
                    b->failed = true;
                }
                if (b->failed) {
                    dyn_release(c);
                    snprintf(msg, sizeof msg, "%s:%d: block (%u, %u, %u): %s", c.file, c.line, bx,
                             by, bz, b->msg);
                    set_error(cudaErrorLaunchFailure, msg);
                    b->body = NULL;
                    return;
                }
            }
        }
    }
    dyn_release(c);
    b->body = NULL;
}

} /* namespace nvemu */

extern "C" void nvemu_fiber_entry(void)
{
    nvemu::block_rt *b = nvemu::rt;
#ifdef NVEMU_ASAN
    const void *bottom = NULL;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(NULL, &bottom, &size);
    if (b->main_bottom == NULL) {
        b->main_bottom = bottom; /* the first fiber ever entered is entered from the caller */
        b->main_size = size;
    }
#endif
    nvemu::fiber *me = (nvemu::fiber *)nvemu::cur_thread;
    b->body(b->arg);
    nvemu::thread_exit(me);
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = nvemu::last_error;
    nvemu::last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    return nvemu::last_error;
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "cudaSuccess";
    case cudaErrorInvalidValue:
        return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
        return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
        return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure:
        return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported:
        return "cudaErrorNotSupported";
    default:
        return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t e)
{
    return e == cudaSuccess ? "no error" : nvemu::last_msg[0] != '\0' ? nvemu::last_msg
                                                                      : cudaGetErrorName(e);
}

cudaError_t nvemu_func_set_attribute(const void *fn, cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
        return cudaSuccess;
    }
    if (value < 0 || value > NVEMU_MAX_DYN_SMEM) {
        return cudaErrorInvalidValue;
    }
    std::lock_guard<std::mutex> g(nvemu::attr_mu);
    for (int i = 0; i < nvemu::n_attrs; i++) {
        if (nvemu::attrs[i].fn == fn) {
            nvemu::attrs[i].max_dyn = value;
            return cudaSuccess;
        }
    }
    if (nvemu::n_attrs == (int)(sizeof nvemu::attrs / sizeof nvemu::attrs[0])) {
        return cudaErrorMemoryAllocation;
    }
    nvemu::attrs[nvemu::n_attrs].fn = fn;
    nvemu::attrs[nvemu::n_attrs].max_dyn = value;
    nvemu::n_attrs++;
    return cudaSuccess;
}

const char *nvemu_message(void)
{
    return nvemu::last_msg;
}

int nvemu_mutate(const char *file_suffix, int line, bool on)
{
    std::lock_guard<std::mutex> g(nvemu::site_mu);
    int k = 0;
    for (int i = 0; i < nvemu::n_muts; i++) {
        if (nvemu::muts[i].line == line && strcmp(nvemu::muts[i].file, file_suffix) == 0) {
            nvemu::muts[i] = nvemu::muts[--nvemu::n_muts];
            break;
        }
    }
    if (!on && nvemu::n_muts < (int)(sizeof nvemu::muts / sizeof nvemu::muts[0])) {
        snprintf(nvemu::muts[nvemu::n_muts].file, sizeof nvemu::muts[0].file, "%s", file_suffix);
        nvemu::muts[nvemu::n_muts].line = line;
        nvemu::n_muts++;
    }
    for (nvemu::site *s = nvemu::site_head; s != NULL; s = s->next) {
        if (s->line == line && nvemu::suffix_match(s->file, file_suffix)) {
            s->off = !on;
            k++;
        }
    }
    return k;
}

void nvemu_mutate_clear(void)
{
    std::lock_guard<std::mutex> g(nvemu::site_mu);
    nvemu::n_muts = 0;
    for (nvemu::site *s = nvemu::site_head; s != NULL; s = s->next) {
        s->off = false;
    }
}

void nvemu_sites(void (*fn)(const nvemu::site *s, void *arg), void *arg)
{
    nvemu::site *head;
    {
        std::lock_guard<std::mutex> g(nvemu::site_mu);
        head = nvemu::site_head;
    }
    for (nvemu::site *s = head; s != NULL; s = s->next) {
        fn(s, arg);
    }
}

void nvemu_block_filter(bool (*keep)(uint3 block, dim3 grid, void *arg), void *arg)
{
    nvemu::block_keep = keep;
    nvemu::block_arg = arg;
}

void nvemu_schedule(int p)
{
    nvemu::policy = p;
}

void nvemu_stats(unsigned long long *switches, unsigned long long *blocks)
{
    *switches = nvemu::n_switches;
    *blocks = nvemu::n_blocks;
}
