#!/usr/bin/env bash
# The real-data conformance runs of docs/conformance.md: the plain transformers + peft loop (scripts/stock_loop.py)
# and `sptbench run --stock` with the same budget, sst2 16-shot on the published LM-BFF splits, minilm-l6.
#   scripts/conformance.sh [SEEDS...]        (default: 13 21 42; methods: $METHODS or "head lora prompt_tuning";
#                                            output folder: $OUT or results/conformance)
# Appends sptbench's records to results/conformance/v1/minilm-l6/16shot.yaml and the stock loop's output to
# results/conformance/stock_loop.yaml (one YAML document per run).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SPTBENCH_DATA_DIR:-../shared/data}"
OUT="${OUT:-results/conformance}"
METHODS="${METHODS:-head lora prompt_tuning}"
mkdir -p "$OUT"
declare -A LR=([head]=1e-2 [lora]=5e-4 [prompt_tuning]=3e-2)  # each method's sptbench default
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(13 21 42)
for seed in "${seeds[@]}"; do
  for method in $METHODS; do
    budget=(--lr "${LR[$method]}" --batch-size 8)
    { echo "---"; python scripts/stock_loop.py sst2 "$method" "$seed" --data-dir "$DATA" "${budget[@]}" \
        --epochs 30 --eval-epochs 3; } >> "$OUT/stock_loop.yaml"
    sets=()
    [ "$method" = lora ] && sets=(--set dropout=0)  # peft's LoraConfig default, as the stock loop uses
    [ "$method" = prompt_tuning ] && sets=(--set init=peft_vocab)  # peft's SAMPLE_VOCAB random stream
    sptbench run --method "$method" --task sst2 --shots 16 --split-source lm-bff --seed "$seed" --model minilm-l6 \
      --data-dir "$DATA" --results-dir "$OUT" "${budget[@]}" --max-steps 120 --eval-every 12 --weight-decay 0.01 \
      --stock "${sets[@]}" --quiet
  done
done
