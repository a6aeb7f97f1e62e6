#!/usr/bin/env bash
# The first student quality row (issue 3 (c)), through the product's own commands:
#   bash bench/quality_row.sh [STORAGE]          (default bench-runs/quality-row; resumable by experiment name)
# MiniLM teachers on the five shared GLUE tasks, then three students on all five at the same budget:
# plain multi-task (no KD), BAM with linear teacher annealing, BAM + per-task KD switch (joint, patience 1).
# Budget (the foundation's, section 1 of bench/RESULTS.md, with lr 1e-4 for everyone): at most 2,000 training
# examples per task, full dev sets, max length 128, batch 32, 3 epochs, 5 evaluations, 1 seed, fp32 here.
set -euo pipefail
cd "$(dirname "$0")/.."
STORAGE=${1:-bench-runs/quality-row}
GLUE=${BAM_GLUE_DIR:-../shared/data/glue}
TASKS=cola,sst2,mrpc,stsb,rte
SET=(--set "tasks=[cola,sst2,mrpc,stsb,rte]" --set model=minilm --set data.max_train_examples=2000
     --set optim.epochs=3 --set optim.lr=1e-4 --set evals=5 --set "data.glue_dir=$(realpath "$GLUE")")
t0=$(date +%s)
bam-search teachers --tasks $TASKS --model minilm --seeds 1 --max-train-examples 2000 --patience 0 --epochs 3 \
    --evals 5 --lr 1e-4 --glue-dir "$GLUE" --storage "$STORAGE" --name q-teachers --no-wandb --quiet
echo "teachers done: $(( $(date +%s) - t0 )) s"
for r in multitask bam_linear kd_switch; do
  extra=()
  [ "$r" = kd_switch ] && extra=(--set switch.patience=1)
  bam-search train "recipes/$r.yaml" "${SET[@]}" "${extra[@]}" --storage "$STORAGE" --name "q-$r" --no-wandb --quiet
  echo "$r done: $(( $(date +%s) - t0 )) s"
done
