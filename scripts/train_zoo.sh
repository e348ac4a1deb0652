#!/usr/bin/env bash
# Train the shipped models one after another with one recipe, resumable: re-running continues each
# run from $OUT/<name>/last.pt (OUT=training by default) (a finished run returns at once). One heavy job at a time.
#
#   nohup bash scripts/train_zoo.sh resnet20 resnet56 plain20 plain56 > training/zoo.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/cifar10-jpeg.tar.xz}
EPOCHS=${EPOCHS:-40}
OUT=${OUT:-training}  # a longer schedule goes to its own folder: OUT=training/e100 EPOCHS=100
export RESNET_DEPLOY_CACHE=${RESNET_DEPLOY_CACHE:-$PWD/.cache/resnet-deploy}
for name in "$@"; do
  echo "== $name $(date -u +%FT%TZ)"
  .venv/bin/resnet-deploy train --model "$name" --data-dir "$DATA" -o "$OUT/$name" --resume \
    --epochs "$EPOCHS" --batch-size 128 --lr 0.2 --nesterov --label-smoothing 0.1 --weight-decay 5e-4 \
    --schedule onecycle --precision bf16 --channels-last --compile --seed 0
done
echo "== done $(date -u +%FT%TZ)"
