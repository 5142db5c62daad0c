#!/usr/bin/env bash
# The reference suite (sweeps/reference.yaml): every registered linear-head method on minilm-l6 (real weights) and
# the real rte + trec data, 16-shot, seed 13, a short training budget, in one process; then `sptbench check`
# against the stored records in results/reference/.
#   scripts/reference_check.sh            run and check (CI)
#   scripts/reference_check.sh --update   run and replace the reference records (say why in the commit; a new
#                                         processor is a reason: the check is exact only on the reference's own)
set -euo pipefail
cd "$(dirname "$0")/.."
REFERENCE=results/reference/minilm-l6-16shot.yaml
DATA_DIR="${SPTBENCH_DATA_DIR:-$(cd .. && pwd)/shared/data}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# one sweep file, one process (sweeps/reference.yaml: every linear-head method x rte, trec)
sptbench sweep sweeps/reference.yaml --data-dir "$DATA_DIR" --results-dir "$out" --quiet

if [ "${1:-}" = "--update" ]; then
  cp "$out/v1/minilm-l6/16shot.yaml" "$REFERENCE"
  echo "updated $REFERENCE"
else
  # CPU runs on the same processor (throughput.hardware) are deterministic: there the band only absorbs float noise.
  # On another processor a few predictions flip (measured 2026-12-01, a new CPU against the old reference: 6 of 72
  # metrics moved, at most 0.021 = 2 of 96 TREC dev examples), so those runs get a looser band, about 2 of the 32 RTE
  # dev examples, and the report says so; `--update` on the new machine restores the exact check.
  sptbench check --against "$REFERENCE" "$out/v1" --abs-tol 1e-4 --hardware-tol 0.07
fi
