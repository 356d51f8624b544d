#!/bin/sh
# gpu_check.sh - the one device check of the CUDA backend, in two halves:
#
#   sh tools/gpu_check.sh pack   on the CPU machine (nvcc present): builds with CUDA into
#                                build/cuda and packs the binaries plus the non-system shared
#                                libraries they need into build/gpu-pack (a few MiB).
#   sh tools/gpu_check.sh run    on the H100/H200, from the repository root with build/gpu-pack
#                                carried: op checks and goldens (test_cuda; also tensor
#                                parallelism: 2 CUDA ranks on device 0 over the local
#                                communicator, and NCCL at one rank), compute-sanitizer
#                                memcheck on test_cuda, the engine golden tests on the GPU
#                                (informational), then the benchmark; prints a table.
#
# Device tool call:  run(command="sh tools/gpu_check.sh run", carry=["build/gpu-pack"],
#                        timeout_s=540)   - every step has its own timeout; well under 9 min.
# Exit status: 0 when test_cuda and memcheck pass (the benchmark never fails the check).
set -u
PACK=build/gpu-pack
BUILD=build/cuda
mode=${1:-run}

# ---- pack (CPU machine) ------------------------------------------------------------------------
if [ "$mode" = pack ]; then
    make O=$BUILD -j"$(nproc)" all >/dev/null || { echo "build failed"; exit 1; }
    tests="test_cuda test_vision test_projector test_decoder test_session"
    for t in $tests; do
        [ -f tests/$t.c ] && { make O=$BUILD $BUILD/obj/tests/$t >/dev/null || exit 1; }
    done
    make O=$BUILD $BUILD/obj/bench/bench_cuda >/dev/null || exit 1
    rm -rf $PACK
    mkdir -p $PACK/bin $PACK/rt
    for t in $tests; do
        [ -f $BUILD/obj/tests/$t ] && cp $BUILD/obj/tests/$t $PACK/bin/
    done
    cp $BUILD/obj/bench/bench_cuda $BUILD/bin/nvlm $PACK/bin/
    # Libraries the device image may lack (Debian packages of the build); CUDA's own libraries
    # (cudart, cublasLt: 500+ MiB) are the device's.
    for b in $PACK/bin/*; do
        ldd "$b" | awk '/=> \//{print $3}'
    done | sort -u | grep -E 'lib(cjson|png16|jpeg|pcre2-8|utf8proc|openblas|gfortran|quadmath|z)\.' |
        while read -r lib; do cp -L "$lib" $PACK/rt/; done
    du -sh $PACK
    echo "carry $PACK; on the device run: sh tools/gpu_check.sh run"
    exit 0
fi

# ---- run (device) ------------------------------------------------------------------------------
[ -d $PACK/bin ] || { echo "no $PACK: run 'sh tools/gpu_check.sh pack' on the CPU machine"; exit 2; }
LOG=${OUT:-$PACK}/gpu_check.log
: >"$LOG"
export LD_LIBRARY_PATH="$PWD/$PACK/rt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# CUDA 13 libraries: the toolkit's, else the Python wheels' (nvidia-cublas, nvidia-cuda-runtime).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia, os; p = nvidia.__path__[0]; print(" ".join(os.path.join(p, d, "lib") for d in os.listdir(p)))' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export LD_LIBRARY_PATH
table=""
fail=0
row() { table="$table$(printf '%-40s %-6s %5ss  %s' "$1" "$2" "$3" "$4")
"; }

echo "== device" | tee -a "$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
missing=$(ldd $PACK/bin/test_cuda | grep 'not found')
if [ -n "$missing" ]; then
    echo "$missing" | tee -a "$LOG"
    row "shared libraries" FAIL 0 "$(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"
    printf '\n%s' "$table"
    exit 1
fi

# test_cuda: ops vs CPU + end-to-end goldens. A SKIP on a GPU machine is a failure.
t0=$(date +%s)
timeout 240 $PACK/bin/test_cuda >"$LOG.test_cuda" 2>&1
rc=$?
secs=$(( $(date +%s) - t0 ))
cat "$LOG.test_cuda" >>"$LOG"
grep -E '^(FAIL|SKIP)' "$LOG.test_cuda" | head -40
sum=$(grep -E '^# [0-9]+ passed' "$LOG.test_cuda" | tail -n 1)
if grep -q '^SKIP' "$LOG.test_cuda"; then
    row "test_cuda (ops + goldens)" FAIL $secs "$(grep '^SKIP' "$LOG.test_cuda")"
    fail=1
elif [ $rc -ne 0 ]; then
    row "test_cuda (ops + goldens)" FAIL $secs "rc $rc; $sum"
    fail=1
else
    row "test_cuda (ops + goldens)" PASS $secs "$sum"
fi

# compute-sanitizer memcheck on the same binary.
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$cs" ]; then
    t0=$(date +%s)
    timeout 300 "$cs" --tool memcheck --leak-check full --error-exitcode 99 \
        $PACK/bin/test_cuda >"$LOG.memcheck" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    cat "$LOG.memcheck" >>"$LOG"
    errs=$(grep -E 'ERROR SUMMARY' "$LOG.memcheck" | tail -n 1)
    if [ $rc -eq 0 ]; then
        row "compute-sanitizer memcheck" PASS $secs "$errs"
    else
        grep -E '^=========' "$LOG.memcheck" | head -30
        row "compute-sanitizer memcheck" FAIL $secs "rc $rc; $errs"
        fail=1
    fi
else
    row "compute-sanitizer memcheck" SKIP 0 "compute-sanitizer not found"
fi

# The engine's golden tests with the context on auto (CUDA on this machine). Their fp32
# tolerances (atol 2e-4) are tighter than the GPU bf16 path's 2e-2, so they only inform.
for t in test_vision test_projector test_decoder test_session; do
    [ -x $PACK/bin/$t ] || continue
    t0=$(date +%s)
    NVLM_BACKEND=cuda timeout 120 $PACK/bin/$t >"$LOG.$t" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    cat "$LOG.$t" >>"$LOG"
    row "$t (info, fp32 tolerances)" "rc=$rc" $secs "$(grep -E '^# [0-9]+ passed' "$LOG.$t" | tail -n 1)"
done

# Benchmark (never fails the check).
t0=$(date +%s)
timeout 240 $PACK/bin/bench_cuda ${BENCH_CUDA_ARGS:-} 2>&1 | tee "$LOG.bench" >>"$LOG"
secs=$(( $(date +%s) - t0 ))
row "bench_cuda" "done" $secs "see below"

printf '\n%-40s %-6s %6s  %s\n' "step" "result" "time" "detail"
printf '%s' "$table"
echo
cat "$LOG.bench"
exit $fail
