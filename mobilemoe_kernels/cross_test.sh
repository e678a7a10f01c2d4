#!/usr/bin/env bash
# Self-test of the kernels' SIMD paths against the portable path, without ExecuTorch
# (tests_native/kernel_selftest.cpp includes csrc/moe_ffn.cpp and csrc/attend.cpp built
# with -DMMOE_NO_EXECUTORCH):
#   1. native (x86: portable vs avx2 / avx512vnni, whichever this CPU has), with $CXX or g++;
#   2. AArch64 with the dot-product extension (-march=armv8.2-a+dotprod: sdot), cross-compiled
#      with Debian's aarch64-linux-gnu-g++ and run under qemu-aarch64 (portable vs neon);
#   3. AArch64 without it (-march=armv8-a: vmull_s8 / vmlal_s8), the same way;
#   4. (if the executorch wheel is importable) csrc/*.cpp compiled, not linked, for AArch64
#      against the wheel's headers, as the library itself is built.
# Needs: apt-get install g++-aarch64-linux-gnu qemu-user. Exit status non-zero on any failure.
# Usage: mobilemoe_kernels/cross_test.sh [--no-native] [-v]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/tests_native/kernel_selftest.cpp"
XCXX="${AARCH64_CXX:-aarch64-linux-gnu-g++}"
QEMU="${QEMU_AARCH64:-qemu-aarch64}"
SYSROOT="${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"
NATIVE=1
VERBOSE=()
for a in "$@"; do
  case "$a" in
    --no-native) NATIVE=0 ;;
    -v) VERBOSE=(-v) ;;
    *) echo "usage: $0 [--no-native] [-v]" >&2; exit 2 ;;
  esac
done
WARN=(-Wall -Wno-psabi -Wno-maybe-uninitialized)
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

step() { echo; echo "== $*"; }

if [[ $NATIVE == 1 ]]; then
  CXX_NATIVE="${CXX:-g++}"
  step "native $(uname -m): $CXX_NATIVE -std=c++17 -O2"
  "$CXX_NATIVE" -std=c++17 -O2 "${WARN[@]}" -o "$OUT/selftest_native" "$SRC"
  "$OUT/selftest_native" "${VERBOSE[@]}"
fi

command -v "$XCXX" >/dev/null || { echo "cross_test.sh: $XCXX not found (apt-get install g++-aarch64-linux-gnu)" >&2; exit 3; }
command -v "$QEMU" >/dev/null || { echo "cross_test.sh: $QEMU not found (apt-get install qemu-user)" >&2; exit 3; }

for march in armv8.2-a+dotprod armv8-a; do
  bin="$OUT/selftest_${march//[.+]/_}"
  step "aarch64 $XCXX -std=c++17 -O2 -march=$march, run under $QEMU -L $SYSROOT"
  "$XCXX" -std=c++17 -O2 -march="$march" "${WARN[@]}" -o "$bin" "$SRC"
  if command -v aarch64-linux-gnu-objdump >/dev/null; then
    echo "sdot instructions in the binary: $(aarch64-linux-gnu-objdump -d "$bin" | grep -cw sdot || true)"
  fi
  "$QEMU" -L "$SYSROOT" "$bin" "${VERBOSE[@]}"
done

PY="${PYTHON:-python3}"
if ET_INC="$("$PY" -c 'import executorch, os; print(os.path.join(list(executorch.__path__)[0], "include"))' 2>/dev/null)" \
  && [[ -d "$ET_INC/executorch" ]]; then
  step "aarch64 compile (no link) of csrc/*.cpp against the executorch wheel's headers, -O3"
  for f in "$HERE"/csrc/*.cpp; do
    "$XCXX" -std=c++17 -O3 -fPIC "${WARN[@]}" -DC10_USING_CUSTOM_GENERATED_MACROS -DET_EVENT_TRACER_ENABLED \
      -DET_USE_THREADPOOL -I"$ET_INC" -I"$ET_INC/executorch/runtime/core/portable_type/c10" \
      -c "$f" -o "$OUT/$(basename "$f" .cpp).o"
    echo "ok   $(basename "$f")"
  done
else
  echo; echo "(executorch wheel not importable with $PY: skipped the compile against its headers)"
fi
echo; echo "cross_test.sh: all passed"
