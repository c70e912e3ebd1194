#!/usr/bin/env bash
# The multi-GPU table in one command (nvidia-h200-x2, about 9 minutes): benchmarks.multi_gpu launched by accelerate
# for every engine at 2 and 1 GPUs: DDP (ddp.yaml), FSDP2 (fsdp.yaml), DeepSpeed ZeRO-2 and ZeRO-3
# (deepspeed_zero2.yaml, deepspeed_zero3.yaml); then its rows. Into $1 (default outputs/multi_gpu): <machine kind>.csv,
# log.txt, launches.jsonl (every launch's result, to redo the rows elsewhere: --compare) and launches.log (the end
# of every launch's output). Back home:
#   python -m benchmarks.harness merge OUT/nvidia-h200-x2.csv && python -m benchmarks.report
# DeepSpeed is not in the GPU image: the wheels in .whl/ (deepspeed built here with `DS_BUILD_OPS=0 pip wheel --no-deps
# --no-build-isolation deepspeed==0.19.8 -w .whl` (its setup imports torch), and
# hjson, pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions; carry .whl) go to /tmp/site.
#   bash benchmarks/run_multi_gpu.sh OUT
# ENGINES="ddp fsdp" (default: ddp fsdp zero2 zero3) and GPUS="2" (default: 2 1) choose the launches. TOTAL_S (default
# 560) bounds the whole run: the launches go in the order the table needs them (all 2-GPU ones first, ddp1 among
# them as the reference), each gets what is left, at most LAUNCH_S (default 150) seconds; what did not fit is logged.
# ONLY="ddp1 zero2-1 zero3-1" runs just those launches (e.g. a second call for what TOTAL_S left out).
# CPU smoke test: BENCH_ARGS="--tiny --steps 6 --warmup 2" DDP_CONFIG=cpu.yaml ENGINES=ddp.
set -uo pipefail
out=${1:-outputs/multi_gpu}
mkdir -p "$out"
scratch=$(mktemp -d)
# NVLink multicast off (shared hosts: see the device notes); no Hub.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" BENCH_RESULTS="$out"
py=${PYTHON:-python3}
engines=" ${ENGINES:-ddp fsdp zero2 zero3} "
start_all=$(date +%s)
: > "$out/launches.log"
{ nvidia-smi -L; $py -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'gpus', torch.cuda.device_count())"; } > "$out/log.txt" 2>&1
if [[ "$engines" == *" zero"* ]] && ! $py -c "import deepspeed" 2>/dev/null; then
  if ls .whl/deepspeed-*.whl > /dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >> "$out/log.txt" 2>&1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  $py -c "import deepspeed; print('deepspeed', deepspeed.__version__)" >> "$out/log.txt" 2>&1 || echo "no deepspeed: ZeRO launches will fail" >> "$out/log.txt"
fi
# tag engine config processes variants [--skip-exact]; the 2-GPU launches first: they carry the table
launches=(
  "ddp1 ddp ${DDP_CONFIG:-ddp.yaml} 1 kgelu,gelu"
  "ddp2 ddp ${DDP_CONFIG:-ddp.yaml} 2 kgelu,gelu,kgelu-engine,kgelu-learn"
  "fsdp2 fsdp fsdp.yaml 2 kgelu,gelu,kgelu-engine"
  "zero2-2 zero2 deepspeed_zero2.yaml 2 kgelu,gelu"
  "zero3-2 zero3 deepspeed_zero3.yaml 2 kgelu,gelu"
  "fsdp1 fsdp fsdp.yaml 1 kgelu,gelu --skip-exact"
  "zero2-1 zero2 deepspeed_zero2.yaml 1 kgelu,gelu --skip-exact"
  "zero3-1 zero3 deepspeed_zero3.yaml 1 kgelu,gelu --skip-exact"
)
for spec in "${launches[@]}"; do
  set -- $spec
  tag=$1 engine=$2 config=$3 procs=$4 variants=$5; shift 5
  [[ "$engines" == *" $engine "* ]] || continue
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $tag "* ]] || continue
  [[ " ${GPUS:-2 1} " == *" $procs "* ]] || [ "$tag" = ddp1 ] || continue
  left=$(( ${TOTAL_S:-560} - ($(date +%s) - start_all) - 40 ))  # 40 s kept for the rows
  if [ "$left" -lt 60 ]; then echo "$tag: not run (the time bound TOTAL_S is spent)" >> "$out/log.txt"; continue; fi
  limit=$(( left < ${LAUNCH_S:-150} ? left : ${LAUNCH_S:-150} ))
  started=$(date +%s)
  timeout "$limit" $py -m accelerate.commands.launch --config_file "scripts/accelerate_configs/$config" --num_processes "$procs" \
    ${LAUNCH_EXTRA:-} -m benchmarks.multi_gpu ${BENCH_ARGS:-} --tag "$tag" --activations "$variants" "$@" \
    --out "$scratch/$tag.json" --jsonl "$out/launches.jsonl" --scratch "$scratch" > "$scratch/$tag.log" 2>&1
  echo "$tag: exit $? in $(( $(date +%s) - started )) s (limit $limit s)" >> "$out/log.txt"
  { echo "===== $tag"; grep -m1 -B3 -A30 "Traceback" "$scratch/$tag.log"; echo "-- last lines:"; tail -n 15 "$scratch/$tag.log"; } >> "$out/launches.log"
done
$py -m benchmarks.multi_gpu ${BENCH_ARGS:-} --compare "$scratch" --scratch "$scratch" >> "$out/log.txt" 2>&1
echo "total $(( $(date +%s) - start_all )) s" >> "$out/log.txt"
cat "$out/log.txt"
