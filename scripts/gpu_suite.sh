#!/usr/bin/env bash
# Runs the GPU work of a session on the device machine in one call: `bash scripts/gpu_suite.sh STAGE...`
# Stages: env, tests (pytest -m gpu), bench_kernels, bench_attention, bench_engine, demo. Logs go to $OUT (or ./gpu_out).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
         python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__)" ;;
    tests) timeout 420 python3 -m pytest -m gpu -q -x -p no:cacheprovider ${TESTS:-tests} --junitxml="$OUT/gpu_tests.xml" 2>&1 | tail -n 60 ;;
    tests_all) timeout 480 python3 -m pytest -m gpu -q -p no:cacheprovider ${TESTS:-tests} --junitxml="$OUT/gpu_tests.xml" 2>&1 | tail -n 80 ;;
    bench_kernels) timeout 300 python3 scripts/bench_kernels.py --out "$OUT" 2>&1 | tail -n 70 ;;
    bench_attention) timeout 300 python3 scripts/bench_attention.py --out "$OUT" 2>&1 | tail -n 30 ;;
    bench_engine) timeout 400 python3 scripts/bench_engine.py --out "$OUT" 2>&1 | tail -n 40 ;;
    demo) timeout 300 python3 scripts/determinism_demo.py --n 1000 --device cuda --dtype bfloat16 2>&1 | tail -n 20 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
