#!/bin/sh
# gpu_check.sh - the device check of the CUDA backend, in two halves, plus a dry run for CI.
#
#   sh tools/gpu_check.sh pack   on the CPU machine (nvcc present): builds with CUDA (into
#                                build/cuda; GPU_CHECK_O= for the default tree), packs the test
#                                and bench binaries (debug info stripped), lib/ with the plugin
#                                and the Debian libraries they need into build/gpu-pack, and
#                                checks that the working tree plus the pack stay under 64 MiB
#                                (what the device tool carries). Models are never packed: the
#                                real-shape one is generated on the device machine from a seed.
#   sh tools/gpu_check.sh run    on the device machine, from the repository root with the pack
#                                carried: the steps below under ONE global deadline
#                                (GPU_CHECK_SECONDS, default 285 s: two runs plus the machine's
#                                start fit 15 minutes of device time), each step under its own
#                                time slice. Each result is appended to $OUT/gpu_check.tsv as
#                                soon as it is known (step, result, seconds, detail), so a run
#                                cut short still returns what it learnt; the steps' output goes
#                                to $OUT/gpu_check.log (each step's last 256 KiB).
#   sh tools/gpu_check.sh dry    CI, no device: packs from the default tree and runs `run` twice
#                                with the device forced absent (every step a SKIP row) and with
#                                a deadline of 0 (every step a deadline SKIP row), then checks
#                                the rows. Seconds.
#
# Environment: OUT (where the rows go; build/gpu-check-out when unset), GPU_CHECK_SECONDS (the
# deadline), GPU_CHECK_ONLY (steps to run), GPU_CHECK_REQUIRE_DEVICE=1 (no device is exit 3),
# GPU_CHECK_PACK (build/gpu-pack), GPU_CHECK_O (pack's build tree), GPU_CHECK_NO_DEVICE=1 (act
# as if there were none), GPU_CHECK_FAKE_DEVICE=1 (run every step without one: tests this
# script's result handling; the tests then FAIL for printing SKIP).
#
# Steps of `run` (names for GPU_CHECK_ONLY="name name ..."; the others get "not selected" rows):
#   device        nvidia-smi: name, driver, memory (no device: every later step is a SKIP row)
#   libs          every packed binary and the plugin resolve their shared libraries
#   test_cuda     every op against the CPU op, the tiny model's goldens, tensor parallelism
#   memcheck, racecheck, synccheck, initcheck
#                 compute-sanitizer on `test_cuda --ops` (the op checks, small shapes); a
#                 sanitizer that refuses the device (gVisor machines) is a SKIP row
#   feed2200      test_cuda_model: the tiny model fed 2,200 ids (two decoder passes) on CUDA vs
#                 the CPU, teacher-forced (rel-L2 <= 2e-2, same argmax)
#   real_shape    test_cuda_model --real-shape: a synthetic model at NVLM-D-72B's dimensions,
#                 2 LLM + 2 ViT layers, generated in memory from a seed on each side, on CUDA vs
#                 the CPU backend on this machine's cores (rel-L2 <= 2e-2, same argmax)
#   breakdown     bench_cuda --breakdown 8192,32768: batch-1 decode per layer at 8k and 32k
#                 context: the step, its GEMMs and the rest, host enqueue us/layer, bytes read
#                 against the in-run read-bandwidth probe (informational)
#   goldens_cuda  test_session with NVLM_BACKEND=cuda (the harness's opt-in): the public-API
#                 goldens on CUDA (informational: their fp32 tolerances are tighter than bf16)
#   bench_cuda    bench_cuda --quick: ceilings, decode, prefill, ViT per layer (informational)
#   (then the marked place for further device checks, at the end of this file's run part)
#
# Results: PASS, FAIL, TIME (the step ran out of its slice: a failure), SKIP (not run: no
# device, deadline, not selected, tool refused), INFO (informational steps, never a failure).
# A test that prints SKIP on a machine with a device is a FAIL.
#
# Device tool call (docs/cuda.md "Running the device check"):
#   run(command="GPU_CHECK_REQUIRE_DEVICE=1 sh tools/gpu_check.sh run",
#       carry=["build/gpu-pack"], timeout_s=330)
# Exit status: 0 no step failed (SKIPs allowed); 1 a check failed or timed out; 2 usage, no
# pack, or the pack failed/too large; 3 no device while GPU_CHECK_REQUIRE_DEVICE=1.
set -u
PACK=${GPU_CHECK_PACK:-build/gpu-pack}
mode=${1:-run}
LIMIT_BYTES=$((64 * 1024 * 1024))

# ---- pack (CPU machine) ------------------------------------------------------------------------
# Test binaries the device run needs (tests/<name>.c).
PACK_TESTS="test_cuda test_cuda_model test_session"
# >>> further device checks: add the test binaries they need here, e.g.
# PACK_TESTS="$PACK_TESTS test_cuda_emu"
# <<<

do_pack() {
    O=${GPU_CHECK_O-build/cuda}
    if [ -n "$O" ]; then
        MK="make O=$O"; BLD=$O/obj; LIBD=$O/lib; BIND=$O/bin
    else
        MK="make"; BLD=build/obj; LIBD=lib; BIND=bin
    fi
    targets="all $BLD/bench/bench_cuda"
    for t in $PACK_TESTS; do
        [ -f "tests/$t.c" ] && targets="$targets $BLD/tests/$t"
    done
    mkdir -p build
    # shellcheck disable=SC2086
    if ! $MK -j"$(nproc 2>/dev/null || echo 2)" $targets >build/gpu-pack.build.log 2>&1; then
        tail -n 30 build/gpu-pack.build.log
        echo "gpu_check pack: build failed (build/gpu-pack.build.log)"
        return 2
    fi
    rm -rf "$PACK"
    mkdir -p "$PACK/bin" "$PACK/lib" "$PACK/rt"
    for t in $PACK_TESTS; do
        [ -f "$BLD/tests/$t" ] && cp "$BLD/tests/$t" "$PACK/bin/"
    done
    cp "$BLD/bench/bench_cuda" "$BIND/nvlm" "$PACK/bin/"
    strip --strip-debug "$PACK"/bin/* 2>/dev/null
    if [ -e "$LIBD/libnvlm-cuda.so.0" ]; then
        cp -P "$LIBD"/libnvlm-cuda.so.0* "$PACK/lib/"
        strip --strip-debug "$PACK"/lib/libnvlm-cuda.so.0.* 2>/dev/null
    else
        echo "gpu_check pack: no $LIBD/libnvlm-cuda.so.0 (a CUDA=0 build): the device run" \
             "will report the plugin missing"
    fi
    # Debian libraries the device image may lack; CUDA's own (cudart, cublasLt: 500+ MiB) are
    # the device's.
    for b in "$PACK"/bin/* "$PACK"/lib/libnvlm-cuda.so.0; do
        [ -e "$b" ] && ldd "$b" 2>/dev/null | awk '/=> \//{print $3}'
    done | sort -u | grep -E 'lib(cjson|png16|jpeg|pcre2-8|utf8proc|z)\.' |
        while read -r lib; do cp -L "$lib" "$PACK/rt/"; done
    {
        echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) from ${O:-the default tree}"
        (cd "$PACK" && find . -type f -exec ls -l {} + | awk '{print $5, $9}')
    } >"$PACK/MANIFEST"
    pack_bytes=$(du -sb "$PACK" | awk '{print $1}')
    tree_bytes=$(git ls-files -z --cached --others --exclude-standard 2>/dev/null |
                 xargs -0 du -cb 2>/dev/null | tail -n 1 | awk '{print $1}')
    total=$((pack_bytes + ${tree_bytes:-0}))
    awk -v p="$pack_bytes" -v t="${tree_bytes:-0}" -v d="$PACK" 'BEGIN {
        printf "gpu_check pack: %s = %.1f MiB; with the working tree (%.1f MiB) %.1f of 64 MiB\n",
               d, p / 1048576, t / 1048576, (p + t) / 1048576 }'
    if [ "$total" -gt "$LIMIT_BYTES" ]; then
        echo "gpu_check pack: over the 64 MiB the device tool carries"
        return 2
    fi
    echo "carry $PACK; device: GPU_CHECK_REQUIRE_DEVICE=1 sh tools/gpu_check.sh run"
    return 0
}

# ---- run (device) ------------------------------------------------------------------------------
n_fail=0; n_pass=0; n_skip=0; n_info=0

# row STEP RESULT SECONDS DETAIL: appended (one write) to the TSV at once, echoed.
row() {
    detail=$(printf '%s' "$4" | tr '\t\n' '  ' | cut -c1-600)
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$detail" >>"$TSV"
    printf '%-13s %-5s %4ss  %s\n' "$1" "$2" "$3" "$detail"
    case $2 in
        PASS) n_pass=$((n_pass + 1)) ;;
        FAIL|TIME) n_fail=$((n_fail + 1)) ;;
        SKIP) n_skip=$((n_skip + 1)) ;;
        *) n_info=$((n_info + 1)) ;;
    esac
}

left() { echo $((END - $(date +%s))); }

# The step's log into the run log, its last 256 KiB.
keep_log() {
    { echo "==== $1"; tail -c 262144 "$WORK/$1.log"; echo; } >>"$LOG"
}

# step NAME KIND SLICE CMD...: KIND check (PASS/FAIL/TIME) or info (INFO). Runs CMD with
# min(SLICE, time left - 2) seconds, its output in $WORK/NAME.log. The row's detail: the lines
# matching DETAIL_RE when set, else the harness's "# N passed" line (else the last line). A log
# matching REFUSED_RE (a tool that refused the device) makes a SKIP row; MISSING set (a tool
# not found) makes a SKIP row without running. All three are reset after.
step() {
    name=$1; kind=$2; slice=$3; shift 3
    step_rc=255
    if [ -n "${GPU_CHECK_ONLY:-}" ] && ! echo " $GPU_CHECK_ONLY " | grep -q " $name "; then
        DETAIL_RE=; REFUSED_RE=; MISSING=
        row "$name" SKIP 0 "not selected (GPU_CHECK_ONLY)"
        return 1
    fi
    budget=$(($(left) - 2))
    if [ "$budget" -lt 3 ]; then
        DETAIL_RE=; REFUSED_RE=; MISSING=
        row "$name" SKIP 0 "global deadline of ${DEADLINE}s reached"
        return 1
    fi
    if [ "$HAVE_DEV" -eq 0 ]; then
        DETAIL_RE=; REFUSED_RE=; MISSING=
        row "$name" SKIP 0 "no device: $DEV_WHY"
        return 1
    fi
    if [ -n "$MISSING" ]; then
        row "$name" SKIP 0 "$MISSING"
        DETAIL_RE=; REFUSED_RE=; MISSING=
        return 1
    fi
    [ "$slice" -gt "$budget" ] && slice=$budget
    t0=$(date +%s)
    timeout -k 5 "$slice" "$@" >"$WORK/$name.log" 2>&1
    step_rc=$?
    secs=$(($(date +%s) - t0))
    keep_log "$name"
    f=$WORK/$name.log
    sum=
    [ -n "$DETAIL_RE" ] && sum=$(grep -E "$DETAIL_RE" "$f" | tr '\n' ' ')
    [ -n "$sum" ] || sum=$(grep -E '^# [0-9]+ passed' "$f" | tail -n 1)
    [ -n "$sum" ] || sum=$(tail -n 1 "$f")
    grep -q '^FAIL' "$f" && sum="$sum; first: $(grep -m 1 '^FAIL' "$f")"
    refused=
    [ -n "$REFUSED_RE" ] && refused=$(grep -m 1 -iE "$REFUSED_RE" "$f")
    DETAIL_RE=; REFUSED_RE=; MISSING=
    if [ -n "$refused" ]; then
        row "$name" SKIP "$secs" "the tool refused the device: $refused"
    elif [ "$step_rc" -eq 124 ] || [ "$step_rc" -eq 137 ]; then
        row "$name" TIME "$secs" "over its ${slice}s slice; $sum"
    elif [ "$kind" = info ]; then
        row "$name" INFO "$secs" "rc $step_rc; $sum"
    elif grep -q '^SKIP' "$f"; then
        row "$name" FAIL "$secs" "skipped on a machine with a device: $(grep -m 1 '^SKIP' "$f")"
    elif [ "$step_rc" -ne 0 ]; then
        row "$name" FAIL "$secs" "rc $step_rc; $sum"
    else
        row "$name" PASS "$secs" "$sum"
    fi
    return 0
}

do_run() {
    [ -d "$PACK/bin" ] || {
        echo "no $PACK: run 'sh tools/gpu_check.sh pack' on the CPU machine"
        return 2
    }
    DEADLINE=${GPU_CHECK_SECONDS:-285}
    START=$(date +%s)
    END=$((START + DEADLINE))
    OUTD=${OUT:-build/gpu-check-out}
    mkdir -p "$OUTD"
    TSV=$OUTD/gpu_check.tsv
    LOG=$OUTD/gpu_check.log
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    B=$PACK/bin
    DETAIL_RE=; REFUSED_RE=; MISSING=
    printf '# gpu_check %s, %s, deadline %ss\nstep\tresult\tseconds\tdetail\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(head -n 1 "$PACK/MANIFEST" 2>/dev/null)" \
        "$DEADLINE" >"$TSV"
    : >"$LOG"
    LD_LIBRARY_PATH="$PWD/$PACK/lib:$PWD/$PACK/rt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # CUDA 13 libraries: the toolkit's, else the Python wheels' (nvidia-cublas, -cuda-runtime).
    wheels='import nvidia, os
for r, ds, fs in os.walk(nvidia.__path__[0]):
    print(" ".join(os.path.join(r, d) for d in ds if d == "lib"))'
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
             $(python3 -c "$wheels" 2>/dev/null); do
        [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
    export LD_LIBRARY_PATH

    # device
    HAVE_DEV=1
    DEV_WHY=
    if [ "${GPU_CHECK_FAKE_DEVICE:-0}" = 1 ]; then
        dev="none: GPU_CHECK_FAKE_DEVICE=1 (tests this script: every step runs, device or not)"
    elif [ "${GPU_CHECK_NO_DEVICE:-0}" = 1 ]; then
        HAVE_DEV=0; DEV_WHY="GPU_CHECK_NO_DEVICE=1 (dry run)"
    elif ! command -v nvidia-smi >/dev/null 2>&1; then
        HAVE_DEV=0; DEV_WHY="nvidia-smi not found"
    elif ! dev=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
                 2>&1) || [ -z "$dev" ]; then
        HAVE_DEV=0; DEV_WHY="nvidia-smi: $(echo "$dev" | head -n 1)"
    fi
    if [ "$HAVE_DEV" -eq 1 ]; then
        row device INFO 0 "$(echo "$dev" | head -n 1); $(nproc) cores"
    else
        row device SKIP 0 "no device: $DEV_WHY"
    fi

    # libs: the packed binaries resolve everything (the plugin's CUDA libraries only matter,
    # and are only looked for, with a device).
    miss=
    for b in "$B"/* "$PACK"/lib/libnvlm-cuda.so.0; do
        [ -e "$b" ] || continue
        case $b in *libnvlm-cuda*) [ "$HAVE_DEV" -eq 1 ] || continue ;; esac
        m=$(ldd "$b" 2>&1 | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
        [ -n "$m" ] && miss="$miss${b##*/}: $m"
    done
    [ -e "$PACK/lib/libnvlm-cuda.so.0" ] || miss="${miss}no libnvlm-cuda.so.0 in the pack "
    if [ -z "$miss" ]; then
        row libs PASS 0 "every packed binary resolves its libraries"
    elif [ "$HAVE_DEV" -eq 1 ]; then
        row libs FAIL 0 "$miss"
    else
        row libs SKIP 0 "no device; $miss"
    fi

    CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)

    step test_cuda check 40 "$B/test_cuda"

    for spec in memcheck:25 racecheck:30 synccheck:15 initcheck:20; do
        tool=${spec%:*}
        [ -n "$CS" ] || MISSING="compute-sanitizer not found"
        extra=
        [ "$tool" = memcheck ] && extra="--leak-check full"
        DETAIL_RE='ERROR SUMMARY'
        REFUSED_RE='device not supported|not supported on this platform'
        # shellcheck disable=SC2086
        step "$tool" check "${spec#*:}" "${CS:-compute-sanitizer}" --tool "$tool" $extra \
            --error-exitcode 99 "$B/test_cuda" --ops
    done

    DETAIL_RE='^# ([0-9]+ passed|.*(feed 3|ViT):)'
    step feed2200 check 20 "$B/test_cuda_model"
    DETAIL_RE='^# ([0-9]+ passed|.*(feed 3|ViT):)'
    step real_shape check 75 "$B/test_cuda_model" --real-shape
    DETAIL_RE='^(ceiling: read|breakdown)'
    step breakdown info 25 "$B/bench_cuda" --breakdown 8192,32768 --reps 3
    step goldens_cuda info 15 env NVLM_BACKEND=cuda NVLM_CLI="$B/nvlm" "$B/test_session"
    step bench_cuda info 15 "$B/bench_cuda" --quick

    # >>> further device checks: one `step NAME check|info SLICE COMMAND...` line each, the
    # binary packed through PACK_TESTS above; each gets a row (SKIP without a device or time).
    # emu   : test_cuda_emu on the device is not needed (host emulation); none
    # fit   : step fit_check check 20 "$B/test_fit"            (fit check before upload)
    # graph : step graph_decode check 20 "$B/test_cuda_graph"  (captured decode vs eager)
    # sample: step sampling check 15 "$B/test_cuda_sample"     (device sampling vs CPU stream)
    # fp8cu : step fp8_cuda check 30 "$B/test_fp8_cuda"        (FP8 weights on CUDA vs CPU)
    # <<<

    secs=$(($(date +%s) - START))
    row summary "$([ "$n_fail" -eq 0 ] && echo PASS || echo FAIL)" "$secs" \
        "$n_pass pass, $n_fail fail, $n_skip skip, $n_info info; deadline ${DEADLINE}s"
    rm -rf "$WORK"
    if [ "$HAVE_DEV" -eq 0 ] && [ "${GPU_CHECK_REQUIRE_DEVICE:-0}" = 1 ]; then
        return 3
    fi
    [ "$n_fail" -eq 0 ]
}

# ---- dry (CI, no device) -----------------------------------------------------------------------
STEPS="device libs test_cuda memcheck racecheck synccheck initcheck feed2200 real_shape"
STEPS="$STEPS breakdown goldens_cuda bench_cuda summary"

# check_rows TSV WANT: every step has exactly one row; rows other than device/libs/summary
# are SKIP rows whose detail contains WANT.
check_rows() {
    bad=0
    for s in $STEPS; do
        n=$(awk -F '\t' -v s="$s" '$1 == s' "$1" | wc -l)
        if [ "$n" -ne 1 ]; then
            echo "gpu_check dry: $n rows for step $s in $1"
            bad=1
        fi
    done
    awk -F '\t' -v w="$2" 'NR > 2 && $1 != "device" && $1 != "libs" && $1 != "summary" &&
        ($2 != "SKIP" || index($4, w) == 0) { print "gpu_check dry: unexpected row: " $0; b = 1 }
        END { exit b }' "$1" || bad=1
    return $bad
}

do_dry() {
    (GPU_CHECK_O=; PACK=build/gpu-pack-dry; do_pack) || return 2
    d=build/gpu-check-dry
    rm -rf "$d"
    mkdir -p "$d/nodev" "$d/deadline"
    rc=0
    (OUT=$d/nodev; GPU_CHECK_NO_DEVICE=1; PACK=build/gpu-pack-dry; GPU_CHECK_ONLY=;
     GPU_CHECK_REQUIRE_DEVICE=0; do_run) >"$d/nodev.txt" 2>&1 ||
        { echo "gpu_check dry: the run without a device exited non-zero"; rc=1; }
    check_rows "$d/nodev/gpu_check.tsv" "no device" || rc=1
    (OUT=$d/deadline; GPU_CHECK_NO_DEVICE=1; GPU_CHECK_SECONDS=0; PACK=build/gpu-pack-dry;
     GPU_CHECK_ONLY=; GPU_CHECK_REQUIRE_DEVICE=0; do_run) >"$d/deadline.txt" 2>&1 ||
        { echo "gpu_check dry: the run with deadline 0 exited non-zero"; rc=1; }
    check_rows "$d/deadline/gpu_check.tsv" "deadline" || rc=1
    cat "$d/nodev.txt"
    [ $rc -eq 0 ] && echo "gpu_check dry: rows as expected (no device; deadline 0)"
    return $rc
}

case $mode in
    pack) do_pack ;;
    run) do_run ;;
    dry) do_dry ;;
    *) echo "usage: sh tools/gpu_check.sh pack|run|dry"; exit 2 ;;
esac
