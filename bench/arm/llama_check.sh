#!/usr/bin/env bash
# llama.cpp on AArch64 by emulation: the llama.cpp vendored in llama-cpp-python's source distribution,
# cross-compiled for a Raspberry Pi 5's CPU (Cortex-A76: armv8.2-a + dotprod + fp16, as ggufkit's rpi5 profiles),
# loads the demo model's Q4_K_M file (written by ggufkit convert) under qemu-aarch64 -cpu cortex-a76 and must
# produce the same greedy tokens for a short prompt as llama-cpp-python on this x86-64 machine.
#
#   bash bench/arm/llama_check.sh          (from the repo root; run by `make arm-check`)
#
# Heavy: compiles llama.cpp (only libllama, ggml and llama-simple) on this machine, ~10-20 min on 2 cores; the
# build is cached in $ARM_CACHE. Needs: gcc/g++-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user, cmake.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
PY="$ROOT/.venv/bin/python"
LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
ARM_CACHE="${ARM_CACHE:-$HOME/.cache/ggufkit/arm}"
N_PREDICT="${N_PREDICT:-16}"
PROMPT="${PROMPT:-The capital of France is}"
export HF_HUB_OFFLINE=1

for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64 cmake; do
  command -v "$tool" >/dev/null || { echo "error: $tool missing (apt-get install gcc-aarch64-linux-gnu" \
    "g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user cmake)" >&2; exit 1; }
done
mkdir -p "$ARM_CACHE"

# ---- llama.cpp source from llama-cpp-python's sdist
SRC="$ARM_CACHE/llama_cpp_python-$LLAMA_CPP_VERSION"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
  "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$ARM_CACHE"
  tar -xzf "$ARM_CACHE/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$ARM_CACHE"
fi

# ---- cross build (static, so qemu-user needs no aarch64 sysroot at run time)
BUILD="$ARM_CACHE/build-aarch64-$LLAMA_CPP_VERSION"
cat > "$ARM_CACHE/aarch64.cmake" <<'TOOLCHAIN'
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
TOOLCHAIN
if [ ! -x "$BUILD/bin/llama-simple" ]; then
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_TOOLCHAIN_FILE="$ARM_CACHE/aarch64.cmake" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
    -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=ON \
    -DCMAKE_EXE_LINKER_FLAGS=-static
  cmake --build "$BUILD" --target llama-simple -j "${JOBS:-2}"
fi
file "$BUILD/bin/llama-simple" | grep -q "ARM aarch64" || { echo "error: llama-simple is not an aarch64 binary" >&2; exit 1; }

# ---- the model: the demo checkpoint converted by ggufkit
MODEL="$ARM_CACHE/smollm2-135m-instruct-Q4_K_M.gguf"
[ -f "$MODEL" ] || "$PY" -c "from ggufkit.convert import convert; convert('models/smollm2-135m-instruct', '$MODEL', scheme='q4_k_m', quiet=True)"

# ---- greedy tokens: aarch64 llama-simple under qemu vs the same steps through llama-cpp-python on x86-64
# (bench/arm/greedy_x86.py mirrors llama-simple: default context parameters, flash attention "auto" on both sides)
T0=$(date +%s)
ARM_OUT="$(qemu-aarch64 -cpu cortex-a76 "$BUILD/bin/llama-simple" -m "$MODEL" -n "$N_PREDICT" "$PROMPT" 2>"$ARM_CACHE/qemu.log")"
T1=$(date +%s)
X86_OUT="$("$PY" bench/arm/greedy_x86.py "$MODEL" "$N_PREDICT" "$PROMPT" 2>"$ARM_CACHE/x86.log")"
T2=$(date +%s)
echo "aarch64 (qemu cortex-a76, $((T1 - T0)) s): $ARM_OUT"
echo "x86-64 (llama-cpp-python, $((T2 - T1)) s): $X86_OUT"
grep -h "decoded\|token ids" "$ARM_CACHE/qemu.log" "$ARM_CACHE/x86.log" || true
if [ "$ARM_OUT" = "$X86_OUT" ]; then
  echo "arm-check: same greedy text on aarch64 and x86-64"
else
  echo "arm-check: FAILED: the greedy texts differ" >&2
  exit 1
fi
