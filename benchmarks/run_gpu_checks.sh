#!/usr/bin/env bash
# The GPU checks of the λ-GELU kernel in one go (tests, then benchmarks), each step time-boxed.
# One log (log.txt, also echoed) and the benchmarks' CSVs go under $1 (default outputs/gpu).
# Run from the repository root on a CUDA machine:
#   bash benchmarks/run_gpu_checks.sh outputs/gpu [steps...]
# steps: tests sweep choose kernel host train_gpt2 train_gpt2_compile train_deit gaps cpu
# (default: tests kernel host train_gpt2 train_deit); gaps: where the GPT-2 step's device waits
# for the host (step_gaps.py); cpu: the CPU kernel against F.gelu on this host's CPU (1 and 8 threads);
# choose exports HF_KGELU_KERNEL_CONFIG with the sweep's winners (choose_kernel_config.py).
# env: KERNEL_ROWS (bench_kernel --rows), GPT2_STEPS (interleaved rounds), GPT2_VARIANTS, per-step time limits
# TESTS_S SWEEP_S KERNEL_S HOST_S TRAIN_S (seconds). Outputs: log.txt and the benchmarks' CSVs.
set -uo pipefail
out=${1:-outputs/gpu}; shift || true
steps=${*:-tests kernel host train_gpt2 train_deit}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# native builds (CPU kernel, C++ site path) in an ignored folder the device keeps between calls
export HF_KGELU_CACHE=${HF_KGELU_CACHE:-$PWD/outputs/kgelu_cache}
py=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  $py -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  date -u; } 2>&1 | tee -a "$log"
for step in $steps; do
  start=$(date +%s)
  echo "===== $step" | tee -a "$log"
  if [ "$step" = choose ]; then  # the sweep's winners for the steps after it (not in a pipe: export)
    export HF_KGELU_KERNEL_CONFIG=$($py benchmarks/choose_kernel_config.py "$out/bench_kernel_sweep.csv")
    echo "HF_KGELU_KERNEL_CONFIG=$HF_KGELU_KERNEL_CONFIG" | tee -a "$log"
    continue
  fi
  case $step in
    tests) timeout "${TESTS_S:-240}" $py -m pytest -q -p no:cacheprovider -rfE tests/test_kernel_gpu.py tests/test_site_launcher.py tests/test_functional.py tests/test_cpu_kernel.py ;;
    sweep) timeout "${SWEEP_S:-150}" $py benchmarks/bench_kernel.py --sweep-only --csv "$out/bench_kernel.csv" ;;
    kernel) timeout "${KERNEL_S:-180}" $py benchmarks/bench_kernel.py --rows "${KERNEL_ROWS:-256,2048,8192,32768}" --csv "$out/bench_kernel.csv" ;;
    host) timeout "${HOST_S:-120}" $py benchmarks/bench_host.py --csv "$out/bench_host.csv" ;;
    train_gpt2) timeout "${TRAIN_S:-100}" $py benchmarks/bench_train_step.py --model gpt2 --steps "${GPT2_STEPS:-60}" --variants "${GPT2_VARIANTS:-gelu,kgelu,kgelu-torch,naive}" --csv "$out/train_step_gpt2.csv" ;;
    train_gpt2_compile) timeout "${TRAIN_S:-100}" $py benchmarks/bench_train_step.py --model gpt2 --compile --variants gelu,kgelu --steps "${GPT2_STEPS:-60}" --csv "$out/train_step_gpt2_compile.csv" ;;
    train_deit) timeout "${TRAIN_S:-100}" $py benchmarks/bench_train_step.py --model deit --csv "$out/train_step_deit.csv" ;;
    gaps) timeout "${GAPS_S:-150}" $py benchmarks/step_gaps.py --model gpt2 --variants gelu,kgelu,gelu,kgelu --steps 5 ;;
    cpu) timeout "${CPU_S:-200}" bash -c "$py benchmarks/bench_cpu.py --threads 1 --csv $out/bench_cpu_1t.csv && $py benchmarks/bench_cpu.py --threads 8 --csv $out/bench_cpu_8t.csv" ;;
    *) echo "unknown step $step" ;;
  esac 2>&1 | tee -a "$log"
  echo "===== $step: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s" | tee -a "$log"
done
