#!/usr/bin/env bash
# The checks that need an accelerator, ready for the first GPU machine: one line per check (ok, FAILED, skipped),
# each check's output in $OUT/<check>.log. Steps that need vLLM are skipped where it is not installed.
#   bench/gpu_check.sh [--dry-run] [OUT]      (--dry-run: print each check's command lines, run nothing)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT="${1:-runs/gpu-check}"
PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
NGPU=$($PY -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
HAS_VLLM=$($PY -c "import importlib.util; print(int(importlib.util.find_spec('vllm') is not None))" 2>/dev/null || echo 0)
LEARNERS="sft rft dft prob dpo ppo iwsft adft asft nft grpo"
[ $DRY = 1 ] || mkdir -p "$OUT"

check() {  # check NAME COMMAND...: run it, one line of verdict
  local name=$1; shift
  if [ $DRY = 1 ]; then echo "$name: $*"; return 0; fi
  local start=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then echo "$name: ok ($((SECONDS - start)) s)"
  else echo "$name: FAILED after $((SECONDS - start)) s (see $OUT/$name.log)"; fi
}
skip() { echo "$1: skipped ($2)"; }

# data: demonstrations need no engine; samples (for the ratio learners) come from the transformers engine
check data-demonstrations bin/import --source world:train --out "$OUT/demos" --prompts 512 --force
check data-samples bin/collect --backend hf --out "$OUT/samples" --prompts 128 --n 4 --force
# FSDP2 with bf16 on every GPU (configs/accelerate/fsdp.yaml), each learner, 5 steps; peak memory per learner
for learner in $LEARNERS; do
  data="$OUT/samples"; case $learner in sft|dft|prob|asft) data="$OUT/demos";; esac
  check "fsdp2-bf16-$learner" "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
    --num_processes "$NGPU" bin/train --learner "$learner" --data "$data" --out "$OUT/fsdp-$learner" --steps 5 \
    --batch-size $((8 * NGPU)) --log-every 1 --report-to none --force
done
# --packing under FSDP2 and bf16 (a per-token, a per-response and a per-pair learner): each step's loss as the padded
# run's above, within bf16's rounding; its speed and peak memory beside the padded run's
PACKED="dft grpo dpo"
for learner in $PACKED; do
  data="$OUT/samples"; case $learner in dft) data="$OUT/demos";; esac
  check "fsdp2-bf16-packing-$learner" "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
    --num_processes "$NGPU" bin/train --learner "$learner" --data "$data" --out "$OUT/fsdp-packed-$learner" \
    --steps 5 --batch-size $((8 * NGPU)) --log-every 1 --packing --report-to none --force
done
[ $DRY = 1 ] || "$PY" - "$OUT" $PACKED <<'SAME'
import json, sys
from pathlib import Path
for learner in sys.argv[2:]:
    runs = [Path(sys.argv[1]) / f"fsdp{kind}-{learner}" for kind in ("", "-packed")]
    if not all((run / "train_summary.json").exists() for run in runs):
        print(f"packing-same-loss-{learner}: none")
        continue
    (padded, packed) = ([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in runs)
    gap = max(abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-6) for a, b in zip(padded, packed))
    speed = [json.loads((run / "train_summary.json").read_text()) for run in runs]
    print(f"packing-same-loss-{learner}: {'ok' if gap < 2e-2 else 'FAILED'} (largest relative gap {gap:.1e} over "
          f"{len(padded)} steps); tokens/s padded {speed[0]['tokens_per_s']}, packed {speed[1]['tokens_per_s']}; "
          f"peak GiB padded {speed[0].get('peak_gpu_memory_gib')}, packed {speed[1].get('peak_gpu_memory_gib')}")
SAME
[ $DRY = 1 ] || "$PY" - "$OUT" $LEARNERS <<'PEAK'
import json, sys
from pathlib import Path
for learner in sys.argv[2:]:
    summary = Path(sys.argv[1]) / f"fsdp-{learner}" / "train_summary.json"
    peak = json.loads(summary.read_text()).get("peak_gpu_memory_gib") if summary.exists() else None
    print(f"peak-memory-{learner}: {peak} GiB per process" if peak is not None else f"peak-memory-{learner}: none")
PEAK
# fitting Qwen2.5-Math-1.5B's shape (random weights, made here): LoRA, activation checkpointing, fp16 and bf16, each
# with its peak memory and tokens/s against our plain step and the same loss at step 1 (bench/train.py fails otherwise)
FIT="--shape qwen1.5b --steps 6 --warmup 2 --batch-size 8 --repeats 1 --problems 256"
check fit-1.5b "$PY" bench/train.py $FIT --sides ours,ours/fp32 --fit  # ours: bf16 on a GPU; --fit: ours/lora, ours/gc
check fit-1.5b-fp16 "$PY" bench/train.py $FIT --sides ours/fp16,ours/fp32
check fit-1.5b-lora-checkpointing "$PY" bench/train.py $FIT --sides ours+packing/lora+gc,ours/lora+gc,ours/lora
# the same under FSDP2 on every GPU, from a saved 1.5B-shaped model and its world data: LoRA with checkpointing in
# bf16, full weights with checkpointing, and fp16 (accelerate's --mixed_precision, which bin/train follows)
check model-1.5b "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'bench'); from train import prepare; \
prepare(Path(sys.argv[1]), 'qwen1.5b', None, 512)" "$OUT/qwen1.5b"
FSDP_1_5B="--data $OUT/qwen1.5b/data --model $OUT/qwen1.5b/model --steps 5 --batch-size $((8 * NGPU)) --report-to none --force"
check fsdp2-bf16-dft-lora-1.5b "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
  --num_processes "$NGPU" bin/train --learner dft $FSDP_1_5B --lora-rank 16 --gradient-checkpointing \
  --out "$OUT/fsdp-dft-lora-1.5b"
check fsdp2-bf16-dft-checkpointing-1.5b "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
  --num_processes "$NGPU" bin/train --learner dft $FSDP_1_5B --gradient-checkpointing --out "$OUT/fsdp-dft-gc-1.5b"
check fsdp2-fp16-dft-lora-1.5b "$PY" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
  --mixed_precision fp16 --num_processes "$NGPU" bin/train --learner dft $FSDP_1_5B --lora-rank 16 \
  --gradient-checkpointing --out "$OUT/fsdp-dft-lora-fp16-1.5b"
[ $DRY = 1 ] || "$PY" - "$OUT" dft-lora-1.5b dft-gc-1.5b dft-lora-fp16-1.5b <<'PEAK'
import json, sys
from pathlib import Path
for run in sys.argv[2:]:
    summary = Path(sys.argv[1]) / f"fsdp-{run}" / "train_summary.json"
    found = json.loads(summary.read_text()) if summary.exists() else {}
    print(f"peak-memory-{run}: {found.get('peak_gpu_memory_gib')} GiB per process, {found.get('tokens_per_s')} tokens/s")
PEAK
# the fused projection at the Qwen2.5-1.5B shape (vocabulary 151,936, hidden 1,536), bf16, against the reference
check fused-1.5b "$PY" bench/dft_loss.py --tokens 4096 --vocab 151936 --hidden 1536 --dtype bfloat16
# training speed and memory at the 0.5B shape against TRL
check bench-train-0.5b "$PY" bench/train.py --shape qwen0.5b --steps 6 --batch-size 4
# packed against padded, ours and TRL's padding-free, at the 1.5B shape
check bench-train-packing-1.5b "$PY" bench/train.py --shape qwen1.5b --steps 8 --warmup 3 --batch-size 16 --repeats 1 \
  --sides ours+packing,ours,trl+padding-free,trl
# rounds with sleep mode: the engine hands its memory to each training and wakes for the new weights
if [ "$HAS_VLLM" = 1 ]; then
  check rounds-sleep bin/iterate --learner grpo --rounds 2 --steps 2 --prompts-per-round 16 --out "$OUT/rounds" --force
  check eval-after-rounds bin/eval --model "$OUT/rounds" --benchmarks test-id --problems 50 --out "$OUT/rounds-eval" --force
else
  skip rounds-sleep "vllm is not installed"
  skip eval-after-rounds "vllm is not installed"
fi
