#!/usr/bin/env bash
# run_clm.py and run_image_classification.py under `accelerate launch`, as users run them:
# 1 process (the single-GPU reference) vs 2 processes with DDP, FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 (when deepspeed
# imports, or installs from the wheels in .whl/: see run_multi_gpu.sh), the same global
# batch (16) split over the processes; then a DDP run resumed from its step-12 checkpoint in a
# fresh folder; then `python -m benchmarks.multi_gpu --compare-scripts` (final ReLU models, λ, anneal
# step, θ-sync logs, checkpoints written once). Tiny models without dropout, 24 steps each.
# The rows go to $1/<machine kind>.csv, with log.txt. Needs `datasets` (carry wheels to a GPU machine).
#   bash benchmarks/run_scripts_multi_gpu.sh outputs/multi_gpu_scripts
# CPU smoke test (gloo, no FSDP): DDP_CONFIG=cpu.yaml FSDP_CONFIG=none SCRIPT_EXTRA="--use_cpu true".
# ONLY="image-fsdp2 clm-1" runs just those launches; PRECISION=fp32 launches with --mixed_precision no
# (the 1-vs-2-process difference is then rounding of the reduction order); LAUNCH_EXTRA goes to
# accelerate launch.
set -uo pipefail
out=${1:-outputs/multi_gpu_scripts}
mkdir -p "$out"
runs=$(mktemp -d)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=warning PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" BENCH_RESULTS="$out"
precision=${PRECISION:-bf16}
[ "$precision" = fp32 ] && LAUNCH_EXTRA="${LAUNCH_EXTRA:-} --mixed_precision no"
py=${PYTHON:-python3}
common=(--max_steps 24 --save_strategy steps --save_steps 12 --eval_strategy no --logging_steps 4 --report_to none
        --disable_tqdm true --kgelu_anneal_start 0.25 --relu_ize_at_end --seed 0 --dataloader_pin_memory false
        --per_device_eval_batch_size 32)
clm=(scripts/run_clm.py --config_overrides n_layer=2,n_embd=64,n_head=2,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0
     --corpus embedded --max_train_tokens 60000 --block_size 64 --learning_rate 2e-3 --max_eval_samples 64)
image=(scripts/run_image_classification.py --dataset digits
       --config_overrides hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,hidden_dropout_prob=0,attention_probs_dropout_prob=0
       --learning_rate 3e-3 --max_eval_samples 200)
: > "$out/log.txt"
launch() {  # tag config processes script-array-name [extra args...]
  local tag=$1 config=$2 procs=$3 name=$4; shift 4
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $tag "* ]] || return 0
  local -n script=$name
  local start=$(date +%s)
  timeout "${LAUNCH_S:-150}" $py -m accelerate.commands.launch --config_file "scripts/accelerate_configs/$config" \
    --num_processes "$procs" ${LAUNCH_EXTRA:-} "${script[@]}" "${common[@]}" ${SCRIPT_EXTRA:-} \
    --per_device_train_batch_size $((16 / procs)) --output_dir "$runs/$tag" "$@" > "$runs/$tag.log" 2>&1
  echo "$tag: exit $? in $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
}
if ! $py -c "import deepspeed" 2>/dev/null && ls .whl/deepspeed-*.whl > /dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >> "$out/log.txt" 2>&1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
zero=$($py -c "import deepspeed" 2>/dev/null && echo "${ZERO_STAGES:-2 3}")
for name in clm image; do
  launch "$name-1" "${DDP_CONFIG:-ddp.yaml}" 1 $name
  launch "$name-ddp2" "${DDP_CONFIG:-ddp.yaml}" 2 $name
  [ "${FSDP_CONFIG:-fsdp.yaml}" = none ] || launch "$name-fsdp2" "${FSDP_CONFIG:-fsdp.yaml}" 2 $name
  for stage in $zero; do launch "$name-zero$stage" "deepspeed_zero$stage.yaml" 2 $name; done
done
[ -d "$runs/clm-ddp2/checkpoint-12" ] && mkdir -p "$runs/clm-ddp2-resumed" && cp -r "$runs/clm-ddp2/checkpoint-12" "$runs/clm-ddp2-resumed/"
launch clm-ddp2-resumed "${DDP_CONFIG:-ddp.yaml}" 2 clm --resume_from_checkpoint last
$py -m benchmarks.multi_gpu --compare-scripts "$runs" --dtype "$precision" 2>&1 | tee -a "$out/log.txt"
for f in "$runs"/*.log; do  # the first error of a failed rank, then the end
  { echo "===== $(basename "$f")"; grep -m1 -B3 -A40 "Traceback" "$f"; echo "-- last lines:"; tail -n 12 "$f"; } >> "$out/log.txt"
done
