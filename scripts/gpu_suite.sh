#!/usr/bin/env bash
# The GPU checks and benchmarks in one call, from the repository root: `bash scripts/gpu_suite.sh STAGE...`
# Stages: env, tests (pytest -m gpu), bench_kernels, bench_attention, bench_engine, bench_multiturn, demo,
# sweep_attention, profile_trainer, cold_start, long_context. Logs go to $OUT (or ./gpu_out).
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
    bench_kernels) timeout 300 python3 -m scripts.bench_kernels --out "$OUT" 2>&1 | tail -n 70 ;;
    bench_attention) timeout 300 python3 -m scripts.bench_attention --out "$OUT" 2>&1 | tail -n 30 ;;
    bench_engine) timeout 400 python3 -m scripts.bench_engine --out "$OUT" 2>&1 | tail -n 40 ;;
    bench_multiturn) timeout 300 python3 -m scripts.bench_multiturn --out "$OUT" 2>&1 | tail -n 10 ;;
    sweep_attention) timeout 590 python3 -m scripts.sweep_attention --out "$OUT" 2>&1 | tail -n 12 ;;
    profile_trainer) timeout 590 python3 -m scripts.profile_trainer --workloads 0.6b-32x8x512 --systems invariant,default --out "$OUT/profile_0.6b" 2>&1 | tail -n 30 ;;
    cold_start) timeout 590 python3 -m scripts.bench_cold_start --out "$OUT/cold_start" --workdir /tmp/cold_start 2>&1 | tail -n 30 ;;
    long_context) timeout 590 python3 -m scripts.bench_rl --workloads 0.6b-8x8x8192 --systems invariant --steps 1 --warmup 1 --out "$OUT/rl_8k_invariant" 2>&1 | tail -n 8 ;;
    demo) timeout 300 python3 -m scripts.determinism_demo --n 1000 --device cuda --dtype bfloat16 2>&1 | tail -n 20 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
