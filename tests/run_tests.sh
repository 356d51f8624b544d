#!/bin/sh
# Runs each test binary given as an argument, one process each, and sums the checks.
# A binary that crashes or exits non-zero without failing checks counts one failure.
# The last line is "N passed, N failed"; the exit status is non-zero on any failure.
passed=0
failed=0
log=$(mktemp)
for t in "$@"; do
    name=$(basename "$t")
    start=$(date +%s)
    "$t" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    line=$(grep -E '^# [0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    p=$(echo "$line" | sed -E 's/^# ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    [ -n "$line" ] || { p=0; f=0; }
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        echo "FAIL $name: exit status $rc without a failed check (crash?)"
    fi
    if [ "$f" -ne 0 ]; then
        grep -E '^(FAIL|==)' "$log" | grep -B1 '^FAIL' | head -n 60
        tail -n 20 "$log" | grep -vE '^(ok|FAIL|==|#)' | head -n 20
    fi
    grep -E '^SKIP' "$log"
    printf '%-28s %5s passed %3s failed  (%ss)\n' "$name" "$p" "$f" "$secs"
    passed=$((passed + p))
    failed=$((failed + f))
done
rm -f "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
