#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need (GoogleTest from apt,
# torch 2.13.0 CPU, fastpaper with its test extras), then runs pytest and the C++ checks
# (GoogleTest plain and under ASan+UBSan, and the C++ example against the installed package).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-$(command -v python3 || command -v python)}

if [ ! -f /usr/include/gtest/gtest.h ] && command -v apt-get >/dev/null; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq libgtest-dev >/dev/null
fi
"$python" -c "import torch" 2>/dev/null || "$python" -m pip install -q torch==2.13.0
"$python" -m pip install -q ninja cmake
"$python" -m pip install -q ".[test]"
# Xilinx ap_int/ap_fixed/hls_stream headers for the g++ C-simulation of hls/m3vit_moe (a small
# pure-Python wheel; --no-deps: its own dependencies are not needed for the headers).
"$python" -m pip install -q --no-deps hls4ml

# Run pytest from outside the source tree so that the installed package is the one imported.
(cd tests && "$python" -m pytest -q -p no:cacheprovider .)
bash tests/run_cpp.sh
