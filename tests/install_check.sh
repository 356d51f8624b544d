#!/bin/sh
# Installs nvlm into a temporary prefix and builds examples/c/info.c against the installed tree
# only (pkg-config, shared and --static), runs it on the tiny fixture, and checks that the
# shared library exports nothing but nvlm_* symbols and the NVLM_0 version node.
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
[ "$(pkg-config --modversion nvlm)" = "$(sed -n 's/^#define NVLM_VERSION_STRING "\(.*\)"/\1/p' include/nvlm/nvlm.h)" ]

# Build outside the repository so no repo header can be picked up by accident.
cp examples/c/info.c "$tmp/info.c"
cd "$tmp"
# shellcheck disable=SC2046
$CC -std=c11 -Wall -Wextra -Werror info.c $(pkg-config --cflags --libs nvlm) \
    -Wl,-rpath,"$prefix/lib" -o info_shared
# --static: the private libraries come from nvlm.pc; -Bstatic makes -lnvlm pick libnvlm.a.
static_libs=$(pkg-config --libs --static nvlm | sed 's/-lnvlm/-Wl,-Bstatic -lnvlm -Wl,-Bdynamic/')
# shellcheck disable=SC2046,SC2086
$CC -std=c11 -Wall -Wextra -Werror info.c $(pkg-config --cflags nvlm) $static_libs -o info_static

# The shared build must use the installed .so; the static one must not need it.
ldd ./info_shared | grep -q "$prefix/lib/libnvlm.so.0"
if ldd ./info_static | grep -q libnvlm; then
    echo "static consumer links libnvlm.so" >&2
    exit 1
fi

for bin in info_shared info_static; do
    out=$(./$bin "$root/tests/data/tiny-nvlm-d" --full)
    echo "$out" | grep -qx "vision_hidden_size 64"
    echo "$out" | grep -qx "llm_num_hidden_layers 3"
    echo "$out" | grep -qx "n_params 2013152"
    echo "$out" | grep -qx "weights_loaded 1"
    out=$(./$bin "$root/tests/data/nvlm-d-72b")
    echo "$out" | grep -qx "n_params 79379593344"
done

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
echo "install check: OK ($(nm -D --defined-only "$so" | grep -c ' nvlm_') nvlm_* symbols)"
