#!/usr/bin/env bash
# The GPU checks in one go on a CUDA machine (tests, then benchmarks), each step time-boxed. The rows
# go to $1/<machine kind>.csv (default outputs/gpu), a log to $1/log.txt; back home, append them with
#   python -m benchmarks.harness merge OUT/nvidia-h200.csv && python -m benchmarks.report
# Run from the repository root:
#   bash benchmarks/run_gpu_checks.sh OUT [steps...]
# steps (default: tests kernel train cpu): tests, kernel (device time, host time per call), sweep,
# choose (exports HF_KGELU_KERNEL_CONFIG with the sweep's winners for the steps after it), train
# (GPT-2 small, BERT-base, DeiT-small eager), train_compile, gaps (where the step's device idles),
# cpu (the CPU path on this host, 1 and 8 threads). env: KERNEL_ROWS, TRAIN_MODELS, TRAIN_VARIANTS,
# TRAIN_STEPS (interleaved rounds), per-step limits TESTS_S KERNEL_S SWEEP_S TRAIN_S GAPS_S CPU_S (seconds).
set -uo pipefail
out=${1:-outputs/gpu}; shift || true
steps=${*:-tests kernel train cpu}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" BENCH_RESULTS="$out"
# native builds (CPU kernel, C++ site path) in an ignored folder the device keeps between calls
export HF_KGELU_CACHE=${HF_KGELU_CACHE:-$PWD/outputs/kgelu_cache}
py=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  $py -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  echo "machine kind: $($py -m benchmarks.harness kind)"; date -u; } 2>&1 | tee -a "$log"
for step in $steps; do
  start=$(date +%s)
  echo "===== $step" | tee -a "$log"
  if [ "$step" = choose ]; then  # the sweep's winners for the steps after it (not in a pipe: export)
    export HF_KGELU_KERNEL_CONFIG=$($py -m benchmarks.kernel --choose)
    echo "HF_KGELU_KERNEL_CONFIG=$HF_KGELU_KERNEL_CONFIG" | tee -a "$log"
    continue
  fi
  case $step in
    tests) timeout "${TESTS_S:-420}" $py -m pytest -q -p no:cacheprovider -rfE ${TEST_FILES:-tests/test_kernel_gpu.py tests/test_site_launcher.py tests/test_op_fuzz.py tests/test_functional.py tests/test_cpu_kernel.py} ;;
    kernel) timeout "${KERNEL_S:-300}" $py -m benchmarks.kernel --rows "${KERNEL_ROWS:-256,2048,8192,32768}" --parts "${KERNEL_PARTS:-table,host}" ;;
    sweep) timeout "${SWEEP_S:-200}" $py -m benchmarks.kernel --parts sweep ;;
    train) timeout "${TRAIN_S:-300}" $py -m benchmarks.train_step --models "${TRAIN_MODELS:-gpt2,bert,deit}" --steps "${TRAIN_STEPS:-60}" --variants "${TRAIN_VARIANTS:-gelu,kgelu,kgelu-op}" ;;
    train_compile) timeout "${TRAIN_S:-300}" $py -m benchmarks.train_step --models "${TRAIN_MODELS:-gpt2,bert,deit}" --compile --variants gelu,kgelu --steps "${TRAIN_STEPS:-60}" ;;
    gaps) timeout "${GAPS_S:-150}" $py -m benchmarks.train_step --models gpt2 --gaps --variants gelu,kgelu ;;
    cpu) timeout "${CPU_S:-200}" bash -c "$py -m benchmarks.cpu --threads 1 && $py -m benchmarks.cpu --threads 8" ;;
    *) echo "unknown step $step" ;;
  esac 2>&1 | tee -a "$log"
  echo "===== $step: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s" | tee -a "$log"
done
