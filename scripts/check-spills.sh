#!/usr/bin/env bash
# Register spills: every kernel instance of kernels/*.cu compiled for sm_80
# and sm_90 (ptxas -v, the flags of the library's werror build: warnings are
# errors here too, which is CI's check of the sm_80 compile, since CI builds
# the tree for sm_90 only) must use 0 bytes of spill stores and loads. A spill costs local-memory traffic on every call
# and usually means __launch_bounds__ lets ptxas squeeze the kernel into too
# few registers (issue 18: depthwise_fused spilled at sm_90 until its
# minimum-blocks argument was set).
#
# A spill that is accepted is named in a comment at the kernel: a line
#   // spill-accepted: <kernel name as nvcc reports it, or a part of it>: <why>
# in the kernel's .cu file. Any other spill fails the check and is listed.
#
# Usage: scripts/check-spills.sh [OUTDIR]   (default build-spills)
# Environment: JOBS (default 2), NVCC (default nvcc), SPILL_ARCHS (default "80 90").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-build-spills}
jobs=${JOBS:-2}
nvcc=${NVCC:-nvcc}
archs=${SPILL_ARCHS:-80 90}
command -v "$nvcc" >/dev/null || nvcc=/usr/local/cuda/bin/nvcc
command -v "$nvcc" >/dev/null || { echo "check-spills: nvcc not found" >&2; exit 2; }
mkdir -p "$out" || exit 2
start=$(date +%s)

# One job per (source, arch): -c into a throw-away object, ptxas's report to a log.
jobs_list=()
for cu in kernels/*.cu; do
  for a in $archs; do jobs_list+=("$cu $a"); done
done
export nvcc out
# shellcheck disable=SC2016 # the script is bash -c's: it expands there
printf '%s\n' "${jobs_list[@]}" | xargs -P"$jobs" -L1 bash -c '
  cu=$1 a=$2 stem=$(basename "$1" .cu)
  log=$out/$stem.sm_$a.log
  if ! "$nvcc" -c -std=c++17 -O3 -DNDEBUG -arch=sm_$a -Xptxas -v -Xcompiler=-Wall,-Wextra -Werror=all-warnings \
    -Ikernels -o "$out/$stem.sm_$a.o" "$cu" >"$log" 2>&1; then
    echo "check-spills: nvcc failed on $cu (sm_$a):"; tail -n 20 "$log"; exit 255
  fi' _ || { echo "check-spills: FAILED: a kernel did not compile"; exit 1; }

# ptxas -v prints, per kernel entry:
#   ptxas info    : Compiling entry function '_Z...' for 'sm_90'
#   ptxas info    : Used 40 registers, ...
#   N bytes stack frame, S bytes spill stores, L bytes spill loads
# The spill line comes before "Used"; the entry line before both.
failed=0 instances=0 accepted=0
report=$out/spills.txt
: >"$report"
for log in "$out"/*.log; do
  stem=$(basename "$log" .log)
  stem=${stem%.sm_*}
  cu=kernels/$stem.cu
  while IFS=$'\t' read -r arch name stores loads; do
    instances=$((instances + 1))
    ((stores == 0 && loads == 0)) && continue
    demangled=$(echo "$name" | c++filt)
    why=""
    while IFS= read -r line; do
      key=${line#*spill-accepted: }
      key=${key%%:*}
      [[ -n $key && $demangled == *"$key"* ]] && { why=${line#*spill-accepted: }; break; }
    done < <(grep -o 'spill-accepted: .*' "$cu" || true)
    if [[ -n $why ]]; then
      accepted=$((accepted + 1))
      printf 'accepted  %-6s %4s B st %4s B ld  %s  (%s)\n' "$arch" "$stores" "$loads" "$demangled" "$why" >>"$report"
    else
      failed=$((failed + 1))
      printf 'SPILL     %-6s %4s B st %4s B ld  %s\n' "$arch" "$stores" "$loads" "$demangled" >>"$report"
    fi
  done < <(awk '
    /Compiling entry function/ { match($0, /function .[^'"'"']*/); name = substr($0, RSTART + 10, RLENGTH - 10)
                                 match($0, /for .sm_[0-9a-z]+/); arch = substr($0, RSTART + 5, RLENGTH - 5) }
    /bytes spill stores/ { if (name != "") { split($0, f, /[^0-9]+/); n = 0
                             for (i in f) if (f[i] != "") v[++n] = f[i]
                             # the line: N bytes stack frame, S bytes spill stores, L bytes spill loads
                             print arch "\t" name "\t" v[n-1] "\t" v[n]; name = "" } }' "$log")
done
cat "$report"
echo "check-spills: $instances kernel instances (sm_${archs// /, sm_}), $failed spilling, $accepted accepted" \
  "($(($(date +%s) - start)) s)"
((instances > 0)) || { echo "check-spills: FAILED: no kernel instance found in ptxas output"; exit 1; }
((failed == 0)) || { echo "check-spills: FAILED: the kernels above spill registers; fix them (__launch_bounds__'s" \
  "minimum blocks, fewer live values) or explain at the kernel with '// spill-accepted: NAME: why'"; exit 1; }
