#!/bin/sh
# Installs nvlm into a temporary prefix and builds examples/c/info.c against the installed tree
# only (pkg-config: nvlm for the shared library, nvlm-static for libnvlm.a), runs it on the tiny
# fixture, and checks that the shared library exports nothing but nvlm_* symbols and the NVLM_0
# version node, that libnvlm.a defines no global symbol but nvlm_* (tests/static_consumer.c,
# which defines functions named like the library's internals, links it and runs right), and that
# the CLI and the CUDA plugin (CUDA builds) are installed.
# Usage: sh tests/install_check.sh   (from the repository root; prints "install check: OK")
set -eu
CC=${CC:-cc}
MAKE=${MAKE:-make}
root=$(pwd)
tmp=$(mktemp -d /tmp/nvlm_install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"

# Installs from the default build tree (lib/, build/obj/): in CI that tree is already built by
# `make test`, so nothing (CUDA code included) is compiled a second time.
$MAKE -s install PREFIX="$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
unset CPATH C_INCLUDE_PATH LIBRARY_PATH 2>/dev/null || true
pkg-config --exists nvlm
pkg-config --exists nvlm-static
[ "$(pkg-config --modversion nvlm-static)" = "$(pkg-config --modversion nvlm)" ]
# The library needs no OpenBLAS (only the CPU engine benchmark links it).
if pkg-config --libs --static nvlm | grep -q openblas; then
    echo "nvlm.pc lists OpenBLAS" >&2
    exit 1
fi
if readelf -d "$prefix/lib/libnvlm.so" | grep NEEDED | grep -q openblas; then
    echo "libnvlm.so needs OpenBLAS" >&2
    exit 1
fi
# -z nodelete: dlclose never unmaps the library (tests/test_dlopen.c checks the behaviour).
readelf -d "$prefix/lib/libnvlm.so" | grep FLAGS_1 | grep -q NODELETE
# make install installs the CLI.
"$prefix/bin/nvlm" info "$root/tests/data/tiny-nvlm-d" | grep -q '^llm .*hidden 128'
# The CUDA plugin (CUDA builds): installed beside libnvlm, found by the installed CLI (its
# prefix/bin/../lib), which then reports the CUDA runtime's own reason on a machine without a
# device instead of a missing plugin; the core library needs no CUDA library.
if [ -e lib/libnvlm-cuda.so.0 ]; then
    [ -x "$prefix/lib/libnvlm-cuda.so.0" ]
    if readelf -d "$prefix/lib/libnvlm.so" | grep NEEDED | grep -qi 'cuda\|cublas'; then
        echo "libnvlm.so needs a CUDA library" >&2
        exit 1
    fi
    if out=$("$prefix/bin/nvlm" generate "$root/tests/data/tiny-nvlm-d" -p hi -n 1 \
             --backend cuda 2>&1); then
        : # a machine with a device: the plugin was found and ran
    elif echo "$out" | grep -q 'not found'; then
        echo "installed CLI does not find the installed plugin: $out" >&2
        exit 1
    fi
fi
[ "$(pkg-config --modversion nvlm)" = "$(sed -n 's/^#define NVLM_VERSION_STRING "\(.*\)"/\1/p' include/nvlm/nvlm.h)" ]

# Build outside the repository so no repo header can be picked up by accident.
cp examples/c/info.c "$tmp/info.c"
cd "$tmp"
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Werror info.c $(pkg-config --cflags --libs nvlm) \
    -Wl,-rpath,"$prefix/lib" -o info_shared
# Static: nvlm-static.pc names libnvlm.a itself and every library it needs.
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Werror info.c $(pkg-config --cflags --libs --static nvlm-static) \
    -o info_static

# The shared build must use the installed .so; the static one must not need it.
ldd ./info_shared | grep -q "$prefix/lib/libnvlm.so.0"
no_libnvlm_needed() {
    if readelf -d "$1" | grep NEEDED | grep -q libnvlm; then
        echo "$1: statically linked consumer needs libnvlm.so" >&2
        exit 1
    fi
}
no_libnvlm_needed info_static

for bin in info_shared info_static; do
    out=$(./$bin "$root/tests/data/tiny-nvlm-d" --full)
    echo "$out" | grep -qx "vision_hidden_size 64"
    echo "$out" | grep -qx "llm_num_hidden_layers 3"
    echo "$out" | grep -qx "n_params 2013152"
    echo "$out" | grep -qx "weights_loaded 1"
    out=$(./$bin "$root/tests/data/nvlm-d-72b")
    echo "$out" | grep -qx "n_params 79379593344"
done

# libnvlm.a: one pre-linked object whose only defined globals are nvlm_* (internal functions
# are local, so an application's own img_resize or tok_encode never meets ours).
st="$prefix/lib/libnvlm.a"
bad=$(nm -g --defined-only "$st" | awk 'NF == 3 && $3 !~ /^nvlm_/ {print $3}')
if [ -n "$bad" ]; then
    echo "libnvlm.a defines non-nvlm_ global symbols:" >&2
    echo "$bad" | head -n 20 >&2
    exit 1
fi
nm -g --defined-only "$st" | grep -q ' T nvlm_image_load_file$'
# An application that defines functions and data named like the library's internals links
# libnvlm.a through nvlm-static.pc, keeps its own functions, and gets the same image tiles and
# tokens as the same program linked against the shared library.
cp "$root/tests/static_consumer.c" "$tmp/"
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Werror static_consumer.c \
    $(pkg-config --cflags --libs --static nvlm-static) -o consumer_static
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Werror static_consumer.c $(pkg-config --cflags --libs nvlm) \
    -Wl,-rpath,"$prefix/lib" -o consumer_shared
no_libnvlm_needed consumer_static
img="$root/tests/data/images/coffee_600x400.jpg"
out_static=$(./consumer_static "$root/tests/data/tiny-nvlm-d" "$img")
out_shared=$(./consumer_shared "$root/tests/data/tiny-nvlm-d" "$img")
echo "$out_static" | grep -q '^image 600x400 grid 3x2 tiles 7 hash '
echo "$out_static" | grep -Eq '^tokens( [0-9]+){6}$'
if [ "$out_static" != "$out_shared" ]; then
    printf 'static and shared consumers differ:\n%s\n---\n%s\n' "$out_static" "$out_shared" >&2
    exit 1
fi

# The engine examples (C and C++) build against the installed tree only and run.
cp "$root/examples/c/caption.c" "$root/examples/cpp/chat.cpp" "$tmp/"
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Werror caption.c $(pkg-config --cflags --libs nvlm) \
    -Wl,-rpath,"$prefix/lib" -o caption
# shellcheck disable=SC2046
${CXX:-c++} -std=c++17 -Wall -Wextra -Werror chat.cpp $(pkg-config --cflags --libs nvlm) \
    -Wl,-rpath,"$prefix/lib" -o chat
[ -n "$(./caption "$root/tests/data/tiny-nvlm-d" "$root/tests/data/images/chelsea_square_160.png" \
    2>/dev/null)" ]
printf 'Hello\n' | ./chat "$root/tests/data/tiny-nvlm-d" >/dev/null 2>&1

# Exported symbols: nvlm_* functions and the NVLM_0 version node only.
so="$prefix/lib/libnvlm.so"
[ "$(readlink "$so")" = "libnvlm.so.0" ]
objdump -p "$so" | grep -q "SONAME *libnvlm.so.0$"
bad=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^nvlm_' | grep -vx 'NVLM_0' || true)
if [ -n "$bad" ]; then
    echo "unexpected exported symbols:" >&2
    echo "$bad" >&2
    exit 1
fi
nm -D --defined-only "$so" | grep -q ' NVLM_0$'
nm -D --defined-only --with-symbol-versions "$so" 2>/dev/null | grep -q 'nvlm_model_load@@NVLM_0'
echo "install check: OK ($(nm -D --defined-only "$so" | grep -c ' nvlm_') nvlm_* symbols;" \
    "libnvlm.a: $(nm -g --defined-only "$st" | grep -c ' nvlm_') global, all nvlm_*)"
