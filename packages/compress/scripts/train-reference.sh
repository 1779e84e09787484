#!/usr/bin/env bash
# Trains the reference models the measured tables of the README use (one command reproduces them):
#   moe   — 2 layers, d 128, 16 SwiGLU experts of 128, softmax top-2 (renormalised), Brown Corpus
#   dense — the same transformer with one SwiGLU FFN of 256 (equal active FFN parameters per token)
# Usage: packages/compress/scripts/train-reference.sh [OUT_DIR (default runs/compress-ref)] [moe|dense|both (default both)]
# Run from the repository root after `pnpm build`. Steps/batch: STEPS (3000), BATCH (16); seq 128, seed 0;
# TIME_BUDGET (seconds, optional) stops each run early (then it evaluates and saves as usual).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-runs/compress-ref}"
which="${2:-both}"
steps="${STEPS:-3000}"
batch="${BATCH:-16}"
cli="$root/packages/node/dist/cli.js"
train() {
  nice -n 10 node "$cli" train "$here/$1-ref.json" --data brown --steps "$steps" --batch "$batch" --seq 128 \
    --lr 3e-3 --seed 0 --eval-every 500 --eval-batches 16 --quiet --out "$out/$1" \
    ${TIME_BUDGET:+--time-budget "$TIME_BUDGET"}
}
case "$which" in
  moe) train moe ;;
  dense) train dense ;;
  both) train moe && train dense ;;
  *) echo "usage: $0 [OUT_DIR] [moe|dense|both]" >&2; exit 2 ;;
esac
