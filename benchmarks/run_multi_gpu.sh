#!/usr/bin/env bash
# Multi-GPU checks in one go (about 5 minutes on 2 H200s): bench_multi_gpu.py launched by
# accelerate with 1 process (DDP config), 2 processes (DDP) and 2 processes (FSDP2), then the
# comparison. Writes ddp1/ddp2/fsdp2 .json and .log, summary.json and log.txt under $1 (8 files).
# BENCH_ARGS="--tiny --steps 6 --warmup 2" turns it into a CPU smoke test.
#   bash benchmarks/run_multi_gpu.sh outputs/multi_gpu
set -uo pipefail
out=${1:-outputs/multi_gpu}
mkdir -p "$out"
scratch=$(mktemp -d)
# NVLink multicast off (shared hosts: see the device notes); no Hub.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
{ nvidia-smi -L; $py -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'gpus', torch.cuda.device_count())"; } > "$out/log.txt" 2>&1
for spec in "ddp1 ddp.yaml --num_processes=1" "ddp2 ddp.yaml" "fsdp2 fsdp.yaml"; do
  set -- $spec
  start=$(date +%s)
  timeout "${LAUNCH_S:-105}" $py -m accelerate.commands.launch --config_file "scripts/accelerate_configs/$2" ${3:-} \
    benchmarks/bench_multi_gpu.py ${BENCH_ARGS:-} --tag "$1" --out "$out/$1.json" --scratch "$scratch" > "$scratch/$1.log" 2>&1
  echo "$1: exit $? in $(( $(date +%s) - start )) s" >> "$out/log.txt"
  tail -c 60000 "$scratch/$1.log" > "$out/$1.log"
done
$py benchmarks/bench_multi_gpu.py --compare "$out" --scratch "$scratch" >> "$out/log.txt" 2>&1
cat "$out/log.txt"
