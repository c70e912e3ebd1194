#!/usr/bin/env bash
# Multi-GPU checks in one go (about 5 minutes on 2 H200s): benchmarks.multi_gpu launched by accelerate
# with 1 process (DDP config), 2 processes (DDP) and 2 processes (FSDP2), then its rows: they go to
# $1/<machine kind>.csv, with log.txt and each launch's log (default outputs/multi_gpu). Back home:
#   python -m benchmarks.harness merge OUT/nvidia-h200-x2.csv && python -m benchmarks.report
# BENCH_ARGS="--tiny --steps 6 --warmup 2" turns it into a CPU smoke test.
#   bash benchmarks/run_multi_gpu.sh OUT
set -uo pipefail
out=${1:-outputs/multi_gpu}
mkdir -p "$out"
scratch=$(mktemp -d)
# NVLink multicast off (shared hosts: see the device notes); no Hub.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" BENCH_RESULTS="$out"
py=${PYTHON:-python3}
{ nvidia-smi -L; $py -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'gpus', torch.cuda.device_count())"; } > "$out/log.txt" 2>&1
for spec in "ddp1 ddp.yaml --num_processes=1" "ddp2 ddp.yaml" "fsdp2 fsdp.yaml"; do
  set -- $spec
  start=$(date +%s)
  timeout "${LAUNCH_S:-105}" $py -m accelerate.commands.launch --config_file "scripts/accelerate_configs/$2" ${3:-} \
    -m benchmarks.multi_gpu ${BENCH_ARGS:-} --tag "$1" --out "$scratch/$1.json" --scratch "$scratch" > "$scratch/$1.log" 2>&1
  echo "$1: exit $? in $(( $(date +%s) - start )) s" >> "$out/log.txt"
  tail -c 60000 "$scratch/$1.log" > "$out/$1.log"
done
$py -m benchmarks.multi_gpu ${BENCH_ARGS:-} --compare "$scratch" --scratch "$scratch" >> "$out/log.txt" 2>&1
cat "$out/log.txt"
