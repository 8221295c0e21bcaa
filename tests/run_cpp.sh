#!/usr/bin/env bash
# Builds and runs the C++ tests (plain, then ASan+UBSan) and the example against the installed package.
#
# Needs: cmake >= 3.26, ninja, a C++17 compiler, GoogleTest (apt-get install libgtest-dev) and
# fastpaper installed in the Python environment (pip install .) for the example.
# Environment: PYTHON (default python3, else python), JOBS (default 2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs=${JOBS:-2}
python=${PYTHON:-$(command -v python3 || command -v python)}

section() { printf '\n==== %s ====\n' "$*"; }
failed=()  # a failing stage does not hide the results of the later ones

# CPU-only builds on purpose: this usually runs where there is no GPU, nvcc would add minutes of
# compile time, and the CUDA kernels share their math (fastpaper/detail) with the CPU kernels.
build_and_test() {
  local dir=$1; shift
  section "configure ${dir} $*"
  cmake -S . -B "${dir}" -G Ninja -DFASTPAPER_TESTS=ON -DFASTPAPER_PYTHON=OFF -DFASTPAPER_CUDA=OFF \
    -DPython_EXECUTABLE="${python}" "$@"  # the interpreter that has scipy-openblas32 (BLAS/LAPACK)
  section "build ${dir}"
  cmake --build "${dir}" -j"${jobs}"
  section "ctest ${dir}"
  ctest --test-dir "${dir}" --output-on-failure -j"${jobs}" || failed+=("ctest ${dir}")
}

build_and_test build/cpp-tests

# Sanitizer options are compiled into the test binaries (tests/cpp/sanitizer_options.cpp).
# float-cast-overflow is not part of GCC's -fsanitize=undefined; the codec converts floats to
# integers, so check it as well.
build_and_test build/cpp-asan -DFASTPAPER_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS=-fsanitize=float-cast-overflow

section "example against the installed package"
fastpaper_dir=$("${python}" -c "import fastpaper; print(fastpaper.cmake_dir())")
cmake -S examples/cpp -B build/example -G Ninja -Dfastpaper_DIR="${fastpaper_dir}"
cmake --build build/example -j"${jobs}"
./build/example/bfp_roundtrip || failed+=("example")

if ((${#failed[@]})); then
  printf '\nFAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\nall C++ checks passed\n'
