#!/usr/bin/env bash
# The one prepared command for a GPU machine (no network): build fastpaper with its CUDA kernels,
# run the CUDA tests, run the GPU benchmarks, and leave logs and JSON in OUTDIR.
#   bash bench/gpu_check.sh OUTDIR [STAGE ...]       (default: all stages, in this order)
# Stages: build, test (pytest -m cuda), bench-rnn, bench-pararnn, bench-bfp-moe, bench-krylov.
# The device tool caps one command at 10 min and each stage's timeouts sum to under that: run one
# stage per call (build ~4 min on 16 cores; two short bench stages may share a call) back to back
# while the machine is warm (the build stays in place between calls).
# The machine is expected to have torch, nvcc, CMake, ninja, nanobind and scikit-build-core.
# pytest/hypothesis, and scipy-openblas32 (BLAS/LAPACK the core links for the Krylov solver), may be
# missing there: prepare them here first (they travel as an ignored path):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     -d build/gpu_wheels pytest hypothesis scipy-openblas32
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR [STAGE ...]}
shift
stages=${*:-build test bench-rnn bench-pararnn bench-bfp-moe bench-krylov}
mkdir -p "$out"
want() { [[ " $stages " == *" $1 "* ]]; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-$(command -v python3 || command -v python)}
status=0
step() { printf '\n==== %s (%s) ====\n' "$*" "$(date +%T)" | tee -a "$out/steps.log"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia-smi.txt"

if want build; then
step "offline test dependencies"
if [ -d build/gpu_wheels ]; then
  "$python" -m pip install -q --no-index --find-links build/gpu_wheels pytest hypothesis \
    scipy-openblas32 2>&1 | tail -2
fi

step "build (CUDA 90a)"
FASTPAPER_CUDA=ON FASTPAPER_CUDA_ARCHITECTURES=${FASTPAPER_CUDA_ARCHITECTURES:-90a-real} \
  "$python" -m pip install --no-build-isolation --no-deps -q . > "$out/build.log" 2>&1 \
  || { status=1; tail -40 "$out/build.log"; }
"$python" -c "import fastpaper, json; print(json.dumps(fastpaper.info(), indent=1))" \
  | tee "$out/info.json" || status=1

fi

if want test; then
step "pytest -m cuda"
(cd tests && timeout 480 "$python" -m pytest -q -m cuda -p no:cacheprovider \
   --junitxml="$(realpath "$out")/pytest_cuda.xml" . 2>&1) | tee "$out/pytest_cuda.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1

fi

if want bench-rnn; then
step "benchmarks: rnn anchors and kernel paths"
# rnn: the H200 anchors of issue 3 (B=16, T=1024, total hidden 768): LSTM 1x768 and 12x64,
# sLSTM 12x64 and 48x16, GRU 1x768, bf16 (cuDNN rows in fp16 and bf16)
timeout 240 "$python" bench/bench_rnn.py --device cuda --dtype bfloat16 --B 16 --T 1024 \
  --hidden 768 --configs lstm:1,lstm:12,slstm:12,slstm:48,gru:1 --no-loop --warmup 2 --repeats 5 \
  --json "$out/bench_rnn.json" 2>&1 | tee -a "$out/bench.log" || status=1
# rnn kernel families for large heads (issue 3), each forced, op rows only (the first row names
# the family auto picks): LSTM 1x768 (R_n 4.7 MB: cooperative; no cluster holds it) and 3x256
# (cluster), B=16, T=1024, bf16
timeout 180 "$python" bench/bench_rnn.py --device cuda --dtype bfloat16 --B 16 --T 1024 \
  --hidden 768 --configs lstm:1,lstm:3 --op-only --paths auto,cluster,cooperative,step \
  --warmup 1 --repeats 3 --json "$out/bench_rnn_paths.json" 2>&1 | tee -a "$out/bench.log" \
  || status=1
 at B=1, N=64, T=2^20, per-chain kernel vs multi-block look-back kernel
fi

if want bench-pararnn; then
step "benchmarks: pararnn anchors and long-T scan"
# pararnn: the H200 anchors of issue 4 (B=8, T=2048, N=1024), fp32 and bf16 I/O; the Python
# loop's backward (~3 s a run) is skipped, its forward is the speedup baseline
for dt in float32 bfloat16; do
  timeout 150 "$python" bench/bench_pararnn.py --device cuda --dtype "$dt" --B 8 --T 2048 \
    --N 1024 --D 1024 --warmup 1 --repeats 5 --skip-loop-backward \
    --json "$out/bench_pararnn_${dt}.json" 2>&1 | tee -a "$out/bench.log" || status=1
done

# pararnn: the linear scan at B=1, N=64, T=2^20, per-chain kernel vs multi-block look-back kernel
timeout 120 "$python" bench/bench_pararnn.py --device cuda --scan-long \
  --json "$out/bench_pararnn_scan_long.json" 2>&1 | tee -a "$out/bench.log" || status=1
fi

if want bench-bfp-moe; then
step "benchmarks: bfp and moe"
for fmt in BFP12 BFP16 MXINT8; do
  timeout 60 "$python" bench/bench_bfp.py --device cuda --format "$fmt" \
    --json "$out/bench_bfp_${fmt}.json" 2>&1 | tee -a "$out/bench.log" || status=1
done

timeout 90 "$python" bench/bench_bfp_attention.py --device cuda --contexts 4096,32768,131072 \
  --json "$out/bench_bfp_attention.json" 2>&1 | tee -a "$out/bench.log" || status=1

timeout 60 "$python" bench/bench_moe.py --device cuda --dtype bfloat16 \
  --json "$out/bench_moe_bf16.json" 2>&1 | tee -a "$out/bench.log" || status=1
timeout 60 "$python" bench/bench_moe.py --device cuda --dtype float32 --skip-dense-masked \
  --json "$out/bench_moe_fp32.json" 2>&1 | tee -a "$out/bench.log" || status=1

fi

if want bench-krylov; then
step "benchmarks: krylov on CUDA"
# krylov: the torch backend on CUDA (cuSPARSE SpMV and cuBLAS through torch, small dense problems
# on the host) next to the C++ CPU path and scipy gcrotmk with carried CU, n = 6.5e4 (grid 257),
# recycled + greedy-sorted sequences. Unpreconditioned Helmholtz needs more than 10^4 steps per
# system at this size (5.8e3 at n = 1e4), so it runs a fixed budget of 2000 steps per system:
# every fastpaper row does the same 2000 steps ("failed" = not converged), which times one step.
timeout 240 "$python" bench/bench_krylov.py --device cuda --family darcy --grid 257 --count 5 \
  --only "GCRO-DR recycled+sorted" --only gcrotmk --only splu --skip spilu \
  --json "$out/bench_krylov_darcy.json" 2>&1 | tee -a "$out/bench.log" || status=1
timeout 240 "$python" bench/bench_krylov.py --device cuda --family helmholtz --grid 257 --count 2 \
  --maxiter 2000 --only "GCRO-DR recycled+sorted" --only gcrotmk --skip spilu \
  --json "$out/bench_krylov_helmholtz.json" 2>&1 | tee -a "$out/bench.log" || status=1

fi

step "done (status $status)"
exit $status
