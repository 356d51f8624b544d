# nvlm - build, test, install.  `make help` lists the targets.
#
#   make                 lib/libnvlm.so.$(VERSION), lib/libnvlm.a (only nvlm_* global), bin/nvlm
#   make test            build and run every tests/test_*.c (last line: "N passed, N failed")
#   make test SANITIZE=1 the same under ASan + UBSan (separate build tree)
#   make CC=clang        any C11 compiler; CUDA=0 leaves the CUDA backend out
#   make install PREFIX=/usr/local

VERSION_MAJOR := 0
VERSION_MINOR := 1
VERSION_PATCH := 0
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
DESTDIR ?=

CC ?= cc
CXX ?= c++
CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(CUDA_HOME)/bin/nvcc
ifeq ($(origin CUDA), undefined)
CUDA := $(if $(wildcard $(NVCC)),1,0)
endif
SANITIZE ?= 0

ifeq ($(SANITIZE),1)
BUILD := build/san
OUT := build/san
OPT ?= -O1 -g -fno-omit-frame-pointer
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined
CUDA := 0
else ifeq ($(SANITIZE),thread)
BUILD := build/tsan
OUT := build/tsan
OPT ?= -O1 -g
SANFLAGS := -fsanitize=thread
CUDA := 0
else
BUILD := build/obj
OUT := .
OPT ?= -O2 -g
SANFLAGS :=
endif
# O=DIR puts every output (objects, lib/, bin/) under DIR: parallel builds that do not collide.
ifneq ($(O),)
BUILD := $(O)/obj
OUT := $(O)
endif

LIBOUT := $(OUT)/lib
BINOUT := $(OUT)/bin

# What the library itself needs (also nvlm.pc's Libs.private). OpenBLAS is only the CPU engine
# benchmark's reference (BLAS_LIBS), never linked into the library.
PKGS_LIBS := -lcjson -lpng -ljpeg -lpcre2-8 -lutf8proc -lm -lpthread
BLAS_CPPFLAGS := -I/usr/include/openblas
BLAS_LIBS := -lopenblas
WARN := -Wall -Wextra -Wno-unused-parameter
CPPFLAGS += -Iinclude -Isrc -I/usr/include/cjson -D_GNU_SOURCE
CFLAGS += -std=c11 $(OPT) $(WARN) -fPIC -fvisibility=hidden -pthread -ffp-contract=off $(SANFLAGS)
CXXFLAGS += -std=c++17 $(OPT) $(WARN) -pthread $(SANFLAGS)
LDFLAGS += -pthread $(SANFLAGS)

LIB_SRC := $(wildcard src/*.c src/cpu/*.c src/tp/*.c src/plugin/*.c)
CUDA_SRC := $(wildcard src/cuda/*.cu)
CLI_SRC := $(wildcard src/cli/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_UTIL_SRC := tests/testutil.c
BENCH_SRC := $(wildcard bench/*.c)

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_CXX_SRC := $(wildcard tests/test_*.cpp)
TEST_BIN += $(TEST_CXX_SRC:tests/%.cpp=$(BUILD)/tests/%)
TEST_UTIL_OBJ := $(TEST_UTIL_SRC:%.c=$(BUILD)/%.o)

# The CUDA backend is a plugin, $(LIBOUT)/libnvlm-cuda.so.0, that the core dlopens when a
# context asks for CUDA: its objects (the .cu files, its entry point and the pure tensor helpers
# it shares with the core) and the CUDA libraries are linked into it alone. The core only learns
# that the build has one (NVLM_WITH_CUDA) and links libdl.
ifeq ($(CUDA)$(if $(CUDA_SRC),1,0),11)
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
PLUGIN_OBJ := $(CUDA_OBJ) $(patsubst %.c,$(BUILD)/%.o,$(wildcard src/cuda/*.c)) \
              $(BUILD)/src/tensor.o $(BUILD)/src/upload_host.o
CPPFLAGS += -DNVLM_WITH_CUDA=1
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart
NVCCFLAGS ?= -O2 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden -Iinclude -Isrc \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a
PLUGIN := $(LIBOUT)/libnvlm-cuda.so.$(VERSION)
else
CUDA_OBJ :=
PLUGIN_OBJ :=
CUDA_LIBS :=
PLUGIN :=
endif

LIBS := $(PKGS_LIBS) -ldl

SONAME := libnvlm.so.$(VERSION_MAJOR)
SHLIB := $(LIBOUT)/libnvlm.so.$(VERSION)
STLIB := $(LIBOUT)/libnvlm.a
# Tests and benchmarks reach internal functions: they link this archive of the plain objects
# (never installed) instead of $(STLIB), whose internal symbols are all local.
INTLIB := $(BUILD)/libnvlm-internal.a
PRELINK := $(BUILD)/nvlm-prelink.o
CLI := $(BINOUT)/nvlm
OBJCOPY ?= objcopy

.SECONDARY:
.PHONY: all lib test check bench fuzz fuzz-all fuzz-image bench-image fuzz-tokenizer bench-tokenizer demo install uninstall clean help deps
all: $(SHLIB) $(STLIB) $(CLI) $(PLUGIN)
lib: $(SHLIB) $(STLIB) $(PLUGIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DNVLM_WITH_CUDA=1 -MMD -MP -c $< -o $@

# -z nodelete: dlclose never unmaps the library, so handles still live at dlclose (the CPU
# pool's worker threads run library code) cannot fault, and a later dlopen finds it loaded.
$(SHLIB): $(LIB_OBJ) src/nvlm.map
	@mkdir -p $(LIBOUT)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=src/nvlm.map -Wl,--no-undefined \
	    -Wl,-z,nodelete $(LDFLAGS) -o $@ $(LIB_OBJ) $(LIBS)
	ln -sf libnvlm.so.$(VERSION) $(LIBOUT)/$(SONAME)
	ln -sf $(SONAME) $(LIBOUT)/libnvlm.so

# The CUDA plugin exports its entry point only (src/cuda/plugin.map).
$(PLUGIN): $(PLUGIN_OBJ) src/cuda/plugin.map
	@mkdir -p $(LIBOUT)
	$(CXX) -shared -Wl,-soname,libnvlm-cuda.so.$(VERSION_MAJOR) \
	    -Wl,--version-script=src/cuda/plugin.map -Wl,--no-undefined -Wl,-z,nodelete \
	    $(LDFLAGS) -o $@ $(PLUGIN_OBJ) $(CUDA_LIBS) -lm -lpthread
	ln -sf libnvlm-cuda.so.$(VERSION) $(LIBOUT)/libnvlm-cuda.so.$(VERSION_MAJOR)

# The static library is one object: every library object pre-linked with
# `ld -r` (through the compiler driver: the toolchain's own linker), then every defined global
# not named nvlm_* made local (hidden ones by --localize-hidden, any other by
# --keep-global-symbol). Hidden visibility does not hide anything inside an archive: without
# this an application's own img_resize or tok_encode would replace ours (or clash with it) at
# link time. Undefined references stay global.
$(PRELINK): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -r -nostdlib -o $@.tmp $^
	$(OBJCOPY) --localize-hidden --wildcard --keep-global-symbol='nvlm_*' $@.tmp $@
	rm -f $@.tmp

$(STLIB): $(PRELINK)
	@mkdir -p $(LIBOUT)
	rm -f $@
	ar rcs $@ $<

$(INTLIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# The CLI uses the public API only: it links the installed form of the static library.
$(CLI): $(CLI_OBJ) $(STLIB)
	@mkdir -p $(BINOUT)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(STLIB) $(LIBS)

# Test binaries link the internal archive so they can reach internal functions as well; their
# run path names this tree's lib/, where the loader finds the CUDA plugin.
PLUGIN_RPATH := -Wl,-rpath,$(abspath $(LIBOUT))
$(BUILD)/tests/%: tests/%.c $(TEST_UTIL_OBJ) $(INTLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) -MMD -MP -o $@ $< $(TEST_UTIL_OBJ) $(INTLIB) $(LIBS) \
	    $(LDFLAGS) $(PLUGIN_RPATH)

# The dlopen test links only libdl and loads the shared library of the same build tree at run time.
$(BUILD)/tests/test_dlopen: tests/test_dlopen.c $(TEST_UTIL_OBJ) $(SHLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) -DNVLM_TEST_SHLIB='"$(LIBOUT)/$(SONAME)"' -MMD -MP \
	    -o $@ $< $(TEST_UTIL_OBJ) -ldl $(LDFLAGS)

# The plugin test also checks the built libraries and the CLI, and links the plugin's
# lost-context registry (plain C) to test it without a GPU.
$(BUILD)/tests/test_plugin: tests/test_plugin.c $(TEST_UTIL_OBJ) $(INTLIB) \
                            $(BUILD)/src/cuda/fault.o $(SHLIB) $(STLIB) $(CLI) $(PLUGIN)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) -DNVLM_TEST_LIBDIR='"$(LIBOUT)"' -MMD -MP -o $@ $< \
	    $(TEST_UTIL_OBJ) $(BUILD)/src/cuda/fault.o $(INTLIB) $(LIBS) $(LDFLAGS) $(PLUGIN_RPATH)

# test_json fails cJSON parses on demand to check the out-of-memory status.
$(BUILD)/tests/test_json: private LDFLAGS += -Wl,--wrap=cJSON_ParseWithLengthOpts

# Host emulation of the CUDA kernels (src/cuda/emu/cuda_host.h): the kernel files listed in
# CUDA_EMU_SRC compile with the host C++ compiler and run on the CPU against the CPU backend in
# the C++ tests (tests/test_*.cpp: each links every emulated kernel file and the internal
# archive), on every machine (no CUDA toolkit needed). A new kernel file goes into
# CUDA_EMU_SRC. The storage behind each `extern __shared__ T name[];` is declared by a
# generated header (NVEMU_DYN_SHARED(name, T), one line per declaration). Sanitizer builds
# define NVLM_EMU_SMALL: the tests run small shapes.
CUDA_EMU_SRC := src/cuda/act.cu src/cuda/attention.cu src/cuda/norm.cu src/cuda/rope.cu \
                src/cuda/rows.cu src/cuda/fp8.cu src/cuda/fused.cu src/cuda/flash_attn.cu \
                src/cuda/sample.cu src/cuda/gemm_pad.cu
EMU_BUILD := $(BUILD)/emu
CUDA_EMU_OBJ := $(CUDA_EMU_SRC:%.cu=$(EMU_BUILD)/%.o) $(EMU_BUILD)/src/cuda/emu/cuda_host.o
EMU_CXXFLAGS := -std=c++17 $(OPT) $(WARN) -pthread -ffp-contract=off $(SANFLAGS) \
                -include src/cuda/emu/cuda_host.h -Isrc/cuda/emu/include -Iinclude -Isrc \
                -I/usr/include/cjson -D_GNU_SOURCE $(if $(filter 0,$(SANITIZE)),,-DNVLM_EMU_SMALL) \
                -Dcuda_blocks=cuda_emu_blocks

$(EMU_BUILD)/%.dyn.h: %.cu
	@mkdir -p $(dir $@)
	sed -n 's/^[[:space:]]*extern[[:space:]]\{1,\}__shared__[[:space:]]\{1,\}\(.*[^[:alnum:]_]\)\([[:alpha:]_][[:alnum:]_]*\)[[:space:]]*\[[[:space:]]*\][[:space:]]*;.*/NVEMU_DYN_SHARED(\2, \1)/p' $< | sort -u > $@

$(EMU_BUILD)/%.o: %.cu $(EMU_BUILD)/%.dyn.h
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -include $(EMU_BUILD)/$*.dyn.h -MMD -MP -x c++ -c $< -o $@

$(EMU_BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/tests/%: tests/%.cpp $(CUDA_EMU_OBJ) $(TEST_UTIL_OBJ) $(INTLIB)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -Itests -MMD -MP -o $@ $< $(CUDA_EMU_OBJ) $(TEST_UTIL_OBJ) $(INTLIB) \
	    $(LIBS) $(LDFLAGS)

test: $(TEST_BIN) $(CLI) $(SHLIB) $(PLUGIN)
	@NVLM_CLI=$(CLI) sh tests/run_tests.sh $(TEST_BIN)

check: test

# The concurrency test (8 sessions on 4 threads, plain and over 2 tensor-parallel CPU ranks),
# the local communicator and the tensor-parallel synthetic models and failing rank under
# ThreadSanitizer, in their own build tree.
.PHONY: tsan-test
tsan-test:
	$(MAKE) O=build/tsan SANITIZE=thread build/tsan/obj/tests/test_concurrency \
	    build/tsan/obj/tests/test_tp_comm build/tsan/obj/tests/test_tp
	TSAN_OPTIONS=halt_on_error=1 build/tsan/obj/tests/test_concurrency
	TSAN_OPTIONS=halt_on_error=1 build/tsan/obj/tests/test_tp_comm
	TSAN_OPTIONS=halt_on_error=1 build/tsan/obj/tests/test_tp --synthetic

# libFuzzer (clang): the library sources (CPU only) instrumented with ASan + UBSan.
# `make fuzz` runs the safetensors header/config parser for FUZZ_SECONDS (default 60);
# `make fuzz-image`, `make fuzz-tokenizer` the decoders and the tokenizer; `make fuzz-all` all three
# (the safetensors target for FUZZ_SECONDS, the others for FUZZ_SECONDS_OTHER).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DIR := build/fuzz
FUZZ_FLAGS := -std=c11 -g -O1 -fno-omit-frame-pointer $(WARN) -pthread \
              -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_SECONDS_OTHER ?= 30
FUZZ_CPPFLAGS := -Iinclude -Isrc -I/usr/include/cjson -D_GNU_SOURCE
FUZZ_LIB_SRC := $(LIB_SRC)
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_DIR)/obj/%.o)

$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_DIR)/fuzz_safetensors: fuzz/fuzz_safetensors.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $^ $(PKGS_LIBS)

fuzz: $(FUZZ_DIR)/fuzz_safetensors
	@mkdir -p $(FUZZ_DIR)/corpus
	$(FUZZ_DIR)/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	    -dict=fuzz/safetensors.dict -print_final_stats=1 $(FUZZ_DIR)/corpus fuzz/seeds

# The image decoders (PNG, JPEG) fuzzed from the fixtures and the hostile corpus.
$(FUZZ_DIR)/fuzz_image: fuzz/fuzz_image.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $^ $(PKGS_LIBS)

fuzz-image: $(FUZZ_DIR)/fuzz_image
	@mkdir -p $(FUZZ_DIR)/corpus-image $(FUZZ_DIR)/seeds-image
	cp tests/data/image/hostile/* tests/data/image/conv/*.png tests/data/images/tiny_1x1.png \
	    tests/data/images/chelsea_422_127x121.jpg tests/data/images/camera_la_96.png \
	    tests/data/images/astronaut_progressive_151x139.jpg $(FUZZ_DIR)/seeds-image/
	$(FUZZ_DIR)/fuzz_image -max_total_time=$(FUZZ_SECONDS_OTHER) -max_len=65536 -rss_limit_mb=4096 \
	    -print_final_stats=1 $(FUZZ_DIR)/corpus-image $(FUZZ_DIR)/seeds-image

# tokenizer.json loading and encoding fuzzed from the tiny fixture and hand-made seeds.
$(FUZZ_DIR)/fuzz_tokenizer: fuzz/fuzz_tokenizer.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $^ $(PKGS_LIBS)

fuzz-tokenizer: $(FUZZ_DIR)/fuzz_tokenizer
	@mkdir -p $(FUZZ_DIR)/corpus-tokenizer
	$(FUZZ_DIR)/fuzz_tokenizer -max_total_time=$(FUZZ_SECONDS_OTHER) -max_len=65536 \
	    -rss_limit_mb=4096 -print_final_stats=1 $(FUZZ_DIR)/corpus-tokenizer fuzz/seeds-tokenizer

fuzz-all: fuzz fuzz-image fuzz-tokenizer

-include $(shell find $(FUZZ_DIR) -name '*.d' 2>/dev/null)

# Image preprocessing speed against Pillow on the same inputs (bench/bench_image*.{c,py}).
$(BUILD)/bench/bench_image: bench/bench_image.c $(INTLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(INTLIB) $(LIBS) $(LDFLAGS)

bench: bench-image bench-tokenizer
bench-image: $(BUILD)/bench/bench_image
	$(BUILD)/bench/bench_image build/bench-image 5
	@python3 bench/bench_image_pillow.py build/bench-image 5 || \
	    echo "SKIP Pillow comparison: python3 with Pillow and numpy not available"

# CUDA backend speed at NVLM-D-72B layer shapes with in-run ceilings (bench/bench_cuda.c);
# prints a SKIP line without a device. BENCH_CUDA_ARGS=--quick for a short run.
.PHONY: bench-cuda
$(BUILD)/bench/bench_cuda: bench/bench_cuda.c $(INTLIB) $(PLUGIN)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(INTLIB) $(LIBS) $(LDFLAGS) $(PLUGIN_RPATH)

bench-cuda: $(BUILD)/bench/bench_cuda
	$(BUILD)/bench/bench_cuda $(BENCH_CUDA_ARGS)

# Tokenizer load time, RSS and encoding speed against Hugging Face tokenizers (one thread).
$(BUILD)/bench/bench_tokenizer: bench/bench_tokenizer.c $(INTLIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(INTLIB) $(LIBS) $(LDFLAGS)

bench-tokenizer: $(BUILD)/bench/bench_tokenizer
	$(BUILD)/bench/bench_tokenizer build/bench-tokenizer
	@if python3 -c "import tokenizers" 2>/dev/null; then \
	    python3 bench/bench_tokenizer_hf.py build/bench-tokenizer; \
	else echo "SKIP tokenizers comparison: python3 with tokenizers not available"; fi

demo: deps all
	$(CLI) info tests/data/tiny-nvlm-d
	$(CLI) generate tests/data/tiny-nvlm-d -i tests/data/images/coffee_600x400.jpg \
	    -p "Please describe the image shortly." -n 16

# Installs the Debian packages the build needs when they are missing (root or sudo).
DEB_PKGS := build-essential pkg-config libcjson-dev libpng-dev libjpeg62-turbo-dev \
            libpcre2-dev libutf8proc-dev libopenblas-dev
deps:
	@sh tools/install-deps.sh $(DEB_PKGS)

# nvlm.pc links the shared library (--static adds its private libraries); nvlm-static.pc names
# libnvlm.a itself, so `pkg-config --libs --static nvlm-static` never picks the .so.
PC_SED = sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
             -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
             -e 's|@LIBS_PRIVATE@|$(LIBS)|g'
install: $(SHLIB) $(STLIB) $(CLI) $(PLUGIN)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/nvlm $(DESTDIR)$(LIBDIR)/pkgconfig \
	    $(DESTDIR)$(BINDIR)
	install -m 644 include/nvlm/nvlm.h $(DESTDIR)$(INCLUDEDIR)/nvlm/
	install -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf libnvlm.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libnvlm.so
	install -m 644 $(STLIB) $(DESTDIR)$(LIBDIR)/
	$(if $(PLUGIN),install -m 755 $(PLUGIN) $(DESTDIR)$(LIBDIR)/)
	$(if $(PLUGIN),ln -sf libnvlm-cuda.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libnvlm-cuda.so.$(VERSION_MAJOR))
	install -m 755 $(CLI) $(DESTDIR)$(BINDIR)/
	$(PC_SED) pkgconfig/nvlm.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/nvlm.pc
	$(PC_SED) pkgconfig/nvlm-static.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/nvlm-static.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libnvlm.* $(DESTDIR)$(LIBDIR)/libnvlm-cuda.* \
	    $(DESTDIR)$(LIBDIR)/pkgconfig/nvlm.pc \
	    $(DESTDIR)$(LIBDIR)/pkgconfig/nvlm-static.pc $(DESTDIR)$(BINDIR)/nvlm
	rm -rf $(DESTDIR)$(INCLUDEDIR)/nvlm

clean:
	rm -rf build bin lib/libnvlm.* lib/libnvlm-cuda.*

help:
	@sed -n '1,10p' Makefile

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# CPU engine benchmark: kernel GEMMs vs OpenBLAS and a copy-bandwidth probe, then the engine
# end to end on a synthetic model in memory (bench/nvlm_bench.c, src/synthetic.c).
# The probes in the bench are plain C loops compiled for the machine that runs them (the
# library itself picks its SIMD path at run time).
BENCH_ARCH ?= -march=native
$(BINOUT)/nvlm-bench: bench/nvlm_bench.c $(INTLIB)
	@mkdir -p $(BINOUT)
	$(CC) $(CPPFLAGS) $(BLAS_CPPFLAGS) $(CFLAGS) $(BENCH_ARCH) -o $@ $< $(INTLIB) $(LIBS) \
	    $(BLAS_LIBS) $(LDFLAGS)

.PHONY: bench-engine
bench: bench-engine
bench-engine: $(BINOUT)/nvlm-bench
	$(BINOUT)/nvlm-bench

# Every benchmark built, none run (CI checks that they compile; timings are not CI's business).
.PHONY: bench-build
bench-build: $(BINOUT)/nvlm-bench $(BUILD)/bench/bench_image $(BUILD)/bench/bench_tokenizer \
             $(if $(CUDA_OBJ),$(BUILD)/bench/bench_cuda)
